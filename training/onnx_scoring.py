"""ONNX Runtime CPU scoring of a Keras .h5 model (not wired into the service yet).

The model file is bridged to PyTorch (`conversion.keras_to_torch`) and exported once with
`conversion.torch_to_onnx` (dynamic batch) into a cache folder, keyed by the SHA-256 of the file's
bytes, so a model is exported once whatever its name or path and a changed file is re-exported.
Scoring decodes PNGs on a thread pool a few batches ahead of inference, with the exact
preprocessing of `training.images.load_image` (`decode_image` then `to_float`, which is what
`load_image` is), and runs ONNX Runtime's CPU provider with one intra-op thread per core.

    scorer = OnnxScorer("srkw_cnn_0.h5")
    values = scorer.score(paths, rows=607, cols=617, batch_size=32)   # P(class 1) per image

Numbers on the 2-core CPU machines of this project: see bench/README.md.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import TrainingError
from .images import to_float
from .predict import decoded_batches

CACHE_ENV = "ORCA_ONNX_CACHE"
_SESSIONS: dict[tuple[str, int], object] = {}
_LOCK = threading.Lock()


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or os.path.join(tempfile.gettempdir(), "orca-onnx-cache"))


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_cached(model_h5: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """The ONNX file for `model_h5` in `cache_dir`, exported on first use (`<sha256>.onnx`)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{file_sha256(model_h5)}.onnx"
    if not target.exists():
        from conversion import keras_to_torch, torch_to_onnx

        module = keras_to_torch(model_h5)
        torch_to_onnx(module, target)  # atomic: written beside the target, then renamed
    return target


class OnnxScorer:
    """P(class 1) of image files with ONNX Runtime on the CPU, for one Keras .h5 model."""

    def __init__(self, model_h5: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                 threads: int | None = None, decode_workers: int | None = None):
        self.onnx_path = export_cached(model_h5, cache_dir)
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

    def score(self, paths: Iterable, rows: int, cols: int, batch_size: int = 32) -> list[float]:
        """P(class 1) for each image in `paths` order (decoded like images.load_image)."""
        self.check_size(rows, cols)
        paths = list(paths)
        scores: list[float] = []
        for pixels in decoded_batches(paths, rows, cols, batch_size, workers=self.decode_workers):
            (out,) = self.session.run(None, {self.input_name: to_float(pixels)})
            if out.ndim != 2 or out.shape[1] not in (1, 2):
                raise TrainingError(f"model output has shape {out.shape}; expected (N, 1) sigmoid or (N, 2) softmax")
            scores.extend(float(v) for v in out[:, -1])
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
            session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            _SESSIONS[key] = session
        return session


def score(model_h5: str | os.PathLike, paths: Iterable, rows: int, cols: int, batch_size: int = 32,
          cache_dir: str | os.PathLike | None = None) -> list[float]:
    """`OnnxScorer(model_h5, cache_dir).score(paths, rows, cols, batch_size)`."""
    return OnnxScorer(model_h5, cache_dir).score(paths, rows, cols, batch_size)
