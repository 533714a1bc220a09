"""Keras layer geometry shared by the torch converters (`layers.py`) and the direct ONNX writer
(`keras_onnx.py`); torch-free, so the writer stays torch-free."""

from __future__ import annotations

import math


def pair(value) -> tuple[int, int]:
    """A Keras size argument (`3`, `[3]`, `(3, 5)`) as (rows, cols)."""
    if isinstance(value, (list, tuple)):
        return (int(value[0]), int(value[1])) if len(value) == 2 else (int(value[0]), int(value[0]))
    return (int(value), int(value))


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF 'same' padding: the odd extra row/column goes at the bottom/right."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2
