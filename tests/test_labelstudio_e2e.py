"""The Label Studio ML backend against a real Label Studio (label-studio 1.23.2, its own venv, SQLite):
a project with an audio classification config, the real Orcasound clips uploaded to it, this backend
connected through Label Studio's own API, predictions asked of Label Studio, tasks annotated and training
started through its API, and the next version's predictions. tests/labelstudio_server.py starts it."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch  # noqa: F401  (before TensorFlow)
import pytest

from labelstudio_server import LabelStudio
from ops_support import Served
from repo_data import AUDIO_DIR
from service import create_app

pytestmark = pytest.mark.slow

TOKEN = "orca-backend-token"  # this service's API_TOKEN: Label Studio sends it as the basic-auth password
AUDIO_CONFIG = """<View>
  <Audio name="audio" value="$audio"/>
  <Choices name="call" toName="audio" choice="single">
    <Choice value="calls"/>
    <Choice value="nocalls"/>
  </Choices>
</View>"""
CLIPS = sorted(AUDIO_DIR.glob("mp3/*/*.mp3"))  # 4 real clips: 2 calls, 2 nocalls (their folder)


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    server = LabelStudio(tmp_path_factory.mktemp("label-studio"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def backend(tmp_path_factory, spread_srkw_h5, studio):
    root = tmp_path_factory.mktemp("backend")
    (root / "models").mkdir()
    shutil.copyfile(spread_srkw_h5, root / "models" / "srkw_cnn_0.h5")
    audio = root / "unlabeled_audio" / "mp3"  # the same clips for the legacy /predict: the expected values
    audio.mkdir(parents=True)
    for clip in CLIPS:
        shutil.copyfile(clip, audio / clip.name)
    served = Served(create_app({
        "LOCAL_ROOT": str(root), "DEVICE": "cpu", "STATE_DIR": str(root / "state"), "API_TOKEN": TOKEN,
        "LABELSTUDIO_MODEL_URL": str(root / "models") + "/", "LABELSTUDIO_EPOCHS": 1,
        "LABEL_STUDIO_URL": studio.url, "LABEL_STUDIO_API_KEY": studio.token}))
    served.root = root
    yield served
    served.close()


def bearer():
    return {"Authorization": f"Bearer {TOKEN}"}


def legacy_predictions(backend) -> dict[str, float]:
    """The legacy GET /predict of the same clips: P(nocalls) per clip file name."""
    status, items, _ = backend.request("GET", "/predict", params={
        "model_url": str(backend.root / "models" / "srkw_cnn_0.h5"),
        "unlabeled_url": str(backend.root / "unlabeled_audio"), "img_width": 67, "img_height": 83}, headers=bearer())
    assert status == 200, items
    return {item["audio_url"].rsplit("/", 1)[1]: item["predicted_value"] for item in items}


def create_project(studio, title, config) -> int:
    _, project = studio.api("POST", "/api/projects/", expect=201, json={"title": title, "label_config": config})
    return project["id"]


def connect(studio, backend, project):
    """Label Studio's own "Connect model" (project Settings → Model), basic auth with this service's token:
    Label Studio checks /health and /setup before it answers."""
    return studio.api("POST", "/api/ml/", json={
        "project": project, "url": f"{backend.base}/labelstudio", "title": "orca detector",
        "auth_method": "BASIC_AUTH", "basic_auth_user": "labelstudio", "basic_auth_pass": TOKEN})


def tasks_of(studio, project) -> list[dict]:
    _, page = studio.api("GET", "/api/tasks/", expect=200, params={"project": project, "page_size": 100,
                                                                      "fields": "all"})
    return page["tasks"]


def clip_of(task) -> str:
    """The uploaded file's name: Label Studio stores it as /data/upload/<project>/<8 hex>-<name>."""
    return task["data"]["audio"].rsplit("/", 1)[1].split("-", 1)[1]


