"""Flask application factory and the one error handler."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from .errors import ServiceError

log = logging.getLogger("service")


def create_app(config: dict | None = None, **parts) -> Flask:
    """The service. `config` overrides the environment (see `service.config`); `parts` replace
    parts of the runtime built from it (`s3=S3Connector(...)`, `metrics=Metrics(...)`,
    `run_train=…`: see `service.runtime.Runtime.from_config`). Everything the app owns lives on its
    `Runtime`, `app.extensions["orca"]`."""
    from . import ops
    from .api import api
    from .runtime import Runtime

    runtime = Runtime.from_config(config, **parts)
    app = Flask("service")
    app.config.update(runtime.config)
    app.extensions["orca"] = runtime
    app.json.sort_keys = True  # the original's JSON came out with sorted keys; clients may rely on it
    app.register_blueprint(api)
    ops.install(app)  # jobs, /models, /ready, /metrics; token, allow-list and metrics hooks
    app.register_error_handler(Exception, handle_error)
    start_preload(runtime.config["PRELOAD_TORCH"])
    return app


def start_preload(setting: str | None):
    """Import torch on a background thread when ORCA_PRELOAD_TORCH says so (training.device)."""
    from training.device import preload_torch_in_background, should_preload
    from training.errors import TrainingError

    try:
        wanted = should_preload(setting)
    except TrainingError as error:
        raise SystemExit(str(error)) from None
    return preload_torch_in_background() if wanted else None


def handle_error(error: Exception):
    """Every error becomes `{"error": message}` with its status; never a traceback."""
    if isinstance(error, ServiceError):
        if error.status >= 500:
            log.warning("%s: %s", type(error).__name__, error.message)
        response = jsonify(error=error.message)
        if error.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="orca-ml-endpoint"'
        return response, error.status
    if isinstance(error, HTTPException):
        return jsonify(error=f"{error.name}: {error.description}"), error.code or 500
    log.exception("unhandled error")
    return jsonify(error="internal server error (see the server log)"), 500
