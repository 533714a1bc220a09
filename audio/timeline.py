"""Many audio files, read in order as one recording: the timeline `orca preprocess` cuts into clips.

`Timeline(inputs, on_problem)` decodes each input with PyAV (FFmpeg's libraries) and yields the samples
as `Chunk(start, samples)`: `start` is the chunk's first sample on the timeline, `samples` float32
(channels, n) at the first input's rate and channel count. What the original did (FFmpeg's concat demuxer
with stream copy, then one conversion to mp3) is the model: the audio of the inputs back to back, sample after
sample, with no timestamps consulted.

What the original could not do, and this does:

- **One AAC decoder across segments.** HLS segments split one AAC stream; a decoder started afresh on each
  segment would lose its overlap with the frame before, and the first frame of every segment would differ.
  Consecutive MPEG-TS inputs of the same stream feed one decoder, as FFmpeg's concat demuxer did.
  Other inputs (wav, flac, mp3 recordings) are separate recordings, each decoded on its own.
- **Gaps where audio is missing.** In MPEG-TS every AAC frame carries its presentation time (90 kHz clock,
  continuous over a streaming session's segments). A frame is placed right after the one before
  (back to back) unless its time says that more than `GAP_TOLERANCE` seconds are missing: then it is placed
  at its time and the chunk before it ends a covered stretch. So a segment that is missing, unreadable or
  truncated leaves a gap of the right length, later clips keep their true times (and names), and the clips
  that overlap the gap are reported instead of written with audio from the wrong time. Timestamps that jump
  back (a restarted encoder) are reported, and the audio goes on back to back.
- **Bad inputs are reported, not fatal.** A file FFmpeg cannot open (random bytes, a text file), one without
  an audio stream, one that decodes to nothing, one with another rate or channel count than the first input,
  one with undecodable packets or cut off in the middle of an MPEG-TS packet: `on_problem(Problem)` names the
  file and says why; the audio that could be decoded is kept, the run goes on with the next input.

Inputs are `Input(name, path)`, or `Input(name, fetch=...)` where `fetch()` is a context manager that gives a
local path (a segment downloaded from S3 for as long as it is read, then deleted).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterable, Iterator

import numpy as np

GAP_TOLERANCE = 0.1  # seconds: a frame's timestamp further ahead than this after the previous frame is a gap
TS_PACKET = 188  # bytes: an MPEG-TS file is a whole number of these
PTS_WRAP = 1 << 33  # MPEG-TS timestamps wrap around every 2**33 ticks of the 90 kHz clock (26.5 hours)


@dataclass(frozen=True)
class Input:
    """One file of the recording: `name` for messages (a path, a key, an s3:// URL), and either a local
    `path` or `fetch`, a function returning a context manager that yields a local path."""

    name: str
    path: str | None = None
    fetch: Callable[[], ContextManager[str]] | None = None

    @contextlib.contextmanager
    def local(self):
        if self.fetch is None:
            yield self.path if self.path is not None else self.name
        else:
            with self.fetch() as path:
                yield path


@dataclass(frozen=True)
class Problem:
    """Something wrong with one input. `lost`: nothing of it reached the timeline (else: part of it did)."""

    name: str
    reason: str
    lost: bool = True

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


@dataclass(frozen=True)
class Chunk:
    start: int  # first sample on the timeline
    samples: np.ndarray  # float32 (channels, n)
    rate: int
    source: str = ""  # the input it came from

    @property
    def end(self) -> int:
        return self.start + self.samples.shape[1]


@dataclass(frozen=True)
class Gap:
    """No audio for timeline samples [start, end): `reason` says where it was found."""

    start: int
    end: int
    reason: str


@dataclass
class Format:
    rate: int
    channels: int

    def __str__(self) -> str:
        return f"{self.rate} Hz {channel_words(self.channels)}"


def channel_words(channels: int) -> str:
    return {1: "mono", 2: "stereo"}.get(channels, f"{channels} channels")


@dataclass
class _State:
    """What carries from one input to the next."""

    format: Format | None = None
    end: int = 0  # the timeline's end so far
    decoder: object | None = None  # the AAC (or other) decoder shared by consecutive MPEG-TS inputs
    decoder_key: tuple | None = None
    anchor: tuple[int, int, float] | None = None  # (timeline sample, pts, time base) of a placed MPEG-TS frame
    lost_before: list[str] = field(default_factory=list)  # inputs lost since the last audio
    placed_in_input: bool = False  # a frame of the current input is on the timeline
    last_input: tuple | None = None  # (name, time base) of the last MPEG-TS input fed to the shared decoder


class Timeline:
    """The inputs' audio as one timeline, in the order given: iterating yields Chunks in increasing `start`,
    and a Gap before each chunk that does not follow the one before it. Problems go to `on_problem`; nothing
    raises for a bad input. The first input that decodes sets the timeline's rate and channel count:
    `.format` (None until then); `.end` is the timeline's length so far, in samples."""

    def __init__(self, inputs: Iterable[Input], on_problem: Callable[[Problem], None]):
        self.inputs = inputs
        self.on_problem = on_problem
        self._state = _State()

    @property
    def format(self) -> Format | None:
        return self._state.format

    @property
    def end(self) -> int:
        return self._state.end

    def __iter__(self) -> Iterator[Chunk | Gap]:
        for item in self.inputs:
            before = self._state.end
            problems: list[Problem] = []
            self._state.placed_in_input = False
            try:
                with item.local() as path:
                    yield from _read_one(item.name, path, self._state, problems.append)
            except Exception as exc:  # noqa: BLE001 - a fetch or decode failure of one input: reported, go on
                problems.append(Problem(item.name, _describe(exc), lost=True))
            got_audio = self._state.end > before
            for problem in problems:
                if got_audio and problem.lost:
                    problem = Problem(problem.name, problem.reason, lost=False)
                self.on_problem(problem)
            if not got_audio:
                if not problems:
                    self.on_problem(Problem(item.name, "no audio: it decodes to no samples"))
                self._state.lost_before.append(os.path.basename(item.name) or item.name)
            else:
                self._state.lost_before.clear()
        yield from self._flush()

    def _flush(self) -> Iterator[Chunk | Gap]:
        """The frames still inside the decoder shared by the MPEG-TS inputs (none for AAC, which has no
        delay; a codec with one would otherwise lose the end)."""
        import av.error

        state = self._state
        if state.decoder is None or state.last_input is None:
            return
        name, time_base = state.last_input
        try:
            for frame in state.decoder.decode(None):
                yield from _place(name, frame, time_base, True, state, self.on_problem)
        except av.error.FFmpegError:
            pass  # nothing more to get out of it
        state.decoder = state.decoder_key = None


def _describe(exc: Exception) -> str:
    import av.error

    if isinstance(exc, (FileNotFoundError, av.error.FileNotFoundError)):
        return "no such file"
    if isinstance(exc, av.error.InvalidDataError):
        return "not an audio file FFmpeg can read (invalid data)"
    if isinstance(exc, av.error.FFmpegError):
        return f"FFmpeg: {exc.strerror or exc}"
    if isinstance(exc, IsADirectoryError):
        return "a folder, not a file"
    if isinstance(exc, OSError):
        return f"cannot be read: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


def _read_one(name: str, path: str, state: _State, problem: Callable[[Problem], None]) -> Iterator[Chunk | Gap]:
    import av
    import av.error

    if os.path.isdir(path):
        raise IsADirectoryError(path)
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    if os.path.getsize(path) == 0:
        problem(Problem(name, "empty file (0 bytes)"))
        return
    container = av.open(path, metadata_errors="ignore")
    try:
        if not container.streams.audio:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            problem(Problem(name, f"no audio stream (streams: {', '.join(kinds)})"))
            return
        stream = container.streams.audio[0]
        ts = container.format.name == "mpegts"
        if ts:
            size = os.path.getsize(path)
            if size % TS_PACKET:
                problem(Problem(name, f"truncated: {size} bytes is not a whole number of {TS_PACKET}-byte MPEG-TS "
                                      "packets (the file was cut off; the audio up to the cut is kept)", lost=False))
        ctx = stream.codec_context
        fmt = Format(int(ctx.sample_rate or stream.rate or 0), int(ctx.channels or 0))
        if state.format is not None and fmt.rate and fmt.channels and (fmt.rate, fmt.channels) != (
                state.format.rate, state.format.channels):
            problem(Problem(name, f"{fmt}, unlike the {state.format} of the inputs before it: skipped"))
            return
        key = (ctx.name, fmt.rate, fmt.channels) if ts else None
        if ts and state.decoder is not None and state.decoder_key == key:
            decoder = state.decoder
        else:
            # mp3 through FFmpeg's fixed-point decoder, as audio.decode reads mp3
            decoder = av.CodecContext.create("mp3" if ctx.name in ("mp3", "mp3float") else ctx.name, "r")
            if ctx.extradata:
                decoder.extradata = ctx.extradata
            if fmt.rate:
                decoder.sample_rate = fmt.rate
            if ctx.layout is not None and fmt.channels:
                decoder.layout = ctx.layout
            state.anchor = None
        if ts:
            state.decoder, state.decoder_key, state.last_input = decoder, key, (name, stream.time_base)
        else:  # a recording of its own between segments: the segments after it start a new stream
            state.decoder = state.decoder_key = state.last_input = None
        bad_packets, first_error, demux_error = 0, None, None
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:  # the container breaks off: keep what came before
                demux_error = exc
                break
            if packet.size == 0 and packet.dts is None:  # the demuxer's flush packet: keep the decoder going
                continue
            try:
                frames = decoder.decode(packet)
            except av.error.FFmpegError as exc:
                bad_packets += 1
                first_error = first_error or exc
                continue
            for frame in frames:
                yield from _place(name, frame, stream.time_base, ts, state, problem)
        if not ts:  # a recording of its own: drain its decoder
            try:
                for frame in decoder.decode(None):
                    yield from _place(name, frame, stream.time_base, ts, state, problem)
            except av.error.FFmpegError as exc:
                bad_packets += 1
                first_error = first_error or exc
        if bad_packets:
            problem(Problem(name, f"damaged: {bad_packets} packet(s) could not be decoded "
                                  f"({first_error.strerror or first_error}); they are missing from the audio",
                            lost=False))
        if demux_error is not None:
            problem(Problem(name, f"damaged: reading stopped early ({demux_error.strerror or demux_error}); "
                                  "the audio up to there is kept", lost=False))
    finally:
        container.close()


def _samples(frame) -> np.ndarray:
    """A decoded frame as float32 (channels, n), full scale ±1 (integer samples divided by 2**(bits-1))."""
    array = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:
        array = array.reshape(-1, channels).T
    if array.dtype.kind in "iu":
        if array.dtype.kind == "u":  # 8-bit wav: unsigned, centred on 128
            array = array.astype(np.int16) - 128
            scale = 128.0
        else:
            scale = float(1 << (8 * array.dtype.itemsize - 1))
        array = array.astype(np.float32) / np.float32(scale)
    return np.ascontiguousarray(array, dtype=np.float32)


def _place(name, frame, time_base, ts, state: _State, problem) -> Iterator[Chunk | Gap]:
    samples = _samples(frame)
    if samples.shape[1] == 0:
        return
    rate, channels = int(frame.sample_rate), samples.shape[0]
    if state.format is None:
        state.format = Format(rate, channels)
    elif (rate, channels) != (state.format.rate, state.format.channels):
        problem(Problem(name, f"a frame of {Format(rate, channels)} in a {state.format} recording: dropped",
                        lost=False))
        return
    start = state.end
    pts = frame.pts
    if ts and pts is not None and time_base is not None:
        if state.anchor is None:
            state.anchor = (start, pts, float(time_base))
        else:
            anchor_start, anchor_pts, anchor_base = state.anchor
            ticks = (pts - anchor_pts) % PTS_WRAP if anchor_base == float(time_base) else None
            if ticks is not None and ticks > PTS_WRAP // 2:
                ticks -= PTS_WRAP  # earlier than the anchor
            expected = None if ticks is None else anchor_start + round(ticks * anchor_base * rate)
            tolerance = round(GAP_TOLERANCE * rate)
            if expected is None or expected < start - tolerance:
                problem(Problem(name, "timestamps jump back (a restarted stream?): its audio is placed right after "
                                      "the audio before it", lost=False))
                state.anchor = (start, pts, float(time_base))
            elif expected > start + tolerance:
                # AAC frames are whole: snap the gap to whole frames (the timestamps round to the 90 kHz clock)
                frames = max(1, round((expected - start) / samples.shape[1]))
                expected = start + frames * samples.shape[1]
                base = os.path.basename(name) or name
                lost = state.lost_before
                where = (f"inside {base}" if state.placed_in_input else f"before {base}") + (
                    f", after {', '.join(lost[:3])}{' …' if len(lost) > 3 else ''} failed" if lost else "")
                yield Gap(start, expected, f"{(expected - start) / rate:.2f} s of audio missing {where}")
                start = expected
                state.anchor = (start, pts, float(time_base))
    chunk = Chunk(start, samples, rate, name)
    state.end = chunk.end
    state.placed_in_input = True
    yield chunk
