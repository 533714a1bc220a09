"""The spectrogram pipeline against the 2020 one, side by side in one run on the same clips.

    python -m bench.audio [--clips 40 --repeats 3 --out bench/results/audio.json]

The 2020 pipeline (orcaal `preprocess/util.py`: `select_spec_case(pcen=True, wavelet=True)` and
`spec_plot_and_save`) is timed in its current-library form, with the fixes a user of today's libraries has to
make and nothing else: `librosa.load(path, res_type="kaiser_best")` (resampy), the keyword call
`melspectrogram(y=..., sr=..., power=1)`, `pcen`, `denoise_wavelet(..., channel_axis=None, convert2ycbcr=False,
method="BayesShrink", mode="soft")`, and the matplotlib figure of ../shared/tools/spectrogram-reference/render.py
(imshow, axes hidden, 10 x 9.8 in, savefig at dpi 80, bbox_inches="tight", pad_inches=0). Its pictures are not
the 2020 ones (the issue says why); its time per clip is what matters here, and it is the same work.

Two measures per pipeline, seconds per clip:
- `png`: an mp3 file to a PNG file: decode + spectrogram + picture + PNG written;
- `pixels`: an mp3 file to the picture's pixels in memory (2020: the figure drawn and its RGBA bytes taken,
  `savefig(format="rgba")` with the same bounding box; ours: `audio.spectrogram.pixels_from_file`).
Ours also `batch` where `audio.spectrogram.render_batch` exists: the clips decoded, then the pixels of all of
them in one batched call (seconds per clip for decode + batched pixels).

Each pipeline first runs once on every distinct clip (numba's JIT compilation of librosa, torch's first
calls), then `--repeats` times over `--clips` clips (the 4 real clips of sample_data/orcasound_audio/
cycled); the figure is the median over repeats of the mean per clip. Both run in this one process, one after
the other, with torch's threads as the process has them (printed). Prints a table, the ratios, the CPU model
(`lscpu`), and writes the JSON to --out.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIPS_DIR = ROOT / "sample_data" / "orcasound_audio" / "mp3"


def cpu_model() -> str:
    """`lscpu`'s model name (else platform's processor)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
        for line in out.splitlines():
            if line.strip().lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


# ------------------------------------------------------------------------------------- the 2020 pipeline

class Original:
    """The orcaal 2020 calls on current librosa / scikit-image / matplotlib (the stand-in; see the module)."""

    name = "2020 (librosa + scikit-image + matplotlib)"

    def __init__(self):
        import matplotlib

        matplotlib.use("Agg")
        matplotlib.rcdefaults()
        import librosa
        import matplotlib.pyplot as plt
        from skimage.restoration import denoise_wavelet

        self.librosa, self.plt, self.denoise_wavelet = librosa, plt, denoise_wavelet

    def spectrogram(self, path):
        librosa = self.librosa
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa's audioread fallback for mp3: a deprecation warning
            data, sr = librosa.load(path, res_type="kaiser_best")
        spectrogram = librosa.feature.melspectrogram(y=data, sr=sr, power=1)
        pcen = librosa.pcen(spectrogram)
        return self.denoise_wavelet(pcen, channel_axis=None, convert2ycbcr=False, method="BayesShrink", mode="soft")

    def _figure(self, denoised):
        fig, ax = self.plt.subplots()
        ax.imshow(denoised)
        ax.get_xaxis().set_visible(False)
        ax.get_yaxis().set_visible(False)
        fig.set_size_inches(10, 9.8)
        return fig

    def png(self, path, out_png):
        fig = self._figure(self.spectrogram(path))
        fig.savefig(out_png, dpi=80, bbox_inches="tight", pad_inches=0.0)
        fig.canvas.draw()
        fig.canvas.flush_events()
        self.plt.close(fig)

    def pixels(self, path):
        import numpy as np

        fig = self._figure(self.spectrogram(path))
        buffer = io.BytesIO()
        fig.savefig(buffer, format="rgba", dpi=80, bbox_inches="tight", pad_inches=0.0)
        self.plt.close(fig)
        return np.frombuffer(buffer.getvalue(), np.uint8)  # the cropped picture's RGBA bytes, row after row


# ------------------------------------------------------------------------------------------- ours

class Ours:
    name = "ours (audio/, torch)"

    def __init__(self):
        from audio import spectrogram

        self.spectrogram = spectrogram

    def png(self, path, out_png):
        self.spectrogram.write_png(self.spectrogram.pixels_from_file(path), out_png)

    def pixels(self, path):
        return self.spectrogram.pixels_from_file(path)

    def batch(self, paths):
        render_batch = getattr(self.spectrogram, "render_batch", None)
        if render_batch is None:
            return None
        from audio.decode import decode

        decoded = [decode(p) for p in paths]
        return render_batch([d.samples for d in decoded], [d.rate for d in decoded])


