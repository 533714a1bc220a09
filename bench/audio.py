"""The spectrogram pipeline against the 2020 one, side by side in one run on the same clips.

    python -m bench.audio [--clips 40 --repeats 3 --threads 1 --batch 8 --out bench/results/audio.json]
                          [--original-python DEST/venv/bin/python]

The 2020 pipeline (orcaal `preprocess/util.py`: `select_spec_case(pcen=True, wavelet=True)` and
`spec_plot_and_save`) runs as the same library calls in one of two environments:
- `--original-python`: the 2020 libraries themselves, the interpreter of the environment that
  ../shared/tools/spectrogram-reference/setup.sh DEST builds (librosa 0.6.3, resampy 0.2.2, matplotlib
  3.2.2, ...; audioread decoding through DEST/bin/ffmpeg, the wrapper that picks FFmpeg's fixed-point mp3
  decoder, put first on PATH): the pipeline that drew the 2020 PNGs, pixel for pixel;
- otherwise (the stand-in), current libraries, with the fixes a user of today's libraries has to make and
  nothing else: `librosa.load(path, res_type="kaiser_best")` (resampy), the keyword call
`melspectrogram(y=..., sr=..., power=1)`, `pcen`, `denoise_wavelet(..., channel_axis=None, convert2ycbcr=False,
method="BayesShrink", mode="soft")`, and the matplotlib figure of ../shared/tools/spectrogram-reference/render.py
(imshow, axes hidden, 10 x 9.8 in, savefig at dpi 80, bbox_inches="tight", pad_inches=0). The stand-in's pictures are
not the 2020 ones (the issue says why) and it is faster than the 2020 environment (current librosa decodes
mp3 in-process with libsndfile where 2020's ran the ffmpeg program; newer numpy, matplotlib): the results
name the libraries each ran with.

Two measures per pipeline, seconds per clip:
- `png`: an mp3 file to a PNG file: decode + spectrogram + picture + PNG written;
- `pixels`: an mp3 file to the picture's pixels in memory (2020: the figure drawn and its RGBA bytes taken,
  `savefig(format="rgba")` with the same bounding box; ours: `audio.spectrogram.pixels_from_file`).
Ours also `batch`: `--batch` clips decoded, then their pixels in one `audio.spectrogram.render_batch` call
(seconds per clip for decode + batched pixels), and `files`: what `orca spectrogram` does with a folder, all
the block's clips through `audio.spectrogram.pixels_from_files` (16 clips a batch on each of the machine's
cores) and `write_png`, wall seconds per clip (CPU seconds of all its threads per clip beside it). The 2020
pipeline draws one clip at a time on one core; `files` uses every core.

Each pipeline runs in its own process (the two sets of libraries do not share one well: OpenBLAS threads
that busy-wait after the 2020 pipeline's numpy calls took the cores from torch's threads, which made ours
5-10x slower than in a process of its own), in blocks: `--repeats` times each, the order alternating
(2020, ours, ours, 2020, ...), over the same `--clips` clips (the 4 real clips of sample_data/orcasound_audio/
cycled), so that both see, as far as a shared machine allows, the same load. Each block first runs once on
every distinct clip (numba's JIT compilation of librosa, torch's first calls), untimed. Figures: the median
over all clips of all blocks, wall time, and CPU time (the process's and its children's: `cpu_seconds`). `--threads` (default 1) sets the
threads of both pipelines' libraries (torch, OpenMP, OpenBLAS, MKL, numba): per clip on one core, which is
also how a 2-core machine is best used (one clip per core; measured on this project's shared 2-core
machines, torch with 2 threads took 1.3-3.5 s a clip under load against 0.16 s with 1, its threads waiting
for each other). Prints a table, the ratios, the CPU model (`lscpu`), and writes the JSON to --out.
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
    """`lscpu`'s model name, with its family and model numbers (a virtual machine's model name may be as
    short as "AMD EPYC"); else platform's processor."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown"
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
    name = fields.get("model name") or platform.processor() or "unknown"
    if fields.get("cpu family") and fields.get("model"):
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


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
        import skimage

        self.name = (f"2020 calls (librosa {librosa.__version__}, scikit-image {skimage.__version__}, "
                     f"matplotlib {matplotlib.__version__})")

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
        self.spectrogram.spectrogram_png(path, out_png)  # what `orca spectrogram` does per clip

    def pixels(self, path):
        return self.spectrogram.pixels_from_file(path)

    def batch(self, paths):
        render_batch = getattr(self.spectrogram, "render_batch", None)
        if render_batch is None:
            return None
        from audio.decode import decode

        import numpy as np
        import torch

        decoded = [decode(p) for p in paths]
        rates = {d.rate for d in decoded}
        if len(rates) != 1 or len({d.samples.shape for d in decoded}) != 1:
            return None  # one batch takes clips of one rate and length
        return render_batch(torch.from_numpy(np.stack([d.samples for d in decoded])), rates.pop())

    def files(self, paths, out_dir: Path) -> None:
        """`orca spectrogram`'s work: every clip's PNG, batches drawn on every core (`pixels_from_files`)."""
        import itertools

        numbers = itertools.count()  # the clips repeat: a file name per picture (next() is atomic)
        for _, written in self.spectrogram.pixels_from_files(
                paths, then=lambda path, pixels: self.spectrogram.write_png(pixels, out_dir / f"{next(numbers)}.png")):
            if isinstance(written, Exception):
                raise written


