"""Throughput of `orca score` (batch_scoring on Ray Data): images per second with 1 and 2 scoring
workers on a local Ray, beside /predict's own scorer in one process on the same files.

    python -m bench.score_throughput [--images 160 --rows 607 --cols 617 --workers 1 2]

The archive is the benchmark's dataset (`bench.dataset`: perturbed copies of the bundled 640x480
spectrograms) in a local folder, the model a fresh srkw_cnn .h5 at rows x cols (the size of the
real one). One local Ray with as many CPUs as the machine serves every worker count; each count
scores the whole archive into a fresh output folder. `images_per_second` is the scoring phase's
(Ray Data's execution: the actors' start-up, reading, decoding, scoring and writing the parts);
`warm_images_per_second` counts from the moment the first actor began its first batch (after the
start-up of Ray's worker processes and the model's load);
`end_to_end` adds the model check, the plan and the listing. The reference row is
`scoring.scorer.score_files` with ONNX Runtime (/predict's CPU path, no HTTP, all cores).
Writes bench/results/score_throughput.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .dataset import make_dataset

RESULTS = Path(__file__).resolve().parent / "results" / "score_throughput.json"


def cpu_model() -> str:
    """`lscpu`'s model name: the machine every figure is written beside."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name:")),
                platform.processor() or platform.machine())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.score_throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--rows", type=int, default=607)
    parser.add_argument("--cols", type=int, default=617)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--part-size", type=int, default=32)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    import onnxruntime
    import ray

    from batch_scoring.run import connect, score_archive
    from models.srkw_cnn import write_fresh_h5
    from scoring.onnx_scoring import OnnxScorer
    from scoring.scorer import score_files

    cores = os.cpu_count() or 1
    result = {"machine": {"cpu": cpu_model(), "cores": cores, "load_average_at_start": os.getloadavg(),
                          "python": platform.python_version(), "ray": ray.__version__,
                          "onnxruntime": onnxruntime.__version__},
              "images": args.images, "size": [args.rows, args.cols], "part_size": args.part_size, "runs": []}
    with tempfile.TemporaryDirectory(prefix="orca-score-bench-") as tmp:
        root = Path(tmp)
        paths = make_dataset(root, args.images, 4)["unlabeled"]
        model = write_fresh_h5(root / "srkw_cnn_0.h5", args.rows, args.cols, seed=0)

        scorer = OnnxScorer(model, root / "onnx")
        started = time.perf_counter()
        reference = score_files(scorer, paths, args.rows, args.cols)
        seconds = time.perf_counter() - started
        result["reference"] = {"what": "scoring.scorer.score_files, ONNX Runtime, one process, all cores",
                               "seconds": round(seconds, 3), "images_per_second": round(len(paths) / seconds, 2)}
        print(f"reference (one process): {len(paths) / seconds:.1f} img/s", file=sys.stderr)
        del scorer

        started_ray = connect(num_cpus=cores)
        try:
            for workers in args.workers:
                out = root / f"scores-{workers}"
                summary = score_archive(str(model), str(root / "unlabeled"), str(out), rows=args.rows, cols=args.cols,
                                        part_size=args.part_size, workers=workers, device="cpu", progress=False)
                from batch_scoring.parts import read_scores
                from service.storage import locate

                values = read_scores(locate(str(out), "out", local_root=None))["predicted_value"].to_pylist()
                drift = max(abs(a - b) for a, b in zip(values, reference))
                run = {"workers": workers, "engine": summary.engine, "scoring_seconds": summary.scoring_seconds,
                       "images_per_second": summary.images_per_second,
                       "warm_images_per_second": summary.warm_images_per_second, "end_to_end_seconds": summary.seconds,
                       "end_to_end_images_per_second": round(summary.clips / summary.seconds, 2),
                       "max_abs_difference_to_reference": drift, "load_average_after": os.getloadavg()}
                result["runs"].append(run)
                print(json.dumps(run), file=sys.stderr)
        finally:
            if started_ray:
                ray.shutdown()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
