"""Decoding audio files to samples with FFmpeg's libraries (PyAV), no ffmpeg program.

mp3 goes through FFmpeg's fixed-point `mp3` decoder (not PyAV's default `mp3float`), fed the
container's packets, to 16-bit samples scaled by 1/32768: the samples audioread gave librosa in 2020
(`ffmpeg -c:a mp3 -i FILE -f s16le -`), which the original spectrograms need bit for bit (a float
decoder changes 2-3 % of the cells). Everything else (AAC in MPEG-TS, wav, flac, ogg, ...) uses the
stream's own decoder; integer samples are scaled by 1/2^(bits-1), float samples are kept.

`decode(path)` returns a `Decoded` with `samples` float32 of shape (channels, n) and `rate`; any
failure (missing, empty, not audio, corrupt or truncated, no samples) is an `AudioError` naming the
file and the reason.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = ["AudioError", "Decoded", "decode", "AUDIO_SUFFIXES"]

# What `orca spectrogram DIR` (and `orca preprocess`) treat as audio when they walk a folder.
AUDIO_SUFFIXES = (".mp3", ".wav", ".flac", ".ts", ".aac", ".m4a", ".ogg", ".opus", ".aif", ".aiff")

# FFmpeg's decoders whose output is the fixed-point mp3 stream: a stream any of these would decode is
# decoded by "mp3" (the fixed-point one) instead.
_MP3_DECODERS = {"mp3", "mp3float"}

# Integer sample formats: scale to [-1, 1) as audioread/librosa did (16 bit: 1/32768).
# Containers whose header states the length (mp3's Xing/Info frame, flac's STREAMINFO, wav's data
# chunk): decoding much less than that means the file was cut short. Elsewhere (MPEG-TS, ogg, ...) FFmpeg
# estimates the duration from what is there, so a cut cannot be seen.
_DECLARED_LENGTH = {"mp3", "flac", "wav", "aiff"}
_TRUNCATION_SLACK = 2048  # samples: more than one mp3/AAC frame of rounding in a declared length

_INT_SCALE = {"s16": 1.0 / 32768.0, "s32": 1.0 / 2147483648.0, "s64": 1.0 / 9223372036854775808.0}


class AudioError(ValueError):
    """A file that gives no usable audio: missing, empty, not audio, corrupt, truncated, silent of samples.

    `str(error)` is "<file>: <reason>"; `.path` and `.reason` hold the two parts."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class Decoded:
    """Samples of one audio stream.

    samples: float32, shape (channels, n), in [-1, 1] for integer sources (k / 2^(bits-1)).
    rate: samples per second. decoder: FFmpeg decoder used ("mp3" is the fixed-point one).
    sample_format: the decoder's sample format ("s16p", "fltp", ...). container: FFmpeg's demuxer name.
    skipped: packets a lenient decode (`strict=False`) dropped as undecodable, with their reasons."""

    samples: np.ndarray
    rate: int
    path: str
    decoder: str
    sample_format: str
    container: str
    skipped: tuple[str, ...] = field(default=())

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def frames(self) -> int:
        """Samples per channel."""
        return int(self.samples.shape[1])

    @property
    def duration(self) -> float:
        return self.frames / self.rate


def _frame_array(frame, channels: int) -> np.ndarray:
    """One decoded frame's samples as the decoder gave them, (channels, n)."""
    a = frame.to_ndarray()
    if not frame.format.is_planar:  # packed: (1, n * channels), interleaved
        a = a.reshape(-1, channels).T
    return a


def _to_float(a: np.ndarray, format_name: str) -> np.ndarray:
    """Samples in the decoder's format as float32: integers scaled to [-1, 1), floats kept."""
    base = format_name.rstrip("p")
    if base == "s16":  # int16 -> float32 is exact, and so is the scaling by 2^-15: the float64 route's values
        out = a.astype(np.float32)
        out *= np.float32(_INT_SCALE["s16"])
        return out
    if base in _INT_SCALE:
        # int16/int32 / 2^(bits-1): exact in float64, then rounded once to float32 (exact for 16 bit)
        return (a.astype(np.float64) * _INT_SCALE[base]).astype(np.float32)
    if base == "u8":
        return ((a.astype(np.float64) - 128.0) / 128.0).astype(np.float32)
    if base in ("flt", "dbl"):
        return a.astype(np.float32)
    raise ValueError(f"unsupported sample format {format_name}")


def _declared_frames(container, stream, rate: int) -> int | None:
    """Samples per channel the header of a _DECLARED_LENGTH container states, else None."""
    if container.format.name not in _DECLARED_LENGTH or not stream.duration or stream.time_base is None:
        return None
    return int(stream.duration * stream.time_base * rate)


def _open(source, name: str):
    import av

    try:
        return av.open(source, mode="r")
    except av.error.FileNotFoundError:
        raise AudioError(name, "no such file") from None
    except (av.error.InvalidDataError, av.error.FFmpegError, UnicodeDecodeError) as e:
        raise AudioError(name, f"not an audio file FFmpeg can read ({_reason(e)})") from None


