"""Faults under load and restarts, with real parts: moto's S3 server over HTTP, the service on real
HTTP servers, real `python -m service` and gunicorn processes killed (`kill -9`) or stopped (SIGTERM)
in the middle of a training job, then started again on the same state folder (ORCA_STATE_DIR).

What must hold: concurrent trainings get distinct, complete versions; a job whose process died is
reported failed ("interrupted"), never 404; a stopped or killed training publishes nothing, partial
or whole; the next /train takes the next free version number."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import torch  # noqa: F401  (before TensorFlow)
import pytest

from ops_support import COLS, ROWS, Served, make_root, upload_stack
from service import create_app
from service.jobqueue import DIED, SHUT_DOWN

REPO = Path(__file__).resolve().parent.parent


class Remote(Served):
    """Served's JSON-over-HTTP helpers for a service in another process."""

    def __init__(self, base: str):
        self.base = base


class Process:
    """A service process started by the test: its URL is read from its output (it listens on a free
    port), its log goes to a file so that a full pipe never blocks it."""

    def __init__(self, argv, env: dict, log: Path, pattern: str, source: str = "stdout"):
        self.log = log
        self.out = log.with_suffix(".out")
        with open(self.out, "wb") as out, open(log, "ab") as err:
            self.popen = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=err)
        watched = self.out if source == "stdout" else log
        deadline = time.monotonic() + 120
        while True:
            match = re.search(pattern, watched.read_text(errors="replace"))
            if match:
                self.remote = Remote(match.group(1).rstrip("/"))
                break
            assert self.popen.poll() is None, f"the service ended at start-up:\n{self.text()}"
            assert time.monotonic() < deadline, f"the service did not start:\n{self.text()}"
            time.sleep(0.05)

    def text(self) -> str:
        return self.out.read_text(errors="replace") + self.log.read_text(errors="replace")

    def wait_epoch(self, job_id: str, epoch: int = 1, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status, job = self.remote.get(f"/jobs/{job_id}")
            assert status == 200 and job["status"] in ("queued", "running"), job
            if job["progress"]["epoch"] >= epoch:
                return job
            assert time.monotonic() < deadline, f"no epoch {epoch} in {timeout} s:\n{self.text()}"
            time.sleep(0.1)

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"still running {timeout} s after {sig!r}:\n{self.text()}") from None

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


def _env(state: Path, local_root: str, **extra) -> dict:
    # the scratch of a killed process stays where it was: under the test's folder, not the system's /tmp
    (state.parent / "work").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), HOST="127.0.0.1", PORT="0", ORCA_STATE_DIR=str(state),
               ORCA_LOCAL_ROOT=local_root, ORCA_CACHE_DIR=str(state.parent / "cache"), ORCA_DEVICE="cpu",
               ORCA_WORK_DIR=str(state.parent / "work"), ORCA_PRELOAD_TORCH="0", LOG_LEVEL="INFO")
    env.update(extra)
    return env


def _service(tmp_path: Path, env: dict, name: str) -> Process:
    return Process([sys.executable, "-m", "service"], env, tmp_path / f"{name}.log",
                   r"listening on (http://\S+)")


def _train_here(tmp_path: Path, local_root: str, params: dict, job_id: str):
    """GET /train on an app of this process over the same state folder (the restarted service's
    successor); the interrupted job is still reported as such."""
    served = Served(create_app({"LOCAL_ROOT": local_root, "DEVICE": "cpu", "STATE_DIR": str(tmp_path / "state"),
                                "CACHE_DIR": str(tmp_path / "cache")}))
    try:
        assert served.get(f"/jobs/{job_id}")[1]["error"] == _interrupted(DIED)
        return served.get("/train", **params)
    finally:
        served.close()


