"""Configuration: defaults, overridden by environment variables, overridden by `create_app(config)`.

| env var               | config key      | default            | meaning                                             |
|-----------------------|-----------------|--------------------|-----------------------------------------------------|
| ORCA_LOCAL_ROOT       | LOCAL_ROOT      | current directory  | local paths must lie inside; empty = S3 only        |
| ORCA_WORK_DIR         | WORK_DIR        | system temp dir    | where requests download models and images           |
| ORCA_DEVICE           | DEVICE          | auto (CUDA if any) | torch device for training and scoring               |
| ORCA_BATCH_SIZE       | BATCH_SIZE      | 32                 | batch size of training and scoring                  |
| ORCA_MAX_EPOCHS       | MAX_EPOCHS      | 1000               | upper bound of `epochs`                             |
| ORCA_MAX_IMAGE_SIZE   | MAX_IMAGE_SIZE  | 4096               | upper bound of `img_width` and `img_height`         |
| ORCA_DOWNLOAD_THREADS | DOWNLOAD_THREADS| 8                  | parallel downloads per request                      |
| API_TOKEN             | API_TOKEN       | unset (no auth)    | bearer token every endpoint but /health requires    |
| ORCA_ALLOWED_PREFIXES | ALLOWED_PREFIXES| unset (all)        | comma-separated URL prefixes that may be read/written|
| ORCA_MAX_LISTING      | MAX_LISTING     | 100000             | most objects one dataset/folder listing may hold    |
| ORCA_MAX_QUEUED       | MAX_QUEUED      | 8                  | training jobs that may wait (429 beyond)            |
| ORCA_JOB_HISTORY      | JOB_HISTORY     | 100                | finished jobs kept for GET /jobs                    |
| ORCA_READY_BUCKET     | READY_BUCKET    | unset              | bucket /ready checks with HeadBucket                |
| ORCA_S3_MAX_ATTEMPTS  | S3_MAX_ATTEMPTS | 5                  | attempts per S3 call (botocore standard retries)    |
| ORCA_S3_RETRY_BASE    | S3_RETRY_BASE   | 0.2                | seconds; backoff base of re-downloads of broken bodies|
| ORCA_PRELOAD_TORCH    | PRELOAD_TORCH   | auto               | import torch at start-up: auto = where a GPU driver is|
"""

from __future__ import annotations

import os

ENV = {
    "LOCAL_ROOT": ("ORCA_LOCAL_ROOT", str),
    "WORK_DIR": ("ORCA_WORK_DIR", str),
    "DEVICE": ("ORCA_DEVICE", str),
    "BATCH_SIZE": ("ORCA_BATCH_SIZE", int),
    "MAX_EPOCHS": ("ORCA_MAX_EPOCHS", int),
    "MAX_IMAGE_SIZE": ("ORCA_MAX_IMAGE_SIZE", int),
    "DOWNLOAD_THREADS": ("ORCA_DOWNLOAD_THREADS", int),
    "API_TOKEN": ("API_TOKEN", str),
    "ALLOWED_PREFIXES": ("ORCA_ALLOWED_PREFIXES", str),
    "MAX_LISTING": ("ORCA_MAX_LISTING", int),
    "MAX_QUEUED": ("ORCA_MAX_QUEUED", int),
    "JOB_HISTORY": ("ORCA_JOB_HISTORY", int),
    "READY_BUCKET": ("ORCA_READY_BUCKET", str),
    "S3_MAX_ATTEMPTS": ("ORCA_S3_MAX_ATTEMPTS", int),
    "S3_RETRY_BASE": ("ORCA_S3_RETRY_BASE", float),
    "PRELOAD_TORCH": ("ORCA_PRELOAD_TORCH", str),
}
OPTIONAL = ("WORK_DIR", "DEVICE", "API_TOKEN", "ALLOWED_PREFIXES", "READY_BUCKET")  # '' means unset


def defaults() -> dict:
    return {
        "LOCAL_ROOT": os.getcwd(),
        "WORK_DIR": None,
        "DEVICE": None,
        "BATCH_SIZE": 32,
        "MAX_EPOCHS": 1000,
        "MAX_IMAGE_SIZE": 4096,
        "DOWNLOAD_THREADS": 8,
        "API_TOKEN": None,
        "ALLOWED_PREFIXES": None,
        "MAX_LISTING": 100_000,
        "MAX_QUEUED": 8,
        "JOB_HISTORY": 100,
        "READY_BUCKET": None,
        "S3_MAX_ATTEMPTS": 5,
        "S3_RETRY_BASE": 0.2,
        "PRELOAD_TORCH": "auto",
    }


def from_env(environ=os.environ) -> dict:
    config = defaults()
    for key, (name, kind) in ENV.items():
        value = environ.get(name)
        if value is None:
            continue
        if kind in (int, float):
            try:
                config[key] = kind(value)
            except ValueError:
                raise SystemExit(f"{name} must be a{'n integer' if kind is int else ' number'}, "
                                 f"got {value!r}") from None
        elif key in OPTIONAL:
            config[key] = value or None
        else:
            config[key] = value  # LOCAL_ROOT: '' disables local paths
    return config
