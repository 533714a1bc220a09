"""Process memory from /proc (Linux): peak resident set (VmHWM) and current (VmRSS), in MiB."""

from __future__ import annotations


def proc_status_mib(pid: int | str = "self") -> dict:
    """{"VmHWM": MiB, "VmRSS": MiB} of process `pid`, or {} where /proc is not readable."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    values[key] = int(rest.split()[0]) / 1024.0  # kB → MiB
    except OSError:
        return {}
    return values
