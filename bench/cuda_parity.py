"""CUDA vs CPU outputs of srkw_cnn on the sample spectrograms: fp32 with TF32 on and off, and bf16.

`python -m bench.cuda_parity [--rows 607 --cols 617]` prints a table of max |CUDA − CPU| of the
predicted values and the images/s of each CUDA setting through `scoring.torch_scoring.predict` (PNG decode
included), then the model alone on the GPU: forward and training step (forward, backward, Adam)
images/s on a batch already in GPU memory, with the peak memory torch allocated; exits 2 without CUDA.
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
    from scoring.torch_scoring import predict

    paths = sorted(str(p) for p in (ROOT / "sample_data" / "orcasound").rglob("*.png"))
    with tempfile.TemporaryDirectory() as tmp:
        model = write_fresh_h5(Path(tmp) / "srkw_cnn_0.h5", args.rows, args.cols, seed=0)
        cpu = np.array(predict(model, paths, args.rows, args.cols, device="cpu"))
        print(f"{torch.cuda.get_device_name(0)}; {len(paths)} images {args.rows}x{args.cols}")
        print(f"{'setting':<22} {'max |cuda - cpu|':>18} {'images/s':>10}")
        for name, tf32, precision in SETTINGS:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
            predict(model, paths[:4], args.rows, args.cols, device="cuda", precision=precision)  # warm-up
            torch.cuda.synchronize()
            started = time.perf_counter()
            cuda = np.array(predict(model, paths, args.rows, args.cols, device="cuda", precision=precision))
            torch.cuda.synchronize()
            rate = len(paths) / (time.perf_counter() - started)
            print(f"{name:<22} {np.abs(cuda - cpu).max():>18.3e} {rate:>10.1f}")
        print_compute_rates(model, args.rows, args.cols)
    return 0


SETTINGS = (("fp32, TF32 off", False, "fp32"), ("fp32, TF32 on", True, "fp32"), ("bf16 autocast", False, "bf16"))


def _rate(step, images: int, repeats: int) -> float:
    step()  # warm-up: cuDNN picks its algorithms
    step()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    torch.cuda.synchronize()
    return images * repeats / (time.perf_counter() - started)


def print_compute_rates(model_h5, rows: int, cols: int, predict_batch: int = 64, train_batch: int = 32) -> None:
    """Forward and training-step throughput of the model alone (no decode, no copies), per setting."""
    from conversion.formats import load_trainable
    from training.optim import make_loss, make_optimizer

    device = torch.device("cuda")
    print(f"model alone on the GPU: forward batch {predict_batch}, training step batch {train_batch}")
    print(f"{'setting':<22} {'forward img/s':>14} {'train img/s':>12} {'peak alloc MiB':>15}")
    for name, tf32, precision in SETTINGS:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        model = load_trainable(model_h5).to(device)
        loss_fn = make_loss(model.training_config)
        optimizer = make_optimizer(model.training_config, model.parameters())
        generator = torch.Generator(device=device).manual_seed(0)
        x = torch.rand(predict_batch, rows, cols, 3, device=device, generator=generator)
        xt = x[:train_batch].contiguous()
        y = (torch.rand(train_batch, device=device, generator=generator) > 0.5).long()
        autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16")

        def forward():
            with torch.inference_mode(), autocast():
                model.forward_logits(x)

        def train_step():
            with autocast():
                loss = loss_fn(model.forward_logits(xt), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        torch.cuda.reset_peak_memory_stats()
        model.eval()
        forward_rate = _rate(forward, predict_batch, 20)
        model.train()
        train_rate = _rate(train_step, train_batch, 20)
        peak = torch.cuda.max_memory_allocated() / 2**20
        print(f"{name:<22} {forward_rate:>14.1f} {train_rate:>12.1f} {peak:>15.0f}")
        del model, optimizer, x, xt
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
