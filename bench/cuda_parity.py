"""CUDA vs CPU outputs of srkw_cnn on the sample spectrograms: fp32 with TF32 on and off, and bf16.

`python -m bench.cuda_parity [--rows 607 --cols 617]` prints a table of max |CUDA − CPU| of the
predicted values (and of the logits) and the images/s of each CUDA setting; exits 2 without CUDA.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cuda_parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=607)
    parser.add_argument("--cols", type=int, default=617)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to compare")
        return 2
    from models.srkw_cnn import write_fresh_h5
    from training.predict import predict

    paths = sorted(str(p) for p in (ROOT / "sample_data" / "orcasound").rglob("*.png"))
    with tempfile.TemporaryDirectory() as tmp:
        model = write_fresh_h5(Path(tmp) / "srkw_cnn_0.h5", args.rows, args.cols, seed=0)
        cpu = np.array(predict(model, paths, args.rows, args.cols, device="cpu"))
        print(f"{torch.cuda.get_device_name(0)}; {len(paths)} images {args.rows}x{args.cols}")
        print(f"{'setting':<22} {'max |cuda - cpu|':>18} {'images/s':>10}")
        for name, tf32, precision in (("fp32, TF32 off", False, "fp32"), ("fp32, TF32 on", True, "fp32"),
                                      ("bf16 autocast", False, "bf16")):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
            predict(model, paths[:4], args.rows, args.cols, device="cuda", precision=precision)  # warm-up
            torch.cuda.synchronize()
            started = time.perf_counter()
            cuda = np.array(predict(model, paths, args.rows, args.cols, device="cuda", precision=precision))
            torch.cuda.synchronize()
            rate = len(paths) / (time.perf_counter() - started)
            print(f"{name:<22} {np.abs(cuda - cpu).max():>18.3e} {rate:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
