"""The project's one atomic-write helper: readers see the old file (or none) or the whole new one,
never a part. Used for model files, ONNX exports, downloads, cache indexes and local uploads."""

from __future__ import annotations

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_output(path, suffix: str = "", *, overwrite: bool = True, prefix: str = ".tmp-"):
    """Yield a temporary path beside `path`; when the block succeeds, move it onto `path`.

    `overwrite=False` links it into place instead, which fails with FileExistsError when `path`
    exists (never replaces a file, even against a concurrent writer). On failure, or after the
    link, the temporary file is removed; a process killed inside the block leaves only a hidden
    `<prefix>…` file beside `path`, never a partial file under its name.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
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
