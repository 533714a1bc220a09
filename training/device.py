"""The one place that chooses where tensors live: CUDA when there is one, else the CPU."""

from __future__ import annotations

import torch

from .errors import TrainingError


def pick_device(requested: str | torch.device | None = None) -> torch.device:
    """`requested` ("cpu", "cuda", "cuda:1", a torch.device) or, when None, CUDA if available else CPU.

    Asking for CUDA on a machine without it raises TrainingError rather than silently using the CPU.
    """
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {str(device)!r} requested but CUDA is not available here")
    return device
