"""Layer geometry shared by the torch converters (`layers.py`), the direct ONNX writer (`keras_onnx.py`),
the ONNX interpreter and the ONNX → Keras rebuilder; torch-free, so the writer stays torch-free.
The one place that knows TF's "same" padding (see docs/design.md)."""

from __future__ import annotations

import math


def pair(value) -> tuple[int, int]:
    """A Keras size argument (`3`, `[3]`, `(3, 5)`) as (rows, cols)."""
    if isinstance(value, (list, tuple)):
        return (int(value[0]), int(value[1])) if len(value) == 2 else (int(value[0]), int(value[0]))
    return (int(value), int(value))


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1, extra_at_end: bool = True) -> tuple[int, int]:
    """(before, after) padding of TF's 'same' (= ONNX auto_pad SAME_UPPER): the output has
    ceil(size / stride) positions and the odd extra row/column goes at the bottom/right;
    `extra_at_end=False` puts it first (ONNX SAME_LOWER)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    small = total // 2
    return (small, total - small) if extra_at_end else (total - small, small)
