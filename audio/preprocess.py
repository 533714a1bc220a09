"""From a recording (HLS segments, or long wav/flac/mp3 files) to the original's dataset layout.

    OUTPUT/mp3/<location>_<T + start>.mp3           one clip of `duration` seconds (the last may be shorter)
    OUTPUT/spectrograms/<location>_<T + start>.png  its spectrogram: `audio.spectrogram` of that mp3

`T` is the starting timestamp (unix seconds of the recording's first sample) and `start` the clip's start in
whole seconds. This is what orcaal's `preprocess/preprocess_unlabeled.py` wrote (through the ffmpeg program,
three times over), and what `/predict` reads as `unlabeled_url`.

`preprocess(inputs, output, ...)` reads the inputs in order as one timeline (`audio.timeline`), cuts it into
clips (`audio.clips`, the original's rule for the trailing partial clip), writes each clip as mp3 and then
draws the PNG from the mp3 just written (decoded back, so that each PNG is exactly what `orca spectrogram`
draws from its mp3). A clip counts as

- written: both files are new;
- completed: one of the two was there (an earlier run stopped between them) and the other was made (from the
  existing mp3 when that is the one there);
- kept: both were there: nothing is overwritten, a rerun only completes what is missing;
- mp3_only: the mp3 is written (or kept) but no PNG: the 2020 picture (128 x 130 cells, 607 x 617 px) is
  the spectrogram of a 3-second clip, and `audio.spectrogram` draws no other (the trailing partial clip,
  or every clip of a `duration` other than 3); not a failure;
- failed: not written, with the reason (a gap in the audio, digital silence, shorter than one spectrogram
  frame, an mp3 or spectrogram that could not be made). Nothing of a failed clip is left behind.

Input problems (`audio.timeline.Problem`) and failed clips go to `on_problem` / `on_clip` as they happen;
`Summary` counts everything at the end.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from .clips import Clip, Missing, Tail, check_mp3_format, cut, publish, temporary_mp3, ClipError
from .timeline import Input, Problem, Timeline

SPECTROGRAM_RATE = 22_050  # the spectrogram resamples to this rate ...
SPECTROGRAM_FRAME = 2048  # ... and needs one STFT frame (n_fft) of it at least
PICTURE_SECONDS = 3  # the 2020 picture's 128 x 130 cells: the spectrogram of a 3-second clip


@dataclass
class ClipResult:
    name: str  # stem: <location>_<T + start>
    start: float  # seconds from the recording's start
    seconds: float  # its length (0 for a failed clip whose audio is incomplete)
    status: str  # "written", "completed", "kept", "mp3_only" or "failed"
    reason: str = ""


@dataclass
class Summary:
    written: int = 0
    completed: int = 0
    kept: int = 0
    mp3_only: int = 0
    failed: int = 0
    problems: list[Problem] = field(default_factory=list)  # inputs that failed or were damaged
    failures: list[ClipResult] = field(default_factory=list)
    seconds: float = 0.0  # the timeline's length
    dropped_seconds: float = 0.0  # the tail in no clip (the original's rule)
    rate: int | None = None
    channels: int | None = None

    @property
    def inputs_with_problems(self) -> int:
        return len({p.name for p in self.problems})

    @property
    def ok(self) -> bool:
        return not self.failed and not self.problems

    def line(self) -> str:
        inputs = f", {self.inputs_with_problems} input(s) with problems" if self.problems else ""
        mp3_only = f", {self.mp3_only} as mp3 only (no 2020 picture but for 3 s clips)" if self.mp3_only else ""
        return (f"{self.written} written, {self.completed} completed, {self.kept} kept{mp3_only}, "
                f"{self.failed} failed{inputs}")

    def to_dict(self) -> dict:
        return {"written": self.written, "completed": self.completed, "kept": self.kept,
                "mp3_only": self.mp3_only, "failed": self.failed,
                "input_problems": [str(p) for p in self.problems],
                "failed_clips": [{"name": r.name, "reason": r.reason} for r in self.failures],
                "seconds": round(self.seconds, 3), "dropped_seconds": round(self.dropped_seconds, 3),
                "rate": self.rate, "channels": self.channels}


def clip_name(location: str, starting_timestamp: int, start_seconds: int) -> str:
    """The original's file stem: '%s_%d' % (location, starting_timestamp + start_time)."""
    return f"{location}_{int(starting_timestamp) + int(start_seconds)}"


