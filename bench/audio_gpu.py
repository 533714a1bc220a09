"""The spectrogram renderer on a device: what its pixels are, and how fast it draws them.

    python -m bench.audio_gpu [--device cuda] [--batch 256] [--clips 8192] [--out bench/results-cuda/audio_gpu.json]

Run by `bench/gpu_check.sh` (step `audio`); it runs on the CPU too (`--device cpu`, small sizes: what the
test does). Three measures, on the 4 real clips of sample_data/orcasound_audio (3 s, 48 kHz stereo mp3):

1. parity: the clips drawn together by `audio.spectrogram.render_batch` on the device, against their 2020
   PNGs and against the CPU's pixels (pixels that differ, per clip), and every stage's largest difference
   from the CPU (`stages`; the resampled samples are expected equal bit for bit: gathers, exact products
   and separate additions; the FFT, matrix products, exp/log and reductions may differ in the last bits).
2. samples_to_pixels: decoded samples (the 4 clips cycled) rendered in batches of `--batch` on the device,
   clips per second over `--clips` clips after one warm-up batch (issue 22's goal on a GPU: >= 20,000/s).
3. mp3_to_input: files to model input as /predict makes it: `scoring.stream.stream_batches` with
   `scoring.clips.ClipDecoder(device)` (decoding on the CPU threads, one thread per core, each batch drawn
   on the device), 607 x 617, clips per second over `--clips` paths. Scoring is not in it: the whole
   /predict from mp3 is `bench.run --audio-clips N` with ORCA_DEVICE set (issue 23's goal: >= 5,000/s).

Prints one line per measure and writes the JSON to --out, with the device's and the CPU's names.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch  # noqa: F401  (first: the device, before anything else)
import numpy as np
from PIL import Image

from .audio import cpu_model
from .dataset import sample_clips

ROOT = Path(__file__).resolve().parent.parent
AUDIO_DIR = ROOT / "sample_data" / "orcasound_audio"
ROWS, COLS = 607, 617


def _png_of(mp3: Path) -> Path:
    return AUDIO_DIR / "png" / mp3.parent.name / (mp3.stem + ".png")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decoded_samples(paths: list[Path]) -> tuple[torch.Tensor, int]:
    """(clips, channels, samples) float32 of the files (one rate, one length), and the rate."""
    from audio.decode import decode

    decoded = [decode(p) for p in paths]
    rates = {d.rate for d in decoded}
    if len(rates) != 1:
        raise SystemExit(f"the sample clips have several rates: {sorted(rates)}")
    return torch.from_numpy(np.stack([d.samples for d in decoded])), rates.pop()


def parity(device: torch.device) -> dict:
    from audio.spectrogram import stages

    clips = sample_clips()
    x, rate = decoded_samples(clips)
    on_device = stages(x, rate, device=device)
    on_cpu = stages(x, rate)
    png = [np.asarray(Image.open(_png_of(c)).convert("RGBA")) for c in clips]
    pixels = on_device["pixels"].cpu().numpy()
    cpu_pixels = on_cpu["pixels"].numpy()
    result = {
        "clips": [c.name for c in clips],
        "pixels_differing_from_2020_png": [int((p != q).any(-1).sum()) for p, q in zip(pixels, png)],
        "pixels_differing_from_cpu": [int((p != q).any(-1).sum()) for p, q in zip(pixels, cpu_pixels)],
        "pixels_per_clip": int(pixels.shape[1] * pixels.shape[2]),
        "resampled_equal_to_cpu": bool(torch.equal(on_device["resampled"].cpu(), on_cpu["resampled"])),
        "max_abs_diff_from_cpu": {},
    }
    for name, value in on_cpu.items():
        other = on_device[name].cpu()
        if value.dtype.is_floating_point:
            result["max_abs_diff_from_cpu"][name] = float((other.double() - value.double()).abs().max())
        else:
            result["max_abs_diff_from_cpu"][name] = int((other.long() - value.long()).abs().max())
    return result


def samples_to_pixels(device: torch.device, batch: int, clips: int) -> dict:
    from audio.spectrogram import render_batch

    x, rate = decoded_samples(sample_clips())
    x = x.repeat((batch + len(x) - 1) // len(x), 1, 1)[:batch].to(device)
    render_batch(x, rate)  # warm-up: kernels, the resampler's tables on the device
    _synchronize(device)
    batches = max(1, clips // batch)
    start = time.perf_counter()
    for _ in range(batches):
        render_batch(x, rate)
    _synchronize(device)
    seconds = time.perf_counter() - start
    return {"batch": batch, "clips": batches * batch, "seconds": seconds, "clips_per_second": batches * batch / seconds}


def mp3_to_input(device: torch.device, batch: int, clips: int) -> dict:
    from scoring.clips import ClipDecoder
    from scoring.stream import stream_batches

    paths = [str(p) for p in sample_clips()]
    decode = ClipDecoder(device=device if device.type != "cpu" else None)
    items = [paths[i % len(paths)] for i in range(clips)]
    for warm in stream_batches(items[:batch], None, ROWS, COLS, batch, decode=decode):
        pass
    _synchronize(device)
    start, done = time.perf_counter(), 0
    for part in stream_batches(items, None, ROWS, COLS, batch, decode=decode):
        done += len(part.items)
    _synchronize(device)
    seconds = time.perf_counter() - start
    return {"batch": batch, "clips": done, "seconds": seconds, "clips_per_second": done / seconds,
            "decode_threads": os.cpu_count()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256, help="clips per render_batch call (default 256)")
    parser.add_argument("--clips", type=int, default=8192, help="clips timed per measure (default 8192)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results-cuda" / "audio_gpu.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"device": str(device), "device_name": name, "cpu": cpu_model(), "torch": torch.__version__}
    result["parity"] = parity(device)
    p = result["parity"]
    print(f"parity on {name}: pixels differing from the 2020 PNGs {p['pixels_differing_from_2020_png']}, "
          f"from the CPU {p['pixels_differing_from_cpu']} (of {p['pixels_per_clip']} a clip); resampled samples "
          f"{'equal to' if p['resampled_equal_to_cpu'] else 'NOT equal to'} the CPU's", flush=True)
    result["samples_to_pixels"] = s = samples_to_pixels(device, args.batch, args.clips)
    print(f"samples to pixels, batches of {s['batch']}: {s['clips_per_second']:.0f} clips/s "
          f"({s['clips']} clips in {s['seconds']:.2f} s)", flush=True)
    result["mp3_to_input"] = m = mp3_to_input(device, args.batch, args.clips)
    print(f"mp3 to model input (decode on {m['decode_threads']} CPU threads, drawn on {device.type}): "
          f"{m['clips_per_second']:.0f} clips/s ({m['clips']} clips in {m['seconds']:.2f} s)", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"CPU: {result['cpu']}; wrote {out}")
    return result


if __name__ == "__main__":
    main()