def _wait(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _interrupted(message: str) -> dict:
    return {"status": 503, "message": message, "reason": "interrupted"}


# ---------------------------------------------------------------------------------- under load

@pytest.mark.slow  # ~5 s: four trainings against moto
def test_concurrent_trains_and_predicts_against_moto(s3_env, srkw_h5, tmp_path):
    s3, bucket = s3_env.client(), s3_env.bucket
    upload_stack(s3, bucket, srkw_h5)
    served = Served(create_app({"LOCAL_ROOT": "", "DEVICE": "cpu", "STATE_DIR": str(tmp_path / "state"),
                                "CACHE_DIR": str(tmp_path / "cache")}))
    train = {"model_url": f"s3://{bucket}/models/srkw_cnn_0.h5", "labeled_url": f"s3://{bucket}/labeled/",
             "img_width": ROWS, "img_height": COLS, "epochs": 1, "seed": 0}
    predict = {"model_url": f"s3://{bucket}/models/srkw_cnn_0.h5", "unlabeled_url": f"s3://{bucket}/unlabeled/",
               "img_width": ROWS, "img_height": COLS}
    calls = [("/train", train)] * 4 + [("/predict", predict)] * 4
    start = threading.Barrier(len(calls))
    answers: list = [None] * len(calls)

    def call(i):
        start.wait()
        answers[i] = served.get(calls[i][0], **calls[i][1])

    try:
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        jobs = served.get("/jobs")[1]["jobs"]
    finally:
        served.close()
    assert [status for status, _ in answers] == [200] * 8, answers
    written = sorted(body["model_url"] for _, body in answers[:4])
    assert written == [f"s3://{bucket}/models/srkw_cnn_{n}.h5" for n in (1, 2, 3, 4)]
    scores = [[item["predicted_value"] for item in body] for _, body in answers[4:]]
    assert len(scores[0]) == 3 and all(s == scores[0] for s in scores)
    assert [j["status"] for j in jobs] == ["succeeded"] * 4

    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="models/")["Contents"])
    boards = [k.split("/")[1] for k in keys if ".tensorboard/" in k]  # one event file per version
    assert boards == [f"srkw_cnn_{n}.tensorboard" for n in (1, 2, 3, 4)]
    assert [k for k in keys if ".tensorboard/" not in k] == ["models/srkw_cnn_0.h5"] + [
        f"models/srkw_cnn_{n}{ext}" for n in (1, 2, 3, 4) for ext in (".h5", ".json", ".png")]
    for n in (1, 2, 3, 4):  # every version whole: its bytes are those the sidecar hashed before the upload
        data = s3.get_object(Bucket=bucket, Key=f"models/srkw_cnn_{n}.h5")["Body"].read()
        sidecar = json.loads(s3.get_object(Bucket=bucket, Key=f"models/srkw_cnn_{n}.json")["Body"].read())
        assert data[:4] == b"\x89HDF" and hashlib.sha256(data).hexdigest() == sidecar["model_sha256"]
        assert sidecar["parent"]["model_url"] == train["model_url"]


# ---------------------------------------------------------------------------------- kill -9

@pytest.mark.slow  # ~10 s (2 cores): a service process importing torch to train, another restarted
def test_kill_9_during_a_training_job_then_restart(s3_env, srkw_h5, tmp_path):
    s3, bucket = s3_env.client(), s3_env.bucket
    upload_stack(s3, bucket, srkw_h5)
    env = _env(tmp_path / "state", "")  # S3 only, on moto (AWS_ENDPOINT_URL from s3_env)
    train = {"model_url": f"s3://{bucket}/models/srkw_cnn_0.h5", "labeled_url": f"s3://{bucket}/labeled/",
             "img_width": ROWS, "img_height": COLS, "seed": 0}
    first = _service(tmp_path, env, "first")
    try:
        status, body, _ = first.remote.request("POST", "/jobs/train", body=dict(train, epochs=1000))
        assert status == 202
        job_id = body["job_id"]
        first.wait_epoch(job_id)
        first.stop(signal.SIGKILL)
    finally:
        first.kill()
    assert first.popen.returncode == -signal.SIGKILL

    def models():
        return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="models/")["Contents"])

    assert models() == ["models/srkw_cnn_0.h5"]

    second = _service(tmp_path, env, "second")
    try:
        status, job = second.remote.get(f"/jobs/{job_id}")
        assert status == 200 and job["status"] == "failed" and job["error"] == _interrupted(DIED), job
        assert 1 <= job["progress"]["epoch"] < 1000 and job["finished"] is not None
        status, listed = second.remote.get("/jobs")
        assert [j["id"] for j in listed["jobs"]] == [job_id]
        assert second.stop() == 0
    finally:
        second.kill()
    # the next /train (here, to spare a third torch import: the store and the bucket are what count)
    status, result = _train_here(tmp_path, "", dict(train, epochs=1), job_id)
    assert status == 200 and result["model_url"] == f"s3://{bucket}/models/srkw_cnn_1.h5", result
    assert [k for k in models() if ".tensorboard/" not in k] == ["models/srkw_cnn_0.h5"] + [
        f"models/srkw_cnn_1{ext}" for ext in (".h5", ".json", ".png")]


