"""Tensor helpers that training, scoring and the active-learning probe share: pixels to a batch on a
device, bf16 autocast, and the check that a model takes the images it is given. Imports torch."""

from __future__ import annotations

import numpy as np
import torch

from .errors import ScoringError
from .images import RESCALE


def check_input_size(model, rows: int, cols: int, error: type[Exception] = ScoringError) -> None:
    """`error` (ScoringError; training passes its TrainingError) unless the model's Keras input is
    (None, rows, cols, 3) (None dims accept any size)."""
    shapes = getattr(model, "input_shapes", None) or [None]
    if len(shapes) != 1:
        raise error(f"model has {len(shapes)} inputs; only single-input image models are supported")
    shape = shapes[0]
    if shape is None:
        return
    shape = tuple(shape)
    if len(shape) != 4:
        raise error(f"model input shape {shape} is not an image batch (None, rows, cols, channels)")
    _, m_rows, m_cols, channels = shape
    if (m_rows is not None and m_rows != rows) or (m_cols is not None and m_cols != cols):
        raise error(f"image size {rows}x{cols} (img_width x img_height) does not match the model's "
                            f"input {m_rows}x{m_cols} (rows x cols)")
    if channels not in (None, 3):
        raise error(f"model expects {channels} channels; the spectrograms are RGB (3)")


def to_batch(pixels, device: torch.device) -> torch.Tensor:
    """uint8 (N, rows, cols, 3), numpy or a tensor → float32 in [0, 1] on `device`, bit-identical to
    images.load_image. numpy goes through pinned memory on CUDA; a tensor already there is not copied."""
    if isinstance(pixels, torch.Tensor):
        x = pixels
    else:
        x = torch.from_numpy(np.ascontiguousarray(pixels))
        if device.type == "cuda":
            x = x.pin_memory()
    return x.to(device, non_blocking=True).float().mul_(float(RESCALE))


def autocast(device: torch.device, precision: str):
    """bf16 autocast on `device` when `precision` is "bf16" (weights, gradients and the optimizer stay
    float32: autocast only runs the matmuls and convolutions in bf16), else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
