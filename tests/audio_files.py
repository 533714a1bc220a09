"""Audio files the audio tests make from the real HLS segment of sample_data/orcasound_audio/, and wav files."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

import repo_data

SEGMENT = repo_data.AUDIO_DIR / "hls" / "live000.ts"  # real: AAC in MPEG-TS, 48 kHz mono, 459 frames (9.792 s)


def split_segment(src: Path, names: list[str], dest: Path, keep=None) -> list[Path]:
    """The real segment's AAC packets remuxed (not re-encoded) into len(names) consecutive MPEG-TS files,
    timestamps kept, as an HLS segmenter cuts one stream. `keep`: indices of the parts to write."""
    dest.mkdir(parents=True, exist_ok=True)
    with av.open(str(src)) as inp:
        stream = inp.streams.audio[0]
        packets = [p for p in inp.demux(stream) if p.size]
        bounds = np.linspace(0, len(packets), len(names) + 1).astype(int)
        paths = []
        for i, name in enumerate(names):
            if keep is not None and i not in keep:
                continue
            path = dest / name
            with av.open(str(path), "w", format="mpegts", options={"mpegts_copyts": "1"}) as out:
                o = out.add_stream_from_template(stream)
                for packet in packets[bounds[i]:bounds[i + 1]]:
                    packet.stream = o
                    out.mux(packet)
            paths.append(path)
    return paths


def encode(path: Path, fmt: str, codec: str, samples: np.ndarray, rate: int, sample_format: str) -> Path:
    """Write `samples` (channels, n) with PyAV's encoder `codec` into container `fmt`."""
    layout = {1: "mono", 2: "stereo", 6: "5.1"}[samples.shape[0]]
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.T.reshape(1, -1)),
                                           format=sample_format, layout=layout)
        frame.sample_rate = rate
        frame.pts = 0
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """float32 (channels, n) as a 16-bit wav, through PyAV."""
    pcm = np.round(np.clip(samples, -1, 32767 / 32768) * 32768).astype(np.int16)
    return encode(path, "wav", "pcm_s16le", pcm, rate, "s16")


def write_video_only_ts(path: Path) -> Path:
    """An MPEG-TS file with one short video stream and no audio (mpeg1video, 10 black frames)."""
    with av.open(str(path), "w", format="mpegts") as out:
        stream = out.add_stream("mpeg1video", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path