def predictions_of(studio, project) -> dict[int, list[dict]]:
    _, predictions = studio.api("GET", "/api/predictions/", expect=200, params={"project": project})
    found: dict[int, list[dict]] = {}
    for prediction in predictions:
        found.setdefault(prediction["task"], []).append(prediction)
    return found


def data_manager_scores(studio, project) -> list[tuple[int, float | None]]:
    """(task id, its "Prediction score" column) in the order of a Data Manager tab sorted by it, ascending."""
    _, view = studio.api("POST", "/api/dm/views/", expect=201, json={"project": project, "data": {
        "title": "least certain first", "ordering": ["tasks:predictions_score"]}})
    _, page = studio.api("GET", "/api/tasks/", expect=200, params={"project": project, "view": view["id"],
                                                                      "fields": "all", "page_size": 100})
    return [(task["id"], task["predictions_score"]) for task in page["tasks"]]


def retrieve_predictions(studio, project):
    """The Data Manager's "Retrieve predictions" action on every task: Label Studio calls /setup (the model
    version) and /predict of the backend, and stores what comes back."""
    studio.api("POST", "/api/dm/actions", expect=200, params={"id": "retrieve_tasks_predictions", "project": project},
               json={"selectedItems": {"all": True, "excluded": []}})


def check_prediction(prediction, p: float, version: str):
    assert prediction["model_version"] == version
    assert prediction["score"] == pytest.approx(2 * abs(0.5 - p), abs=1e-6)  # uncertainty: 0 = label first
    (result,) = prediction["result"]
    assert (result["from_name"], result["to_name"], result["type"]) == ("call", "audio", "choices")
    assert result["value"]["choices"] == [("calls", "nocalls")[int(p >= 0.5)]]


