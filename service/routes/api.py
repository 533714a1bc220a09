"""The original service's routes, `/train` and `/predict`, and `/`, `/health`. Parameters in, JSON
out; the work is `service.ops.train_and_wait` (the job queue, then `service.train`) and the
runtime's `run_predict` (`service.predict`)."""

from __future__ import annotations

import dataclasses

from flask import Blueprint, current_app, jsonify, request

from .._version import __version__
from ..ops import train_and_wait
from ..params import limits, predict_params, train_params
from .web import current_runtime, describe_routes, policy, service_url

api = Blueprint("api", __name__)


@api.get("/")
@policy()
def index():
    """the service's name, version and this list of routes"""
    return jsonify(name="orca-ml-endpoint", version=__version__, endpoints=describe_routes(current_app))


@api.get("/health")
@policy(token=False)
def health():
    """liveness, version and device (never needs the token)"""
    return jsonify(status="ok", version=__version__, device=current_runtime().device_label)


@api.get("/train")
@policy(urls=("model_url", "labeled_url"), writes=True, plain_errors=True)
def train():
    """?model_url&labeled_url&img_width&img_height&epochs[&seed]: fine-tune, write NAME_{N+1}.h5

    Goes through the training queue like POST /jobs/train, and waits for its job; at most
    ORCA_MAX_TRAIN_WAITERS requests wait at once (`service.ops.train_and_wait`)."""
    runtime = current_runtime()
    params = train_params(request.args, limits(runtime.config))
    return jsonify(train_and_wait(runtime, params))


@api.get("/predict")
@policy(urls=("model_url", "unlabeled_url"), plain_errors=True)
def predict():
    """?model_url&unlabeled_url&img_width&img_height: score every unlabeled spectrogram"""
    runtime = current_runtime()
    params = dataclasses.replace(predict_params(request.args, limits(runtime.config)), service_url=service_url())
    items = runtime.run_predict(runtime, params)
    runtime.metrics.count_scored(len(items))
    runtime.metrics.count_skipped(len(items.skipped), stage="predict")
    response = jsonify(items)
    response.headers["X-Skipped-Files"] = str(len(items.skipped))
    return response
