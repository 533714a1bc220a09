"""Jobs survive a restart: the job database (SQLite under STATE_DIR), the start-up recovery of jobs a
dead process left behind, the history bound, and the graceful shutdown of the job manager.
Processes that really die are in tests/test_faults_restart.py; here the apps live in this process
(each on a state folder of its own), with fake trainings except where a real one is named."""

from __future__ import annotations

import os
import sqlite3
import threading
import time

import torch  # noqa: F401  (before anything may import TensorFlow)

from ops_support import Served, make_root
from service import create_app
from service.errors import Unprocessable
from service.jobqueue import DIED, SHUT_DOWN, JobManager
from service.jobstore import FILENAME, OWNERS, JobStore

BODY = {"model_url": "s3://b/m_0.h5", "labeled_url": "s3://b/l/", "img_width": 3, "img_height": 3, "epochs": 2}
JSON = {"Accept": "application/json"}
JOB_KEYS = {"id", "job_id", "kind", "status", "params", "created", "started", "finished", "progress"}


def _client(state, **parts):
    app = create_app({"LOCAL_ROOT": "", "STATE_DIR": str(state)}, **parts)
    return app.extensions["orca"], app.test_client()


def _wait(client, job_id, statuses=("succeeded", "failed"), timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").get_json()
        if job["status"] in statuses:
            return job
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} still {job['status']}")


def _wait_for(predicate, timeout=120):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def fake_train(runtime, params, on_epoch=None):
    if params.model_url.endswith("bad_0.h5"):
        raise Unprocessable(f"not a Keras model: {params.model_url}")
    for epoch in range(1, params.epochs + 1):
        on_epoch(epoch, params.epochs, {"loss": 1 / epoch, "acc": 0.1 * epoch, "val_loss": float("nan"),
                                        "val_acc": 0.5, "best": epoch == 1, "seconds": 0.25})
    return {"model_url": f"s3://b/m_{params.epochs}.h5", "loss": [1.0, 0.5][: params.epochs], "cm": [1, 2, 3, 4]}


def _die(store: JobStore) -> None:
    """What `kill -9` leaves of a store: its connection gone, its lock file on disk but unlocked."""
    store.connection.close()
    os.close(store.owner_fd)
    store.connection = store.owner_fd = None


def test_jobs_answer_the_same_json_after_a_restart(tmp_path):
    runtime, client = _client(tmp_path, run_train=fake_train)
    ids = [client.post("/jobs/train", json=dict(BODY, epochs=n)).get_json()["job_id"] for n in (1, 2)]
    ids.append(client.post("/jobs/train", json=dict(BODY, model_url="s3://b/bad_0.h5")).get_json()["job_id"])
    before = {job_id: _wait(client, job_id) for job_id in ids}
    listed = client.get("/jobs").get_json()
    assert [j["id"] for j in listed["jobs"]] == ids[::-1] and listed["queued"] == 0

    ok, failed = before[ids[1]], before[ids[2]]
    assert set(ok) == JOB_KEYS | {"result"} and set(failed) == JOB_KEYS | {"error"}
    assert ok["status"] == "succeeded" and ok["result"] == {"model_url": "s3://b/m_2.h5", "loss": [1.0, 0.5],
                                                            "cm": [1, 2, 3, 4]}
    assert ok["progress"]["epoch"] == ok["progress"]["epochs"] == 2
    assert [m["epoch"] for m in ok["progress"]["metrics"]] == [1, 2] and ok["progress"]["metrics"][1]["loss"] == 0.5
    assert ok["params"] == {"model_url": "s3://b/m_0.h5", "labeled_url": "s3://b/l/", "img_width": 3,
                            "img_height": 3, "epochs": 2, "seed": None}
    assert ok["created"] <= ok["started"] <= ok["finished"]
    assert failed["error"] == {"status": 422, "message": "not a Keras model: s3://b/bad_0.h5"}

    assert runtime.jobs.shutdown(5)
    assert (tmp_path / FILENAME).exists() and os.listdir(tmp_path / OWNERS) == []  # a clean stop drops its lock
    _, after = _client(tmp_path)
    assert {job_id: after.get(f"/jobs/{job_id}").get_json() for job_id in ids} == before
    again = after.get("/jobs").get_json()
    assert again["jobs"] == listed["jobs"] and again["queued"] == 0
    assert after.get("/jobs/nope").status_code == 404


