"""The precision a training runs at (ORCA_PRECISION, `auto` by default in the service): `auto` trains
in bf16 autocast where the hardware computes bf16 natively (`native_bf16`: CUDA compute capability
>= 8.0, x86 CPUs with AMX-BF16 or AVX512-BF16) and in fp32 elsewhere (emulated bf16 is slower than
fp32: it is never chosen for you)."""

from __future__ import annotations

from .errors import TrainingError

TRAINING_PRECISIONS = ("auto", "fp32", "bf16")
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs with native bf16 arithmetic


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
