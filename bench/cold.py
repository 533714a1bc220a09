"""Cold `/predict` repeated in pairs: the reference's and the service's, one right after the other.

A single cold run says little on a shared machine: the same work took 7.6 s in one run and 9.7 s in
the next (bench/README.md), and the reference moves as much. `bench.run --cold-pairs K` therefore
times K more pairs after its stages: the reference's cold `/predict` in a new process
(`bench.reference --cold`), then the service's in a new process with an empty cache, on the same
dataset; each pair gives a ratio, and the median of the ratios is the figure to quote.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from .reference_process import run_reference


def reference_cold(cfg: dict, env: dict, out_dir: Path, pair: int, timeout: float) -> dict:
    """One cold /predict of the reference in its own process: its timings (TensorFlow's import apart)."""
    data = run_reference(cfg, env, out_dir / f"reference_cold_{pair}.json", out_dir / "reference.log", timeout,
                         "--cold", what=f"the reference's cold pair {pair}")
    return data["predict_cold"]["timings"]


def service_cold(start_service, predict_params: dict, timeout: float) -> tuple[float, list]:
    """One cold /predict of a new service process (`start_service()`, empty cache): (seconds, its items)."""
    service = start_service()
    try:
        items, seconds = service.timed("/predict", timeout, **predict_params)
    finally:
        service.stop()
    return seconds, items


def cold_pairs(pairs: int, reference_cfg: dict | None, env: dict, out_dir: Path, start_service, predict_params: dict,
               timeout: float, progress) -> dict:
    """`pairs` × (the reference's cold /predict, then the service's); without a reference, the service's
    alone. Returns {"pairs": [{reference_s, ours_s, images, speedup}], "median_speedup", "ours_median_s"}."""
    rows = []
    for pair in range(1, pairs + 1):
        row = {"reference_s": None, "speedup": None}
        if reference_cfg is not None:
            row["reference_s"] = reference_cold(reference_cfg, env, out_dir, pair, timeout)["total_s"]
        row["ours_s"], items = service_cold(lambda: start_service(pair), predict_params, timeout)
        row["images"] = len(items)
        if row["reference_s"] is not None:
            row["speedup"] = row["reference_s"] / row["ours_s"]
        rows.append(row)
        progress(f"cold pair {pair}: " + (f"reference {row['reference_s']:.2f} s, " if row["reference_s"] else "")
                 + f"ours {row['ours_s']:.2f} s" + (f": {row['speedup']:.2f}x" if row["speedup"] else ""))
    ratios = [r["speedup"] for r in rows if r["speedup"] is not None]
    return {"pairs": rows, "ours_median_s": statistics.median(r["ours_s"] for r in rows) if rows else None,
            "median_speedup": statistics.median(ratios) if ratios else None}


def print_cold_pairs(data: dict) -> None:
    print(f"cold /predict in pairs (new processes, empty caches, {data['pairs'][0]['images']} images): "
          + ", ".join((f"{r['reference_s']:.2f} / {r['ours_s']:.2f} s = {r['speedup']:.2f}x" if r["speedup"]
                       else f"ours {r['ours_s']:.2f} s") for r in data["pairs"])
          + (f"; median {data['median_speedup']:.2f}x" if data["median_speedup"] else ""))