def test_jobs_a_dead_process_left_queued_or_running_are_failed_interrupted(tmp_path):
    runtime, client = _client(tmp_path, run_train=fake_train)
    done = client.post("/jobs/train", json=dict(BODY, epochs=1)).get_json()["job_id"]
    finished = _wait(client, done)
    # the same process now "dies" with one job running (two epochs done) and one queued
    store = runtime.jobs.store
    now = time.time()
    base = dict(kind="train", params={"epochs": 5}, created=now, finished=None, epoch=0, epochs=None,
                result=None, error=None)
    store.insert(dict(base, id="running1", status="running", started=now))
    store.insert(dict(base, id="queued1", status="queued", started=None))
    for epoch in (1, 2):
        store.add_epoch("running1", epoch, 5, {"epoch": epoch, "loss": 0.5})
    lock_file = tmp_path / OWNERS / f"{store.owner}.lock"
    _die(store)
    assert lock_file.exists()

    _, restarted = _client(tmp_path)
    running = restarted.get("/jobs/running1").get_json()
    interrupted = {"status": 503, "message": DIED, "reason": "interrupted"}
    assert running["status"] == "failed" and running["error"] == interrupted, running
    assert running["progress"] == {"epoch": 2, "epochs": 5, "metrics": [{"epoch": 1, "loss": 0.5},
                                                                       {"epoch": 2, "loss": 0.5}]}
    assert running["finished"] >= running["started"] and "result" not in running
    queued = restarted.get("/jobs/queued1").get_json()
    assert queued["status"] == "failed" and queued["error"] == interrupted and queued["started"] is None
    assert DIED.startswith("interrupted: the service stopped before the job finished")
    assert [j["id"] for j in restarted.get("/jobs").get_json()["jobs"]] == ["queued1", "running1", done]
    assert restarted.get(f"/jobs/{done}").get_json() == finished  # finished jobs are left as they were
    assert not lock_file.exists()  # the dead owner's lock file is swept


def test_jobs_of_a_live_process_on_the_same_folder_are_left_alone(tmp_path):
    release, started = threading.Event(), threading.Event()

    def slow(runtime, params, on_epoch=None):
        started.set()
        on_epoch(1, 2, {"loss": 1.0})
        release.wait(120)
        return {"ok": 1}

    first, client = _client(tmp_path, run_train=slow)
    job_id = client.post("/jobs/train", json=BODY).get_json()["job_id"]
    assert started.wait(120)
    second, other = _client(tmp_path)  # e.g. a second gunicorn worker on the same state folder
    second.jobs.open()
    job = other.get(f"/jobs/{job_id}").get_json()
    assert job["status"] == "running" and job["progress"]["epoch"] == 1
    release.set()
    assert _wait(other, job_id)["result"] == {"ok": 1}


def test_the_history_bound_applies_to_the_database(tmp_path):
    client = create_app({"LOCAL_ROOT": "", "STATE_DIR": str(tmp_path), "JOB_HISTORY": 2},
                        run_train=fake_train).test_client()
    for n in (1, 2, 1, 2):
        assert client.get("/train", query_string=dict(BODY, epochs=n)).status_code == 200
    listed = client.get("/jobs").get_json()["jobs"]
    assert [j["params"]["epochs"] for j in listed] == [2, 1]
    with sqlite3.connect(tmp_path / FILENAME) as db:
        assert db.execute("SELECT COUNT(*) FROM jobs").fetchone() == (2,)
        kept = {j["id"] for j in listed}
        assert {r[0] for r in db.execute("SELECT job_id FROM job_epochs")} == kept  # the epochs go with them
    # a smaller bound at the next start trims what is there
    restarted = create_app({"LOCAL_ROOT": "", "STATE_DIR": str(tmp_path), "JOB_HISTORY": 1}).test_client()
    assert [j["id"] for j in restarted.get("/jobs").get_json()["jobs"]] == [listed[0]["id"]]


def test_without_a_store_the_history_stays_in_memory():
    manager = JobManager(history=2)
    jobs = [manager.submit("train", {"n": n}, lambda job, n=n: n) for n in range(3)]
    for job in jobs:
        assert job.done.wait(120)
    assert [j.result for j in manager.list()] == [2, 1] and manager.get(jobs[2].id).status == "succeeded"
    assert manager.shutdown(5)


def test_shutdown_stops_the_running_job_after_its_epoch_and_fails_the_queued(tmp_path):
    epochs_done, published = [], []
    first_epoch = threading.Event()

    def long_train(runtime, params, on_epoch=None):
        for epoch in range(1, params.epochs + 1):
            time.sleep(0.02)
            epochs_done.append(epoch)
            first_epoch.set()
            on_epoch(epoch, params.epochs, {"loss": 1.0})
        published.append(params.epochs)  # what run_train would publish: never reached
        return {"model_url": "s3://b/m_1.h5"}

    runtime, client = _client(tmp_path, run_train=long_train)
    running = client.post("/jobs/train", json=dict(BODY, epochs=1000)).get_json()["job_id"]
    queued = client.post("/jobs/train", json=dict(BODY, epochs=3)).get_json()["job_id"]
    waiter = {}
    thread = threading.Thread(target=lambda: waiter.update(
        response=client.get("/train", query_string=dict(BODY, epochs=4), headers=JSON)))
    thread.start()
    assert first_epoch.wait(120)
    _wait_for(lambda: runtime.jobs.queued() == 2)

    assert runtime.jobs.shutdown(120) is True
    thread.join(120)
    assert not thread.is_alive()
    assert published == [] and len(epochs_done) < 1000
    response = waiter["response"]  # the GET /train waiting for a queued job
    assert response.status_code == 503 and response.get_json() == {"error": SHUT_DOWN}
    assert response.headers["Retry-After"] == "30"
    refused = client.post("/jobs/train", json=BODY)
    assert refused.status_code == 503 and "shutting down" in refused.get_json()["error"]

    _, restarted = _client(tmp_path)
    interrupted = {"status": 503, "message": SHUT_DOWN, "reason": "interrupted"}
    job = restarted.get(f"/jobs/{running}").get_json()
    assert job["status"] == "failed" and job["error"] == interrupted
    # it stopped right after the epoch during which the shutdown came, with that epoch recorded
    assert job["progress"]["epoch"] == len(epochs_done) and len(job["progress"]["metrics"]) == len(epochs_done)
    listed = restarted.get("/jobs").get_json()["jobs"]
    assert len(listed) == 3 and all(j["status"] == "failed" and j["error"] == interrupted for j in listed)
    assert restarted.get(f"/jobs/{queued}").get_json()["progress"] == {"epoch": 0, "epochs": None, "metrics": []}


