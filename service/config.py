"""Configuration: the one place that reads the environment.

Defaults, overridden by environment variables, overridden by `create_app(config)`. Every setting
of `service/` and `training/` comes from here (the service passes values down; nothing else reads
`os.environ`). `docs/operations.md` has the same table; a test keeps the two in agreement.
boto3 reads its own variables (`AWS_*`), which are listed there too.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    key: str  # key in app.config
    env: str  # environment variable
    kind: type  # str, int or float
    default: object  # None = unset
    meaning: str
    empty_is_unset: bool = True  # '' in the environment means "use the default"


SETTINGS = (
    Setting("HOST", "HOST", str, "127.0.0.1", "address `orca serve` / `orca demo` listen on"),
    Setting("PORT", "PORT", int, 5001, "port `orca serve` / `orca demo` listen on"),
    Setting("LOCAL_ROOT", "ORCA_LOCAL_ROOT", str, "", "local paths must lie inside it (default: the working "
            "directory; `/data` in the image); empty = S3 only", empty_is_unset=False),
    Setting("WORK_DIR", "ORCA_WORK_DIR", str, None, "scratch space of a request, removed after it "
            "(default: the system temp dir)"),
    Setting("CACHE_DIR", "ORCA_CACHE_DIR", str, None, "model cache (URL + ETag), ONNX exports, mirrors of "
            "S3 prefixes (default: `<temp>/orca-cache`)"),
    Setting("ONNX_CACHE", "ORCA_ONNX_CACHE", str, None, "where ONNX exports of models are cached by content "
            "hash (default: `<ORCA_CACHE_DIR>/onnx`)"),
    Setting("STATE_DIR", "ORCA_STATE_DIR", str, None, "where the service keeps state that must survive a restart "
            "(the job database, `jobs.sqlite3`); default: `<temp>/orca-state-<uid>/<hash of local root and port>`, "
            "this service's alone"),
    Setting("TENSORBOARD_DIR", "ORCA_TENSORBOARD_DIR", str, None, "TensorBoard event files of each training: "
            "unset = uploaded beside the new version as `<NAME_N+1>.tensorboard/`; a local folder = written there "
            "live (`<folder>/<model>-<UTC time>/`); `off` = none"),
    Setting("DEVICE", "ORCA_DEVICE", str, None, "torch device (`cuda`, `cuda:1`, `cpu`); default: CUDA if "
            "available, else the CPU"),
    Setting("PRECISION", "ORCA_PRECISION", str, "auto", "training precision: `auto` trains in bfloat16 "
            "autocast where the hardware computes bf16 natively (CUDA compute capability >= 8.0, CPUs with "
            "AMX-BF16 or AVX512-BF16), else in float32; `fp32`, `bf16` force one. Weights and the written "
            "model stay float32"),
    Setting("PREDICT_PRECISION", "ORCA_PREDICT_PRECISION", str, "fp32", "`bf16`: torch scoring in bfloat16 "
            "autocast (CUDA); `fp32` keeps the 1e-4 parity with the original"),
    Setting("PIXEL_CACHE_BYTES", "ORCA_PIXEL_CACHE_BYTES", int, 20_000_000_000, "bytes of decoded pixels "
            "kept on disk under `<ORCA_CACHE_DIR>/pixels` (least recently used out); 0 disables"),
    Setting("PIXEL_CACHE_MIN_FREE", "ORCA_PIXEL_CACHE_MIN_FREE", int, 2_000_000_000, "bytes the pixel cache "
            "leaves free on its disk: it evicts its own oldest entries, or stops writing, rather than go below"),
    Setting("GPU_PIXEL_CACHE", "ORCA_GPU_PIXEL_CACHE", float, 0.3, "fraction of the GPU's memory that keeps "
            "decoded pixels on CUDA (least recently used out); 0 disables; no effect on the CPU"),
    Setting("PRELOAD_TORCH", "ORCA_PRELOAD_TORCH", str, "1", "import torch at start-up, on a thread, and warm "
            "the audio path (`/ready` answers 503 until done): `1` always, `auto` only where an NVIDIA driver is (a CPU "
            "service then loads it at its first /train), `0` never"),
    Setting("TUNE_MALLOC", "ORCA_TUNE_MALLOC", int, 1, "1: glibc keeps freed blocks of up to 2 GiB for the "
            "next tensor and returns them after each training (CPU training steps ≈ 40 % faster); 0: glibc's "
            "defaults"),
    Setting("SCORING_NICE", "ORCA_SCORING_NICE", int, 10, "CPU scoring (ONNX Runtime): added to the niceness of "
            "the threads that run the model (Linux), so that those downloading, decoding and drawing the next "
            "batch go first; 0-19, 0: no change"),
    Setting("BATCH_SIZE", "ORCA_BATCH_SIZE", int, 32, "batch size of training and scoring"),
    Setting("MAX_EPOCHS", "ORCA_MAX_EPOCHS", int, 1000, "upper bound of `epochs`"),
    Setting("MAX_IMAGE_SIZE", "ORCA_MAX_IMAGE_SIZE", int, 4096, "upper bound of `img_width` and `img_height`"),
    Setting("MAX_PIXELS", "ORCA_MAX_PIXELS", int, 50_000_000, "larger images are skipped (decompression "
            "bombs); 0 = no limit"),
    Setting("DOWNLOAD_THREADS", "ORCA_DOWNLOAD_THREADS", int, 8, "parallel downloads per request"),
    Setting("MAX_LISTING", "ORCA_MAX_LISTING", int, 100_000, "most objects one dataset or folder listing "
            "may hold (422 beyond)"),
    Setting("SCORE_CACHE", "ORCA_SCORE_CACHE", int, 500_000, "scores kept per model file for unchanged "
            "clips; 0 disables"),
    Setting("MAX_QUEUED", "ORCA_MAX_QUEUED", int, 8, "training jobs that may wait for the device (429 beyond)"),
    Setting("MAX_TRAIN_WAITERS", "ORCA_MAX_TRAIN_WAITERS", int, 8, "`GET /train` requests that may wait for "
            "their job at once, each holding a request thread (503 with Retry-After beyond); keep it below "
            "the server's threads"),
    Setting("JOB_HISTORY", "ORCA_JOB_HISTORY", int, 100, "finished jobs kept in the job database for `GET /jobs`"),
    Setting("API_TOKEN", "API_TOKEN", str, None, "bearer token every endpoint but `/health` requires"),
    Setting("ALLOWED_PREFIXES", "ORCA_ALLOWED_PREFIXES", str, None, "comma-separated URL prefixes that may "
            "be read and written"),
    Setting("READY_BUCKET", "ORCA_READY_BUCKET", str, None, "bucket `/ready` checks with HeadBucket"),
    Setting("S3_MAX_ATTEMPTS", "ORCA_S3_MAX_ATTEMPTS", int, 5, "attempts per S3 call (botocore's standard "
            "retries) and per download of a body that breaks off"),
    Setting("PUBLIC_BASE_URL", "ORCA_PUBLIC_BASE_URL", str, None, "public base of `s3://` objects in "
            "/predict's `audio_url`: `<base>/<key>`, `{bucket}` replaced by the bucket's name (MinIO: "
            "`http://minio:9000/{bucket}`); unset: the original's `https://<bucket>.s3.amazonaws.com/<key>`"),
    Setting("PUBLIC_URL", "ORCA_PUBLIC_URL", str, None, "the http(s) URL clients reach this service at (behind "
            "a proxy: its public one): local datasets' `audio_url` is `<ORCA_PUBLIC_URL>/clips/<path under "
            "ORCA_LOCAL_ROOT>`, served by the service; unset: the request's own URL, and `file://` URLs from the "
            "CLI (`orca predict`, `orca score`)"),
    Setting("ALLOW_UNCONDITIONAL_WRITES", "ORCA_ALLOW_UNCONDITIONAL_WRITES", int, 0, "1: where the S3 server "
            "does not support conditional writes (`If-None-Match: *` answered NotImplemented), write new "
            "versions after an existence check only (two writers at the same moment could replace each "
            "other's); 0: refuse to write there (501)"),
    Setting("LABEL_STUDIO_URL", "LABEL_STUDIO_URL", str, None, "Label Studio's URL for the Label Studio ML backend "
            "(`/labelstudio`): where task media (`/data/upload/…`, `/data/local-files/…`) and exports are fetched; "
            "unset: the `hostname` Label Studio sends to `/labelstudio/setup`"),
    Setting("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_API_KEY", str, None, "Label Studio API key the backend fetches "
            "media and exports with: a legacy token (`Authorization: Token …`) or a personal access token (a JWT "
            "refresh token, exchanged at `/api/token/refresh/` for `Bearer` access tokens); unset: the "
            "`access_token` of `/labelstudio/setup`"),
    Setting("LABELSTUDIO_MODEL_URL", "ORCA_LABELSTUDIO_MODEL_URL", str, None, "the folder of model versions (or "
            "one version in it: then its name's versions) that answers Label Studio projects not in "
            "ORCA_LABELSTUDIO_PROJECTS: the newest version predicts, training writes the next; unset: only the "
            "mapped projects are served"),
    Setting("LABELSTUDIO_PROJECTS", "ORCA_LABELSTUDIO_PROJECTS", str, None, "one model folder per Label Studio "
            "project, comma-separated `PROJECT_ID=URL` (`3=s3://orca/models_a/,7=local/models_b/`)"),
    Setting("LABELSTUDIO_CLASSES", "ORCA_LABELSTUDIO_CLASSES", str, "calls,nocalls", "the model's classes, "
            "comma-separated: the class folders of its labeled sets, whose sorted order is the class index "
            "(P(class 1) >= 0.5 chooses the second); the label config's choices must be exactly these"),
    Setting("LABELSTUDIO_STRATEGY", "ORCA_LABELSTUDIO_STRATEGY", str, "uncertainty", "query strategy of the "
            "predictions' `score` (uncertainty, entropy, bald, variation_ratio, random): a confidence in [0, 1], "
            "so Label Studio's prediction score sorted ascending lists the clips to label first"),
    Setting("LABELSTUDIO_PASSES", "ORCA_LABELSTUDIO_PASSES", int, 10, "Monte Carlo dropout passes of the bald "
            "and variation_ratio scores"),
    Setting("LABELSTUDIO_EPOCHS", "ORCA_LABELSTUDIO_EPOCHS", int, 3, "epochs of a training started from Label "
            "Studio"),
    Setting("LABELSTUDIO_VALIDATION", "ORCA_LABELSTUDIO_VALIDATION", float, 0.2, "share of each class's "
            "annotated tasks that validates a training from Label Studio (seeded split; at least one per class "
            "that has two or more)"),
    Setting("LABELSTUDIO_TRAIN_EVERY", "ORCA_LABELSTUDIO_TRAIN_EVERY", int, 0, "N > 0: train once a project "
            "has N more annotated tasks than the newest version was trained on (checked on annotation events "
            "with Label Studio's API); 0: only when Label Studio asks (START_TRAINING)"),
    Setting("LABELSTUDIO_DATA_URL", "ORCA_LABELSTUDIO_DATA_URL", str, None, "where the labeled sets exported "
            "from Label Studio are written, one per training: `<url>/project-<id>/<UTC time>/{train,validation}/"
            "<class>/`; unset: `labelstudio/` beside the model folder"),
    Setting("LOG_LEVEL", "LOG_LEVEL", str, None, "logging level; unset: INFO for the server (`orca serve`, "
            "`orca demo`, gunicorn), WARNING for the other `orca` commands"),
)


def defaults() -> dict:
    config = {s.key: s.default for s in SETTINGS}
    config["LOCAL_ROOT"] = os.getcwd()
    return config


def from_env(environ=None) -> dict:
    """The configuration the environment describes; SystemExit naming the variable if one is malformed."""
    environ = os.environ if environ is None else environ
    config = defaults()
    for s in SETTINGS:
        value = environ.get(s.env)
        if value is None or (value == "" and s.empty_is_unset):
            continue
        if s.kind in (int, float):
            try:
                config[s.key] = s.kind(float(value)) if s.kind is int and "e" in value.lower() else s.kind(value)
            except ValueError:
                raise SystemExit(f"{s.env} must be a{'n integer' if s.kind is int else ' number'}, "
                                 f"got {value!r}") from None
        else:
            config[s.key] = value
    return config


def cache_dir(config: dict) -> str:
    return config.get("CACHE_DIR") or os.path.join(tempfile.gettempdir(), "orca-cache")


def state_dir(config: dict) -> str:
    """ORCA_STATE_DIR, else a folder of this service alone: `<temp>/orca-state-<uid>/<key>`, the key a
    hash of the local root (resolved; empty for S3 only) and the port, so two services on one machine
    never share a job database unless configured to (the workers of one service share theirs)."""
    if config.get("STATE_DIR"):
        return config["STATE_DIR"]
    root = config.get("LOCAL_ROOT")
    root = "" if root == "" else os.path.realpath(root if root is not None else os.getcwd())
    key = hashlib.sha256(f"{root}\0{config.get('PORT')}".encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"orca-state-{os.geteuid()}", key)


def pixel_cache_dir(config: dict) -> str:
    return os.path.join(cache_dir(config), "pixels")


def onnx_cache_dir(config: dict) -> str:
    return config.get("ONNX_CACHE") or os.path.join(cache_dir(config), "onnx")
