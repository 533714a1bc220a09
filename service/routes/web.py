"""What every blueprint shares: the request's runtime, the declaration of each route's policy, the
one hook that enforces the declarations, the metrics hook, and the route listing `/` answers.

A route declares, on its view:

    @api.get("/train")
    @policy(urls=("model_url", "labeled_url"), writes=True, plain_errors=True)
    def train():
        '''?model_url&labeled_url&…: fine-tune, write NAME_{N+1}.h5'''  (the first line: its entry in `/`)

- `token`: it needs `Authorization: Bearer <API_TOKEN>` when API_TOKEN is set (the default; only
  `/health` says no);
- `urls`: the parameters that are storage URLs, each checked against ORCA_ALLOWED_PREFIXES (403);
- `writes`: it writes a new version beside `model_url`, whose folder must be allowed for writing;
- `args`: where those parameters come from (the query string unless given; /jobs/train's JSON body);
- `plain_errors`: its errors are `text/plain` unless the request prefers JSON (the original's
  `/train` and `/predict`, for their client: `service.app.handle_error`);
- `basic_auth`: the token may also come as HTTP basic auth, its password (the Label Studio ML
  backend's routes: Label Studio sends a connection's basic auth, never a bearer token);
- `message_in_status`: an error's message is also the reason phrase of its status line (Label
  Studio shows an ML backend's failed `/setup` as the text of the status line alone).

`install` refuses an app with a route that declares no policy or has no description
(`UndeclaredRoute`); a view registered later without one fails closed: its requests end in a 500
before it runs. A request no view serves is a 405 (it takes the token rule of the path's own views:
`POST /health` needs no token) or a 404 (it needs the token: `UNMATCHED`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping

from flask import current_app, g, request
from werkzeug.exceptions import MethodNotAllowed

from ..access import check_token

ATTRIBUTE = "orca_policy"


@dataclass(frozen=True)
class Policy:
    token: bool = True
    urls: tuple[str, ...] = ()
    writes: bool = False
    args: Callable[[], Mapping] | None = None
    plain_errors: bool = False
    basic_auth: bool = False
    message_in_status: bool = False


UNMATCHED = Policy()  # a request no route serves (404): the token, nothing else


class UndeclaredRoute(TypeError):
    """A route without a policy or a description: the code's mistake, never a client's (500)."""


def policy(*, token: bool = True, urls: tuple[str, ...] = (), writes: bool = False,
           args: Callable[[], Mapping] | None = None, plain_errors: bool = False, basic_auth: bool = False,
           message_in_status: bool = False):
    """Declare the view's policy (see the module's docstring); returns the view itself."""
    if isinstance(urls, str):
        raise TypeError("urls is a tuple of parameter names")
    if writes and "model_url" not in urls:
        raise TypeError("writes=True checks the folder of model_url: list model_url in urls")
    declared = Policy(token=token, urls=tuple(urls), writes=writes, args=args, plain_errors=plain_errors,
                      basic_auth=basic_auth, message_in_status=message_in_status)

    def declare(view):
        setattr(view, ATTRIBUTE, declared)
        return view

    return declare


def policy_of(view) -> Policy | None:
    return getattr(view, ATTRIBUTE, None)


def description_of(view) -> str:
    """The first line of the view's docstring: its entry in the `/` listing."""
    return (getattr(view, "__doc__", None) or "").strip().split("\n", 1)[0].strip()


def check_declared(app) -> None:
    """UndeclaredRoute naming every route of `app` without a policy or a description."""
    missing = []
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        if policy_of(view) is None or not description_of(view):
            missing.append(f"{rule.rule} ({rule.endpoint})")
    if missing:
        raise UndeclaredRoute("routes without a @policy declaration or a docstring (their line in /): "
                              + ", ".join(sorted(missing)))


