"""`python -m bench.precision_check`: does bf16 training reach fp32's validation accuracy and loss?

Seeded trainings of a fresh srkw_cnn on the bundled sample spectrograms (`sample_data/orcasound`:
`train/` to train on; `validation/` and `test/` together as the validation set, 13 images, so that
accuracy moves in steps finer than a quarter), the same seeds in fp32 and in bf16 autocast
(`training.loop.train(precision=...)`, what ORCA_PRECISION selects). Per precision it reports the mean
and standard deviation over the seeds of the best epoch's val_loss and val_acc (the model /train
writes) and of the last epoch's, and the seconds per training. bf16 matches fp32 when the difference
of the means is within the run-to-run noise: the larger of the two standard deviations over seeds
(with 3 seeds, a rough bound; the figures say how rough).

On a CPU without native bf16 (no AMX-BF16 / AVX512-BF16) autocast emulates bf16 and is slower than
fp32: the default size is therefore half the model's (303x308) and the run small. Writes
`--out` (default bench/results/precision_check.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data" / "orcasound"


def labeled_folder(root: Path) -> Path:
    """train/ = the samples' train/; validation/ = their validation/ and test/ (13 images)."""
    folder = root / "labeled"
    shutil.copytree(SAMPLE / "train", folder / "train")
    shutil.copytree(SAMPLE / "validation", folder / "validation")
    for png in (SAMPLE / "test").rglob("*.png"):
        target = folder / "validation" / png.parent.name / f"test_{png.name}"
        shutil.copy(png, target)
    return folder


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.precision_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=303)
    parser.add_argument("--cols", type=int, default=308)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="bench/results/precision_check.json")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    from bench.run import cpu_model
    from models.srkw_cnn import write_fresh_h5
    from training.loop import train
    from training.precision import native_bf16

    runs = {"fp32": [], "bf16": []}
    with tempfile.TemporaryDirectory(prefix="orca-precision-") as tmp:
        tmp = Path(tmp)
        labeled = labeled_folder(tmp)
        model = write_fresh_h5(tmp / "srkw_cnn_0.h5", args.rows, args.cols, seed=0)
        for seed in seeds:
            for precision in runs:
                started = time.perf_counter()
                result = train(model, labeled, args.rows, args.cols, args.epochs, tmp / f"{precision}_{seed}.h5",
                               device=args.device, seed=seed, batch_size=args.batch_size, precision=precision)
                seconds = time.perf_counter() - started
                best = result.best_epoch - 1
                runs[precision].append({
                    "seed": seed, "seconds": seconds, "val_loss": result.val_loss, "val_acc": result.val_acc,
                    "loss": result.loss, "acc": result.acc, "best_epoch": result.best_epoch,
                    "best_val_loss": result.val_loss[best], "best_val_acc": result.val_acc[best],
                    "model_loss": result.model_loss, "model_acc": result.model_acc})
                print(f"seed {seed} {precision}: best epoch {result.best_epoch} val_loss "
                      f"{result.val_loss[best]:.4f} val_acc {result.val_acc[best]:.3f}; last val_loss "
                      f"{result.val_loss[-1]:.4f} val_acc {result.val_acc[-1]:.3f}; {seconds:.1f} s", flush=True)

    summary = {}
    for key in ("best_val_loss", "best_val_acc", "last_val_loss", "last_val_acc", "seconds"):
        row = {}
        for precision, rows in runs.items():
            values = [r["val_" + key.split("_", 2)[2]][-1] if key.startswith("last") else r[key] for r in rows]
            row[precision] = mean_sd(values)
        difference = row["bf16"][0] - row["fp32"][0]
        noise = max(row["fp32"][1], row["bf16"][1])
        row["difference"] = difference
        row["noise"] = noise
        row["within_noise"] = abs(difference) <= noise if key != "seconds" else None
        summary[key] = row
    device = torch.device(args.device)
    results = {"config": {"rows": args.rows, "cols": args.cols, "epochs": args.epochs, "seeds": seeds,
                          "device": args.device, "batch_size": args.batch_size, "torch": torch.__version__,
                          "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
                          "native_bf16": native_bf16(device),
                          "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
               "runs": runs, "summary": summary}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\n{args.device} ({results['config']['cpu_model']}), native bf16: {results['config']['native_bf16']}; "
          f"{len(seeds)} seeds, {args.epochs} epochs, {args.rows}x{args.cols}")
    print(f"{'':<15} {'fp32 mean ± sd':>19} {'bf16 mean ± sd':>19} {'bf16 - fp32':>12} {'within noise':>12}")
    for key, row in summary.items():
        print(f"{key:<15} {row['fp32'][0]:>9.5f} ± {row['fp32'][1]:<7.5f} {row['bf16'][0]:>9.5f} ± "
              f"{row['bf16'][1]:<7.5f} {row['difference']:>12.5f} {str(row['within_noise']):>12}")
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
