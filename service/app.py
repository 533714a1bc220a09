"""Flask application factory and the one error handler."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from .errors import ServiceError
from .routes import web

log = logging.getLogger("service")


def create_app(config: dict | None = None, **parts) -> Flask:
    """The service. `config` overrides the environment (see `service.config`); `parts` replace
    parts of the runtime built from it (`s3=S3Connector(...)`, `metrics=Metrics(...)`,
    `run_train=…`: see `service.runtime.Runtime.from_config`). Everything the app owns lives on its
    `Runtime`, `app.extensions["orca"]`."""
    from .routes.api import api
    from .routes.clips import clips
    from .routes.labelstudio import labelstudio
    from .routes.ops import ops
    from .routes.selection import selection
    from .runtime import Runtime

    runtime = Runtime.from_config(config, **parts)
    app = Flask("service", static_folder=None)  # no /static route: every route is declared (routes.web)
    app.config.update(runtime.config)
    app.extensions["orca"] = runtime
    app.json.sort_keys = True  # the original's JSON came out with sorted keys; clients may rely on it
    app.register_blueprint(api)  # /, /health, /train, /predict
    app.register_blueprint(selection)  # /embed, /query
    app.register_blueprint(ops)  # jobs, /models, /ready, /metrics
    app.register_blueprint(clips)  # /clips/<path>: local audio, the audio_url of local datasets
    app.register_blueprint(labelstudio, url_prefix="/labelstudio")  # the Label Studio ML backend
    web.install(app)  # refuses a route without a declared policy; the policy and metrics hooks
    app.register_error_handler(Exception, handle_error)
    runtime.preload = start_preload(runtime.config["PRELOAD_TORCH"])
    return app


def start_preload(setting: str | None):
    """Import torch on a background thread when ORCA_PRELOAD_TORCH says so (service.preload); the
    thread, or None. Requests are served meanwhile; `/ready` says 503 until it has finished."""
    from .preload import PreloadSettingError, preload_torch_in_background, should_preload

    try:
        wanted = should_preload(setting)
    except PreloadSettingError as error:
        raise SystemExit(str(error)) from None
    return preload_torch_in_background() if wanted else None


def handle_error(error: Exception):
    """Every error becomes its status and a message naming the parameter or object; never a traceback.

    The body is `{"error": message}`, except on the routes that declare `plain_errors` (the original's
    two, `service.routes.api`) for a request that does not prefer JSON: there it is `text/plain`.
    Their real client parses every answer with `requests.get(url).json()` and no status check, then
    replaces its predictions by iterating the answer; the original's HTML error pages made `.json()` raise before the client touched its
    database, and a plain-text body keeps it so (docs/api.md, "Errors")."""
    if isinstance(error, ServiceError):
        status, message = error.status, error.message
        if status >= 500:
            log.warning("%s: %s", type(error).__name__, message)
    elif isinstance(error, HTTPException):
        status, message = error.code or 500, f"{error.name}: {error.description}"
    else:
        log.exception("unhandled error")
        status, message = 500, "internal server error (see the server log)"
    if web.plain_errors() and not _prefers_json():
        response = Response(f"error: {message}\n", status=status, mimetype="text/plain")
    else:
        response = jsonify(error=message)
        response.status_code = status
    if web.message_in_status():  # Label Studio shows a failed /setup by its status line only
        response.status = f"{status} {status_reason(message)}"
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="orca-ml-endpoint"'
    retry_after = getattr(error, "retry_after", None)
    if retry_after:
        response.headers["Retry-After"] = str(int(retry_after))
    content_range = getattr(error, "content_range", None)
    if content_range:
        response.headers["Content-Range"] = content_range
    return response


def status_reason(message: str, limit: int = 300) -> str:
    """`message` as an HTTP reason phrase: one line of printable Latin-1, at most `limit` characters."""
    text = " ".join(message.split())
    text = "".join(c if 32 <= ord(c) < 127 or 160 <= ord(c) < 256 else "?" for c in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _prefers_json() -> bool:
    """Content negotiation: JSON only when the Accept header ranks it above plain text (`*/*`, as
    `requests` sends, and no header at all get text)."""
    accept = request.accept_mimetypes
    return accept.best_match(["text/plain", "application/json"]) == "application/json" and \
        accept["application/json"] > accept["text/plain"]
