"""The app owns its runtime: two apps share no cache, scorer, metric or worker; parts are injected
through the factory; the job manager starts exactly one worker; /models lists every format written."""

from __future__ import annotations

import shutil
import threading

import torch  # noqa: F401  (before anything that may import TensorFlow)
import pytest

from service import create_app
from service.jobqueue import JobManager
from service.metrics import Metrics
from service.runtime import Runtime
from service.storage import S3Connector

PARTS = ("storage", "cache", "scores", "scorers", "jobs", "metrics", "allow", "train_lock")


def test_two_apps_share_no_part_of_their_runtime(tmp_path):
    first = create_app({"LOCAL_ROOT": str(tmp_path), "CACHE_DIR": str(tmp_path / "a")}).extensions["orca"]
    second = create_app({"LOCAL_ROOT": str(tmp_path), "CACHE_DIR": str(tmp_path / "b")}).extensions["orca"]
    for part in PARTS:
        assert getattr(first, part) is not getattr(second, part), part
    assert first.storage.s3 is not second.storage.s3
    first.metrics.models_written.inc()
    assert second.metrics.models_written._value.get() == 0
    assert first.cache.root != second.cache.root


def test_parts_are_injected_through_the_factory_and_unknown_ones_refused():
    connector, metrics = S3Connector(attempts=2), Metrics("test")
    runtime = create_app({"LOCAL_ROOT": ""}, s3=connector, metrics=metrics).extensions["orca"]
    assert runtime.storage.s3 is connector and runtime.metrics is metrics and runtime.jobs.metrics is metrics
    assert runtime.locate("s3://bucket/models/m_0.h5", "model_url").storage.connector is connector
    with pytest.raises(TypeError, match="not parts of the runtime: no_such_part"):
        Runtime.from_config({"LOCAL_ROOT": ""}, no_such_part=1)


def test_config_argument_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("ORCA_SCORE_CACHE", "7")
    monkeypatch.setenv("ORCA_MAX_LISTING", "11")
    runtime = Runtime.from_config({"LOCAL_ROOT": "", "MAX_LISTING": 13})
    assert runtime.scores.max_entries == 7
    assert runtime.storage.max_listing == 13
    assert runtime.locate("s3://b/u/", "unlabeled_url").storage.max_listing == 13


def test_a_malformed_variable_stops_the_start_naming_it(monkeypatch):
    monkeypatch.setenv("ORCA_MAX_QUEUED", "many")
    with pytest.raises(SystemExit, match="ORCA_MAX_QUEUED must be an integer"):
        create_app()
    monkeypatch.delenv("ORCA_MAX_QUEUED")
    monkeypatch.setenv("ORCA_PRECISION", "fp8")
    with pytest.raises(SystemExit, match="ORCA_PRECISION"):
        create_app()


def test_concurrent_first_submissions_start_one_worker():
    manager = JobManager(max_queued=64)
    release = threading.Event()
    start = threading.Barrier(16)
    jobs = []

    def submit():
        start.wait()
        jobs.append(manager.submit("train", {}, lambda job: release.wait(10) and job.id))

    threads = [threading.Thread(target=submit) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    workers = [t for t in threading.enumerate()  # threads running this manager's worker loop
               if getattr(getattr(t, "_target", None), "__self__", None) is manager]
    assert workers == [manager.worker]
    release.set()
    for job in jobs:
        assert job.done.wait(10) and job.status == "succeeded"


def test_models_lists_every_format_the_service_writes(tmp_path, srkw_h5):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(srkw_h5, folder / "srkw_cnn_0.h5")
    for name in ("srkw_cnn_1.hdf5", "small_cnn_3.pt", "small_cnn_2.onnx", "notes.txt", "old.keras"):
        (folder / name).write_bytes(b"x")
    client = create_app({"LOCAL_ROOT": str(tmp_path)}).test_client()
    response = client.get("/models", query_string={"model_url": str(folder) + "/"})
    assert response.status_code == 200, response.get_json()
    names = [version["name"] for version in response.get_json()["versions"]]
    assert sorted(names) == ["small_cnn_2.onnx", "small_cnn_3.pt", "srkw_cnn_0.h5", "srkw_cnn_1.hdf5"]


def test_scorers_build_a_model_once_under_concurrent_requests_and_retry_after_a_failure(tmp_path, srkw_h5):
    from scoring.errors import ScoringError
    from scoring.scorers import Scorers

    scorers = Scorers(tmp_path / "onnx", device="cpu")
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: scorers.get(srkw_h5), range(4)))
    assert all(scorer is got[0] for scorer in got) and len(list((tmp_path / "onnx").glob("*.onnx"))) == 1
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not a model")
    for _ in range(2):  # a failed build leaves nothing behind: the next request tries again
        with pytest.raises(Exception) as raised:
            scorers.get(broken)
        assert isinstance(raised.value, (ScoringError, ValueError))
    assert scorers.get(srkw_h5) is got[0]
