"""The Label Studio ML backend, under `/labelstudio`: give Label Studio `http://HOST:5001/labelstudio`
as the model's URL. Label Studio's JSON in, its JSON out; the work is `service.labelstudio.backend`.

    GET  /labelstudio/health     {"status": "UP", "model_class"}: fast, never needs the token
    POST /labelstudio/setup      label config checked, → {"model_version": the newest version}
    POST /labelstudio/predict    {"tasks", "project", "label_config"} → {"results": one per task}
    POST /labelstudio/webhook    every project event → 200; START_TRAINING queues a training (token)
    POST /labelstudio/train      older servers: the annotated tasks in the body → 201 {"job"}
    GET  /labelstudio/versions   the project's model versions, newest first

Auth: with API_TOKEN set, Label Studio's connection uses basic auth whose password is the token (any
user name), or a bearer token. Project webhooks carry no credentials: `/webhook` acknowledges every
event without them, and acts on START_TRAINING only with the token. Errors are `{"error"}`, and their
message is also the status line's reason phrase, which is what Label Studio shows of a failed /setup.
"""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from ..access import check_token
from ..errors import BadRequest
from ..labelstudio import backend
from .web import current_authorization, current_runtime, policy

labelstudio = Blueprint("labelstudio", __name__)


def body() -> dict:
    """The request's JSON object (Label Studio sends one with every POST, and with GET /versions)."""
    data = request.get_json(silent=True) if request.data else {}
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object (Label Studio's request)")
    return data


@labelstudio.get("/health")
@policy(token=False, message_in_status=True)
def health():
    """Label Studio ML backend: liveness (never needs the token)"""
    return jsonify(backend.health(current_runtime()))


@labelstudio.post("/setup")
@policy(basic_auth=True, message_in_status=True)
def setup():
    """Label Studio ML backend: check the label config, answer the newest model_version"""
    return jsonify(backend.setup(current_runtime(), body()))


@labelstudio.post("/predict")
@policy(basic_auth=True, message_in_status=True)
def predict():
    """Label Studio ML backend: the class and score of each task, one result per task"""
    return jsonify(backend.predict(current_runtime(), body()))


@labelstudio.post("/webhook")
@policy(token=False, message_in_status=True)
def webhook():
    """Label Studio ML backend: project events; START_TRAINING (with the token) trains the next version

    Every event gets a 2xx: Label Studio's project webhooks carry no credentials, so the token is
    checked here, for START_TRAINING only (Label Studio sends it through the backend's connection)."""
    runtime = current_runtime()

    def authorized():
        check_token(runtime.config["API_TOKEN"], current_authorization(), basic=True)

    answer = backend.webhook(runtime, body(), authorized)
    return jsonify(answer), 201 if answer.get("status") == "training" else 200


@labelstudio.post("/train")
@policy(basic_auth=True, message_in_status=True)
def train():
    """Label Studio ML backend (older servers): train the next version on the annotated tasks sent"""
    response = jsonify(backend.train_request(current_runtime(), body()))
    response.status_code = 201
    return response


@labelstudio.get("/versions")
@policy(basic_auth=True, message_in_status=True)
def versions():
    """Label Studio ML backend: the project's model versions, newest first"""
    data = body()
    project = data.get("project", request.args.get("project"))  # Label Studio 1.23 sends neither
    project = None if project is None else backend.project_id(project)
    return jsonify(backend.version_listing(current_runtime(), project))
