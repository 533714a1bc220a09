"""ONNX Runtime CPU scoring of a Keras .h5 model: what /predict uses on the CPU.

The model file is exported once into a cache folder, keyed by the SHA-256 of the file's bytes, so
a model is exported once whatever its name or path and a changed file is re-exported. A Sequential
Keras .h5 of the layers `conversion.keras_onnx` writes (srkw_cnn's among them) is written straight
to ONNX with h5py and onnx, in this process, without torch. Anything else is bridged to PyTorch
(`conversion.formats.load_trainable`) and exported with `conversion.torch_to_onnx` (dynamic batch);
when torch is not imported yet in this process that export runs in a child process (`python -m
training.onnx_scoring export MODEL.h5 OUT.onnx`), so a service that only scores never loads torch
(≈630 MiB of resident memory for the CUDA build). Scoring decodes PNGs on a thread
pool a few batches ahead of inference (`training.stream`), with the exact preprocessing of
`training.images.load_image`, and runs ONNX Runtime's CPU provider with one intra-op thread per
core, in batches of at most MAX_ORT_BATCH images (the arena keeps the peak of one batch).

    scorer = OnnxScorer("srkw_cnn_0.h5")
    values = scorer.score(paths, rows=607, cols=617, batch_size=16)   # P(class 1) per image

Numbers on the 2-core CPU machines of this project: see bench/README.md.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import TrainingError
from .images import to_float
from .stream import stream_batches

LOG = logging.getLogger("training")
CACHE_ENV = "ORCA_ONNX_CACHE"
MAX_ORT_BATCH = 16   # peak RSS of one 607x617 batch: ~0.9 GiB at 16, ~1.7 GiB at 32, same speed
MAX_SESSIONS = 2     # ORT sessions kept (LRU): the current model version and the previous one
_SESSIONS: "OrderedDict[tuple[str, int], object]" = OrderedDict()
_DIGESTS: dict[tuple[str, int, int], str] = {}   # (real path, size, mtime_ns) → sha256
_LOCK = threading.Lock()
_EXPORT_LOCKS: dict[str, threading.Lock] = {}
ROOT = Path(__file__).resolve().parent.parent


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or os.path.join(tempfile.gettempdir(), "orca-onnx-cache"))


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of the file's bytes, memoized in this process by (real path, size, mtime)."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = _DIGESTS[key] = h.hexdigest()
        if len(_DIGESTS) > 256:
            _DIGESTS.pop(next(iter(_DIGESTS)))
    return digest


def export_cached(model_h5: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                  isolate: bool | None = None) -> Path:
    """The ONNX file for `model_h5` in `cache_dir`, exported on first use (`<sha256>.onnx`).

    `isolate` (default: when torch is not imported in this process yet): export in a child process.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{file_sha256(model_h5)}.onnx"
    if target.exists():
        return target
    with _LOCK:
        lock = _EXPORT_LOCKS.setdefault(str(target), threading.Lock())
    with lock:  # concurrent requests for a new model export it once
        if not target.exists() and not _export_directly(model_h5, target):
            if isolate is None:
                isolate = "torch" not in sys.modules
            if isolate:
                _export_in_child(model_h5, target)
            else:
                _export(model_h5, target)
    return target


def _export_directly(model_h5, target) -> bool:
    """Write a Sequential Keras .h5 as ONNX without torch (conversion.keras_onnx): no torch import,
    and a graph ONNX Runtime runs faster (srkw_cnn at 607x617, 2 cores: ≈ 18 ms/image against ≈ 22
    through the bridge). False where that module does not write the model: the bridge exports it."""
    if Path(model_h5).suffix.lower() != ".h5":
        return False
    from conversion.keras_onnx import NotEmittable, keras_h5_to_onnx_bytes

    try:
        data = keras_h5_to_onnx_bytes(model_h5)
    except NotEmittable as reason:
        LOG.info("ONNX export of %s through the torch bridge: %s", os.fspath(model_h5), reason)
        return False
    except Exception as error:  # noqa: BLE001 - the bridge's export names what is wrong with the file
        LOG.info("direct ONNX export of %s failed (%s); trying the torch bridge", os.fspath(model_h5), error)
        return False
    fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".onnx", dir=Path(target).parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, target)
    return True


def _export(model_h5, target) -> None:
    from conversion import torch_to_onnx
    from conversion.formats import load_trainable

    module = load_trainable(model_h5)  # .h5, .onnx or .pt, seen with NHWC input
    torch_to_onnx(module, target)  # atomic: written beside the target, then renamed