# ------------------------------------------------------------------------------------------- timing

def per_clip(run, paths, repeats: int) -> dict:
    """Median over `repeats` of the mean seconds per clip of `run(path, i)` over `paths`."""
    means = []
    for _ in range(repeats):
        started = time.perf_counter()
        for i, path in enumerate(paths):
            run(path, i)
        means.append((time.perf_counter() - started) / len(paths))
    return {"seconds_per_clip": statistics.median(means), "repeats": [round(m, 6) for m in means]}


def measure(pipeline, distinct, paths, repeats: int, out_dir: Path) -> dict:
    for i, path in enumerate(distinct):  # warm-up: JIT, first calls, page cache
        pipeline.png(path, str(out_dir / f"warm-{i}.png"))
        pipeline.pixels(path)
    counter = iter(range(10**9))

    def png(path, i):
        target = out_dir / f"{next(counter)}.png"
        pipeline.png(path, str(target))

    result = {"png": per_clip(png, paths, repeats),
              "pixels": per_clip(lambda path, i: pipeline.pixels(path), paths, repeats)}
    if hasattr(pipeline, "batch") and pipeline.batch(distinct) is not None:
        means = []
        for _ in range(repeats):
            started = time.perf_counter()
            pipeline.batch(paths)
            means.append((time.perf_counter() - started) / len(paths))
        result["batch"] = {"seconds_per_clip": statistics.median(means), "repeats": [round(m, 6) for m in means]}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.audio", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=40, help="clips per repeat (the real clips cycled; default 40)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats, the median is reported (default 3)")
    parser.add_argument("--source", default=str(CLIPS_DIR), help="folder of mp3 clips (default: the sample clips)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "audio.json"), help="results JSON")
    args = parser.parse_args(argv)
    if args.clips < 1 or args.repeats < 1:
        parser.error("--clips and --repeats must be at least 1")
    distinct = sorted(str(p) for p in Path(args.source).rglob("*.mp3"))
    if not distinct:
        parser.error(f"no .mp3 under {args.source}")
    paths = [distinct[i % len(distinct)] for i in range(args.clips)]
    import torch

    cpu = cpu_model()
    print(f"{args.clips} clips ({len(distinct)} distinct, {args.source}), {args.repeats} repeats; CPU: {cpu}, "
          f"{os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}", flush=True)
    results = {"config": {"clips": args.clips, "distinct_clips": len(distinct), "repeats": args.repeats,
                          "cpu_model": cpu, "logical_cores": os.cpu_count(),
                          "torch_threads": torch.get_num_threads(), "python": platform.python_version()},
               "pipelines": {}}
    with tempfile.TemporaryDirectory(prefix="orca-bench-audio-") as tmp:
        for key, cls in (("original", Original), ("ours", Ours)):
            out_dir = Path(tmp) / key
            out_dir.mkdir()
            pipeline = cls()
            results["pipelines"][key] = {"name": cls.name, **measure(pipeline, distinct, paths, args.repeats,
                                                                      out_dir)}
            print(f"  {cls.name}: done", flush=True)
    original, ours = results["pipelines"]["original"], results["pipelines"]["ours"]
    ratios = {m: original[m]["seconds_per_clip"] / ours[m]["seconds_per_clip"] for m in ("png", "pixels")}
    if "batch" in ours:
        ratios["batch_vs_original_pixels"] = original["pixels"]["seconds_per_clip"] / ours["batch"]["seconds_per_clip"]
    results["speedup"] = {k: round(v, 2) for k, v in ratios.items()}
    print(f"\n{'seconds per clip':<40} {'2020':>10} {'ours':>10} {'ratio':>8}")
    for measure_name, label in (("png", "decode + spectrogram + PNG file"), ("pixels", "decode + spectrogram → pixels")):
        print(f"{label:<40} {original[measure_name]['seconds_per_clip']:>10.4f} "
              f"{ours[measure_name]['seconds_per_clip']:>10.4f} {ratios[measure_name]:>7.1f}x")
    if "batch" in ours:
        print(f"{'decode + batched pixels (ours)':<40} {original['pixels']['seconds_per_clip']:>10.4f} "
              f"{ours['batch']['seconds_per_clip']:>10.4f} {ratios['batch_vs_original_pixels']:>7.1f}x")
    print(f"CPU: {cpu}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
