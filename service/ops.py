"""The operations' work, without HTTP: training jobs (submit; submit and wait, as GET /train does),
the job listing, model versions with their provenance, readiness. Plain functions of a `Runtime`;
the routes are `service.routes.ops` (and `service.routes.api` for GET /train)."""

from __future__ import annotations

import os

from .errors import Busy, ServiceError, StorageUnavailable
from .jobqueue import Job
from .params import TrainParams


def submit_train(runtime, params: TrainParams) -> Job:
    """Queue a training of `params` (`runtime.run_train` on the job worker); the job, at once."""

    def run(job):
        return runtime.run_train(runtime, params, on_epoch=job.on_epoch)

    public = {"model_url": params.model_url, "labeled_url": params.labeled_url, "img_width": params.rows,
              "img_height": params.cols, "epochs": params.epochs, "seed": params.seed}
    return runtime.jobs.submit("train", public, run)


def train_and_wait(runtime, params: TrainParams) -> dict:
    """GET /train: a job like POST /jobs/train's, waited for; its result, or its error raised.

    Each waiting request holds one of the server's request threads for the whole training, so at most
    ORCA_MAX_TRAIN_WAITERS wait at once and the rest get a 503 with Retry-After at once: the other
    threads stay free for /health, /predict and /jobs (docs/operations.md, "Liveness under load")."""
    if not runtime.train_waiters.acquire(blocking=False):
        raise Busy(f"{runtime.config['MAX_TRAIN_WAITERS']} GET /train requests are already waiting for their "
                   "training (ORCA_MAX_TRAIN_WAITERS); try again later, or submit with POST /jobs/train and "
                   "poll GET /jobs/<id>", retry_after=60)
    try:
        job = submit_train(runtime, params)
        job.done.wait()
    finally:
        runtime.train_waiters.release()
    if job.exception is not None:
        raise job.exception
    return job.result


def job_status(runtime, job_id: str) -> dict:
    """One job's JSON (service.jobqueue); NotFound for an unknown id."""
    return runtime.jobs.get(job_id).to_json()


def job_listing(runtime) -> dict:
    """Recent jobs, newest first, with the queue's length and bound."""
    manager = runtime.jobs
    jobs = manager.list()
    return {"jobs": [j.to_json() for j in jobs], "queued": manager.queued(), "max_queued": manager.max_queued}


def model_versions(runtime, url: str) -> dict:
    """The model versions in the folder `url`, newest first, with their sidecar summaries."""
    from .provenance import list_versions

    folder = runtime.locate(url, "model_url")
    return {"model_url": folder.prefix_url, "versions": list_versions(folder)}


def readiness(runtime) -> tuple[bool, dict]:
    """(ready, body): storage reachable, the local root and the state folder writable, torch loaded
    (ORCA_PRELOAD_TORCH); the body names each check."""
    c = runtime.config
    checks = {}
    failures = []
    if c["LOCAL_ROOT"]:
        from .storage import LocalStorage

        root = os.path.realpath(os.path.abspath(c["LOCAL_ROOT"]))

        def local_root():
            LocalStorage(root).ping()
            check_writable(root, "the local data root (ORCA_LOCAL_ROOT)")

        checks["local_root"] = _probe(local_root, failures, "local_root")
    store = getattr(runtime.jobs, "store", None)
    if store is not None:  # the job database's folder: a job could not be recorded without it
        checks["state_dir"] = _probe(lambda: check_writable(store.folder, "the state folder (ORCA_STATE_DIR)"),
                                     failures, "state_dir")
    if c["READY_BUCKET"]:
        from .storage import S3Storage

        bucket = c["READY_BUCKET"]
        checks["s3"] = _probe(lambda: S3Storage(bucket, runtime.storage.s3).ping(), failures, "s3")
    elif c["LOCAL_ROOT"] == "":  # S3 only: the endpoint and credentials must work
        checks["s3"] = _probe(lambda: _list_buckets(runtime.storage.s3), failures, "s3")
    if runtime.preload is not None:  # a probe keeps traffic away while torch loads (first /train waits)
        if runtime.preload.is_alive():
            checks["torch"] = "loading"
            failures.append("torch is still loading (ORCA_PRELOAD_TORCH)")
        elif runtime.preload.error:
            checks["torch"] = f"failed: {runtime.preload.error}"
            failures.append(f"torch could not be imported ({runtime.preload.error}): /train cannot run")
        else:
            checks["torch"] = "ok"
    body = {"status": "ready" if not failures else "unavailable", "checks": checks}
    if failures:
        body["error"] = "; ".join(failures)
    return not failures, body


def check_writable(folder: str, what: str) -> None:
    """StorageUnavailable naming `folder`, its owner and this process's uid when this process cannot
    create files in it (or, for a folder not made yet, in the nearest folder above that exists)."""
    existing = os.path.abspath(folder)
    while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    mode = os.W_OK | os.X_OK
    if os.access(existing, mode, effective_ids=os.access in os.supports_effective_ids):
        return
    raise StorageUnavailable(f"{what} {folder} is not writable by uid {os.geteuid()}{owner_of(existing)}")


def owner_of(path: str) -> str:
    """`" (owner: uid N)"`, or `""` when the folder cannot be looked at."""
    try:
        return f" (owner: uid {os.stat(path).st_uid})"
    except OSError:
        return ""


def _list_buckets(s3) -> None:
    from .storage import map_s3_error

    try:
        s3.client.list_buckets()
    except Exception as error:  # noqa: BLE001
        raise map_s3_error(error, "s3://") from error


def _probe(check, failures: list, name: str) -> str:
    try:
        check()
        return "ok"
    except ServiceError as error:
        failures.append(f"{name}: {error.message}")
        return error.message
    except Exception as error:  # noqa: BLE001
        failures.append(f"{name}: {type(error).__name__}")
        return type(error).__name__
