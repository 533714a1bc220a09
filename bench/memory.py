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


class GpuMemoryPeak:
    """Peak GPU memory in use (MiB, whole card, `nvidia-smi`), sampled every `interval` s in a thread.

    The card's total is what a GPU service costs (the CUDA context, cuDNN workspaces and the caching
    allocator's reserve included), which torch's own counters do not show. Does nothing where
    nvidia-smi is missing; `peak_mib` is then None.
    """

    def __init__(self, interval: float = 0.25):
        import shutil
        import threading

        self.interval = interval
        self.peak_mib: float | None = None
        self._stop = threading.Event()
        self._thread = None
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._sample, name="gpu-memory", daemon=True)
            self._thread.start()

    def read_mib(self) -> float | None:
        import subprocess

        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10).stdout
            return float(out.split()[0])
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return None

    def _sample(self) -> None:
        while not self._stop.is_set():
            value = self.read_mib()
            if value is not None:
                self.peak_mib = max(self.peak_mib or 0.0, value)
            self._stop.wait(self.interval)

    def stop(self) -> float | None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        return self.peak_mib
