"""The HTTP endpoints of the original service. Parameters in, JSON out; the work is in
`service.train` and `service.predict`."""

from __future__ import annotations

from types import MappingProxyType

from flask import Blueprint, jsonify, request

from ._version import __version__
from .errors import Busy
from .params import limits, predict_params, train_params
from .runtime import current_runtime

api = Blueprint("api", __name__)

ENDPOINTS = MappingProxyType({
    "/train": "GET ?model_url&labeled_url&img_width&img_height&epochs[&seed]: fine-tune, write NAME_{N+1}.h5",
    "/predict": "GET ?model_url&unlabeled_url&img_width&img_height: score every unlabeled spectrogram",
    "/embed": "GET ?model_url&unlabeled_url&img_width&img_height: /predict's items plus each clip's embedding",
    "/query": "GET ?model_url&unlabeled_url&img_width&img_height&k[&strategy&passes&seed&labeled_url]: the k clips "
              "to label next",
    "/health": "GET: liveness, version and device (never needs the token)",
    "/ready": "GET: 200 when storage is reachable, else 503",
    "/metrics": "GET: Prometheus metrics (text exposition format)",
    "/jobs/train": "POST (JSON body or query: the /train parameters) → 202 {job_id}: train in the background",
    "/jobs/<id>": "GET: status (queued, running, succeeded, failed), epoch progress, result or error",
    "/jobs": "GET: recent jobs, newest first",
    "/models": "GET ?model_url=<folder>: model versions in a folder with their provenance, newest first",
})


@api.get("/")
def index():
    return jsonify(name="orca-ml-endpoint", version=__version__, endpoints=dict(ENDPOINTS))


@api.get("/health")
def health():
    return jsonify(status="ok", version=__version__, device=current_runtime().device_label)


@api.get("/train")
def train():
    """Goes through the training queue like POST /jobs/train, and waits for its job.

    Each waiting request holds one of the server's request threads for the whole training, so at most
    ORCA_MAX_TRAIN_WAITERS wait at once and the rest get a 503 with Retry-After at once: the other
    threads stay free for /health, /predict and /jobs (docs/operations.md, "Liveness under load")."""
    from .ops import submit_train

    runtime = current_runtime()
    params = train_params(request.args, limits(current_runtime().config))
    if not runtime.train_waiters.acquire(blocking=False):
        raise Busy(f"{runtime.config['MAX_TRAIN_WAITERS']} GET /train requests are already waiting for their "
                   "training (ORCA_MAX_TRAIN_WAITERS); try again later, or submit with POST /jobs/train and "
                   "poll GET /jobs/<id>", retry_after=60)
    try:
        job = submit_train(params)
        job.done.wait()
    finally:
        runtime.train_waiters.release()
    if job.exception is not None:
        raise job.exception
    return jsonify(job.result)


@api.get("/predict")
def predict():
    params = predict_params(request.args, limits(current_runtime().config))
    runtime = current_runtime()
    items = runtime.run_predict(runtime, params)
    response = jsonify(items)
    response.headers["X-Skipped-Files"] = str(len(items.skipped))
    return response
