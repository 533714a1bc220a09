"""Everything one app owns at run time, built once by `create_app` (or by the CLI) from its config.

Storage clients, caches, the job manager, the metrics registry, the scorers and the device all live
on one `Runtime` object, kept in `app.extensions["orca"]`: two apps in one process share nothing,
and tests replace a part by passing it to `create_app` (e.g. an `S3Connector` whose client has a
fault injected), never by patching a module. Nothing here knows Flask: the use cases
(`service.train`, `service.predict`, `service.selection`, `service.ops`) take a runtime as their
first argument; a request finds its app's with `service.routes.web.current_runtime()`.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from ._version import __version__
from . import config as config_module
from .access import AllowList
from .cache import CacheDir, ScoreCache
from .jobqueue import JobManager
from .jobstore import JobStore
from .metrics import Metrics
from .storage import S3Connector, StorageLocator

if TYPE_CHECKING:
    from .labelstudio.client import LabelStudioState
    from scoring.pixel_cache import PixelCache
    from scoring.scorers import Scorers


@dataclass
class Runtime:
    config: dict
    storage: StorageLocator
    cache: CacheDir
    scores: ScoreCache
    scorers: "Scorers"
    pixels: "PixelCache"  # decoded pixels by clip identity and size: /predict and /train decode a clip once
    jobs: JobManager
    metrics: Metrics
    allow: AllowList
    run_train: Callable  # (runtime, TrainParams, on_epoch) -> the /train JSON: service.train.run_train
    run_predict: Callable  # (runtime, PredictParams, on_progress) -> PredictItems: service.predict.run_predict
    train_lock: threading.Lock = field(default_factory=threading.Lock)  # one training at a time, jobs or CLI
    train_waiters: threading.BoundedSemaphore = None  # GET /train requests waiting for their job (service.ops.train_and_wait)
    preload: threading.Thread | None = None  # torch's import at start-up (ORCA_PRELOAD_TORCH), for /ready
    labelstudio: "LabelStudioState" = None  # what /labelstudio/setup told, access tokens (service.labelstudio)
    version: str = __version__

    @classmethod
    def from_config(cls, config: dict | None = None, *, s3: S3Connector | None = None,
                    metrics: Metrics | None = None, **parts) -> "Runtime":
        """`config` overlays `service.config.from_env()`. `s3` and `metrics` replace the parts built
        from it, and `parts` any other field (e.g. `run_train`): tests inject fakes here."""
        from scoring.device import resolve_precision
        from scoring.errors import ScoringError
        from training.precision import check_training_precision
        from scoring.pixel_cache import PixelCache, cuda_tier
        from scoring.scorers import Scorers

        from .labelstudio.client import LabelStudioState
        from .predict import run_predict
        from .train import run_train

        merged = config_module.from_env()
        merged.update(config or {})
        try:
            precision = resolve_precision(merged["PREDICT_PRECISION"])
            merged["PRECISION"] = check_training_precision(merged["PRECISION"])
        except ScoringError as error:
            raise SystemExit(str(error)) from None
        if not 0 <= merged["SCORING_NICE"] <= 19:
            raise SystemExit(f"ORCA_SCORING_NICE must be 0 to 19, got {merged['SCORING_NICE']}")
        if merged["TUNE_MALLOC"]:  # process-wide, idempotent: glibc's setting, not this app's state
            from service.allocator import keep_freed_blocks

            keep_freed_blocks()
        s3 = s3 or S3Connector(attempts=merged["S3_MAX_ATTEMPTS"],
                               max_connections=max(16, merged["DOWNLOAD_THREADS"] * 2))
        metrics = metrics or Metrics(__version__)
        fields = dict(
            config=merged,
            storage=StorageLocator(merged["LOCAL_ROOT"], s3, merged["MAX_LISTING"], public_base=merged["PUBLIC_BASE_URL"],
                                   service_url=merged["PUBLIC_URL"], served_root=served_root(merged),
                                   allow_unconditional_writes=bool(merged["ALLOW_UNCONDITIONAL_WRITES"])),
            cache=CacheDir(config_module.cache_dir(merged)),
            scores=ScoreCache(max_entries=merged["SCORE_CACHE"]),
            scorers=Scorers(config_module.onnx_cache_dir(merged), device=merged["DEVICE"], precision=precision,
                            batch_size=merged["BATCH_SIZE"], nice=merged["SCORING_NICE"]),
            pixels=PixelCache(config_module.pixel_cache_dir(merged), merged["PIXEL_CACHE_BYTES"],
                              device_tier=functools.partial(cuda_tier, merged["DEVICE"], merged["GPU_PIXEL_CACHE"],
                                                            metrics.record_pixels),
                              record=metrics.record_pixels, min_free=merged["PIXEL_CACHE_MIN_FREE"]),
            jobs=JobManager(merged["MAX_QUEUED"], merged["JOB_HISTORY"], metrics,
                            store=JobStore(config_module.state_dir(merged))),  # opened on first use
            metrics=metrics,
            allow=AllowList(merged["ALLOWED_PREFIXES"]),
            run_train=run_train,
            run_predict=run_predict,
            labelstudio=LabelStudioState(),
        )
        fields["train_waiters"] = threading.BoundedSemaphore(max(1, merged["MAX_TRAIN_WAITERS"]))
        unknown = set(parts) - set(fields)
        if unknown:
            raise TypeError(f"not parts of the runtime: {', '.join(sorted(unknown))}")
        fields.update(parts)
        return cls(**fields)

    def locate(self, url: str, param: str):
        return self.storage.locate(url, param)

    @functools.cached_property
    def device_label(self) -> str:
        """What /health reports ("cpu", "cuda:0", …); never raises (a misconfigured device is reported)."""
        try:
            from scoring.device import device_label

            return device_label(self.config["DEVICE"])  # does not import torch on a CPU-only machine
        except Exception as error:  # noqa: BLE001 - /health must answer
            return f"unavailable ({type(error).__name__}: {error})"


def served_root(config: dict) -> str:
    """The folder the service serves clips from (`/clips/`): ORCA_LOCAL_ROOT; where local paths may lie
    anywhere (the CLI, LOCAL_ROOT None), the one the environment gives the server, so that the CLI's
    `audio_url`s under ORCA_PUBLIC_URL name what that server serves."""
    return config["LOCAL_ROOT"] if config["LOCAL_ROOT"] is not None else config_module.from_env()["LOCAL_ROOT"]