def test_shutdown_gives_up_on_a_job_that_does_not_stop_and_marks_it(tmp_path):
    release, started, returned = threading.Event(), threading.Event(), threading.Event()

    def stuck(runtime, params, on_epoch=None):  # e.g. an upload that takes long: no epoch boundary to stop at
        started.set()
        release.wait(120)
        returned.set()
        return {"late": True}

    runtime, client = _client(tmp_path, run_train=stuck)
    job_id = client.post("/jobs/train", json=BODY).get_json()["job_id"]
    assert started.wait(120)
    assert runtime.jobs.shutdown(0.2) is False
    assert not returned.is_set() and runtime.jobs.worker.is_alive()  # it gave up: the job is still stuck
    _, restarted = _client(tmp_path)
    assert restarted.get(f"/jobs/{job_id}").get_json()["error"]["reason"] == "interrupted"
    release.set()
    _wait_for(lambda: not runtime.jobs.worker.is_alive())
    job = restarted.get(f"/jobs/{job_id}").get_json()
    assert job["status"] == "failed" and job["error"]["message"] == SHUT_DOWN  # not overwritten by its late end


def test_a_state_folder_that_cannot_be_written_is_a_503(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    _, client = _client(blocker, run_train=fake_train)
    response = client.post("/jobs/train", json=BODY)
    assert response.status_code == 503 and "job database" in response.get_json()["error"]
    assert client.get("/train", query_string=BODY, headers=JSON).status_code == 503


def test_a_real_training_stopped_by_shutdown_publishes_nothing(tmp_path):
    args = make_root(tmp_path)
    served = Served(create_app({"LOCAL_ROOT": str(tmp_path), "DEVICE": "cpu", "STATE_DIR": str(tmp_path / "state"),
                                "CACHE_DIR": str(tmp_path / "cache")}))
    try:
        status, body, _ = served.request("POST", "/jobs/train", body=dict(args, epochs=1000))
        assert status == 202
        _wait_for(lambda: served.get(f"/jobs/{body['job_id']}")[1]["progress"]["epoch"] >= 1, timeout=120)
        assert served.app.extensions["orca"].jobs.shutdown(60)
    finally:
        served.close()
    assert sorted(os.listdir(tmp_path / "models")) == ["srkw_cnn_0.h5"]  # nothing published, nothing partial
    _, restarted = _client(tmp_path / "state")
    job = restarted.get(f"/jobs/{body['job_id']}").get_json()
    assert job["status"] == "failed" and job["error"]["reason"] == "interrupted"
    assert 1 <= job["progress"]["epoch"] < 1000 and job["progress"]["epochs"] == 1000


def test_services_with_default_settings_never_share_a_job_database(tmp_path, monkeypatch):
    import tempfile

    from service import config as config_module

    monkeypatch.delenv("ORCA_STATE_DIR", raising=False)  # the conftest's private folder: not the default
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()

    def service(root, **settings):
        (tmp_path / root).mkdir(exist_ok=True)
        app = create_app({"LOCAL_ROOT": str(tmp_path / root), **settings}, run_train=fake_train)
        return app.extensions["orca"], app.test_client()

    ids = {}
    for name, root, settings in [("a", "a", {}), ("b", "b", {}), ("a-other-port", "a", {"PORT": 5002})]:
        runtime, client = service(root, **settings)
        assert runtime.jobs.store.folder.startswith(str(tmp_path / "tmp" / f"orca-state-{os.geteuid()}"))
        ids[name] = client.post("/jobs/train", json=dict(BODY, epochs=1)).get_json()["job_id"]
        _wait(client, ids[name])
        assert [j["id"] for j in client.get("/jobs").get_json()["jobs"]] == [ids[name]]
        runtime.jobs.shutdown(5)
    _, again = service("a")  # the same service restarted finds its own jobs
    assert [j["id"] for j in again.get("/jobs").get_json()["jobs"]] == [ids["a"]]
    assert config_module.state_dir({"STATE_DIR": "/srv/state", "LOCAL_ROOT": "x"}) == "/srv/state"