STALLED_UPLOAD = textwrap.dedent("""
    import time
    import torch, torch._dynamo
    from service import storage
    from service.__main__ import make, run
    from service.app import create_app

    def stalled(src, dst, length=0):  # stall in the middle of writing the new version's bytes
        dst.write(src.read(1000))
        dst.flush()
        print("UPLOADING", flush=True)
        time.sleep(600)

    storage.shutil.copyfileobj = stalled
    server = make(create_app(), port=0)
    print(f"listening on http://127.0.0.1:{server.server_port}/", flush=True)
    run(server)
""")


@pytest.mark.slow  # ~9 s (2 cores): a service process importing torch to train, another restarted
def test_kill_9_while_a_job_publishes_its_version_then_restart(tmp_path):
    args = make_root(tmp_path)
    env = _env(tmp_path / "state", str(tmp_path))
    first = Process([sys.executable, "-c", STALLED_UPLOAD], env, tmp_path / "first.log", r"listening on (http://\S+)")
    try:
        status, body, _ = first.remote.request("POST", "/jobs/train", body=dict(args, epochs=2))
        assert status == 202
        job_id = body["job_id"]
        deadline = time.monotonic() + 120
        while "UPLOADING" not in first.out.read_text():
            assert time.monotonic() < deadline and first.popen.poll() is None, first.text()
            time.sleep(0.02)
        assert first.remote.get(f"/jobs/{job_id}")[1]["status"] == "running"
        first.stop(signal.SIGKILL)
    finally:
        first.kill()
    names = sorted(os.listdir(tmp_path / "models"))
    assert len(names) == 2 and names[0].startswith(".upload-") and names[1] == "srkw_cnn_0.h5", names  # mid-write

    second = _service(tmp_path, env, "second")
    try:
        status, job = second.remote.get(f"/jobs/{job_id}")
        assert status == 200 and job["status"] == "failed" and job["error"] == _interrupted(DIED), job
        assert job["progress"]["epoch"] == 2  # it had trained: it died while publishing
        assert second.stop() == 0
    finally:
        second.kill()
    status, result = _train_here(tmp_path, str(tmp_path), dict(args, epochs=1), job_id)
    assert status == 200 and result["model_url"] == str(tmp_path / "models" / "srkw_cnn_1.h5"), result
    versions = sorted(n for n in os.listdir(tmp_path / "models") if not n.startswith("."))
    assert versions == ["srkw_cnn_0.h5", "srkw_cnn_1.h5", "srkw_cnn_1.json", "srkw_cnn_1.png", "srkw_cnn_1.tensorboard"]
    sidecar = json.loads((tmp_path / "models" / "srkw_cnn_1.json").read_text())
    assert hashlib.sha256((tmp_path / "models" / "srkw_cnn_1.h5").read_bytes()).hexdigest() == sidecar["model_sha256"]


# ---------------------------------------------------------------------------------- SIGTERM

def _stop_during_training(tmp_path, process: Process, args) -> tuple[str, str, int]:
    """A long job running (epoch ≥ 1) and one queued; SIGTERM, and the process's exit (0) awaited;
    the epochs the running job had done just before the signal."""
    status, body, _ = process.remote.request("POST", "/jobs/train", body=dict(args, epochs=1000))
    assert status == 202
    running = body["job_id"]
    process.wait_epoch(running)
    status, body, _ = process.remote.request("POST", "/jobs/train", body=dict(args, epochs=1))
    assert status == 202
    done = process.remote.get(f"/jobs/{running}")[1]["progress"]["epoch"]
    assert process.stop(signal.SIGTERM, timeout=300) == 0, process.text()
    return running, body["job_id"], done


