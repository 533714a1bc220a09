"""Model version names: `NAME_N.h5` → `NAME_{N+1}.h5` in the same folder, never overwriting.

A name without a `_N` suffix gets `_1` (`my_model.h5` → `my_model_1.h5`; `final.h5` → `final_1.h5`).
If the next name is taken (an earlier /train from the same model, or a concurrent one), the next
free number is used; the upload itself is conditional, so two writers never replace each other.
"""

from __future__ import annotations

import posixpath
import re

from .errors import AlreadyExists, StorageError
from .storage import Location

_VERSIONED = re.compile(r"^(?P<base>.+)_(?P<n>\d+)$")
MAX_TRIES = 10_000


def split_version(filename: str) -> tuple[str, int | None, str]:
    """`srkw_cnn_3.h5` → ('srkw_cnn', 3, '.h5'); `model.h5` → ('model', None, '.h5')."""
    stem, ext = posixpath.splitext(filename)
    match = _VERSIONED.match(stem)
    if match:
        return match["base"], int(match["n"]), ext
    return stem, None, ext


def candidate_names(filename: str):
    """Names to try for the next version, in order: N+1, N+2, ..."""
    base, n, ext = split_version(filename)
    ext = ext or ".h5"
    start = 1 if n is None else n + 1
    for number in range(start, start + MAX_TRIES):
        yield f"{base}_{number}{ext}"


def next_version_name(filename: str) -> str:
    return next(candidate_names(filename))


def publish_new_version(model: Location, local_path: str) -> Location:
    """Upload `local_path` as the first free next version of `model`; return where it went."""
    for name in candidate_names(model.name):
        target = model.sibling(name)
        if target.storage.exists(target.key):
            continue
        try:
            target.storage.upload(local_path, target.key)
        except AlreadyExists:
            continue  # somebody else took it between our check and our write
        return target
    raise StorageError(f"no free version name next to {model.url} after {MAX_TRIES} tries")
