"""`python -m bench.predict_memory`: peak memory of the service for /predict over N spectrograms.

Writes N spectrograms into a LOCAL folder (a pool of `--distinct` perturbed sample PNGs,
hard-linked to N names; every file is decoded and scored on its own), starts `python -m service`
(own process, local storage backend, empty cache dir) for each N in --sizes, calls /predict once
(cold) and records the service's peak RSS (VmHWM), the request seconds and the item count.
The point: the peak must not grow with N (batches are streamed; only the answer grows).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from .dataset import T0, perturbed, sample_pngs
from .run import Service


def make_local(root: Path, n: int, distinct: int) -> Path:
    spectrograms = root / "unlabeled" / "spectrograms"
    spectrograms.mkdir(parents=True, exist_ok=True)
    pool = root / "pool"
    pool.mkdir(exist_ok=True)
    sources = sample_pngs()
    originals = []
    for i in range(min(distinct, n)):
        path = pool / f"{i}.png"
        if not path.exists():
            perturbed(sources[i % len(sources)], seed=i).save(path, format="PNG", compress_level=1)
        originals.append(path)
    for i in range(n):
        target = spectrograms / f"orcasoundlab_{T0 + 3 * i}.png"
        if not target.exists():
            os.link(originals[i % len(originals)], target)
    return root / "unlabeled"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="500,2000", help="comma-separated N (default 500,2000)")
    parser.add_argument("--distinct", type=int, default=64)
    parser.add_argument("--rows", type=int, default=607)
    parser.add_argument("--cols", type=int, default=617)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    from models.srkw_cnn import write_fresh_h5

    results = {"rows": args.rows, "cols": args.cols, "cpu_count": os.cpu_count(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="orca-predict-memory-") as tmp:
        tmp = Path(tmp)
        model = write_fresh_h5(tmp / "srkw_cnn_0.h5", args.rows, args.cols, seed=0)
        for n in sorted(int(s) for s in args.sizes.split(",")):
            folder = tmp / f"n{n}"
            unlabeled = make_local(tmp / "data", n, args.distinct)
            env = dict(os.environ, HOST="127.0.0.1", PORT="0", ORCA_LOCAL_ROOT=str(tmp),
                       ORCA_CACHE_DIR=str(folder / "cache"), PYTHONUNBUFFERED="1")
            folder.mkdir()
            service = Service(env, folder / "service.log")
            try:
                load_before = os.getloadavg()
                items, seconds = service.timed("/predict", 3600, model_url=str(model),
                                               unlabeled_url=str(unlabeled), img_width=args.rows,
                                               img_height=args.cols)
                memory = service.memory()
            finally:
                service.stop()
            run = {"n": n, "items": len(items), "seconds": round(seconds, 2),
                   "images_per_s": round(n / seconds, 2), "peak_rss_mib": round(memory.get("VmHWM", 0), 1),
                   "rss_after_mib": round(memory.get("VmRSS", 0), 1),
                   "load_average_before": [round(v, 2) for v in load_before],
                   "load_average_after": [round(v, 2) for v in os.getloadavg()]}
            print(json.dumps(run), flush=True)
            results["runs"].append(run)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