def _reason(e: Exception) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return str(text).strip() or type(e).__name__


def decode(source: str | os.PathLike | BinaryIO | bytes, *, name: str | None = None,
           strict: bool = True) -> Decoded:
    """Decode the first audio stream of `source` (a path, a binary file object or bytes) to samples.

    mp3 uses FFmpeg's fixed-point decoder. `name` is the file's name in messages (default: the path).
    strict (the default): a packet the decoder rejects raises AudioError ("corrupt or truncated ...");
    `strict=False` drops such packets as the ffmpeg program does, listing them in `Decoded.skipped`.
    Raises AudioError for a missing, empty or non-audio file, a sample rate or channel count that
    changes inside the stream, and a stream without samples."""
    import av

    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        name = name or path
        p = Path(path)
        if p.is_dir():
            raise AudioError(name, "is a folder, not an audio file")
        if not p.exists():
            raise AudioError(name, "no such file")
        if p.stat().st_size == 0:
            raise AudioError(name, "empty file (0 bytes)")
    else:
        name = name or getattr(source, "name", None) or "<stream>"

    container = _open(source, name)
    try:
        if not container.streams.audio:
            kinds = sorted({s.type for s in container.streams})
            what = f"only {', '.join(kinds)} streams" if kinds else "no streams"
            raise AudioError(name, f"no audio stream ({container.format.name}: {what})")
        stream = container.streams.audio[0]
        default = stream.codec_context.name
        if default in _MP3_DECODERS:
            codec = av.CodecContext.create("mp3", "r")
        else:
            codec = stream.codec_context
        chunks: list[np.ndarray] = []  # the frames' samples in the decoder's format
        formats: list[str] = []  # each frame's sample format
        skipped: list[str] = []
        rate = channels = None
        sample_format = ""

        def take(frames):
            nonlocal rate, channels, sample_format
            for frame in frames:
                if frame.samples == 0:
                    continue
                n_ch = len(frame.layout.channels)
                if rate is None:
                    rate, channels, sample_format = int(frame.sample_rate), n_ch, frame.format.name
                elif frame.sample_rate != rate or n_ch != channels:
                    raise AudioError(name, f"the stream changes from {rate} Hz x {channels} channels to "
                                           f"{frame.sample_rate} Hz x {n_ch} at sample {sum(c.shape[1] for c in chunks)}")
                chunks.append(_frame_array(frame, channels))
                formats.append(frame.format.name)

        def where(packet) -> str:
            if packet.pts is not None and packet.time_base is not None:
                return f"packet at {float(packet.pts * packet.time_base):.3f} s"
            return f"packet {packet_index}"

        packet_index = 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the demuxer's end-of-stream marker: flushed below
                    continue
                try:
                    take(codec.decode(packet))
                except av.error.FFmpegError as e:
                    if strict:
                        raise AudioError(name, f"corrupt or truncated audio: {where(packet)} does not decode "
                                               f"({_reason(e)})") from None
                    skipped.append(f"{where(packet)}: {_reason(e)}")
                packet_index += 1
        except av.error.FFmpegError as e:  # demuxing itself failed (cut inside a header, garbage)
            if strict or not chunks:
                raise AudioError(name, f"corrupt or truncated file after {packet_index} packets ({_reason(e)})") from None
            skipped.append(f"demuxing stopped after {packet_index} packets: {_reason(e)}")
        try:
            take(codec.decode(None))
        except av.error.EOFError:
            pass
        except av.error.FFmpegError as e:
            if strict:
                raise AudioError(name, f"corrupt or truncated audio at the end ({_reason(e)})") from None
            skipped.append(f"flush: {_reason(e)}")
        if not chunks:
            raise AudioError(name, f"no audio samples ({packet_index} packets, decoder {codec.name})")
        # one conversion per run of frames in one sample format (in practice: the whole stream)
        runs, start = [], 0
        for i in range(1, len(chunks) + 1):
            if i == len(chunks) or formats[i] != formats[start]:
                run = chunks[start:i]
                runs.append(_to_float(np.concatenate(run, axis=1) if len(run) > 1 else run[0], formats[start]))
                start = i
        samples = np.concatenate(runs, axis=1) if len(runs) > 1 else runs[0]
        declared = _declared_frames(container, stream, rate)
        if declared is not None and samples.shape[1] < declared - _TRUNCATION_SLACK:
            reason = (f"truncated: {samples.shape[1] / rate:.3f} s of audio where the header declares "
                      f"{declared / rate:.3f} s")
            if strict:
                raise AudioError(name, reason)
            skipped.append(reason)
        return Decoded(samples=np.ascontiguousarray(samples), rate=rate, path=name, decoder=codec.name,
                       sample_format=sample_format, container=container.format.name, skipped=tuple(skipped))
    finally:
        container.close()
