"""`predict`: P(class 1) for image files, streamed in batches with decoding ahead of inference."""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from conversion import keras_to_torch

from .device import pick_device
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


@torch.inference_mode()
def predict(model_h5_or_module, image_paths: Iterable, rows: int, cols: int, *,
            device: str | torch.device | None = None, batch_size: int = 32) -> list[float]:
    """The model's P(class 1) ("nocalls" for srkw_cnn) for each image, in `image_paths` order.

    `model_h5_or_module`: a Keras .h5 path or a module from conversion.keras_to_torch (taking NHWC
    input). Images are decoded exactly like `images.load_image`, a few batches ahead on threads,
    so memory stays at a few batches whatever the number of files.
    """
    device = pick_device(device)
    if isinstance(model_h5_or_module, (str, os.PathLike)):
        model = keras_to_torch(model_h5_or_module)
    else:
        model = model_h5_or_module
    check_input_size(model, rows, cols)
    was_training = model.training
    model.to(device).eval()
    paths = list(image_paths)
    scores: list[float] = []
    try:
        for pixels in decoded_batches(paths, rows, cols, batch_size):
            probabilities = _probability_of_class_1(model(to_batch(pixels, device)))
            scores.extend(probabilities.float().cpu().tolist())
    finally:
        model.train(was_training)
    return scores
