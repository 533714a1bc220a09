"""Operations routes: background training jobs, model versions with provenance, readiness,
Prometheus metrics. Parameters in, JSON out; the work is `service.ops`.

    POST /jobs/train      the /train parameters (JSON body or query) → 202 {"job_id", "status", "url"}
    GET  /jobs/<id>       one job (see service.jobqueue)
    GET  /jobs            recent jobs, newest first
    GET  /models?model_url=<folder>   model versions, newest first, with their sidecar summaries
    GET  /ready           storage reachable and torch loaded (ORCA_PRELOAD_TORCH) → 200, else 503
    GET  /metrics         Prometheus metrics (prometheus_client)
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from ..errors import BadRequest
from ..ops import job_listing, job_status, model_versions, readiness, submit_train
from ..params import limits, train_params
from .web import current_runtime, policy

ops = Blueprint("ops", __name__)


def job_args() -> dict:
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
@policy(urls=("model_url", "labeled_url"), writes=True, args=job_args)
def create_train_job():
    """(JSON body or query: the /train parameters) → 202 {job_id}: train in the background"""
    runtime = current_runtime()
    params = train_params(job_args(), limits(runtime.config))
    job = submit_train(runtime, params)
    response = jsonify(job_id=job.id, status=job.status, url=f"/jobs/{job.id}")
    response.status_code = 202
    response.headers["Location"] = f"/jobs/{job.id}"
    return response


@ops.get("/jobs/<job_id>")
@policy()
def get_job(job_id: str):
    """status (queued, running, succeeded, failed), epoch progress, result or error"""
    return jsonify(job_status(current_runtime(), job_id))


@ops.get("/jobs")
@policy()
def list_jobs():
    """recent jobs, newest first"""
    return jsonify(job_listing(current_runtime()))


@ops.get("/models")
@policy(urls=("model_url",))
def list_models():
    """?model_url=<folder>: model versions in a folder with their provenance, newest first"""
    url = (request.args.get("model_url") or "").strip()
    if not url:
        raise BadRequest("missing parameter: model_url (a folder of model versions)")
    return jsonify(model_versions(current_runtime(), url))


@ops.get("/ready")
@policy()
def ready():
    """200 when storage is reachable, else 503"""
    ok, body = readiness(current_runtime())
    return jsonify(body), 200 if ok else 503


@ops.get("/metrics")
@policy()
def prometheus():
    """Prometheus metrics (text exposition format)"""
    body, content_type = current_runtime().metrics.render()
    return Response(body, content_type=content_type)
