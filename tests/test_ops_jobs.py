"""Background training jobs over real HTTP, the queue, provenance sidecars and /models (local storage)."""

from __future__ import annotations

import json
import threading

import torch  # noqa: F401  (before TensorFlow)
import pytest
from PIL import Image

from ops_support import TRAIN_KEYS, Served, make_root
from service import create_app
from repo_data import json_client
from service.errors import NotFound


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("ops_jobs")
    args = make_root(root)
    served = Served(create_app({"LOCAL_ROOT": str(root), "DEVICE": "cpu", "MAX_QUEUED": 8,
                                "STATE_DIR": str(root / "state")}))
    served.root, served.args = root, args
    yield served
    served.close()


def test_job_lifecycle_progress_result_and_sidecar(served):
    args = dict(served.args, epochs=2)
    status, body, headers = served.request("POST", "/jobs/train", body=args)
    assert status == 202 and body["status"] in ("queued", "running") and headers["Location"] == f"/jobs/{body['job_id']}"
    job = served.wait_job(body["job_id"])
    assert job["status"] == "succeeded", job
    assert job["progress"]["epoch"] == job["progress"]["epochs"] == 2
    assert [m["epoch"] for m in job["progress"]["metrics"]] == [1, 2]
    assert {"loss", "acc", "val_loss", "val_acc"} <= set(job["progress"]["metrics"][0])
    result = job["result"]
    assert set(result) == TRAIN_KEYS and len(result["acc"]) == 2
    assert result["loss"] == [m["loss"] for m in job["progress"]["metrics"]]
    assert job["params"]["epochs"] == 2 and "error" not in job

    # GET /train answers the same shape (through the same queue)
    status, direct = served.get("/train", **served.args)
    assert status == 200 and set(direct) == TRAIN_KEYS
    assert {k: type(v) for k, v in direct.items()} == {k: type(v) for k, v in result.items()}
    assert result["model_url"] != direct["model_url"]

    # provenance beside the model
    written = served.root / "models" / (result["model_url"].rsplit("/", 1)[1])
    sidecar = json.loads(written.with_suffix(".json").read_text())
    assert sidecar["model_url"] == result["model_url"]
    assert sidecar["parent"]["model_url"] == served.args["model_url"] and sidecar["parent"]["sha256"]
    assert sidecar["labeled"]["counts"] == {"train": {"calls": 2, "nocalls": 2}, "validation": {"calls": 2, "nocalls": 2}}
    assert len(sidecar["labeled"]["listing_sha256"]) == 64
    hyper = sidecar["hyperparameters"]
    assert hyper["epochs"] == 2 and hyper["batch_size"] == 32 and hyper["seed"] == 0
    assert hyper["optimizer"] == "Adam" and hyper["learning_rate"] == pytest.approx(3e-5)
    assert (hyper["img_width"], hyper["img_height"]) == (67, 83)
    assert [e["val_loss"] for e in sidecar["metrics"]["epochs"]] == result["val_loss"]
    assert sidecar["metrics"]["cm"] == result["cm"] and sidecar["metrics"]["model_acc"] == result["model_acc"]
    assert 0 <= sidecar["metrics"]["roc_auc"] <= 1 and 0 < sidecar["metrics"]["average_precision"] <= 1
    assert sidecar["device"] == "cpu" and sidecar["duration_s"] > 0 and sidecar["service_version"]
    assert sidecar["skipped_files"] == []
    with Image.open(written.with_suffix(".png")) as png:
        assert png.format == "PNG" and png.size[0] > 300

    # /models: newest first, with the sidecar summaries; the seed model has none
    status, listing = served.get("/models", model_url=str(served.root / "models"))
    assert status == 200, listing
    versions = listing["versions"]
    assert [v["version"] for v in versions] == sorted((v["version"] for v in versions), reverse=True)
    assert versions[-1]["name"] == "srkw_cnn_0.h5" and versions[-1]["sidecar"] is None
    by_url = {v["model_url"]: v for v in versions}
    summary = by_url[result["model_url"]]["sidecar"]
    assert summary["model_acc"] == result["model_acc"] and summary["epochs"] == 2
    assert by_url[result["model_url"]]["curves_url"].endswith(".png")

    # /jobs lists them, newest first
    status, listed = served.get("/jobs")
    assert status == 200 and listed["jobs"][1]["id"] == job["id"]


def test_parallel_train_requests_get_distinct_versions(served):
    results = []

    def call():
        results.append(served.get("/train", **served.args))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [s for s, _ in results] == [200] * 3, results
    urls = [b["model_url"] for _, b in results]
    assert len(set(urls)) == 3
    for url in urls:
        assert (served.root / "models" / url.rsplit("/", 1)[1]).with_suffix(".json").exists()


def test_failed_job_reports_the_status_train_would_have_answered(served):
    args = dict(served.args, model_url=str(served.root / "models" / "missing_0.h5"))
    status, body, _ = served.request("POST", "/jobs/train", body=args)
    assert status == 202
    job = served.wait_job(body["job_id"])
    assert job["status"] == "failed" and job["error"]["status"] == 404 and "missing_0.h5" in job["error"]["message"]
    assert "result" not in job
    assert served.get("/train", **args)[0] == 404


