"""Faults: the object store going away and coming back, throttling and 5xx retried, a download
that breaks off retried, and a process killed mid-training or mid-upload leaving no version behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch  # noqa: F401  (before TensorFlow)
import boto3
import pytest
from botocore.awsrequest import AWSResponse
from moto.server import ThreadedMotoServer

from ops_support import COLS, ROWS, Served, make_root, upload_stack
from service import create_app
from service.errors import StorageError
from service.storage import S3Connector, S3Storage

BUCKET = "orcafaults"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def fast_botocore_backoff(monkeypatch):
    """botocore's standard retry backoff (up to 20 s) made instant; the attempts still happen."""
    from botocore.retries import standard

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, context: 0.01)


@pytest.fixture(scope="module")
def moto_stack(use_s3_endpoint, srkw_h5):
    with pytest.MonkeyPatch.context() as mp:
        # a server of this module's own, not the session's moto_server: the first test stops it
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        host, port = moto.get_host_and_port()
        use_s3_endpoint(mp, f"http://{host}:{port}")
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        upload_stack(s3, BUCKET, srkw_h5)
        faults = Faults()
        cache = tempfile.mkdtemp(prefix="orca-faults-cache-")
        served = Served(create_app({"LOCAL_ROOT": "", "DEVICE": "cpu", "READY_BUCKET": BUCKET, "CACHE_DIR": cache,
                                    "STATE_DIR": os.path.join(cache, "state")},
                                   s3=S3Connector(attempts=3, on_client=faults.install)))
        state = {"moto": moto, "port": port, "faults": faults}
        try:
            yield served, s3, state
        finally:
            served.close()
            state["moto"].stop()
            shutil.rmtree(cache, ignore_errors=True)


PREDICT = {"model_url": f"s3://{BUCKET}/models/srkw_cnn_0.h5", "unlabeled_url": f"s3://{BUCKET}/unlabeled/",
           "img_width": ROWS, "img_height": COLS}
TRAIN = {"model_url": f"s3://{BUCKET}/models/srkw_cnn_0.h5", "labeled_url": f"s3://{BUCKET}/labeled/",
         "img_width": ROWS, "img_height": COLS, "epochs": 1, "seed": 0}


def _models(s3):
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="models/").get("Contents", ()))


@pytest.mark.slow  # ~8 s
def test_object_store_gone_mid_training_then_back(moto_stack):
    served, s3, state = moto_stack
    assert served.get("/ready")[0] == 200
    assert served.get("/predict", **PREDICT)[0] == 200
    before = _models(s3)

    # the store goes away while a job trains: the job fails with 503, nothing is written, the service stays up
    status, body, _ = served.request("POST", "/jobs/train", body=dict(TRAIN, epochs=40))
    assert status == 202
    deadline = time.monotonic() + 120
    while served.get(f"/jobs/{body['job_id']}")[1]["progress"]["epoch"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    state["moto"].stop()
    job = served.wait_job(body["job_id"])
    assert job["status"] == "failed" and job["error"]["status"] == 503, job
    assert "cannot reach" in job["error"]["message"]

    status, body = served.get("/predict", **PREDICT)
    assert status == 503 and "cannot reach" in body["error"]
    status, body = served.get("/ready")
    assert status == 503 and body["status"] == "unavailable"
    assert served.get("/health")[0] == 200

    # back on the same port: everything works again
    state["moto"] = ThreadedMotoServer(ip_address="127.0.0.1", port=state["port"], verbose=False)
    state["moto"].start()
    assert _models(s3) == before  # the interrupted job left nothing
    assert served.get("/ready")[0] == 200
    status, items = served.get("/predict", **PREDICT)
    assert status == 200 and len(items) == 3
    status, result = served.get("/train", **TRAIN)
    assert status == 200 and result["model_url"].endswith("_1.h5")


class Faults:
    """What the app's S3 client meets (installed on it through the factory: `S3Connector(on_client=…)`):
    `before_send`, a botocore before-send handler that may answer instead of the store."""

    def __init__(self):
        self.before_send = None

    def install(self, client):
        client.meta.events.register("before-send.s3", self._before_send)

    def _before_send(self, **kwargs):
        return self.before_send(**kwargs) if self.before_send is not None else None


def _inject(responses):
    """A before-send handler answering the next S3 requests with the given (status, code) errors, then
    the real store."""
    pending = list(responses)
    seen = []

    def handler(request, **kwargs):
        seen.append(request.method)
        if not pending:
            return None
        status, code = pending.pop(0)
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f'<Message>injected</Message></Error>').encode()

        class Raw:
            def stream(self, **_):
                yield body

        return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, Raw())

    return handler, pending, seen


