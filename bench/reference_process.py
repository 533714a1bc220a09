"""`python -m bench.reference` in a process of its own, for `bench.run`, its rounds and its cold pairs:
TensorFlow never enters the benchmark's process (nor its peak memory), and each run's figures come
back as the JSON it writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_reference(cfg: dict, env: dict, out_json: Path, log_path: Path, timeout: float, *options: str,
                  append: bool = True, what: str = "the reference") -> dict:
    """`bench.reference [options] --config cfg --out out_json`, its output added to `log_path` (or
    replacing it: `append=False`); the JSON it wrote. RuntimeError, with the log's tail, if it fails."""
    with open(log_path, "ab" if append else "wb") as log:
        completed = subprocess.run([sys.executable, "-m", "bench.reference", *options, "--config", json.dumps(cfg),
                                    "--out", str(out_json)], cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, timeout=timeout)
    if completed.returncode != 0:
        raise RuntimeError(f"{what} failed ({completed.returncode}); see {log_path}:\n"
                           f"{log_path.read_text(errors='replace')[-3000:]}")
    return json.loads(Path(out_json).read_text())