def wait_for_version(backend, name, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, jobs, _ = backend.request("GET", "/jobs", headers=bearer())
        assert status == 200, jobs
        ours = [job for job in jobs["jobs"] if job["kind"] == "labelstudio-train"]
        failed = [job for job in ours if job["status"] == "failed"]
        assert not failed, failed
        if any(job["status"] == "succeeded" for job in ours) and (backend.root / "models" / name).exists():
            return ours
        time.sleep(0.5)
    raise AssertionError(f"no {name} in {timeout} s")


def test_a_project_gets_predictions_trains_from_its_annotations_and_predicts_with_the_new_version(studio, backend):
    project = create_project(studio, "Orcasound calls", AUDIO_CONFIG)
    files = [(clip.name, (clip.name, clip.read_bytes(), "audio/mpeg")) for clip in CLIPS]  # one form field per file
    files.append(("broken", ("orcasoundlab_1594159999.mp3", b"not audio at all " * 200, "audio/mpeg")))
    studio.api("POST", f"/api/projects/{project}/import", expect=201, files=files)
    tasks = tasks_of(studio, project)
    assert sorted(clip_of(task) for task in tasks) == sorted([c.name for c in CLIPS] + ["orcasoundlab_1594159999.mp3"])

    status, ml = connect(studio, backend, project)
    assert status == 201, ml
    assert ml["state"] == "CO" and ml["model_version"] == "srkw_cnn_0.h5", ml  # connected, setup answered

    # Predictions, asked of Label Studio: one per readable clip, the legacy /predict's values as uncertainty
    retrieve_predictions(studio, project)
    expected = legacy_predictions(backend)
    found = predictions_of(studio, project)
    for task in tasks:
        name = clip_of(task)
        if name == "orcasoundlab_1594159999.mp3":
            assert task["id"] not in found  # the unreadable upload gets none; the others are answered
            continue
        (prediction,) = found[task["id"]]
        check_prediction(prediction, expected[name], "srkw_cnn_0.h5")
    # the Data Manager's "Prediction score", sorted ascending, lists the least certain clip first
    scores = {task["id"]: found[task["id"]][0]["score"] for task in tasks if task["id"] in found}
    column = data_manager_scores(studio, project)
    assert {task: score for task, score in column if score is not None} == pytest.approx(scores)
    least_certain = min(expected, key=lambda name: abs(0.5 - expected[name]))
    assert clip_of(next(t for t in tasks if t["id"] == column[0][0])) == least_certain

    # Annotations through Label Studio's API: every real clip with its true class
    annotation_ids = []
    for task in tasks:
        name = clip_of(task)
        clip = next((c for c in CLIPS if c.name == name), None)
        if clip is None:
            continue
        _, annotation = studio.api("POST", f"/api/tasks/{task['id']}/annotations/", expect=201, json={
            "result": [{"from_name": "call", "to_name": "audio", "type": "choices",
                        "value": {"choices": [clip.parent.name]}}], "was_cancelled": False})
        annotation_ids.append(annotation["id"])

    # Start training, as the Model page's button does: Label Studio calls the backend, which queues a job
    status, answer = studio.api("POST", f"/api/ml/{ml['id']}/train", json={})
    assert status == 200, answer
    jobs = wait_for_version(backend, "srkw_cnn_1.h5")
    (job,) = [job for job in jobs if job["status"] == "succeeded"]
    assert job["params"]["labelstudio_project"] == project
    assert job["result"]["model_url"].endswith("srkw_cnn_1.h5")
    sidecar = json.loads((backend.root / "models" / "srkw_cnn_1.json").read_text())
    assert sidecar["labelstudio"]["project"] == project and sidecar["labelstudio"]["url"] == studio.url
    assert sorted(sidecar["labelstudio"]["annotations"]) == sorted(annotation_ids)
    labeled = Path(job["result"]["labelstudio"]["labeled_url"])
    assert sorted(p.name.rsplit(".", 1)[1] for p in labeled.rglob("*.*")) == ["mp3"] * 4

    # Label Studio now reports the new version, and predicts every task again with it
    _, versions = studio.api("GET", f"/api/ml/{ml['id']}/versions", expect=200)
    assert "srkw_cnn_1.h5" in json.dumps(versions), versions
    retrieve_predictions(studio, project)
    status, items, _ = backend.request("GET", "/predict", params={
        "model_url": str(backend.root / "models" / "srkw_cnn_1.h5"),
        "unlabeled_url": str(backend.root / "unlabeled_audio"), "img_width": 67, "img_height": 83}, headers=bearer())
    assert status == 200, items
    after = {item["audio_url"].rsplit("/", 1)[1]: item["predicted_value"] for item in items}
    assert after != expected  # the fine-tuned version scores differently
    found = predictions_of(studio, project)
    for task in tasks:
        name = clip_of(task)
        if name in after:
            newest = [p for p in found[task["id"]] if p["model_version"] == "srkw_cnn_1.h5"]
            assert len(newest) == 1, found[task["id"]]
            check_prediction(newest[0], after[name], "srkw_cnn_1.h5")
    # the column now shows the new version's scores (the backend's current model version), still ascending
    column = data_manager_scores(studio, project)
    newest_scores = {task["id"]: 2 * abs(0.5 - after[clip_of(task)]) for task in tasks if clip_of(task) in after}
    assert {task: score for task, score in column if score is not None} == pytest.approx(newest_scores, abs=1e-6)
    assert [score for _, score in column if score is not None] == sorted(newest_scores.values())
    assert (backend.root / "models" / "srkw_cnn_0.h5").exists()


def test_a_label_config_that_does_not_fit_is_refused_with_a_message_label_studio_shows(studio, backend):
    project = create_project(studio, "Yes or no", AUDIO_CONFIG.replace('"calls"', '"yes"').replace('"nocalls"', '"no"'))
    status, answer = connect(studio, backend, project)
    assert status == 400, answer
    text = json.dumps(answer)
    assert "label config" in text and "missing calls, nocalls" in text, text
    _, connected = studio.api("GET", "/api/ml/", expect=200, params={"project": project})
    assert connected == []  # Label Studio kept no connection to a backend that refused its setup
