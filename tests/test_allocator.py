"""service.allocator: with glibc's thresholds raised and one arena, a tensor-sized block freed by a
worker thread serves the next allocation instead of being mapped and faulted in afresh; the service
sets it up (ORCA_TUNE_MALLOC) and gives the memory back after a training."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.allocator import _glibc, keep_freed_blocks, release_freed_blocks

ROOT = Path(__file__).resolve().parent.parent
needs_glibc = pytest.mark.skipif(_glibc() is None, reason="the C library is not glibc")

# Four training steps of a small convolutional net in a worker thread, as the service's training job
# runs them (tensors of 4–130 MB, made and freed each step): the minor page faults they cost.
FAULTS = """
import resource, sys, threading
import torch
import torch.nn.functional as F
if sys.argv[1] == "tuned":
    from service.allocator import keep_freed_blocks
    assert keep_freed_blocks()
def work():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 256, 256)
    w1 = torch.randn(32, 3, 5, 5, requires_grad=True)
    w2 = torch.randn(32, 32, 5, 5, requires_grad=True)
    for _ in range(4):
        F.conv2d(torch.relu(F.conv2d(x, w1, padding=2)), w2, stride=3).mean().backward()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
thread = threading.Thread(target=work)
thread.start(); thread.join()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MALLOC_ARENA_MAX")}
    env["PYTHONPATH"] = str(ROOT)
    run = subprocess.run([sys.executable, "-c", FAULTS, mode], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return int(run.stdout.split()[-1])


@needs_glibc
def test_freed_blocks_serve_the_next_tensor_in_a_worker_thread():
    default, tuned = page_faults("default"), page_faults("tuned")
    # measured on the 2-core EPYC: 1.33 million faults with glibc's defaults, 0.17–0.20 million kept
    assert tuned < default / 2, (default, tuned)


# A 256 MiB block from malloc, written, freed, then malloc_trim: the process's resident bytes at each step.
RESIDENT = """
import ctypes, os, sys
from service.allocator import _glibc, keep_freed_blocks, release_freed_blocks
libc = _glibc()
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
if sys.argv[1] == "tuned":
    assert keep_freed_blocks() is True and keep_freed_blocks() is True  # taken, and again (idempotent)
size = 256 * 2**20
block = libc.malloc(size)
ctypes.memset(block, 1, size)
held = resident()
libc.free(block)
freed = resident()
released = release_freed_blocks()
print(held, freed, released, resident(), release_freed_blocks())
"""


def resident_bytes(mode: str) -> tuple[int, int, bool, int, bool]:
    """(resident bytes with the block written, after free, malloc_trim released?, after it, a second release?)"""
    run = subprocess.run([sys.executable, "-c", RESIDENT, mode], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    held, freed, released, after, again = run.stdout.split()
    return int(held), int(freed), released == "True", int(after), again == "True"


@needs_glibc
def test_freed_blocks_stay_mapped_until_released_and_releasing_is_safe_to_repeat():
    size = 256 * 2**20
    held, freed, released, _, _ = resident_bytes("default")
    assert freed < held - size // 2  # glibc's default: a block that large is unmapped when freed
    held, freed, released, after, _ = resident_bytes("tuned")  # (the script releases twice: no harm)
    assert freed > held - size // 4, (held, freed)  # kept in the heap for the next tensor
    assert released is True and after < freed - size // 2, (freed, after)  # malloc_trim gave it back


def test_service_runtime_tunes_the_allocator_unless_told_not_to(monkeypatch, tmp_path):
    from service.runtime import Runtime

    calls = []
    monkeypatch.setattr("service.allocator.keep_freed_blocks", lambda: calls.append(1) or True)
    Runtime.from_config({"LOCAL_ROOT": str(tmp_path), "TUNE_MALLOC": 0})
    assert calls == []
    Runtime.from_config({"LOCAL_ROOT": str(tmp_path)})  # the default: ORCA_TUNE_MALLOC=1
    assert calls == [1]
