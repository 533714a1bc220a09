"""Bearer token, allow-list of storage prefixes, local path confinement, listing bounds."""

from __future__ import annotations

import os

import pytest

from ops_support import make_root
from service import create_app
from repo_data import json_client
from service.access import AllowList, check_token
from service.errors import Forbidden, Unauthorized
from service.storage import LocalStorage, locate

PREDICT = "/predict?model_url={m}&unlabeled_url={u}&img_width=3&img_height=3"


class Recorded(list):
    """The params the app's (fake) training and scoring were called with."""

    def parts(self) -> dict:
        from service.predict import PredictItems

        return {"run_predict": lambda runtime, params, on_progress=None: self.append(params) or PredictItems(),
                "run_train": lambda runtime, params, on_epoch=None: self.append(params) or {"ok": 1}}


@pytest.fixture
def stub_jobs():
    return Recorded()


def test_token_required_everywhere_but_health(stub_jobs):
    client = json_client(create_app({"LOCAL_ROOT": "", "API_TOKEN": "s3cret"}, **stub_jobs.parts()))
    assert client.get("/health").status_code == 200
    for path in ("/", "/metrics", "/jobs", "/ready", "/models?model_url=s3://b/m/",
                 PREDICT.format(m="s3://b/m_0.h5", u="s3://b/u/")):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                        {"Authorization": "Basic s3cret"}):
            response = client.get(path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert "token" in response.get_json()["error"] and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.post("/jobs/train", json={}).status_code == 401
    assert stub_jobs == []
    ok = client.get(PREDICT.format(m="s3://b/m_0.h5", u="s3://b/u/"), headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and len(stub_jobs) == 1
    assert client.get("/metrics", headers={"Authorization": "bearer s3cret"}).status_code == 200


def test_no_token_configured_means_open():
    check_token(None, None)
    check_token("", None)
    with pytest.raises(Unauthorized):
        check_token("t", "Bearer ")


def test_allow_list_of_prefixes(stub_jobs):
    client = json_client(create_app({"LOCAL_ROOT": "", "ALLOWED_PREFIXES": "s3://orcagsoc/, s3://other/models"},
                        **stub_jobs.parts()))
    good = PREDICT.format(m="s3://orcagsoc/models/m_0.h5", u="s3://orcagsoc/unlabeled")
    assert client.get(good).status_code == 200
    for model, unlabeled in [("s3://evil/m_0.h5", "s3://orcagsoc/u/"),
                             ("s3://orcagsoc/m_0.h5", "s3://orcagsoc2/u/"),
                             ("s3://other/models_old/m_0.h5", "s3://orcagsoc/u/"),
                             ("s3://other/m_0.h5", "s3://orcagsoc/u/"),
                             ("s3://other/models/../secret/m_0.h5", "s3://orcagsoc/u/")]:
        response = client.get(PREDICT.format(m=model, u=unlabeled))
        assert response.status_code == 403, (model, unlabeled)
        assert "ORCA_ALLOWED_PREFIXES" in response.get_json()["error"]
    train = "/train?model_url={m}&labeled_url=s3://orcagsoc/labeled/&img_width=3&img_height=3&epochs=1"
    assert client.get(train.format(m="s3://other/models/m_0.h5")).status_code == 200
    assert client.get(train.format(m="s3://evil/models/m_0.h5")).status_code == 403
    assert client.post("/jobs/train", json={"model_url": "s3://evil/m_0.h5", "labeled_url": "s3://orcagsoc/l/",
                                            "img_width": 3, "img_height": 3, "epochs": 1}).status_code == 403
    assert client.get("/models?model_url=s3://evil/models/").status_code == 403
    assert len(stub_jobs) == 2


def test_allow_list_with_local_entries(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (tmp_path / "other").mkdir()
    rules = AllowList(f"{allowed},s3://b/")
    assert rules.allows(str(allowed / "m_0.h5")) and rules.allows(f"file://{allowed}/x/")
    assert not rules.allows(str(tmp_path / "other" / "m_0.h5"))
    assert not rules.allows(str(allowed / ".." / "other" / "m_0.h5"))
    assert not rules.allows(str(tmp_path / "allowed_not"))
    os.symlink(tmp_path / "other", allowed / "link")
    assert not rules.allows(str(allowed / "link" / "m_0.h5"))
    assert AllowList("s3://b/").allows(str(tmp_path))  # no local entries: ORCA_LOCAL_ROOT decides
    with pytest.raises(Forbidden):
        rules.check("s3://c/x", "model_url")


@pytest.mark.parametrize("escape", ["{root}/../outside/m_0.h5", "{root}/models/../../outside/m_0.h5",
                                    "/etc/passwd", "file:///etc/passwd", "{root}/link/m_0.h5",
                                    "file://{root}/link/m_0.h5"])
def test_local_paths_cannot_escape_the_root(tmp_path, escape):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "m_0.h5").write_bytes(b"secret")
    os.symlink(tmp_path / "outside", root / "link")
    with pytest.raises(Forbidden):
        locate(escape.format(root=root), "model_url", local_root=str(root))
    client = json_client(create_app({"LOCAL_ROOT": str(root)}))
    response = client.get(PREDICT.format(m=escape.format(root=root), u=str(root)))
    assert response.status_code == 403 and "outside" in response.get_json()["error"]


def test_symlinked_files_inside_a_dataset_pointing_out_are_not_listed_or_read(tmp_path):
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    (root / "data" / "a.png").write_bytes(b"a")
    (tmp_path / "secret.png").write_bytes(b"secret")
    os.symlink(tmp_path / "secret.png", root / "data" / "b.png")
    os.symlink(root / "data" / "a.png", root / "data" / "c.png")  # inside the root: fine
    storage = LocalStorage(str(root))
    assert [os.path.basename(o.key) for o in storage.list(f"{root}/data/")] == ["a.png", "c.png"]
    with pytest.raises(Forbidden):
        storage.download(f"{root}/data/b.png", str(tmp_path / "copy"))
    assert not (tmp_path / "copy").exists()
    # writing through a symlinked folder that leads out of the root is refused too
    (tmp_path / "out").mkdir()
    os.symlink(tmp_path / "out", root / "outlink")
    with pytest.raises(Forbidden):
        storage.upload(str(root / "data" / "a.png"), f"{root}/outlink/new.h5")
    assert os.listdir(tmp_path / "out") == []


def test_listing_larger_than_the_bound_is_422(tmp_path):
    args = make_root(tmp_path, per_class=2)
    client = json_client(create_app({"LOCAL_ROOT": str(tmp_path), "MAX_LISTING": 5}))
    response = client.get("/train", query_string=args)
    assert response.status_code == 422 and "ORCA_MAX_LISTING" in response.get_json()["error"]
    response = client.get("/predict", query_string={**args, "unlabeled_url": args["labeled_url"]})
    assert response.status_code == 422 and "ORCA_MAX_LISTING" in response.get_json()["error"]
    assert len(LocalStorage(max_listing=8).list(f"{tmp_path}/labeled/")) == 8


def test_s3_listing_bound(aws_env):
    import boto3
    from moto import mock_aws

    from service.errors import Unprocessable
    from service.storage import S3Storage

    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="orca")
        for i in range(12):
            client.put_object(Bucket="orca", Key=f"u/spectrograms/{i}.png", Body=b"x")
        with pytest.raises(Unprocessable, match="more than 10"):
            S3Storage("orca", max_listing=10).list("u/")
        assert len(S3Storage("orca").list("u/")) == 12
