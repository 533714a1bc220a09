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
}


def defaults() -> dict:
    return {
        "LOCAL_ROOT": os.getcwd(),
        "WORK_DIR": None,
        "DEVICE": None,
        "BATCH_SIZE": 32,
        "MAX_EPOCHS": 1000,
        "MAX_IMAGE_SIZE": 4096,
        "DOWNLOAD_THREADS": 8,
    }


def from_env(environ=os.environ) -> dict:
    config = defaults()
    for key, (name, kind) in ENV.items():
        value = environ.get(name)
        if value is None:
            continue
        if kind is int:
            try:
                config[key] = int(value)
            except ValueError:
                raise SystemExit(f"{name} must be an integer, got {value!r}") from None
        elif key in ("WORK_DIR", "DEVICE"):
            config[key] = value or None
        else:
            config[key] = value  # LOCAL_ROOT: '' disables local paths
    return config