def test_bad_job_parameters_are_400_and_unknown_job_404(served):
    status, body, _ = served.request("POST", "/jobs/train", body={"model_url": "x"})
    assert status == 400 and "labeled_url" in body["error"]
    status, body, _ = served.request("POST", "/jobs/train", body=[1, 2])
    assert status == 400
    # the parameters may also come as a query string
    status, body, _ = served.request("POST", "/jobs/train", params={"epochs": "0"})
    assert status == 400 and "epochs" in body["error"]
    assert served.get("/jobs/nope")[0] == 404


def test_corrupt_training_image_is_skipped_and_reported_in_the_sidecar(served, tmp_path):
    root = served.root
    bad = root / "labeled_bad"
    import shutil

    shutil.copytree(root / "labeled", bad)
    (bad / "train" / "calls" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    status, body = served.get("/train", **dict(served.args, labeled_url=str(bad)))
    assert status == 200, body
    assert body["labeled_files"] == 4
    sidecar = json.loads((root / "models" / body["model_url"].rsplit("/", 1)[1]).with_suffix(".json").read_text())
    assert len(sidecar["skipped_files"]) == 1
    skipped = sidecar["skipped_files"][0]
    assert skipped["url"] == f"{bad}/train/calls/broken.png" and skipped["split"] == "train"
    assert "/tmp/orca-train" not in skipped["reason"]
    status, metrics_text = served.get("/metrics")
    assert 'orca_skipped_files_total{stage="train"}' in metrics_text

    # a class left with no readable image is still a 422
    for png in (bad / "train" / "nocalls").iterdir():
        png.write_bytes(b"garbage")
    status, body = served.get("/train", **dict(served.args, labeled_url=str(bad)))
    assert status == 422 and "nocalls" in body["error"], body


def test_queue_full_is_429_and_train_waits_for_its_turn(tmp_path):
    release, started = threading.Event(), threading.Event()
    calls = []

    def slow_train(runtime, params, on_epoch=None):
        calls.append(params.epochs)
        started.set()
        on_epoch(1, 2, {"loss": 1.0})
        release.wait(30)
        return {"model_url": f"m{params.epochs}"}

    client = json_client(create_app({"LOCAL_ROOT": "", "MAX_QUEUED": 2, "STATE_DIR": str(tmp_path)},
                                    run_train=slow_train))
    body = {"model_url": "s3://b/m_0.h5", "labeled_url": "s3://b/l/", "img_width": 3, "img_height": 3}
    first = client.post("/jobs/train", json=dict(body, epochs=1))
    assert first.status_code == 202
    assert started.wait(10)
    running = client.get(f"/jobs/{first.get_json()['job_id']}").get_json()
    assert running["status"] == "running" and running["progress"]["epoch"] == 1
    queued = [client.post("/jobs/train", json=dict(body, epochs=n)) for n in (2, 3)]
    assert [r.status_code for r in queued] == [202, 202]
    full = client.post("/jobs/train", json=dict(body, epochs=4))
    assert full.status_code == 429 and "queue is full" in full.get_json()["error"]
    assert client.get("/train", query_string=dict(body, epochs=5)).status_code == 429
    assert "orca_queue_length 2" in client.get("/metrics").get_data(as_text=True)
    release.set()
    ids = [first.get_json()["job_id"]] + [r.get_json()["job_id"] for r in queued]
    for job_id in ids:
        for _ in range(200):
            job = client.get(f"/jobs/{job_id}").get_json()
            if job["status"] == "succeeded":
                break
            threading.Event().wait(0.02)
        assert job["status"] == "succeeded"
    assert calls == [1, 2, 3]  # one at a time, in order
    assert client.get("/train", query_string=dict(body, epochs=6)).get_json() == {"model_url": "m6"}


def test_job_history_is_bounded(tmp_path):
    client = json_client(create_app({"LOCAL_ROOT": "", "JOB_HISTORY": 3, "STATE_DIR": str(tmp_path)},
                        run_train=lambda runtime, params, on_epoch=None: {"ok": params.epochs}))
    query = {"model_url": "s3://b/m_0.h5", "labeled_url": "s3://b/l/", "img_width": 3, "img_height": 3}
    for n in range(1, 6):
        assert client.get("/train", query_string=dict(query, epochs=n)).get_json() == {"ok": n}
    listed = client.get("/jobs").get_json()["jobs"]
    assert [j["result"] for j in listed] == [{"ok": 5}, {"ok": 4}, {"ok": 3}]


def test_job_that_raises_a_bug_is_a_500_without_details(tmp_path):
    def boom(runtime, params, on_epoch=None):
        raise RuntimeError("secret")

    client = json_client(create_app({"LOCAL_ROOT": "", "STATE_DIR": str(tmp_path)}, run_train=boom))
    response = client.post("/jobs/train", json={"model_url": "s3://b/m_0.h5", "labeled_url": "s3://b/l/",
                                                "img_width": 3, "img_height": 3, "epochs": 1})
    job_id = response.get_json()["job_id"]
    for _ in range(200):
        job = client.get(f"/jobs/{job_id}").get_json()
        if job["status"] == "failed":
            break
        threading.Event().wait(0.02)
    assert job["error"] == {"status": 500, "message": "internal server error (see the server log)"}
    assert NotFound.status == 404
