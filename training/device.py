"""The one place that chooses where tensors live (CUDA when there is one, else the CPU), which
engine scores on it, and at which precision.

- `pick_device(requested)` → torch.device (imports torch);
- `scoring_backend(requested)` → "onnxruntime" on the CPU, "torch" on CUDA; it does not import torch
  when the machine plainly has no NVIDIA driver (no /dev/nvidiactl, no /proc/driver/nvidia), so a
  CPU-only service scores without loading torch;
- `resolve_precision(value)` → "fp32" or "bf16" (ORCA_PRECISION, default fp32): bf16 autocast is
  used by the torch scoring path (training.torch_scoring) on CUDA and, when asked, on the CPU;
- `preload_torch_in_background()` imports what training needs (torch, and torch._dynamo, which
  torch.optim loads when an optimizer is built) on a thread, so a request does not wait for it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from .errors import TrainingError

LOG = logging.getLogger("training")

PRECISIONS = ("fp32", "bf16")


def pick_device(requested=None):
    """`requested` ("cpu", "cuda", "cuda:1", a torch.device) or, when None, CUDA if available else CPU.

    Asking for CUDA on a machine without it raises TrainingError rather than silently using the CPU.
    """
    import torch

    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {str(device)!r} requested but CUDA is not available here")
    return device


def _no_nvidia_driver() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return True
    return not (os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia/version"))


def cuda_available() -> bool:
    """torch.cuda.is_available(), without importing torch where there is plainly no NVIDIA driver."""
    if "torch" not in sys.modules and _no_nvidia_driver():
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
    """`value` or "fp32"; TrainingError for anything but fp32 / bf16."""
    value = (value or "fp32").strip().lower()
    if value not in PRECISIONS:
        raise TrainingError(f"precision must be one of {', '.join(PRECISIONS)} (ORCA_PRECISION), got {value!r}")
    return value


def device_label(requested: str | None = None) -> str:
    """What /health can report ("cpu", "cuda", "cuda:1") without importing torch on a CPU-only machine."""
    if scoring_backend(requested) == "onnxruntime" and "torch" not in sys.modules:
        return "cpu"
    return str(pick_device(requested))


def should_preload(setting: str | None) -> bool:
    """ORCA_PRELOAD_TORCH: "1"/"true" always, "0"/"false" never, "auto" (default) where an NVIDIA
    driver is present: a CUDA service needs torch for every request, while a CPU-only service scores
    with ONNX Runtime and keeps torch's ≈ 650 MiB out until its first /train."""
    value = (setting or "auto").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    if value != "auto":
        raise TrainingError(f"ORCA_PRELOAD_TORCH must be auto, 1 or 0, got {setting!r}")
    return not _no_nvidia_driver()


def _preload() -> None:
    started = time.perf_counter()
    try:
        import torch
        import torch._dynamo  # noqa: F401  (torch.optim imports it when the first optimizer is built)

        from . import loop  # noqa: F401  (and with it conversion's bridge)

        if not _no_nvidia_driver():
            from . import torch_decode  # noqa: F401  (torchvision: how the CUDA path decodes PNGs)
        import matplotlib.backends.backend_agg  # noqa: F401  (the learning curves drawn after a training)
    except Exception as error:  # noqa: BLE001 - the request that needs torch reports it properly
        LOG.warning("preloading torch failed: %s", error)
        return
    LOG.info("torch %s loaded in the background in %.1f s", torch.__version__, time.perf_counter() - started)


def preload_torch_in_background() -> threading.Thread:
    """Start importing torch and the training modules on a daemon thread; `join()` it to wait.
    Imports are safe across threads (a module imported twice at once waits for the first)."""
    thread = threading.Thread(target=_preload, name="orca-preload-torch", daemon=True)
    thread.start()
    return thread
