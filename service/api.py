"""The HTTP endpoints. Parameters in, JSON out; the work is in `service.jobs`."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from . import __version__, jobs
from .params import Limits, predict_params, train_params

api = Blueprint("api", __name__)

ENDPOINTS = {
    "/train": "GET ?model_url&labeled_url&img_width&img_height&epochs[&seed]: fine-tune, write NAME_{N+1}.h5",
    "/predict": "GET ?model_url&unlabeled_url&img_width&img_height: score every unlabeled spectrogram",
    "/health": "GET: liveness",
}


def _limits() -> Limits:
    c = current_app.config
    return Limits(max_image_size=c["MAX_IMAGE_SIZE"], max_epochs=c["MAX_EPOCHS"])


def _settings() -> jobs.Settings:
    c = current_app.config
    return jobs.Settings(local_root=c["LOCAL_ROOT"], work_dir=c["WORK_DIR"], device=c["DEVICE"],
                         batch_size=c["BATCH_SIZE"], download_threads=c["DOWNLOAD_THREADS"])


@api.get("/")
def index():
    return jsonify(name="orca-ml-endpoint", version=__version__, endpoints=ENDPOINTS)


@api.get("/health")
def health():
    return jsonify(status="ok")


@api.get("/train")
def train():
    params = train_params(request.args, _limits())
    return jsonify(jobs.run_train(params, _settings()))


@api.get("/predict")
def predict():
    params = predict_params(request.args, _limits())
    return jsonify(jobs.run_predict(params, _settings()))
