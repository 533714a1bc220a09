"""The benchmark's S3 transfers, for both sides' data: whole folders up, whole prefixes down, 8 threads
(the service's default ORCA_DOWNLOAD_THREADS; boto3 clients are thread-safe). No torch, no TensorFlow:
the reference's processes import it too."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

THREADS = 8


def upload_tree(s3, bucket: str, folder: str | os.PathLike, prefix: str, suffix: str = ".png",
                threads: int = THREADS) -> int:
    """Upload every `suffix` file under `folder` to `prefix` + its relative path; how many."""
    folder = Path(folder)
    paths = sorted(path for path in folder.rglob(f"*{suffix}") if path.is_file())
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda path: s3.upload_file(str(path), bucket, prefix + path.relative_to(folder).as_posix()),
                      paths))
    return len(paths)


def download_prefix(s3, bucket: str, prefix: str, folder: str, subfolders=None, suffix: str = ".png",
                    threads: int = THREADS) -> int:
    """Download every `suffix` object under `prefix` (in `subfolders` of it, if given), keeping the relative
    path, into `folder`; how many."""
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", ()))
    if subfolders:
        keys = [k for k in keys if k[len(prefix):].split("/", 1)[0] in subfolders]
    keys = [k for k in keys if k.lower().endswith(suffix)]

    def one(key):
        target = os.path.join(folder, *key[len(prefix):].split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        s3.download_file(bucket, key, target)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, keys))
    return len(keys)
