"""The one place that chooses where tensors live (CUDA when there is one, else the CPU), which
engine scores on it, and at which precision.

- `pick_device(requested)` → torch.device (imports torch);
- `scoring_backend(requested)` → "onnxruntime" on the CPU, "torch" on CUDA; it does not import torch
  when the machine plainly has no NVIDIA driver (no /dev/nvidiactl, no /proc/driver/nvidia), so a
  CPU-only service scores without loading torch;
- `resolve_precision(value)` → "fp32" or "bf16" (ORCA_PREDICT_PRECISION, default fp32): bf16 autocast
  in the torch scoring path (training.torch_scoring) on CUDA and, when asked, on the CPU;
- `training_precision(value, device)` → "fp32" or "bf16" (ORCA_PRECISION, `auto` by default in the
  service): `auto` trains in bf16 autocast where the hardware computes bf16 natively
  (`native_bf16`: CUDA compute capability >= 8.0, x86 CPUs with AMX-BF16 or AVX512-BF16) and in
  fp32 elsewhere (emulated bf16 is slower than fp32: it is never chosen for you);
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
TRAINING_PRECISIONS = ("auto", "fp32", "bf16")
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs with native bf16 arithmetic


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
    """Scoring precision: `value` or "fp32"; TrainingError for anything but fp32 / bf16."""
    value = (value or "fp32").strip().lower()
    if value not in PRECISIONS:
        raise TrainingError(f"precision must be one of {', '.join(PRECISIONS)} (ORCA_PREDICT_PRECISION), "
                            f"got {value!r}")
    return value


def check_training_precision(value: str | None) -> str:
    """`value` or "auto", checked; TrainingError for anything but auto / fp32 / bf16."""
    value = (value or "auto").strip().lower()
    if value not in TRAINING_PRECISIONS:
        raise TrainingError(f"training precision must be one of {', '.join(TRAINING_PRECISIONS)} "
                            f"(ORCA_PRECISION), got {value!r}")
    return value


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The feature flags the kernel reports for the first CPU (empty where there is no /proc/cpuinfo)."""
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                if line.startswith("flags") and ":" in line:
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device, flags: frozenset[str] | None = None) -> bool:
    """Whether `device` computes bf16 natively: CUDA compute capability >= 8.0 (Ampere and later), or a
    CPU with AMX-BF16 or AVX512-BF16 (`flags`: the CPU's flags, read from /proc/cpuinfo by default)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        flags = cpu_flags() if flags is None else flags
        return any(flag in flags for flag in BF16_CPU_FLAGS)
    return False


def training_precision(value: str | None, device, flags: frozenset[str] | None = None) -> str:
    """The precision a training runs at: "bf16" or "fp32" (`value`: auto / fp32 / bf16; see above)."""
    value = check_training_precision(value)
    if value == "auto":
        return "bf16" if native_bf16(device, flags) else "fp32"
    return value


def device_label(requested: str | None = None) -> str:
    """What /health can report ("cpu", "cuda", "cuda:1") without importing torch on a CPU-only machine."""
    if scoring_backend(requested) == "onnxruntime" and "torch" not in sys.modules:
        return "cpu"
    return str(pick_device(requested))


def should_preload(setting: str | None) -> bool:
    """ORCA_PRELOAD_TORCH: "1"/"true" (the service's default) always, "0"/"false" never, "auto" where
    an NVIDIA driver is present. Preloading keeps the import (5–9 s on 2 cores) out of the first
    /train; "auto" and "0" let a CPU service that only scores (ONNX Runtime) keep torch's ≈ 650 MiB
    out until a /train needs it."""
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
        threading.current_thread().error = f"{type(error).__name__}: {error}"  # for /ready
        return
    LOG.info("torch %s loaded in the background in %.1f s", torch.__version__, time.perf_counter() - started)


def preload_torch_in_background() -> threading.Thread:
    """Start importing torch and the training modules on a daemon thread; `join()` it to wait. Its
    `error` is None, or what the import raised. Imports are safe across threads (a module imported
    twice at once waits for the first)."""
    thread = threading.Thread(target=_preload, name="orca-preload-torch", daemon=True)
    thread.error = None
    thread.start()
    return thread
