"""Property-based fuzzing of the query parameters of /train and /predict (and the JSON body of
/jobs/train): whatever comes in, the answer is JSON and never a 500."""

from __future__ import annotations

import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import create_app
from repo_data import json_client

URLS = st.one_of(
    st.sampled_from(["", " ", "s3://", "s3:///key", "s3://bucket", "s3://b/m_0.h5", "s3://b/../x", "ftp://x/m.h5",
                     "file://remote/x", "file:///etc/passwd", "/etc/passwd", "../../etc", "models/m_0.h5",
                     "models/", "http://x", "C:\\x", "%00", "a\x00b", "s3://b/" + "k" * 2000, "~", "."]),
    st.text(max_size=40),
)
INTS = st.one_of(st.sampled_from(["", "0", "-1", "1", "3", "1e3", "0x10", "٣", " 7 ", "99999999999999999999",
                                  "4097", "1001", "nan"]),
                 st.integers(-10, 10_000).map(str), st.text(max_size=8))
MAYBE = lambda s: st.one_of(st.none(), s)  # noqa: E731


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "models").mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
                            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        mp.chdir(root)
        app = create_app({"LOCAL_ROOT": str(root), "DEVICE": "cpu", "S3_MAX_ATTEMPTS": 1})
        yield json_client(app)


def _check(response):
    assert response.status_code != 500, response.get_data(as_text=True)
    assert response.status_code in (200, 202, 400, 403, 404, 405, 422, 429, 502, 503), response.status_code
    body = response.get_json()
    if response.status_code >= 400:
        assert isinstance(body, dict) and isinstance(body["error"], str) and "Traceback" not in body["error"]


def _query(**values):
    return {k: v for k, v in values.items() if v is not None}


@pytest.mark.slow  # ~3 s: 120 examples
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_url=MAYBE(URLS), labeled_url=MAYBE(URLS), img_width=MAYBE(INTS), img_height=MAYBE(INTS),
       epochs=MAYBE(INTS), seed=MAYBE(INTS))
def test_train_never_500(client, model_url, labeled_url, img_width, img_height, epochs, seed):
    _check(client.get("/train", query_string=_query(model_url=model_url, labeled_url=labeled_url, img_width=img_width,
                                                    img_height=img_height, epochs=epochs, seed=seed)))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_url=MAYBE(URLS), unlabeled_url=MAYBE(URLS), img_width=MAYBE(INTS), img_height=MAYBE(INTS),
       extra=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3))
def test_predict_never_500(client, model_url, unlabeled_url, img_width, img_height, extra):
    query = dict(extra)
    query.update(_query(model_url=model_url, unlabeled_url=unlabeled_url, img_width=img_width, img_height=img_height))
    _check(client.get("/predict", query_string=query))


JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
                    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children,
                                                                                      max_size=3), max_leaves=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.one_of(JSON, st.fixed_dictionaries({"model_url": URLS, "labeled_url": URLS, "img_width": JSON,
                                                   "img_height": JSON, "epochs": JSON})))
def test_job_body_never_500(client, body):
    response = client.post("/jobs/train", json=body)
    _check(response)
    if response.status_code == 202:  # the job itself fails cleanly too
        job_id = response.get_json()["job_id"]
        for _ in range(500):
            job = client.get(f"/jobs/{job_id}").get_json()
            if job["status"] in ("succeeded", "failed"):
                break
            import time

            time.sleep(0.01)
        assert job["status"] == "failed" and job["error"]["status"] != 500, job


@settings(max_examples=60, deadline=None)
@given(model_url=MAYBE(URLS))
def test_models_listing_never_500(client, model_url):
    _check(client.get("/models", query_string=_query(model_url=model_url)))
