"""The project's one atomic-write helper: readers see the old file (or none) or the whole new one,
never a part. Used for model files, ONNX exports, downloads, cache indexes and local uploads.

The file it publishes gets the mode an ordinary `open(path, "w")` would give it (0666 less the
process's umask: 0644 under the usual 022), not `mkstemp`'s private 0600, so a model written to a
shared folder is readable by whoever the folder lets read it."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the OS says it (Linux: /proc/self/status);
    elsewhere set and restored under a lock (files other threads create meanwhile may get 0o022)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def published_mode() -> int:
    """The mode of a newly published file: what an ordinary write would create."""
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_output(path, suffix: str = "", *, overwrite: bool = True, prefix: str = ".tmp-"):
    """Yield a temporary path beside `path`; when the block succeeds, move it onto `path`.

    `overwrite=False` links it into place instead, which fails with FileExistsError when `path`
    exists (never replaces a file, even against a concurrent writer). On failure, or after the
    link, the temporary file is removed; a process killed inside the block leaves only a hidden
    `<prefix>…` file beside `path`, never a partial file under its name. The published file gets
    `published_mode()` (0644 under umask 022); the temporary one stays 0600 while it is written.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, published_mode())  # mkstemp made it 0600
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes_atomically(path, data: bytes) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