def describe_routes(app) -> dict[str, str]:
    """{rule: "METHODS ?params: what it does"} for every route of `app`, from `app.url_map` and the views."""
    listing: dict[str, str] = {}
    for rule in app.url_map.iter_rules():
        methods = ",".join(sorted(rule.methods - {"HEAD", "OPTIONS"}))
        line = description_of(app.view_functions.get(rule.endpoint))
        entry = f"{methods}{' ' if line.startswith(('?', '(')) else ': '}{line}"
        listing[rule.rule] = f"{listing[rule.rule]}; {entry}" if rule.rule in listing else entry
    return listing


def current_runtime():
    """The runtime (`service.runtime.Runtime`) of the app handling the current request."""
    return current_app.extensions["orca"]


def service_url() -> str:
    """The URL the client reaches this service at: ORCA_PUBLIC_URL (behind a proxy, its public one), else
    this request's URL root (scheme, Host header, script root). The base of local clips' `audio_url`."""
    return current_runtime().config["PUBLIC_URL"] or request.url_root.rstrip("/")


def request_policy() -> Policy:
    """The policy of the view serving the current request; for a 405, of the path's views; else UNMATCHED."""
    rule = request.url_rule
    if rule is not None:
        declared = policy_of(current_app.view_functions.get(rule.endpoint))
        if declared is None:
            raise UndeclaredRoute(f"{rule.rule} ({rule.endpoint}) declares no policy (service.routes.web.policy)")
        return declared
    error = request.routing_exception
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        return _path_policy(error.valid_methods)
    return UNMATCHED


def _path_policy(methods) -> Policy:
    """A 405: no view runs; the token if any of the path's views needs it, their error format."""
    adapter = current_app.create_url_adapter(request)
    found = []
    for method in methods:
        try:
            endpoint, _ = adapter.match(method=method)
        except Exception:  # noqa: BLE001 - werkzeug's routing exceptions: that method has no view here
            continue
        found.append(policy_of(current_app.view_functions.get(endpoint)) or UNMATCHED)
    if not found:
        return UNMATCHED
    return Policy(token=any(p.token for p in found), plain_errors=any(p.plain_errors for p in found),
                  basic_auth=all(p.basic_auth for p in found))


def plain_errors() -> bool:
    """Whether the current request's route answers its errors as text/plain; never raises (the error handler asks)."""
    try:
        return request_policy().plain_errors
    except Exception:  # noqa: BLE001 - an undeclared route: JSON
        return False


def message_in_status() -> bool:
    """Whether the current request's route puts an error's message in its status line; never raises."""
    try:
        return request_policy().message_in_status
    except Exception:  # noqa: BLE001 - an undeclared route
        return False


def current_authorization() -> str | None:
    """The request's Authorization header (a view that checks the token itself: /labelstudio/webhook)."""
    return request.headers.get("Authorization")


# --------------------------------------------------------------------------------------- hooks

def start_timer() -> None:
    g.orca_started = time.perf_counter()


def enforce_policy() -> None:
    """before_request: the declared token and allow-list checks, before any view runs."""
    runtime = current_runtime()
    declared = request_policy()
    if declared.token:
        check_token(runtime.config["API_TOKEN"], request.headers.get("Authorization"), basic=declared.basic_auth)
    if declared.urls and runtime.allow.enabled:
        args = declared.args() if declared.args is not None else request.args
        runtime.allow.check_urls(args, declared.urls, writes=declared.writes)


def record_metrics(response):
    """after_request: latency and a count per route, method and status."""
    metrics = current_runtime().metrics
    endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
    started = getattr(g, "orca_started", None)
    if started is not None:
        metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)
    metrics.requests.labels(endpoint=endpoint, method=request.method, status=str(response.status_code)).inc()
    return response


def install(app) -> None:
    """Check that every route of `app` declares its policy, then register the hooks."""
    check_declared(app)
    app.before_request(start_timer)
    app.before_request(enforce_policy)
    app.after_request(record_metrics)
