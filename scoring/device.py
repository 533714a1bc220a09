"""The one place that chooses where tensors live (CUDA when there is one, else the CPU), which
engine scores on it, and at which precision.

- `pick_device(requested)` → torch.device (imports torch);
- `scoring_backend(requested)` → "onnxruntime" on the CPU, "torch" on CUDA; it does not import torch
  when the machine plainly has no NVIDIA driver (no /dev/nvidiactl, no /proc/driver/nvidia), so a
  CPU-only service scores without loading torch;
- `resolve_precision(value)` → "fp32" or "bf16" (ORCA_PREDICT_PRECISION, default fp32): bf16 autocast
  in the torch scoring path (scoring.torch_scoring) on CUDA and, when asked, on the CPU;
- `device_label(requested)` → what /health reports.

Training's precision is `training.precision`; the tensor helpers both training and scoring use
(`to_batch`, `autocast`, `check_input_size`) are `scoring.tensors`, which imports torch.
"""

from __future__ import annotations

import os
import sys

from .errors import ScoringError

PRECISIONS = ("fp32", "bf16")


def pick_device(requested=None):
    """`requested` ("cpu", "cuda", "cuda:1", a torch.device) or, when None, CUDA if available else CPU.

    Asking for CUDA on a machine without it raises ScoringError rather than silently using the CPU.
    """
    import torch

    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ScoringError(f"device {str(device)!r} requested but CUDA is not available here")
    return device


def no_nvidia_driver() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return True
    return not (os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia/version"))


def cuda_available() -> bool:
    """torch.cuda.is_available(), without importing torch where there is plainly no NVIDIA driver."""
    if "torch" not in sys.modules and no_nvidia_driver():
        return False
    import torch

    return torch.cuda.is_available()


def scoring_backend(requested: str | None = None) -> str:
    """"onnxruntime" (CPU) or "torch" (CUDA) for `requested` ("cpu", "cuda[:n]" or None = auto)."""
    kind = str(requested).split(":", 1)[0].strip().lower() if requested else None
    if kind == "cpu":
        return "onnxruntime"
    if kind is None:
        return "torch" if cuda_available() else "onnxruntime"
    return "torch"  # "cuda" (pick_device refuses it where CUDA is missing) or another torch device


def resolve_precision(value: str | None = None) -> str:
    """Scoring precision: `value` or "fp32"; ScoringError for anything but fp32 / bf16."""
    value = (value or "fp32").strip().lower()
    if value not in PRECISIONS:
        raise ScoringError(f"precision must be one of {', '.join(PRECISIONS)} (ORCA_PREDICT_PRECISION), "
                            f"got {value!r}")
    return value


def device_label(requested: str | None = None) -> str:
    """What /health can report ("cpu", "cuda", "cuda:1") without importing torch on a CPU-only machine."""
    if scoring_backend(requested) == "onnxruntime" and "torch" not in sys.modules:
        return "cpu"
    return str(pick_device(requested))