def preprocess(inputs: Iterable[Input], output: str, *, duration: int = 3, location: str = "",
               starting_timestamp: int = 0, partial: bool = True,
               on_clip: Callable[[ClipResult], None] | None = None,
               on_problem: Callable[[Problem], None] | None = None) -> Summary:
    """Write OUTPUT/mp3/ and OUTPUT/spectrograms/ from `inputs` (see the module). Returns the Summary;
    raises only for what makes the whole run impossible (an output folder that cannot be made, a duration
    that is not a whole number of seconds ≥ 1)."""
    from . import spectrogram

    if int(duration) != duration or duration < 1:
        raise ValueError(f"duration must be a whole number of seconds ≥ 1, not {duration!r}")
    duration = int(duration)
    mp3_dir, png_dir = os.path.join(output, "mp3"), os.path.join(output, "spectrograms")
    os.makedirs(mp3_dir, exist_ok=True)
    os.makedirs(png_dir, exist_ok=True)
    summary = Summary()

    def problem(p: Problem) -> None:
        summary.problems.append(p)
        if on_problem is not None:
            on_problem(p)

    def report(result: ClipResult) -> None:
        setattr(summary, result.status, getattr(summary, result.status) + 1)
        if result.status == "failed":
            summary.failures.append(result)
        if on_clip is not None:
            on_clip(result)

    timeline = Timeline(inputs, problem)
    unwritable = None  # the reason no clip of this timeline can be an mp3, once known
    for item in cut(timeline, duration, partial):
        fmt = timeline.format
        if isinstance(item, Tail):
            summary.seconds = item.total / fmt.rate if fmt else 0.0
            summary.dropped_seconds = item.dropped / fmt.rate if fmt else 0.0
            break
        if isinstance(item, Missing):
            for index in range(item.first, item.last + 1):
                name = clip_name(location, starting_timestamp, index * duration)
                report(_existing(name, mp3_dir, png_dir, index * duration) or ClipResult(
                    name, index * duration, 0.0, "failed", f"no audio: {item.reason}"))
            continue
        name = clip_name(location, starting_timestamp, item.index * duration)
        existing = _existing(name, mp3_dir, png_dir, item.index * duration)
        if existing is not None:
            report(existing)
            continue
        if unwritable is None and fmt is not None:
            try:
                check_mp3_format(fmt.rate, fmt.channels)
                unwritable = ""
            except ClipError as exc:
                unwritable = str(exc)
        report(_write_clip(item, name, fmt.rate, duration, mp3_dir, png_dir, unwritable, spectrogram))
    if timeline.format is not None:
        summary.rate, summary.channels = timeline.format.rate, timeline.format.channels
    clips = summary.written + summary.completed + summary.kept + summary.mp3_only + summary.failed
    if timeline.format is not None and not clips:
        problem(Problem("the recording", f"{summary.seconds:.3f} s of audio gives no clip: the first clip starts "
                                         "at 0 s and needs at least 1 whole second of audio"
                                         + ("" if partial else f", and {duration} s without the partial clips")))
    elif timeline.format is None and not summary.problems:
        problem(Problem("the input", "no audio files to read"))
    return summary


def _existing(name: str, mp3_dir: str, png_dir: str, start: int) -> ClipResult | None:
    """A ClipResult 'kept' when both outputs of `name` exist; None when one of them is missing."""
    if os.path.exists(os.path.join(mp3_dir, name + ".mp3")) and os.path.exists(os.path.join(png_dir, name + ".png")):
        return ClipResult(name, start, 0.0, "kept")
    return None


def _too_short(clip: Clip, rate: int) -> bool:
    """Fewer samples than one STFT frame of the spectrogram (2048 at 22,050 Hz) once resampled."""
    return clip.length * SPECTROGRAM_RATE < SPECTROGRAM_FRAME * rate


def _draw(mp3: str, spectrogram) -> np.ndarray:
    """`orca spectrogram`'s pixels of the mp3 (spectrogram.pixels_from_file is this decode and this call;
    here SpectrogramError stays typed)."""
    from .decode import decode

    decoded = decode(mp3)
    return spectrogram.pixels_from_samples(decoded.samples, decoded.rate)