def _check_stopped(tmp_path, env, running: str, jobs: int, done_at_signal: int) -> None:
    """After the stop: no version; `running` and the other `jobs - 1` (queued) failed as interrupted,
    `running` after the epoch it was in at the signal: at most two more than the `done_at_signal` seen
    just before it (one that may have ended between that look and the signal, and the current one),
    where a process that did not stop it would go on towards its 1000."""
    assert sorted(os.listdir(tmp_path / "models")) == ["srkw_cnn_0.h5"]  # nothing published, nothing partial
    again = _service(tmp_path, env, "again")
    try:
        listed = again.remote.get("/jobs")[1]["jobs"]
        job = again.remote.get(f"/jobs/{running}")[1]
    finally:
        again.kill()
    # SHUT_DOWN, not DIED: the stopping process marked them itself
    assert len(listed) == jobs and all(j["status"] == "failed" and j["error"] == _interrupted(SHUT_DOWN)
                                       for j in listed), listed
    assert listed[-1] == job
    assert 1 <= done_at_signal <= job["progress"]["epoch"] <= done_at_signal + 2, (done_at_signal, job["progress"])
    assert len(job["progress"]["metrics"]) == job["progress"]["epoch"]
    assert all(j["started"] is None for j in listed[:-1])  # the queued ones never ran


@pytest.mark.slow  # ~10 s (2 cores): a service process importing torch to train, another restarted
def test_sigterm_stops_python_m_service_after_the_current_epoch(tmp_path):
    args = make_root(tmp_path)
    env = _env(tmp_path / "state", str(tmp_path))
    process = _service(tmp_path, env, "first")
    try:
        running, _, done = _stop_during_training(tmp_path, process, args)
    finally:
        process.kill()
    assert "SIGTERM: stopping the server and the training jobs" in process.text()
    _check_stopped(tmp_path, env, running, jobs=2, done_at_signal=done)


@pytest.mark.slow  # ~10 s (2 cores): gunicorn importing torch to train, then a service process
def test_sigterm_stops_gunicorn_through_the_hooks(tmp_path):
    args = make_root(tmp_path)
    env = _env(tmp_path / "state", str(tmp_path))
    argv = [sys.executable, "-m", "gunicorn", "--config", "python:service.gunicorn_hooks", "--graceful-timeout", "30",
            "--bind", "127.0.0.1:0", "--workers", "1", "--threads", "4", "--timeout", "0", "--no-control-socket",
            "service.wsgi:app"]
    process = Process(argv, env, tmp_path / "gunicorn.log", r"Listening at: (http://\S+)", source="stderr")
    waiter = {}
    try:
        # the worker has booted once it answers (post_worker_init has run: the hooks are in place)
        assert process.remote.get("/health")[0] == 200
        thread = threading.Thread(target=lambda: waiter.update(
            answer=process.remote.get("/train", **dict(args, epochs=1))))
        status, body, _ = process.remote.request("POST", "/jobs/train", body=dict(args, epochs=1000))
        running = body["job_id"]
        process.wait_epoch(running)
        thread.start()  # a GET /train waiting behind it: answered 503 at the shutdown, not held
        _wait(lambda: process.remote.get("/jobs")[1]["queued"] == 1)
        done = process.remote.get(f"/jobs/{running}")[1]["progress"]["epoch"]
        assert process.stop(signal.SIGTERM, timeout=300) == 0, process.text()
        thread.join(300)
        assert not thread.is_alive()
    finally:
        process.kill()
    # the hooks stopped the job after its current epoch (_check_stopped): gunicorn's --graceful-timeout
    # did not have to run out while it trained on
    assert waiter["answer"] == (503, {"error": SHUT_DOWN}), waiter
    assert "training jobs shut down" in process.text()
    _check_stopped(tmp_path, env, running, jobs=2, done_at_signal=done)


def test_a_state_folder_that_cannot_be_written_stops_the_start(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    env = _env(blocker, str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "service"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and "cannot open the job database" in done.stderr, done.stderr
