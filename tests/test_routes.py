"""One declaration per route (service.routes.web): the token, allow-list, write and error-format policy
and the `/` listing's line live on each view; the hook enforces what is declared, `/` lists what
`app.url_map` holds, and a route that declares nothing is refused."""

from __future__ import annotations

import socket

import pytest
from flask import Blueprint, Flask, jsonify

from repo_data import json_client
from service import create_app
from service.predict import PredictItems
from service.routes.web import UndeclaredRoute, check_declared, install, policy, policy_of

TOKEN = {"Authorization": "Bearer s3cret"}
CLIP_RULE = "/clips/<path:relative>"  # a local audio clip: the path is the URL the allow-list checks
STUBS = {"run_predict": lambda runtime, params, on_progress=None: PredictItems(),
         "run_train": lambda runtime, params, on_epoch=None: {"ok": 1}}


@pytest.fixture
def offline_s3(monkeypatch):
    """An S3 endpoint nobody listens on: a route that reaches storage fails fast (503), never hangs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def _requests(app):
    """(rule, method, path) for every route of `app`, path arguments filled in."""
    adapter = app.url_map.bind("localhost")
    for rule in app.url_map.iter_rules():
        method = sorted(rule.methods - {"HEAD", "OPTIONS"})[0]
        yield rule.rule, method, adapter.build(rule.endpoint, {name: "x" for name in rule.arguments}, method=method)


def test_every_route_declares_its_policy_and_is_listed_from_the_url_map():
    app = create_app({"LOCAL_ROOT": ""})
    rules = {rule.rule: rule for rule in app.url_map.iter_rules()}
    assert {"/", "/train", "/predict", "/embed", "/query", "/health", "/jobs/train", "/models"} <= set(rules)
    assert all(policy_of(app.view_functions[rule.endpoint]) is not None for rule in rules.values())
    listed = json_client(app).get("/").get_json()["endpoints"]
    assert set(listed) == set(rules)  # every registered rule, nothing else (no hand-written table)
    for path, line in listed.items():
        methods = sorted(rules[path].methods - {"HEAD", "OPTIONS"})
        assert line.startswith(",".join(methods)) and len(line) > len(",".join(methods)) + 5, (path, line)
    assert listed["/train"] == ("GET ?model_url&labeled_url&img_width&img_height&epochs[&seed]: "
                                "fine-tune, write NAME_{N+1}.h5")
    assert listed["/health"] == "GET: liveness, version and device (never needs the token)"


def test_every_route_but_health_needs_the_token(tmp_path):
    app = create_app({"LOCAL_ROOT": str(tmp_path), "API_TOKEN": "s3cret"}, **STUBS)
    client = json_client(app)
    open_routes = {rule for rule, method, path in _requests(app) if client.open(path, method=method).status_code != 401}
    # Label Studio's liveness probe, and its webhook, whose project events carry no credentials: it acts on
    # START_TRAINING only with the token (tests/test_labelstudio_backend.py)
    assert open_routes == {"/health", "/labelstudio/health", "/labelstudio/webhook"}
    answered = {rule: client.open(path, method=method, headers=TOKEN).status_code for rule, method, path in _requests(app)}
    assert 401 not in answered.values() and answered["/"] == 200, answered


def test_the_hook_checks_exactly_the_declared_url_parameters(tmp_path, offline_s3):
    app = create_app({"LOCAL_ROOT": str(tmp_path), "ALLOWED_PREFIXES": "s3://ok/,s3://ro/models/m_0.h5",
                      "S3_MAX_ATTEMPTS": 1}, **STUBS)
    client = json_client(app)
    refused, writes = set(), set()
    for rule, method, path in _requests(app):
        if rule == CLIP_RULE:  # its one URL parameter is its path (tests/test_clips.py)
            continue
        for name in ("model_url", "labeled_url", "unlabeled_url"):
            response = client.open(path, method=method, query_string={name: "s3://evil/m_0.h5"})
            if response.status_code == 403:
                assert response.get_json()["error"].startswith(f"{name}: read access to s3://evil/m_0.h5"), rule
                refused.add((rule, name))
        # readable (a file under an allowed entry), but its folder, where a new version would go, is not
        response = client.open(path, method=method, query_string={"model_url": "s3://ro/models/m_0.h5"})
        if response.status_code == 403:
            assert "model_url: write access to s3://ro/models/" in response.get_json()["error"], rule
            writes.add(rule)
    declared = {(rule.rule, name) for rule in app.url_map.iter_rules()
                for name in policy_of(app.view_functions[rule.endpoint]).urls}
    assert declared - refused == {(CLIP_RULE, "clip")}
    assert refused == declared - {(CLIP_RULE, "clip")} == {
        ("/train", "model_url"), ("/train", "labeled_url"), ("/jobs/train", "model_url"),
        ("/jobs/train", "labeled_url"), ("/predict", "model_url"), ("/predict", "unlabeled_url"),
        ("/embed", "model_url"), ("/embed", "unlabeled_url"), ("/query", "model_url"), ("/query", "unlabeled_url"),
        ("/query", "labeled_url"), ("/models", "model_url")}
    assert writes == {"/train", "/jobs/train"}


def test_requests_no_view_serves_follow_the_paths_declarations():
    client = create_app({"LOCAL_ROOT": "", "API_TOKEN": "s3cret"}, **STUBS).test_client()  # Accept: nothing
    assert client.post("/health").status_code == 405  # /health's views need no token, nor does its 405
    refused = client.post("/train")
    assert refused.status_code == 401 and refused.mimetype == "text/plain"  # /train's token and error format
    wrong_method = client.post("/train", headers=TOKEN)
    assert wrong_method.status_code == 405 and wrong_method.mimetype == "text/plain"
    assert wrong_method.get_data(as_text=True).startswith("error: Method Not Allowed")
    assert client.get("/no/such/route").status_code == 401  # unknown: the token first
    unknown = client.get("/no/such/route", headers=TOKEN)
    assert unknown.status_code == 404 and unknown.is_json and "error" in unknown.get_json()


def test_a_route_added_to_a_blueprint_is_listed_and_its_declaration_enforced():
    extra = Blueprint("extra", __name__)

    @extra.get("/extra")
    @policy(urls=("model_url",))
    def extra_view():
        """?model_url: an extra route"""
        return jsonify(ok=True)

    app = create_app({"LOCAL_ROOT": "", "API_TOKEN": "s3cret", "ALLOWED_PREFIXES": "s3://ok/"})
    app.register_blueprint(extra)
    client = json_client(app)
    assert client.get("/", headers=TOKEN).get_json()["endpoints"]["/extra"] == "GET ?model_url: an extra route"
    assert client.get("/extra?model_url=s3://ok/m_0.h5").status_code == 401
    assert client.get("/extra?model_url=s3://evil/m_0.h5", headers=TOKEN).status_code == 403
    assert client.get("/extra?model_url=s3://ok/m_0.h5", headers=TOKEN).get_json() == {"ok": True}


def test_a_route_without_a_declaration_is_refused_at_creation_and_never_served():
    ran = []
    bare = Blueprint("bare", __name__)

    @bare.get("/bare")
    def bare_view():
        """a route that forgot its @policy"""
        ran.append(1)
        return "served"

    app = Flask("t")
    app.register_blueprint(bare)
    with pytest.raises(UndeclaredRoute, match=r"/bare \(bare.bare_view\)"):
        install(app)  # what create_app calls once its blueprints are registered

    served = create_app({"LOCAL_ROOT": ""})
    served.register_blueprint(bare)  # after create_app's check: the hook fails closed
    with pytest.raises(UndeclaredRoute, match="/bare"):
        check_declared(served)
    response = json_client(served).get("/bare")
    assert response.status_code == 500 and ran == []


def test_a_route_without_a_description_is_refused():
    quiet = Blueprint("quiet", __name__)
    quiet.add_url_rule("/quiet", view_func=policy()(lambda: "x"), endpoint="quiet")
    app = Flask("t")
    app.register_blueprint(quiet)
    with pytest.raises(UndeclaredRoute, match="/quiet"):
        check_declared(app)


def test_a_write_declaration_must_name_model_url():
    with pytest.raises(TypeError, match="model_url"):
        policy(urls=("labeled_url",), writes=True)
    with pytest.raises(TypeError, match="tuple"):
        policy(urls="model_url")
