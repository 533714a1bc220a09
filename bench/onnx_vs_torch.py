"""`python -m bench.onnx_vs_torch`: ONNX Runtime scoring (scoring.onnx_scoring) against the current
torch CPU path (scoring.torch_scoring.predict) on N real-size spectrograms; timings and parity.

Both score the same files with the same batch size on the CPU, each timed twice (the first run
pays one-off costs: torch's first-call allocations, ORT's session creation); the ONNX export
(once per model file, cached) is timed on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from .dataset import make_dataset


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--rows", type=int, default=607)
    parser.add_argument("--cols", type=int, default=617)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)

    from models.srkw_cnn import write_fresh_h5
    from scoring.onnx_scoring import OnnxScorer
    from scoring.torch_scoring import predict

    with tempfile.TemporaryDirectory(prefix="orca-onnx-bench-") as tmp:
        tmp = Path(tmp)
        paths = make_dataset(tmp / "data", args.images, 4)["unlabeled"]
        model = write_fresh_h5(tmp / "srkw_cnn_0.h5", args.rows, args.cols, seed=0)
        from conversion import keras_to_torch

        module = keras_to_torch(model)
        timings = {}
        for run in (1, 2):
            t0 = time.perf_counter()
            torch_values = predict(module, paths, args.rows, args.cols, device="cpu", batch_size=args.batch_size)
            timings[f"torch_run{run}_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        scorer = OnnxScorer(model, cache_dir=tmp / "cache")
        timings["onnx_export_and_session_s"] = time.perf_counter() - t0
        for run in (1, 2):
            t0 = time.perf_counter()
            onnx_values = scorer.score(paths, args.rows, args.cols, args.batch_size)
            timings[f"onnx_run{run}_s"] = time.perf_counter() - t0
    diff = max(abs(a - b) for a, b in zip(torch_values, onnx_values))
    results = {"images": args.images, "rows": args.rows, "cols": args.cols, "batch_size": args.batch_size,
               "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), **timings,
               "torch_images_per_s": args.images / timings["torch_run2_s"],
               "onnx_images_per_s": args.images / timings["onnx_run2_s"],
               "speedup_onnx_over_torch": timings["torch_run2_s"] / timings["onnx_run2_s"],
               "max_abs_diff": diff}
    print(json.dumps(results, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