def test_throttling_and_5xx_are_retried_then_succeed(moto_stack, monkeypatch):
    served, _, state = moto_stack
    handler, pending, seen = _inject([(503, "SlowDown"), (500, "InternalError")])
    monkeypatch.setattr(state["faults"], "before_send", handler)
    status, items = served.get("/predict", **PREDICT)
    assert status == 200 and len(items) == 3
    assert pending == [] and len(seen) > 2


def test_persistent_throttling_is_a_clear_503_and_5xx_a_502(moto_stack, monkeypatch):
    served, _, state = moto_stack
    handler, _, seen = _inject([(503, "SlowDown")] * 50)
    monkeypatch.setattr(state["faults"], "before_send", handler)
    status, body = served.get("/predict", **PREDICT)
    assert status == 503 and "SlowDown" in body["error"], body
    assert len(seen) >= 3  # S3_MAX_ATTEMPTS per call
    handler, _, _ = _inject([(500, "InternalError")] * 50)
    monkeypatch.setattr(state["faults"], "before_send", handler)
    status, body = served.get("/predict", **PREDICT)
    assert status == 502 and "InternalError" in body["error"], body


@pytest.mark.parametrize("size_known", [True, False], ids=["one GetObject (size from the listing)",
                                                         "transfer manager (size unknown)"])
def test_a_download_that_breaks_off_is_fetched_again(moto_stack, tmp_path, size_known):
    from botocore.exceptions import ResponseStreamingError

    _, s3, _ = moto_stack
    broken = []
    size = s3.head_object(Bucket=BUCKET, Key="models/srkw_cnn_0.h5")["ContentLength"] if size_known else None

    def hook(client):
        real = client.get_object

        def get_object(**kwargs):
            response = real(**kwargs)
            if len(broken) < 2:
                body = response["Body"]

                class Breaking:
                    def read(self, n=-1):
                        broken.append(kwargs["Key"])
                        body.read(5)
                        raise ResponseStreamingError(error="connection reset by peer")

                response["Body"] = Breaking()
            return response

        client.get_object = get_object

    target = tmp_path / "m.h5"
    S3Storage(BUCKET, S3Connector(attempts=5, on_client=hook)).download("models/srkw_cnn_0.h5", str(target), size)
    assert len(broken) == 2 and target.read_bytes()[:4] == b"\x89HDF"
    assert os.listdir(tmp_path) == ["m.h5"]

    broken.clear()
    with pytest.raises(StorageError, match="after 2 attempts"):
        S3Storage(BUCKET, S3Connector(attempts=2, on_client=hook)).download("models/srkw_cnn_0.h5",
                                                                            str(tmp_path / "n.h5"), size)
    assert os.listdir(tmp_path) == ["m.h5"]


# ----------------------------------------------------------------------------- killed processes

SCRIPT = textwrap.dedent("""
    import sys, time
    import torch, torch._dynamo
    from service import storage
    from service.params import TrainParams
    from service.runtime import Runtime

    mode, root, model_url, labeled_url = sys.argv[1:5]
    if mode == "upload":  # stall in the middle of writing the new version's bytes
        real = storage.shutil.copyfileobj

        def stalled(src, dst, length=0):
            dst.write(src.read(1000))
            dst.flush()
            print("UPLOADING", flush=True)
            time.sleep(600)

        storage.shutil.copyfileobj = stalled

    def on_epoch(epoch, epochs, metrics):
        print("EPOCH", epoch, flush=True)

    # WORK_DIR: the killed process's scratch stays under the test's folder, not in the system's /tmp
    runtime = Runtime.from_config({"LOCAL_ROOT": root, "DEVICE": "cpu", "CACHE_DIR": root + "/cache",
                                   "WORK_DIR": root + "/work"})
    runtime.run_train(runtime, TrainParams(model_url, labeled_url, 67, 83, 200 if mode == "train" else 1, 0),
                      on_epoch=on_epoch)
    print("DONE", flush=True)
""")


@pytest.mark.slow  # ~6-9 s each: a training process started and killed
@pytest.mark.parametrize("mode, marker", [("train", "EPOCH 1"), ("upload", "UPLOADING")])
def test_killed_process_leaves_no_version_behind(tmp_path, mode, marker):
    args = make_root(tmp_path)
    (tmp_path / "work").mkdir()
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, mode, str(tmp_path), args["model_url"],
                                args["labeled_url"]], cwd=REPO, stdout=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            assert line, f"the process ended early: {lines}"
            lines.append(line.strip())
            if line.strip() == marker:
                break
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    names = os.listdir(tmp_path / "models")
    assert "srkw_cnn_0.h5" in names
    assert not [n for n in names if n.startswith("srkw_cnn_") and n != "srkw_cnn_0.h5"], names
    # only our private temporary file may remain (never under a version name)
    assert all(n == "srkw_cnn_0.h5" or n.startswith(".upload-") for n in names), names
