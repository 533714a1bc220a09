"""Operations endpoints: background training jobs, model versions with provenance, readiness,
Prometheus metrics; and the request hooks (bearer token, allow-list, metrics).

    POST /jobs/train      the /train parameters (JSON body or query) → 202 {"job_id", "status", "url"}
    GET  /jobs/<id>       one job (see service.jobqueue)
    GET  /jobs            recent jobs, newest first
    GET  /models?model_url=<folder>   model versions, newest first, with their sidecar summaries
    GET  /ready           storage reachable and torch loaded (ORCA_PRELOAD_TORCH) → 200, else 503
    GET  /metrics         Prometheus metrics (prometheus_client)
"""

from __future__ import annotations

import logging
import os
import time

from flask import Blueprint, Response, g, jsonify, request

from .access import check_token
from .errors import BadRequest, ServiceError
from .jobqueue import Job
from .runtime import current_runtime

log = logging.getLogger(__name__)

ops = Blueprint("ops", __name__)

URL_PARAMS = ("model_url", "labeled_url", "unlabeled_url")


def submit_train(params) -> Job:
    runtime = current_runtime()

    def run(job):
        return runtime.run_train(runtime, params, on_epoch=job.on_epoch)

    public = {"model_url": params.model_url, "labeled_url": params.labeled_url, "img_width": params.rows,
              "img_height": params.cols, "epochs": params.epochs, "seed": params.seed}
    return runtime.jobs.submit("train", public, run)


def _job_args() -> dict:
    """Query arguments overlaid with a JSON object body; values as the strings /train would get."""
    args = {k: v for k, v in request.args.items()}
    if request.data:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object of /train parameters")
        for key, value in body.items():
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise BadRequest(f"{key} must be a string or a number")
            args[key] = str(value) if not isinstance(value, float) or not value.is_integer() else str(int(value))
    return args


@ops.post("/jobs/train")
def create_train_job():
    from .params import limits
    from .params import train_params

    args = _job_args()
    _check_allowed(args, writes=True)
    params = train_params(args, limits(current_runtime().config))
    job = submit_train(params)
    response = jsonify(job_id=job.id, status=job.status, url=f"/jobs/{job.id}")
    response.status_code = 202
    response.headers["Location"] = f"/jobs/{job.id}"
    return response


@ops.get("/jobs/<job_id>")
def get_job(job_id: str):
    return jsonify(current_runtime().jobs.get(job_id).to_json())


@ops.get("/jobs")
def list_jobs():
    manager = current_runtime().jobs
    jobs = manager.list()
    return jsonify(jobs=[j.to_json() for j in jobs], queued=manager.queued(), max_queued=manager.max_queued)


@ops.get("/models")
def list_models():
    from .provenance import list_versions

    url = (request.args.get("model_url") or "").strip()
    if not url:
        raise BadRequest("missing parameter: model_url (a folder of model versions)")
    folder = current_runtime().locate(url, "model_url")
    return jsonify(model_url=folder.prefix_url, versions=list_versions(folder))


@ops.get("/ready")
def ready():
    runtime = current_runtime()
    c = runtime.config
    checks = {}
    failures = []
    if c["LOCAL_ROOT"]:
        from .storage import LocalStorage

        root = os.path.realpath(os.path.abspath(c["LOCAL_ROOT"]))
        checks["local_root"] = _probe(lambda: LocalStorage(root).ping(), failures, "local_root")
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
    status = 503 if failures else 200
    body = {"status": "ready" if not failures else "unavailable", "checks": checks}
    if failures:
        body["error"] = "; ".join(failures)
    return jsonify(body), status


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


@ops.get("/metrics")
def prometheus():
    body, content_type = current_runtime().metrics.render()
    return Response(body, content_type=content_type)


# --------------------------------------------------------------------------------------- hooks

def _check_allowed(args, writes: bool) -> None:
    allow = current_runtime().allow
    if not allow.enabled:
        return
    for name in URL_PARAMS:
        allow.check(args.get(name), name)
    if writes:
        allow.check_model_write(args.get("model_url"))


def before_request():
    g.orca_started = time.perf_counter()
    check_token(current_runtime().config["API_TOKEN"], request.headers.get("Authorization"), request.path)
    # /jobs/train checks its JSON body itself; the rest take URLs from the query
    if request.path != "/jobs/train":
        _check_allowed(request.args, writes=request.path == "/train")


def after_request(response):
    metrics = current_runtime().metrics
    endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
    started = getattr(g, "orca_started", None)
    if started is not None:
        metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)
    metrics.requests.labels(endpoint=endpoint, method=request.method, status=str(response.status_code)).inc()
    if endpoint == "/predict" and response.status_code == 200:
        try:  # scored = items answered; skipped = the X-Skipped-Files header the /predict route sets
            items = response.get_json(silent=True) if response.is_json else None
            metrics.count_scored(len(items) if isinstance(items, list) else 0)
            metrics.count_skipped(int(response.headers.get("X-Skipped-Files") or 0), stage="predict")
        except Exception:  # noqa: BLE001 - metrics never break a response
            pass
    return response


def install(app) -> None:
    """Register the blueprint and the request hooks on `app`."""
    app.register_blueprint(ops)
    app.before_request(before_request)
    app.after_request(after_request)
