"""The application factory and its single error handler (Flask test client, no storage)."""

import pytest

from service import create_app
from repo_data import json_client


@pytest.fixture
def client():
    return json_client(create_app({"LOCAL_ROOT": ""}))


def test_index_names_the_service_and_its_endpoints(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.get_json()["name"] == "orca-ml-endpoint"
    assert set(response.get_json()["endpoints"]) >= {"/train", "/predict", "/health", "/ready", "/metrics", "/jobs/train"}


def test_json_keys_come_out_sorted(client):
    body = client.get("/").get_data(as_text=True)
    assert body.index('"endpoints"') < body.index('"name"') < body.index('"version"')


def test_unexpected_exception_is_a_json_500_without_details(caplog):
    def boom(runtime, params, on_progress=None):
        raise RuntimeError("secret internal detail")

    client = json_client(create_app({"LOCAL_ROOT": ""}, run_predict=boom))
    response = client.get("/predict?model_url=s3://b/m_0.h5&unlabeled_url=s3://b/u/&img_width=3&img_height=3")
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal server error (see the server log)"}
    assert "secret internal detail" in caplog.text  # logged with its traceback, not returned


def test_method_not_allowed_is_json(client):
    response = client.post("/train")
    assert response.status_code == 405 and "error" in response.get_json()


def test_local_paths_disabled_by_config_is_400(client):
    response = client.get("/predict?model_url=/tmp/m_0.h5&unlabeled_url=/tmp/u/&img_width=3&img_height=3")
    assert response.status_code == 400 and "local paths are disabled" in response.get_json()["error"]


def test_environment_configures_limits(monkeypatch):
    monkeypatch.setenv("ORCA_MAX_EPOCHS", "3")
    client = json_client(create_app())
    response = client.get("/train?model_url=s3://b/m_0.h5&labeled_url=s3://b/l/&img_width=3&img_height=3&epochs=4")
    assert response.status_code == 400 and "between 1 and 3" in response.get_json()["error"]
