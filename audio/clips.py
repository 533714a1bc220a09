"""Cutting a timeline into clips of whole seconds, and writing a clip as mp3 (PyAV, libmp3lame).

Which clips (the original's rule, `preprocess_unlabeled.py`): clip k starts at k × duration seconds, from 0,
for every start below the recording's length in whole seconds (`range(0, int(length), duration)`); each clip
is `duration` seconds long except the last, which ends with the recording. So the trailing partial clip is
written when at least one second of audio remains after the last full clip, and a shorter tail is in no clip
(9.79 s at 3 s per clip: 0–3, 3–6, 6–9, and the last 0.79 s dropped; 10.2 s: also 9–10.2). `partial=False`
keeps only full clips. Cuts are exact to the sample.

`cut(timeline_items, duration, partial)` yields, in order, `Clip`s (full ones as soon as their audio is
there), `Missing` for runs of clips that lie wholly inside a gap of the timeline, and finally `Tail`
(the recording's length and the tail in no clip). A clip that a gap cuts into is a Clip with `samples=None`
and the gap's reason.

`encode_mp3(samples, rate, path)`: the clip as mp3 at its own rate and channel count, 128 kb/s constant bit
rate (what the original's `ffmpeg -i x.mp4 x.mp3` wrote with libmp3lame's defaults), with the LAME/Xing
header that tells decoders the encoder's delay and padding, so a decoder that honours it (FFmpeg's, with
which the spectrograms are drawn) gets back exactly the clip's samples: 3 s at 48 kHz decode to 144,000.
`write_mp3(samples, rate, path)`: the same through a temporary file, linked into place only if `path` does
not exist yet (never overwritten, even by a concurrent run: FileExistsError).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from conversion.atomic import published_mode

from .timeline import Chunk, Gap

MP3_BIT_RATE = 128_000
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)  # MPEG-1, 2 and 2.5 layer III


class ClipError(ValueError):
    """A clip that cannot be written as mp3 (a rate or channel count mp3 does not have)."""


@dataclass(frozen=True)
class Clip:
    index: int  # k: starts at k × duration seconds
    start: int  # first sample on the timeline
    samples: np.ndarray | None  # float32 (channels, n); None when a gap cuts into it
    reason: str = ""  # why samples is None

    @property
    def length(self) -> int:
        return 0 if self.samples is None else self.samples.shape[1]


@dataclass(frozen=True)
class Missing:
    """Clips first..last (indices, inclusive) lie wholly inside a gap."""

    first: int
    last: int
    reason: str


@dataclass(frozen=True)
class Tail:
    total: int  # the timeline's length, samples
    dropped: int  # samples at the end that are in no clip


def clip_count(total: int, rate: int, duration: int, partial: bool = True) -> int:
    """How many clips a recording of `total` samples gives (see the module's rule)."""
    if not partial:
        return total // (duration * rate)
    return -(-(total // rate) // duration)  # starts 0, d, 2d, ... below the whole seconds


def cut(items: Iterable[Chunk | Gap], duration: int, partial: bool = True) -> Iterator[Clip | Missing | Tail]:
    """Clips of `duration` seconds from a timeline's items (`audio.timeline.Timeline`); the rate is the
    chunks' own."""
    if duration < 1 or int(duration) != duration:
        raise ValueError(f"duration must be a whole number of seconds ≥ 1, not {duration!r}")
    length = rate = None  # samples per full clip, once the rate is known
    k, buf, covered, reasons = 0, None, 0, []
    gaps: list[Gap] = []
    end = 0

    def full_clip():
        return Clip(k, k * length, buf)

    for item in items:
        if length is None:
            if isinstance(item, Gap):
                gaps.append(item)
                continue
            rate = item.rate
            length = duration * rate
        if isinstance(item, Gap):
            gaps.append(item)
            reasons.append(item.reason)
            continue
        position, data = item.start, item.samples
        while data.shape[1]:
            index = position // length
            if index > k:  # the audio jumped past clip k's end: k, and any clips between, lie on a gap
                if covered:
                    yield Clip(k, k * length, None, _gap_reason(gaps, k * length, (k + 1) * length, reasons))
                    first = k + 1
                else:
                    first = k
                if index - 1 >= first:
                    yield Missing(first, index - 1, _gap_reason(gaps, first * length, index * length, reasons))
                k, buf, covered, reasons = index, None, 0, []
            if buf is None:
                buf = np.zeros((data.shape[0], length), np.float32)
            offset = position - k * length
            n = min(data.shape[1], length - offset)
            buf[:, offset:offset + n] = data[:, :n]
            covered += n
            position += n
            data = data[:, n:]
            end = position
            if offset + n == length:  # clip k's end reached
                if covered == length:
                    yield full_clip()
                else:
                    yield Clip(k, k * length, None, _gap_reason(gaps, k * length, (k + 1) * length, reasons))
                k, buf, covered, reasons = k + 1, None, 0, []
    if length is None:
        yield Tail(0, 0)
        return
    last_start = k * length
    trailing = end - last_start  # audio of clip k, which ends with the recording
    wanted = trailing > 0 and k * duration < end // rate and partial
    if trailing > 0:
        if not wanted:
            yield Tail(end, trailing)
            return
        if covered != trailing:
            yield Clip(k, last_start, None, _gap_reason(gaps, last_start, end, reasons))
        else:
            yield Clip(k, last_start, buf[:, :trailing].copy())
    yield Tail(end, 0)


def _gap_reason(gaps: list[Gap], start: int, end: int, fallback: list[str]) -> str:
    hits = [g.reason for g in gaps if g.start < end and g.end > start]
    reasons = hits or fallback
    return "; ".join(dict.fromkeys(reasons)) or "part of its audio is missing"


# ------------------------------------------------------------------------------------------- mp3

def check_mp3_format(rate: int, channels: int) -> None:
    if rate not in MP3_RATES:
        raise ClipError(f"mp3 has no {rate} Hz rate (it has {', '.join(map(str, MP3_RATES))} Hz)")
    if channels not in (1, 2):
        raise ClipError(f"mp3 holds 1 or 2 channels, the audio has {channels}")


def encode_mp3(samples: np.ndarray, rate: int, path: str, bit_rate: int = MP3_BIT_RATE) -> None:
    """Write float32 (channels, n) `samples` at `rate` to `path` as a CBR mp3 (libmp3lame via PyAV)."""
    import av

    samples = np.ascontiguousarray(samples, dtype=np.float32)
    channels = samples.shape[0]
    check_mp3_format(rate, channels)
    layout = "mono" if channels == 1 else "stereo"
    with av.open(path, "w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=rate, layout=layout)
        stream.bit_rate = bit_rate
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = 0
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


@contextlib.contextmanager
def temporary_mp3(samples: np.ndarray, rate: int, folder: str):
    """The clip encoded into a temporary file in `folder` (deleted on exit unless moved away)."""
    fd, tmp = tempfile.mkstemp(prefix=".clip-", suffix=".mp3", dir=folder)
    os.close(fd)
    try:
        encode_mp3(samples, rate, tmp)
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def publish(tmp: str, path: str) -> None:
    """Give the finished file `tmp` the name `path` unless that name exists (FileExistsError): a hard link
    is atomic and never replaces. Where links are not possible, an exclusive create and a copy. The file
    gets an ordinary write's mode (0644 under umask 022), not mkstemp's 0600."""
    os.chmod(tmp, published_mode())
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # file systems without hard links
        import shutil

        with open(path, "xb") as dst, open(tmp, "rb") as src:
            shutil.copyfileobj(src, dst)
    os.unlink(tmp)


def write_mp3(samples: np.ndarray, rate: int, path: str) -> None:
    """`encode_mp3` to `path`, atomically and never over an existing file (FileExistsError)."""
    with temporary_mp3(samples, rate, os.path.dirname(os.path.abspath(path))) as tmp:
        publish(tmp, path)