def _export_in_child(model_h5, target) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    completed = subprocess.run([sys.executable, "-m", "training.onnx_scoring", "export", os.fspath(model_h5),
                                os.fspath(target)], cwd=ROOT, env=env, capture_output=True, text=True)
    if completed.returncode != 0 or not Path(target).exists():
        lines = [l for l in (completed.stderr or "").strip().splitlines() if l.strip()]
        reason = lines[-1] if lines else f"exit code {completed.returncode}"
        if reason.startswith("ERROR: "):
            reason = reason[len("ERROR: "):]
        raise TrainingError(f"cannot convert {os.fspath(model_h5)} to ONNX: {reason}")


class OnnxScorer:
    """P(class 1) of image files with ONNX Runtime on the CPU, for one Keras .h5 model."""

    def __init__(self, model_h5: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                 threads: int | None = None, decode_workers: int | None = None, isolate: bool | None = None):
        self.onnx_path = export_cached(model_h5, cache_dir, isolate=isolate)
        self.threads = threads or os.cpu_count() or 1
        self.decode_workers = decode_workers
        self.session = _session(self.onnx_path, self.threads)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise TrainingError(f"model has {len(inputs)} inputs; only single-input image models are supported")
        self.input_name = inputs[0].name
        self.input_shape = inputs[0].shape  # ['batch', rows, cols, channels]

    def check_size(self, rows: int, cols: int) -> None:
        shape = self.input_shape
        if len(shape) != 4:
            raise TrainingError(f"model input shape {shape} is not an image batch (None, rows, cols, channels)")
        m_rows, m_cols = shape[1], shape[2]
        if (isinstance(m_rows, int) and m_rows != rows) or (isinstance(m_cols, int) and m_cols != cols):
            raise TrainingError(f"the model expects {m_rows}x{m_cols} images (img_width x img_height), "
                                f"got {rows}x{cols}")

    def score_pixels(self, pixels: np.ndarray) -> list[float]:
        """P(class 1) of uint8 images (n, rows, cols, 3), run in chunks of at most MAX_ORT_BATCH."""
        scores: list[float] = []
        for i in range(0, len(pixels), MAX_ORT_BATCH):
            (out,) = self.session.run(None, {self.input_name: to_float(pixels[i:i + MAX_ORT_BATCH])})
            if out.ndim != 2 or out.shape[1] not in (1, 2):
                raise TrainingError(f"model output has shape {out.shape}; expected (N, 1) sigmoid or (N, 2) softmax")
            scores.extend(float(v) for v in out[:, -1])
        return scores

    def score(self, paths: Iterable, rows: int, cols: int, batch_size: int = MAX_ORT_BATCH) -> list[float]:
        """P(class 1) for each image in `paths` order (decoded like images.load_image); ImageError if one is unreadable."""
        self.check_size(rows, cols)
        scores: list[float] = []
        for batch in stream_batches(list(paths), None, rows, cols, batch_size, workers=self.decode_workers or 4,
                                    decode_workers=self.decode_workers):
            scores.extend(self.score_pixels(batch.pixels))
        return scores


def _session(onnx_path: Path, threads: int):
    import onnxruntime as ort

    key = (str(onnx_path), threads)
    with _LOCK:
        session = _SESSIONS.get(key)
        if session is None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # the CPU arena stays on: without it every batch maps and faults in fresh pages (2-3x slower
            # on the 2-core machines); its peak is bounded by MAX_ORT_BATCH instead
            session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            _SESSIONS[key] = session
            while len(_SESSIONS) > MAX_SESSIONS:
                _SESSIONS.popitem(last=False)
        else:
            _SESSIONS.move_to_end(key)
        return session


def release_sessions() -> None:
    """Drop the cached ONNX Runtime sessions (the next score builds them again in well under a second).

    Training calls this first: live sessions slow torch's CPU training in the same process by 20–30 %
    (one srkw_cnn epoch on 96 images at 607×617: 24–27 s after scoring, 18.7 s once released).
    """
    with _LOCK:
        _SESSIONS.clear()


def score(model_h5: str | os.PathLike, paths: Iterable, rows: int, cols: int, batch_size: int = MAX_ORT_BATCH,
          cache_dir: str | os.PathLike | None = None) -> list[float]:
    """`OnnxScorer(model_h5, cache_dir).score(paths, rows, cols, batch_size)`."""
    return OnnxScorer(model_h5, cache_dir).score(paths, rows, cols, batch_size)


def _main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "export":
        print("usage: python -m training.onnx_scoring export MODEL.h5 OUT.onnx", file=sys.stderr)
        return 2
    import torch  # noqa: F401  (the bridge needs it; imported before anything else, see DESIGN.md)

    try:
        _export(argv[1], argv[2])
    except Exception as error:  # noqa: BLE001 - reported to the parent on the last stderr line
        print(f"ERROR: {type(error).__name__}: {error}".replace("\n", " "), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