def _write_clip(clip: Clip, name: str, rate: int, duration: int, mp3_dir: str, png_dir: str, unwritable: str,
                spectrogram) -> ClipResult:
    start = clip.index * duration
    mp3, png = os.path.join(mp3_dir, name + ".mp3"), os.path.join(png_dir, name + ".png")

    def failed(reason: str, seconds: float = 0.0) -> ClipResult:
        return ClipResult(name, start, seconds, "failed", reason)

    if clip.samples is None:
        return failed(f"part of its audio is missing: {clip.reason}")
    seconds = clip.length / rate
    if unwritable:
        return failed(unwritable, seconds)
    if _too_short(clip, rate):
        return failed(f"{seconds:.3f} s, shorter than one spectrogram frame ({SPECTROGRAM_FRAME} samples at "
                      f"{SPECTROGRAM_RATE} Hz = {SPECTROGRAM_FRAME / SPECTROGRAM_RATE:.3f} s)", seconds)
    if not np.any(clip.samples):
        return failed("silent: every sample is zero (a dead or muted hydrophone?); its spectrogram would be "
                      "one flat colour", seconds)
    if not np.all(np.isfinite(clip.samples)):
        return failed("the decoded audio holds NaN or infinite samples", seconds)
    # The 2020 picture is defined for 3-second clips (128 x 130 cells): another length is written as mp3 only
    picture_length = duration == PICTURE_SECONDS and clip.length == duration * rate
    had_mp3, had_png = os.path.exists(mp3), os.path.exists(png)

    def mp3_only(exc: Exception) -> ClipResult:
        return ClipResult(name, start, seconds, "mp3_only", f"mp3 {'kept' if had_mp3 else 'written'}, no "
                          f"spectrogram: {exc}")

    try:
        if had_mp3:  # an earlier run stopped before the PNG: draw it from the mp3 that is there
            try:
                pixels = _draw(mp3, spectrogram)
            except spectrogram.SpectrogramError as exc:
                if picture_length:
                    raise
                return mp3_only(exc)
            spectrogram.write_png(pixels, png)
            return ClipResult(name, start, seconds, "completed")
        with temporary_mp3(clip.samples, rate, mp3_dir) as tmp:
            no_picture = None
            try:
                pixels = None if had_png else _draw(tmp, spectrogram)
            except spectrogram.SpectrogramError as exc:
                if picture_length:
                    raise
                pixels, no_picture = None, exc
            try:
                publish(tmp, mp3)
            except FileExistsError:  # another run wrote it meanwhile: keep theirs, draw from it
                pixels = None if had_png or no_picture else _draw(mp3, spectrogram)
            if no_picture is not None:
                return mp3_only(no_picture)
            if pixels is not None:
                spectrogram.write_png(pixels, png)
    except FileExistsError:
        return ClipResult(name, start, seconds, "kept")
    except Exception as exc:  # noqa: BLE001 - one clip's failure is reported; the run goes on
        return failed(_reason(exc), seconds)
    return ClipResult(name, start, seconds, "completed" if had_png else "written")


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)  # audio.decode.AudioError: (path, reason)
    if reason:
        return str(reason)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def estimated_clips(paths: Iterable[str], duration: int, partial: bool = True) -> int | None:
    """How many clips the local files at `paths` should give, from their containers' durations (for a
    progress bar's total); None if any of them does not say."""
    import av

    total = 0.0
    for path in paths:
        try:
            with av.open(path, metadata_errors="ignore") as container:
                if not container.duration:
                    return None
                total += container.duration / 1_000_000
        except Exception:  # noqa: BLE001 - a bad file: the run reports it; the estimate just leaves it out
            continue
    whole = math.floor(total + 1e-6)
    return (whole // duration) if not partial else -(-whole // duration)


# ------------------------------------------------------------------------------------------- inputs

SEGMENT_SUFFIX = ".ts"
PLAYLIST_SUFFIX = ".m3u8"


def choose_files(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """(the files of a folder to read, in playing order; the ones left out). A folder of HLS segments is
    read as its `.ts` files (as the original: a live playlist beside them lists only the latest few);
    a folder without any is read as its audio files (wav, flac, mp3, ...). Order: `audio.hls.segment_order`."""
    from .decode import AUDIO_SUFFIXES
    from .hls import segment_order

    names = list(names)
    segments = [n for n in names if n.lower().endswith(SEGMENT_SUFFIX)]
    chosen = segments or [n for n in names if n.lower().endswith(AUDIO_SUFFIXES)]
    chosen_set = set(chosen)
    return segment_order(chosen), sorted(n for n in names if n not in chosen_set)


def local_inputs(path: str) -> tuple[list[Input], list[str], int]:
    """(the Inputs of a local INPUT: a folder, an .m3u8 playlist or one audio file; the names left out; the
    playlist's media sequence, else 0). Raises FileNotFoundError / hls.PlaylistError / ValueError for an INPUT
    that cannot be read at all."""
    from .hls import media_sequence, parse_playlist, resolve

    if os.path.isdir(path):
        files = [f for f in os.listdir(path) if os.path.isfile(os.path.join(path, f)) and not f.startswith(".")]
        chosen, left = choose_files(files)
        return [Input(os.path.join(path, f)) for f in chosen], left, 0
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.lower().endswith(PLAYLIST_SUFFIX):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        uris = parse_playlist(text, path)
        entries = [resolve(path, uri) for uri in uris]
        remote = [e for e in entries if "://" in e]
        if remote:
            raise ValueError(f"{path}: a local playlist with remote entries ({remote[0]}); give the remote "
                             "playlist's URL instead")
        return [Input(e) for e in entries], [], media_sequence(text)
    return [Input(path)], [], 0
