"""Whole active-learning rounds, the way the client runs them (`bench.run --rounds N`).

One round = `/train` from the current model → `/predict` with the model it wrote → the labelers'
answers: 5 % of the unlabeled clips (at least one; every k-th by name, classes alternating) move
from `unlabeled/spectrograms/` to `labeled/train/<class>/` (an S3 copy, which keeps the ETag, then a
delete). Seconds per round = /train + /predict as the client waits for them; the move is the
client's work and timed apart. The reference (`bench.reference --round`, its own process per round,
TensorFlow's import not counted) and the service see the same sequence of datasets: the moves of
the reference's rounds are undone before the service's rounds make them again.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from .reference_process import run_reference

MOVE_FRACTION = 0.05
CLASSES = ("calls", "nocalls")


def list_keys(s3, bucket: str, prefix: str) -> list[str]:
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", ()))
    return sorted(keys)


def label_some(s3, bucket: str, round_index: int, fraction: float = MOVE_FRACTION) -> list[tuple[str, str]]:
    """Move `fraction` of the unlabeled spectrograms to labeled/train/<class>/; returns (from, to) keys."""
    unlabeled = list_keys(s3, bucket, "unlabeled/spectrograms/")
    n = max(1, math.ceil(len(unlabeled) * fraction)) if unlabeled else 0
    step = max(1, len(unlabeled) // max(n, 1))
    moves = []
    for i, key in enumerate(unlabeled[::step][:n]):
        name = key.rsplit("/", 1)[1]
        target = f"labeled/train/{CLASSES[(i + round_index) % 2]}/{name}"
        s3.copy_object(Bucket=bucket, Key=target, CopySource={"Bucket": bucket, "Key": key})
        s3.delete_object(Bucket=bucket, Key=key)
        moves.append((key, target))
    return moves


def undo(s3, bucket: str, moves: list[tuple[str, str]]) -> None:
    for source, target in reversed(moves):
        s3.copy_object(Bucket=bucket, Key=source, CopySource={"Bucket": bucket, "Key": target})
        s3.delete_object(Bucket=bucket, Key=target)


def reference_rounds(rounds: int, cfg: dict, env: dict, out_dir: Path, s3, bucket: str, timeout: float,
                     progress) -> tuple[list[dict], list]:
    """The reference's rounds; returns (per-round timings, all moves made)."""
    results, moves = [], []
    model_key = cfg["model_key"]
    for r in range(rounds):
        output_key = f"reference/rounds/srkw_cnn_{r + 1}.h5"
        data = run_reference(dict(cfg, model_key=model_key, output_key=output_key), env,
                             out_dir / f"reference_round_{r + 1}.json", out_dir / "reference.log", timeout,
                             "--round", what=f"the reference's round {r + 1}")
        train_s, predict_s = data["train"]["timings"]["total_s"], data["predict"]["timings"]["total_s"]
        t0 = time.perf_counter()
        moved = label_some(s3, bucket, r)
        moves.extend(moved)
        results.append({"train_s": train_s, "predict_s": predict_s, "round_s": train_s + predict_s,
                        "move_s": time.perf_counter() - t0, "moved": len(moved),
                        "train_images": data["train"]["timings"]["train_images"],
                        "unlabeled": data["predict"]["timings"]["images"]})
        progress(f"reference round {r + 1}: train {train_s:.1f} s + predict {predict_s:.1f} s = "
                 f"{train_s + predict_s:.1f} s; moved {len(moved)} clips to labeled/")
        model_key = output_key
    return results, moves


def service_rounds(rounds: int, service, model_url: str, bucket: str, rows: int, cols: int, epochs: int,
                   s3, timeout: float, progress) -> list[dict]:
    """The service's rounds over real HTTP, from `model_url` (each /train writes the next version)."""
    results = []
    for r in range(rounds):
        train, train_s = service.timed("/train", timeout, model_url=model_url, labeled_url=f"s3://{bucket}/labeled/",
                                       img_width=rows, img_height=cols, epochs=epochs, seed=r)
        model_url = train["model_url"]
        items, predict_s = service.timed("/predict", timeout, model_url=model_url,
                                         unlabeled_url=f"s3://{bucket}/unlabeled/", img_width=rows, img_height=cols)
        t0 = time.perf_counter()
        moved = label_some(s3, bucket, r)
        results.append({"train_s": train_s, "predict_s": predict_s, "round_s": train_s + predict_s,
                        "move_s": time.perf_counter() - t0, "moved": len(moved),
                        "train_images": train["labeled_files"], "unlabeled": len(items)})
        progress(f"ours round {r + 1}: train {train_s:.1f} s + predict {predict_s:.1f} s = "
                 f"{train_s + predict_s:.1f} s; moved {len(moved)} clips to labeled/")
    return results


def summary(reference: list[dict] | None, ours: list[dict]) -> dict:
    """Mean seconds per round on each side and the ratio reference / ours (> 1: the service is faster)."""
    def mean(rows):
        return sum(r["round_s"] for r in rows) / len(rows) if rows else None

    out = {"rounds": len(ours), "ours": ours, "ours_mean_s": mean(ours), "reference": reference,
           "reference_mean_s": mean(reference) if reference else None}
    out["speedup"] = (out["reference_mean_s"] / out["ours_mean_s"]) if reference and ours else None
    return out


def print_rounds(data: dict) -> None:
    ref = data.get("reference")
    print(f"rounds (train + predict with the new model, then 5 % of the clips labeled): {data['rounds']}")
    for i, ours in enumerate(data["ours"]):
        line = (f"  round {i + 1}: ours {ours['round_s']:.2f} s (train {ours['train_s']:.2f} + predict "
                f"{ours['predict_s']:.2f}, {ours['train_images']} train images, {ours['unlabeled']} unlabeled)")
        if ref:
            line += f"; reference {ref[i]['round_s']:.2f} s (train {ref[i]['train_s']:.2f} + predict {ref[i]['predict_s']:.2f})"
        print(line)
    if data.get("speedup"):
        print(f"  seconds per round: reference {data['reference_mean_s']:.2f}, ours {data['ours_mean_s']:.2f}: "
              f"{data['speedup']:.2f}x")
    elif data["ours"]:
        print(f"  seconds per round: ours {data['ours_mean_s']:.2f} (no reference)")
