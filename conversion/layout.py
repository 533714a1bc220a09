"""Tensor layout between Keras (channels_last) and the bridge's modules.

Inside a converted model every rank-4 tensor is NCHW (a free `permute` of the NHWC input, which
keeps channels_last memory); tensors of any other rank keep Keras' layout. Layers whose meaning
depends on an axis map Keras' axis with `torch_axis`.
"""

import torch

_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


def torch_axis(keras_axis: int, rank: int) -> int:
    axis = keras_axis % rank
    return _NHWC_TO_NCHW_AXIS[axis] if rank == 4 else axis


def to_internal(x: torch.Tensor) -> torch.Tensor:
    """Keras layout → internal layout (NHWC → NCHW for rank 4)."""
    return x.permute(0, 3, 1, 2) if x.dim() == 4 else x


def to_keras(x: torch.Tensor) -> torch.Tensor:
    """Internal layout → Keras layout (NCHW → NHWC for rank 4)."""
    return x.permute(0, 2, 3, 1) if x.dim() == 4 else x