# ------------------------------------------------------------------------------------------- timing

def cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and of its finished children: the 2020 pipeline decodes
    in an ffmpeg process (audioread), which is part of its work."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(call) -> tuple[float, float]:
    """(wall seconds, CPU seconds: `cpu_seconds`) of call()."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    call()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def summarize(walls: list[float], cpus: list[float]) -> dict:
    return {"seconds_per_clip": statistics.median(walls), "mean_seconds_per_clip": statistics.fmean(walls),
            "cpu_seconds_per_clip": statistics.median(cpus), "samples": len(walls)}


PIPELINES = {"original": Original, "ours": Ours}


def run_block(kind: str, distinct: list[str], paths: list[str], out_dir: Path, batch: int) -> dict:
    """One pipeline over `paths`, in this process: warm-up on the distinct clips first, then per clip the PNG
    and the in-memory pixels; the batch (ours) last. Lists of (wall, cpu) seconds per clip."""
    pipeline = PIPELINES[kind]()
    for i, path in enumerate(distinct):  # warm-up: JIT, first calls, page cache
        pipeline.png(path, str(out_dir / f"warm-{i}.png"))
        pipeline.pixels(path)
    times = {"png": [], "pixels": [], "batch": []}
    for i, path in enumerate(paths):
        target = str(out_dir / f"{i}.png")
        times["png"].append(timed(lambda: pipeline.png(path, target)))
        times["pixels"].append(timed(lambda: pipeline.pixels(path)))
        os.unlink(target)
    if kind == "ours" and pipeline.batch(distinct[:1] * batch) is not None:  # also the warm-up of the batch
        for start in range(0, len(paths) - batch + 1, batch):
            part = paths[start:start + batch]
            wall, cpu = timed(lambda: pipeline.batch(part))
            times["batch"].append((wall / batch, cpu / batch))
    if kind == "ours":
        files_dir = out_dir / "files"
        files_dir.mkdir()
        wall, cpu = timed(lambda: pipeline.files(paths, files_dir))
        times["files"] = [(wall / len(paths), cpu / len(paths))]
    return {"name": pipeline.name, "times": {k: v for k, v in times.items() if v}}


def draw(out_dir: Path, clips: list[str]) -> dict:
    """The 2020 preprocessing's PNGs in this process (`--draw OUT_DIR CLIP...`, which bench.reference runs
    with the 2020 environment's interpreter): OUT_DIR/<stem>.png per clip, the first clip drawn once untimed
    before (numba's JIT), as `bench.reference --preprocess` does in its own process."""
    original = Original()
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    original.png(clips[0], str(out_dir / ".warm-up.png"))
    os.unlink(out_dir / ".warm-up.png")
    t1 = time.perf_counter()
    for clip in clips:
        original.png(clip, str(out_dir / (Path(clip).stem + ".png")))
    return {"warmup_s": t1 - t0, "spectrograms_s": time.perf_counter() - t1, "name": original.name}


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def original_environment(python: str) -> dict:
    """Environment variables for a worker run by the 2020 environment's interpreter (`--original-python`):
    its DEST/bin, where setup.sh puts the ffmpeg wrapper audioread must find, first on PATH."""
    dest = Path(os.path.abspath(python)).parent.parent.parent  # DEST/venv/bin/python -> DEST (a venv: no resolve)
    wrapper = dest / "bin" / "ffmpeg"
    if not os.access(wrapper, os.X_OK):
        raise SystemExit(f"bench.audio: --original-python {python}: no ffmpeg wrapper at {wrapper} (the interpreter "
                         f"of ../shared/tools/spectrogram-reference/setup.sh DEST is DEST/venv/bin/python)")
    return {"PATH": f"{dest / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", "SPECREF_DEST": str(dest)}


def measure(distinct: list[str], paths: list[str], repeats: int, source: str, threads: int, batch: int,
            original_python: str | None = None) -> dict:
    """Each pipeline in its own process, one block after the other, `repeats` times, the order alternating
    (original, ours, ours, original, ...): the same clips and, as far as a shared machine allows, the same
    load. Separate processes because the libraries of the two do not share a process well: OpenBLAS threads
    that busy-wait after the 2020 pipeline's numpy calls steal the cores from torch's threads (measured: ours
    took 5-10x longer right after the 2020 calls in one process than in its own)."""
    collected = {kind: {} for kind in PIPELINES}
    names = {}
    for repeat in range(repeats):
        order = list(PIPELINES) if repeat % 2 == 0 else list(reversed(list(PIPELINES)))
        for kind in order:
            env = {**os.environ, "PYTHONPATH": str(ROOT), **{v: str(threads) for v in THREAD_VARIABLES}}
            python = sys.executable
            if kind == "original" and original_python:
                python = original_python
                env.update(original_environment(original_python))
            done = subprocess.run([python, "-m", "bench.audio", "--worker", kind, "--clips", str(len(paths)),
                                   "--source", source, "--threads", str(threads), "--batch", str(batch)],
                                  capture_output=True, text=True,
                                  cwd=ROOT, timeout=3600, env=env)
            if done.returncode != 0:
                raise SystemExit(f"bench.audio: the {kind} block failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
            block = json.loads(done.stdout.strip().splitlines()[-1])
            names[kind] = block["name"]
            for measure_name, pairs in block["times"].items():
                collected[kind].setdefault(measure_name, []).extend(pairs)
            print(f"  repeat {repeat + 1}/{repeats}: {names[kind]}: done", flush=True)
    results = {}
    for kind, measures in collected.items():
        results[kind] = {"name": names[kind]}
        for measure_name, pairs in measures.items():
            results[kind][measure_name] = summarize([w for w, _ in pairs], [c for _, c in pairs])
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.audio", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=40, help="clips per repeat (the real clips cycled; default 40)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats, the median is reported (default 3)")
    parser.add_argument("--source", default=str(CLIPS_DIR), help="folder of mp3 clips (default: the sample clips)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "audio.json"), help="results JSON")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads of each pipeline's libraries: torch, OpenMP, OpenBLAS, MKL, numba (default 1: "
                        "per clip on one core; more threads on a shared machine mostly wait for each other)")
    parser.add_argument("--batch", type=int, default=8, help="clips per render_batch call (ours; default 8)")
    parser.add_argument("--original-python", metavar="PYTHON",
                        help="run the 2020 pipeline with this interpreter: DEST/venv/bin/python of "
                        "../shared/tools/spectrogram-reference/setup.sh DEST (default: the current-library stand-in)")
    parser.add_argument("--worker", choices=sorted(PIPELINES), help=argparse.SUPPRESS)  # one block, JSON on stdout
    parser.add_argument("--draw", nargs="+", metavar=("OUT_DIR", "CLIP"), help=argparse.SUPPRESS)  # see draw()
    args = parser.parse_args(argv)
    if args.draw:
        print(json.dumps(draw(Path(args.draw[0]), args.draw[1:])))
        return 0
    if min(args.clips, args.repeats, args.threads, args.batch) < 1:
        parser.error("--clips, --repeats, --threads and --batch must be at least 1")
    distinct = sorted(str(p) for p in Path(args.source).rglob("*.mp3"))
    if not distinct:
        parser.error(f"no .mp3 under {args.source}")
    paths = [distinct[i % len(distinct)] for i in range(args.clips)]
    if args.worker:
        if args.worker == "ours":  # (the 2020 environment has no torch)
            import torch

            torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory(prefix="orca-bench-audio-") as tmp:
            print(json.dumps(run_block(args.worker, distinct, paths, Path(tmp), min(args.batch, len(paths)))))
        return 0
    import torch

    cpu = cpu_model()
    print(f"{args.clips} clips ({len(distinct)} distinct, {args.source}), {args.repeats} repeats; CPU: {cpu}, "
          f"{os.cpu_count()} logical cores; {args.threads} thread(s) per pipeline", flush=True)
    results = {"config": {"clips": args.clips, "distinct_clips": len(distinct), "repeats": args.repeats,
                          "cpu_model": cpu, "logical_cores": os.cpu_count(),
                          "threads": args.threads, "batch": min(args.batch, args.clips),
                          "torch_version": torch.__version__,
                          "python": platform.python_version()},
               "pipelines": {}}
    results["config"]["original_python"] = args.original_python
    results["pipelines"] = measure(distinct, paths, args.repeats, args.source, args.threads, args.batch,
                                   args.original_python)
    original, ours = results["pipelines"]["original"], results["pipelines"]["ours"]
    ratios = {m: original[m]["seconds_per_clip"] / ours[m]["seconds_per_clip"] for m in ("png", "pixels")}
    if "batch" in ours:
        ratios["batch_vs_original_pixels"] = original["pixels"]["seconds_per_clip"] / ours["batch"]["seconds_per_clip"]
    if "files" in ours:
        ratios["files_vs_original_png"] = original["png"]["seconds_per_clip"] / ours["files"]["seconds_per_clip"]
    for m in ("png", "pixels"):  # CPU seconds: less at the mercy of the other processes of a shared machine
        ratios[f"cpu_{m}"] = original[m]["cpu_seconds_per_clip"] / ours[m]["cpu_seconds_per_clip"]
    results["speedup"] = {k: round(v, 2) for k, v in ratios.items()}
    print(f"\n{'seconds per clip (median; CPU s in brackets)':<46} {'2020':>16} {'ours':>16} {'ratio':>7}")

    def cell(m):
        return f"{m['seconds_per_clip']:.4f} ({m['cpu_seconds_per_clip']:.3f})"

    for measure_name, label in (("png", "decode + spectrogram + PNG file"),
                                ("pixels", "decode + spectrogram → pixels")):
        print(f"{label:<46} {cell(original[measure_name]):>16} {cell(ours[measure_name]):>16} "
              f"{ratios[measure_name]:>6.1f}x")
    if "batch" in ours:
        label = f"decode + batched pixels (ours, {min(args.batch, args.clips)} a batch)"
        print(f"{label:<46} {cell(original['pixels']):>16} {cell(ours['batch']):>16} "
              f"{ratios['batch_vs_original_pixels']:>6.1f}x")
    if "files" in ours:
        label = f"PNGs of a folder, {os.cpu_count()} cores (orca spectrogram)"
        print(f"{label:<46} {cell(original['png']):>16} {cell(ours['files']):>16} "
              f"{ratios['files_vs_original_png']:>6.1f}x")
    print(f"ratio of CPU seconds: PNG {ratios['cpu_png']:.1f}x, pixels {ratios['cpu_pixels']:.1f}x")
    print(f"2020 side: {original['name']}")
    print(f"CPU: {cpu}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
