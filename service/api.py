"""The HTTP endpoints. Parameters in, JSON out; the work is in `service.jobs`."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from . import __version__, jobs
from .params import Limits, predict_params, train_params

api = Blueprint("api", __name__)

ENDPOINTS = {
    "/train": "GET ?model_url&labeled_url&img_width&img_height&epochs[&seed]: fine-tune, write NAME_{N+1}.h5",
    "/predict": "GET ?model_url&unlabeled_url&img_width&img_height: score every unlabeled spectrogram",
    "/health": "GET: liveness, version and device (never needs the token)",
    "/ready": "GET: 200 when storage is reachable, else 503",
    "/metrics": "GET: Prometheus text format 0.0.4",
    "/jobs/train": "POST (JSON body or query: the /train parameters) → 202 {job_id}: train in the background",
    "/jobs/<id>": "GET: status (queued, running, succeeded, failed), epoch progress, result or error",
    "/jobs": "GET: recent jobs, newest first",
    "/models": "GET ?model_url=<folder>: model versions in a folder with their provenance, newest first",
}


def _limits() -> Limits:
    c = current_app.config
    return Limits(max_image_size=c["MAX_IMAGE_SIZE"], max_epochs=c["MAX_EPOCHS"])


def _settings() -> jobs.Settings:
    c = current_app.config
    return jobs.Settings(local_root=c["LOCAL_ROOT"], work_dir=c["WORK_DIR"], device=c["DEVICE"],
                         batch_size=c["BATCH_SIZE"], download_threads=c["DOWNLOAD_THREADS"],
                         max_listing=c["MAX_LISTING"])


@api.get("/")
def index():
    return jsonify(name="orca-ml-endpoint", version=__version__, endpoints=ENDPOINTS)


@api.get("/health")
def health():
    from .ops import device_name

    return jsonify(status="ok", version=__version__, device=device_name(current_app.config["DEVICE"]))


@api.get("/train")
def train():
    """Goes through the training queue like POST /jobs/train, and waits for its job."""
    from .ops import submit_train

    params = train_params(request.args, _limits())
    job = submit_train(params, _settings())
    job.done.wait()
    if job.exception is not None:
        raise job.exception
    return jsonify(job.result)


@api.get("/predict")
def predict():
    params = predict_params(request.args, _limits())
    items = jobs.run_predict(params, _settings())
    response = jsonify(items)
    response.headers["X-Skipped-Files"] = str(len(getattr(items, "skipped", ())))
    return response
