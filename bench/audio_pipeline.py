"""Seconds per clip of audio/'s 2020 spectrogram on this machine (no reference pipeline here: the
side-by-side benchmark calls `time_ours`).

    .venv/bin/python -m bench.audio_pipeline [CLIP ...] [--repeat N] [--threads T] [--batch B]

Default clips: sample_data/orcasound_audio/mp3/*/*.mp3. Prints JSON: the CPU model, torch threads and,
per clip (the median over `repeat` passes after one warm-up pass that builds the resampling plan):
  decode_png:     decode + spectrogram + PNG written (audio.spectrogram.spectrogram_png)
  decode_pixels:  decode + spectrogram to pixels in memory (pixels_from_file)
  decode:         decode alone
  batch_pixels:   decoded samples -> pixels, render_batch on `batch` clips at once, per clip
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _per_clip(fn, paths, repeat: int) -> float:
    passes = []
    for _ in range(repeat):
        t = time.perf_counter()
        for i, p in enumerate(paths):
            fn(i, p)
        passes.append((time.perf_counter() - t) / len(paths))
    return statistics.median(passes)


def time_ours(paths, *, repeat: int = 3, batch: int = 8, threads: int | None = 1, device=None) -> dict:
    """Seconds per clip of decode + spectrogram + PNG, decode + spectrogram to pixels, decode alone, and
    batched samples -> pixels, for the audio files `paths` (equal-length clips for the batch figure)."""
    import numpy as np
    import torch

    from audio.decode import decode
    from audio.spectrogram import pixels_from_file, render_batch, spectrogram_png

    if threads:
        torch.set_num_threads(threads)
    paths = [Path(p) for p in paths]
    pixels_from_file(paths[0])  # warm-up: the resampling plan and the tables
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(10 ** 9))
        png = _per_clip(lambda i, p: spectrogram_png(p, Path(tmp) / f"{next(counter)}.png"), paths, repeat)
    pixels = _per_clip(lambda i, p: pixels_from_file(p), paths, repeat)
    dec = _per_clip(lambda i, p: decode(p), paths, repeat)
    decoded = [decode(p) for p in paths]
    same = [d for d in decoded if d.samples.shape == decoded[0].samples.shape and d.rate == decoded[0].rate]
    stack = np.stack([same[i % len(same)].samples for i in range(batch)])
    x = torch.from_numpy(stack).to(device or "cpu")
    render_batch(x, same[0].rate)
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = render_batch(x, same[0].rate)
        if out.is_cuda:
            torch.cuda.synchronize()
        runs.append((time.perf_counter() - t) / batch)
    return {"cpu": cpu_model(), "torch_threads": torch.get_num_threads(), "clips": len(paths),
            "device": str(x.device), "seconds_per_clip": {"decode_png": png, "decode_pixels": pixels, "decode": dec,
                                                           "batch_pixels": statistics.median(runs)},
            "batch": batch, "repeat": repeat}


def main(argv=None) -> int:
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("clips", nargs="*")
    a.add_argument("--repeat", type=int, default=3)
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--batch", type=int, default=8)
    a.add_argument("--device")
    args = a.parse_args(argv)
    clips = args.clips or sorted(str(p) for p in (REPO / "sample_data" / "orcasound_audio").glob("mp3/*/*.mp3"))
    print(json.dumps(time_ours(clips, repeat=args.repeat, batch=args.batch, threads=args.threads,
                               device=args.device), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
