"""`predict`: P(class 1) for image files with torch, streamed in batches with decoding ahead of inference.

The service scores with ONNX Runtime on the CPU (`training.onnx_scoring`) and with this on CUDA.
On CUDA the batch is pinned and copied asynchronously, activations are channels_last (the model
takes Keras' NHWC batch and views it as NCHW, which *is* the channels_last layout, so cuDNN gets
NHWC without a copy), and `precision="bf16"` (or ORCA_PRECISION=bf16) runs the forward under
bf16 autocast: predicted values then differ from fp32 by up to ~1e-2 (on the CPU at 67x83, see
tests/test_perf_precision.py; 1.1e-4 on an H200 at 607x617 on the sample spectrograms, see
bench/README.md), so fp32 is the default and the only setting held to the 1e-4 parity with the
original Keras pipeline.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from conversion.formats import load_trainable

from .device import pick_device, resolve_precision
from .errors import TrainingError
from .images import decode_image
from .loop import check_input_size, to_batch

PREFETCH_BATCHES = 2


def decoded_batches(paths: Sequence, rows: int, cols: int, batch_size: int,
                    workers: int | None = None, prefetch: int = PREFETCH_BATCHES) -> Iterator[np.ndarray]:
    """uint8 batches (n, rows, cols, 3) in `paths` order; at most `prefetch` batches decode ahead.

    A file that cannot be decoded raises images.ImageError (naming it) when its batch is reached.
    """
    workers = workers or min(4, os.cpu_count() or 1)
    chunks = (paths[i:i + batch_size] for i in range(0, len(paths), batch_size))
    pool = ThreadPoolExecutor(workers)
    try:
        pending: deque = deque()

        def submit_next() -> None:
            chunk = next(chunks, None)
            if chunk is not None:
                pending.append([pool.submit(decode_image, p, rows, cols) for p in chunk])

        for _ in range(max(prefetch, 1)):
            submit_next()
        while pending:
            futures = pending.popleft()
            submit_next()
            yield np.stack([f.result() for f in futures])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _probability_of_class_1(outputs) -> torch.Tensor:
    if isinstance(outputs, tuple) or outputs.dim() != 2 or outputs.shape[1] not in (1, 2):
        shape = [tuple(t.shape) for t in outputs] if isinstance(outputs, tuple) else tuple(outputs.shape)
        raise TrainingError(f"model output has shape {shape}; expected (N, 1) sigmoid or (N, 2) softmax")
    return outputs[:, -1]


def score_pixels(model, pixels: np.ndarray, device: torch.device, precision: str = "fp32") -> list[float]:
    """P(class 1) of uint8 images (n, rows, cols, 3) with an eval-mode torch module on `device`."""
    x = to_batch(pixels, device)
    if device.type == "cuda":  # NHWC in memory = channels_last once the model permutes it to NCHW
        x = x.contiguous()
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        probabilities = _probability_of_class_1(model(x))
    return probabilities.float().cpu().tolist()


@torch.inference_mode()
def predict(model_h5_or_module, image_paths: Iterable, rows: int, cols: int, *,
            device: str | torch.device | None = None, batch_size: int = 32,
            precision: str | None = None) -> list[float]:
    """The model's P(class 1) ("nocalls" for srkw_cnn) for each image, in `image_paths` order.

    `model_h5_or_module`: a model file (.h5, .onnx, .pt) or a module from conversion.formats.load_trainable (taking NHWC
    input). Images are decoded exactly like `images.load_image`, a few batches ahead on threads,
    so memory stays at a few batches whatever the number of files. `precision`: "fp32" | "bf16"
    (default ORCA_PRECISION, else fp32).
    """
    device = pick_device(device)
    precision = resolve_precision(precision)
    if isinstance(model_h5_or_module, (str, os.PathLike)):
        model = load_trainable(model_h5_or_module)
    else:
        model = model_h5_or_module
    check_input_size(model, rows, cols)
    was_training = model.training
    model.to(device).eval()
    paths = list(image_paths)
    scores: list[float] = []
    try:
        for pixels in decoded_batches(paths, rows, cols, batch_size):
            scores.extend(score_pixels(model, pixels, device, precision))
    finally:
        model.train(was_training)
    return scores
