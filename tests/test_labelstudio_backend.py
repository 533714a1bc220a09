"""The Label Studio ML backend under /labelstudio, over real HTTP, against a stand-in for Label Studio's
API and media (a small Flask app on a local port: the real server is tests/ of the end-to-end test).
Real sample clips and spectrograms, the spread 67x83 srkw_cnn model."""

from __future__ import annotations

import base64
import json
import math
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch  # noqa: F401  (before TensorFlow)
import numpy as np
import pytest
from flask import Flask, abort, jsonify, request

from active_learning.acquisition import select
from ops_support import Served
from repo_data import AUDIO_DIR, SAMPLE_DIR
from service import create_app
from service.labelstudio import labelconfig
from service.labelstudio.backend import project_id, split, Annotated
from service.labelstudio.client import key_kind

TOKEN = "s3cret"
LEGACY_KEY = "legacy-0123456789"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"labelstudio:{TOKEN}".encode()).decode()}
AUDIO_CONFIG = """<View>
  <Audio name="audio" value="$audio"/>
  <Choices name="call" toName="audio" choice="single"><Choice value="calls"/><Choice value="nocalls"/></Choices>
</View>"""
IMAGE_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="call" toName="image"><Choice value="nocalls"/><Choice value="calls"/></Choices>
</View>"""
CLIPS = sorted(AUDIO_DIR.glob("mp3/*/*.mp3"))  # 4 real clips, 2 calls and 2 nocalls
PICTURES = sorted(SAMPLE_DIR.glob("test/*/*.png"))[:4]


def jwt(claims: dict) -> str:
    def part(value):
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


PAT = jwt({"token_type": "refresh", "user_id": 1})


class FakeLabelStudio:
    """Label Studio's media, export, project and token-refresh endpoints, with its two kinds of keys:
    `Token <legacy key>`, or `Bearer <access>` for an access token issued from the PAT (one use each
    when `expire` is set: the next request with it is a 401, as an expired one is)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.tasks: list[dict] = []
        self.label_config = AUDIO_CONFIG
        self.issued: list[str] = []
        self.used: set[str] = set()
        self.expire = False
        self.lock = threading.Lock()
        app = Flask("fake-label-studio")

        def authorized():
            header = request.headers.get("Authorization", "")
            if header == f"Token {LEGACY_KEY}":
                return
            scheme, _, access = header.partition(" ")
            with self.lock:
                if scheme == "Bearer" and access in self.issued and not (self.expire and access in self.used):
                    self.used.add(access)
                    return
            abort(401)

        @app.post("/api/token/refresh/")
        def refresh():
            if (request.get_json() or {}).get("refresh") != PAT:
                abort(401)
            with self.lock:
                self.issued.append(f"access-{len(self.issued)}")
                return jsonify(access=self.issued[-1])

        @app.get("/data/upload/<int:project>/<name>")
        def upload(project, name):
            authorized()
            if name not in self.files:
                abort(404)
            return self.files[name], 200, {"Content-Type": "application/octet-stream"}

        @app.get("/api/projects/<int:project>/export")
        def export(project):
            authorized()
            assert request.args.get("exportType") == "JSON"
            return jsonify(self.tasks)

        @app.get("/api/projects/<int:project>/")
        def details(project):
            authorized()
            return jsonify(id=project, label_config=self.label_config,
                           num_tasks_with_annotations=sum(bool(t.get("annotations")) for t in self.tasks))

        self.served = Served(app)
        self.url = self.served.base


@pytest.fixture(scope="module")
def studio():
    fake = FakeLabelStudio()
    for clip in CLIPS:
        fake.files[clip.name] = clip.read_bytes()
    for i, png in enumerate(PICTURES):
        fake.files[f"picture_{i}.png"] = png.read_bytes()
    fake.files["broken.mp3"] = b"this is not audio at all" * 100
    yield fake
    fake.served.close()


def make_root(root: Path, model: str) -> Path:
    (root / "models").mkdir(parents=True)
    shutil.copyfile(model, root / "models" / "srkw_cnn_0.h5")
    audio = root / "unlabeled_audio" / "mp3"
    audio.mkdir(parents=True)
    for clip in CLIPS:
        shutil.copyfile(clip, audio / clip.name)
    pictures = root / "unlabeled" / "spectrograms"
    pictures.mkdir(parents=True)
    for i, png in enumerate(PICTURES):
        shutil.copyfile(png, pictures / f"orcasoundlab_{1594154118 + i}.png")
    return root


def serve(root: Path, studio, **config) -> Served:
    settings = {"LOCAL_ROOT": str(root), "DEVICE": "cpu", "STATE_DIR": str(root / "state"), "API_TOKEN": TOKEN,
                "LABELSTUDIO_MODEL_URL": str(root / "models") + "/", "LABEL_STUDIO_URL": studio.url,
                "LABEL_STUDIO_API_KEY": LEGACY_KEY, "LABELSTUDIO_EPOCHS": 1}
    settings.update(config)
    return Served(create_app(settings))


@pytest.fixture(scope="module")
def backend(tmp_path_factory, spread_srkw_h5, studio):
    root = make_root(tmp_path_factory.mktemp("labelstudio"), spread_srkw_h5)
    served = serve(root, studio)
    served.root = root
    yield served
    served.close()


def post(served, path, body, headers=BASIC):
    return served.request("POST", path, body=body, headers=headers)


def wait_job(served, job_id, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, job, _ = served.request("GET", f"/jobs/{job_id}", headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 200, job
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def audio_tasks(names):
    return [{"id": 100 + i, "data": {"audio": f"/data/upload/1/{name}"}} for i, name in enumerate(names)]


def legacy_scores(served, unlabeled: str) -> dict[str, float]:
    status, items, _ = served.request("GET", "/predict", params={
        "model_url": str(served.root / "models" / "srkw_cnn_0.h5"), "unlabeled_url": str(served.root / unlabeled),
        "img_width": 67, "img_height": 83}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and isinstance(items, list), items
    return {item["audio_url"].rsplit("/", 1)[1][:-4]: item["predicted_value"] for item in items}


def check_result(entry, p: float, config, version="srkw_cnn_0.h5"):
    classes = ("calls", "nocalls")
    assert entry["model_version"] == version
    assert entry["result"] == [{"from_name": "call", "to_name": config, "type": "choices",
                                "value": {"choices": [classes[int(p >= 0.5)]]}}]
    assert entry["score"] == pytest.approx(2 * abs(0.5 - p), abs=1e-6)  # uncertainty as a confidence


# ------------------------------------------------------------------------------------ the protocol

def test_health_is_fast_and_needs_no_token(backend):
    status, body, _ = backend.request("GET", "/labelstudio/health", headers={})
    assert status == 200 and body["status"] == "UP" and body["model_class"]


def test_setup_answers_the_newest_version_with_basic_auth_or_bearer(backend):
    body = {"project": "1.1700000000", "schema": AUDIO_CONFIG, "hostname": "http://elsewhere", "access_token": "x"}
    assert post(backend, "/labelstudio/setup", body)[:2] == (200, {"model_version": "srkw_cnn_0.h5"})
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert post(backend, "/labelstudio/setup", body, headers=bearer)[0] == 200
    assert post(backend, "/labelstudio/setup", body, headers={})[0] == 401
    wrong = {"Authorization": "Basic " + base64.b64encode(b"labelstudio:nope").decode()}
    assert post(backend, "/labelstudio/setup", body, headers=wrong)[0] == 401
    status, versions, _ = backend.request("GET", "/labelstudio/versions", body={"project": 1}, headers=BASIC)
    assert status == 200 and versions["versions"][-1] == "srkw_cnn_0.h5"


@pytest.mark.parametrize("schema, named", [
    (AUDIO_CONFIG.replace('"calls"', '"Calls"'), "missing calls; not classes of the model: Calls"),
    (AUDIO_CONFIG.replace('<Choice value="nocalls"/>', ""), "missing nocalls"),
    (AUDIO_CONFIG.replace('toName="audio"', 'toName="text"') + "", 'toName="text"'),
    ('<View><Text name="t" value="$text"/><Choices name="c" toName="t"><Choice value="calls"/>'
     '<Choice value="nocalls"/></Choices></View>', "(it names a <Text>)"),
    (AUDIO_CONFIG.replace("</View>", '<Choices name="x" toName="audio"><Choice value="a"/></Choices></View>'),
     "exactly one <Choices>"),
    (AUDIO_CONFIG.replace('choice="single"', 'choice="multiple"'), "single choice"),
    ("<View><Audio", "not well-formed XML"),
])
def test_setup_refuses_a_config_that_does_not_fit_naming_what(backend, schema, named):
    url = f"{backend.base}/labelstudio/setup"
    request = urllib.request.Request(url, data=json.dumps({"project": 1, "schema": schema}).encode(),
                                     headers={"Content-Type": "application/json", **BASIC}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 422
    message = json.loads(refused.value.read())["error"]
    assert named in message and message.startswith("label config")
    assert named in refused.value.reason  # the status line: what Label Studio shows of a failed setup


def test_predict_audio_tasks_scores_as_predict_does_and_skips_unreadable_media(backend):
    names = [c.name for c in CLIPS]
    tasks = audio_tasks([names[0], "missing.mp3", names[1], "broken.mp3", names[2], names[3]])
    status, body, _ = post(backend, "/labelstudio/predict", {"tasks": tasks, "project": "1.17", "label_config": AUDIO_CONFIG})
    assert status == 200, body
    results = body["results"]
    assert len(results) == len(tasks) and results[1] == [] and results[3] == []  # no prediction, in place
    expected = legacy_scores(backend, "unlabeled_audio/")
    for entry, name in zip([results[0], results[2], results[4], results[5]], names):
        check_result(entry, expected[name[:-4]], "audio")
    # the same again: from the score and pixel caches, the same answer
    assert post(backend, "/labelstudio/predict", {"tasks": tasks, "project": 1, "label_config": AUDIO_CONFIG})[1] == body


def test_predict_image_tasks(backend):
    tasks = [{"id": i, "data": {"image": f"/data/upload/1/picture_{i}.png"}} for i in range(len(PICTURES))]
    status, body, _ = post(backend, "/labelstudio/predict", {"tasks": tasks, "project": 1, "label_config": IMAGE_CONFIG})
    assert status == 200, body
    expected = legacy_scores(backend, "unlabeled/")
    for i, entry in enumerate(body["results"]):
        check_result(entry, expected[f"orcasoundlab_{1594154118 + i}"], "image")


def test_ascending_scores_list_the_strategys_picks_first(tmp_path, spread_srkw_h5, studio):
    root = make_root(tmp_path, spread_srkw_h5)
    tasks = [{"id": i, "data": {"image": f"/data/upload/1/picture_{i}.png"}} for i in range(len(PICTURES))]
    p = None
    for name in ("uncertainty", "entropy", "bald"):
        served = serve(root, studio, LABELSTUDIO_STRATEGY=name)
        served.root = root
        try:
            status, body, _ = post(served, "/labelstudio/predict", {"tasks": tasks, "project": 1,
                                                                    "label_config": IMAGE_CONFIG})
            p = p or legacy_scores(served, "unlabeled/")
        finally:
            served.close()
        assert status == 200, body
        scores = [entry["score"] for entry in body["results"]]
        probabilities = np.array([p[f"orcasoundlab_{1594154118 + i}"] for i in range(len(tasks))])
        assert all(0 <= s <= 1 for s in scores)
        if name == "bald":  # Monte Carlo dropout passes of the torch model: 1 - MI / ln 2, below 1 where they disagree
            assert all(entry["result"] for entry in body["results"]) and min(scores) < 1
            continue
        assert list(np.argsort(scores, kind="stable")) == list(select(name, len(tasks), probabilities=probabilities).indices)
        if name == "entropy":
            h = -(probabilities * np.log(probabilities) + (1 - probabilities) * np.log(1 - probabilities))
            assert scores == pytest.approx(list(1 - h / math.log(2)), abs=1e-9)
    served = serve(root, studio, LABELSTUDIO_STRATEGY="coreset")
    try:
        status, body, _ = post(served, "/labelstudio/setup", {"project": 1, "schema": IMAGE_CONFIG})
    finally:
        served.close()
    assert status == 422 and "coreset" in body["error"] and "/query" in body["error"]


def test_personal_access_tokens_are_exchanged_and_refreshed_when_refused(tmp_path, spread_srkw_h5, studio):
    root = make_root(tmp_path, spread_srkw_h5)
    served = serve(root, studio, LABEL_STUDIO_API_KEY=PAT)
    studio.expire = True
    try:
        before = len(studio.issued)
        tasks = audio_tasks([CLIPS[0].name, CLIPS[1].name])
        for _ in range(2):
            status, body, _ = post(served, "/labelstudio/predict", {"tasks": tasks, "project": 1, "label_config": AUDIO_CONFIG})
            assert status == 200 and all(entry["result"] for entry in body["results"]), body
        assert len(studio.issued) - before >= 2  # exchanged, then again once the access token was refused
    finally:
        studio.expire = False
        served.close()


def test_webhook_events_get_2xx_and_start_training_writes_the_next_version(tmp_path, spread_srkw_h5, studio):
    root = make_root(tmp_path, spread_srkw_h5)
    served = serve(root, studio)
    studio.tasks = [dict(task, annotations=[
        {"id": 500 + i, "was_cancelled": False, "created_at": "2025-01-01T00:00:00Z",
         "result": [{"from_name": "call", "to_name": "audio", "type": "choices",
                     "value": {"choices": [clip.parent.name]}}]}]) for i, (task, clip) in
        enumerate(zip(audio_tasks([c.name for c in CLIPS]), CLIPS))]
    studio.tasks.append(audio_tasks(["missing.mp3"])[0] | {"id": 99, "annotations": []})  # not annotated
    try:
        event = {"action": "ANNOTATION_CREATED", "project": {"id": 1}, "annotation": {"id": 1}}
        assert served.request("POST", "/labelstudio/webhook", body=event, headers={})[0] == 200
        start = {"action": "START_TRAINING", "project": {"id": 1, "title": "orcas"}}
        assert served.request("POST", "/labelstudio/webhook", body=start, headers={})[0] == 401
        assert post(served, "/labelstudio/setup", {"project": 1, "schema": AUDIO_CONFIG})[0] == 200
        status, answer, _ = post(served, "/labelstudio/webhook", start)
        assert status == 201 and answer["status"] == "training", answer
        job = wait_job(served, answer["job_id"])
        assert job["status"] == "succeeded", job
        assert job["kind"] == "labelstudio-train" and job["params"]["labelstudio_project"] == 1
        result = job["result"]
        assert result["model_url"].endswith("srkw_cnn_1.h5") and result["labeled_files"] == 2
        assert result["labelstudio"]["counts"] == {"train": {"calls": 1, "nocalls": 1},
                                                   "validation": {"calls": 1, "nocalls": 1}}
        sidecar = json.loads((root / "models" / "srkw_cnn_1.json").read_text())
        assert sidecar["labelstudio"]["project"] == 1 and sidecar["labelstudio"]["url"] == studio.url
        assert sidecar["labelstudio"]["annotations"] == [500, 501, 502, 503]
        labeled = Path(result["labelstudio"]["labeled_url"])
        assert labeled.parent.parent == root / "labelstudio" and labeled.parent.name == "project-1"
        assert sorted(p.relative_to(labeled).parts[:2] for p in labeled.rglob("*.mp3")) == [
            ("train", "calls"), ("train", "nocalls"), ("validation", "calls"), ("validation", "nocalls")]
        # later calls report the new version
        assert post(served, "/labelstudio/setup", {"project": 1, "schema": AUDIO_CONFIG})[1] == {"model_version": "srkw_cnn_1.h5"}
        status, body, _ = post(served, "/labelstudio/predict", {"tasks": audio_tasks([CLIPS[0].name]), "project": 1,
                                                                "label_config": AUDIO_CONFIG})
        assert status == 200 and body["results"][0]["model_version"] == "srkw_cnn_1.h5"
        assert (root / "models" / "srkw_cnn_0.h5").read_bytes() == Path(spread_srkw_h5).read_bytes()  # never overwritten
    finally:
        studio.tasks = []
        served.close()


def test_training_with_too_few_annotations_fails_its_job_saying_so(tmp_path, spread_srkw_h5, studio):
    root = make_root(tmp_path, spread_srkw_h5)
    served = serve(root, studio)
    studio.tasks = [dict(audio_tasks([CLIPS[0].name])[0], annotations=[
        {"id": 1, "result": [{"from_name": "call", "type": "choices", "value": {"choices": ["calls"]}}]}])]
    try:
        status, answer, _ = post(served, "/labelstudio/train", {"project": "1.2", "annotations": studio.tasks,
                                                                 "label_config": AUDIO_CONFIG})
        assert status == 201, answer
        job = wait_job(served, answer["job"])
        assert job["status"] == "failed" and job["error"]["status"] == 422
        assert "too few usable annotations" in job["error"]["message"] and "validation calls" in job["error"]["message"]
        assert not (root / "models" / "srkw_cnn_1.h5").exists()
    finally:
        studio.tasks = []
        served.close()


# ------------------------------------------------------------------------------------ the parts

def test_label_config_alias_and_image_objects():
    config = labelconfig.parse(IMAGE_CONFIG.replace('<Choice value="calls"/>', '<Choice value="Calls" alias="calls"/>'))
    assert (config.kind, config.data_key, config.to_name, config.choices) == ("image", "image", "image", ("nocalls", "calls"))
    labelconfig.check(config, ("calls", "nocalls"))
    with pytest.raises(labelconfig.LabelConfigError, match="given twice: calls"):
        labelconfig.check(labelconfig.parse(AUDIO_CONFIG.replace("nocalls", "calls")), ("calls", "nocalls"))


def test_project_ids_keys_and_the_seeded_split():
    assert project_id("12.1700000000") == project_id(12) == project_id({"id": 12}) == 12
    assert key_kind(LEGACY_KEY) == "legacy" and key_kind(PAT) == "refresh"
    assert key_kind(jwt({"token_type": "access"})) == "access"
    items = [Annotated(i, i, "calls" if i % 3 else "nocalls", f"m{i}") for i in range(10)]
    first, again = split(items, 0.2), split(items, 0.2)
    assert first == again
    assert sorted(i.label for i in first["validation"]) == ["calls", "nocalls"]
    assert len(first["train"]) + len(first["validation"]) == 10
    assert split(items[:1], 0.2)["validation"] == []


def test_the_backends_routes_need_the_token_but_health_and_webhook_events(backend):
    body = {"tasks": audio_tasks([CLIPS[0].name]), "project": 1, "label_config": AUDIO_CONFIG}
    for method, path in (("POST", "/labelstudio/predict"), ("POST", "/labelstudio/train"),
                         ("GET", "/labelstudio/versions"), ("POST", "/labelstudio/setup")):
        status, answer, headers = backend.request(method, path, body=body, headers={})
        assert status == 401 and "basic auth" in answer["error"], (path, answer)


def test_train_every_n_annotations_counts_with_label_studios_api(tmp_path, spread_srkw_h5, studio):
    root = make_root(tmp_path, spread_srkw_h5)
    served = serve(root, studio, LABELSTUDIO_TRAIN_EVERY=5)
    annotated = [dict(task, annotations=[{"id": 700 + i, "result": [
        {"from_name": "call", "type": "choices", "value": {"choices": [clip.parent.name]}}]}])
        for i, (task, clip) in enumerate(zip(audio_tasks([c.name for c in CLIPS]), CLIPS))]
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 1}}  # no credentials, as Label Studio sends them
    try:
        studio.tasks = annotated
        status, answer, _ = served.request("POST", "/labelstudio/webhook", body=event, headers={})
        assert status == 200 and answer == {"status": "waiting", "annotated": 4, "trained_on": 0}
        studio.tasks = annotated + [dict(annotated[0], id=200)]  # a fifth annotated task: due
        status, answer, _ = served.request("POST", "/labelstudio/webhook", body=event, headers={})
        assert status == 201 and answer["status"] == "training", answer
        assert wait_job(served, answer["job_id"])["status"] == "succeeded"
        status, answer, _ = served.request("POST", "/labelstudio/webhook", body=event, headers={})
        assert answer == {"status": "waiting", "annotated": 5, "trained_on": 5}  # the new version's sidecar
    finally:
        studio.tasks = []
        served.close()


def test_versions_without_a_project_as_label_studio_asks(tmp_path, spread_srkw_h5, studio):
    """Label Studio 1.23's GET /versions has no body and no query: the one model folder answers."""
    root = make_root(tmp_path, spread_srkw_h5)
    shutil.copyfile(root / "models" / "srkw_cnn_0.h5", root / "models" / "srkw_cnn_2.h5")
    served = serve(root, studio)
    try:
        status, answer, _ = served.request("GET", "/labelstudio/versions", headers=BASIC)
        assert (status, answer) == (200, {"versions": ["srkw_cnn_2.h5", "srkw_cnn_0.h5"], "model_version": "srkw_cnn_2.h5"})
    finally:
        served.close()
    (root / "other").mkdir()
    served = serve(root, studio, LABELSTUDIO_MODEL_URL=None,
                   LABELSTUDIO_PROJECTS=f"1={root / 'models'}/,2={root / 'other'}/")
    try:
        status, answer, _ = served.request("GET", "/labelstudio/versions", headers=BASIC)
        assert status == 400 and answer["error"].startswith("project:"), answer
        status, answer, _ = served.request("GET", "/labelstudio/versions", params={"project": 2}, headers=BASIC)
        assert (status, answer) == (200, {"versions": [], "model_version": None})
    finally:
        served.close()


def test_web_media_of_other_hosts_follow_the_allow_list(tmp_path, spread_srkw_h5, studio, caplog):
    """A task's http(s) media on another host is fetched without Label Studio's key, and only under an
    http(s) entry of ORCA_ALLOWED_PREFIXES when the list is set (no prediction otherwise)."""
    media = Flask("media-host")

    @media.get("/clips/<name>")
    def clip(name):
        if "Authorization" in request.headers:
            abort(400)  # Label Studio's key must not travel to another host
        return (AUDIO_DIR / "mp3" / "calls" / name).read_bytes()

    host = Served(media)
    root = make_root(tmp_path, spread_srkw_h5)
    name = sorted((AUDIO_DIR / "mp3" / "calls").glob("*.mp3"))[0].name
    tasks = [{"id": 1, "data": {"audio": f"{host.base}/clips/{name}"}},
             {"id": 2, "data": {"audio": f"{host.base}/clips/../clips/{name}"}},
             {"id": 3, "data": {"audio": f"/data/upload/1/{CLIPS[0].name}"}}]
    body = {"tasks": tasks, "project": 1, "label_config": AUDIO_CONFIG}
    try:
        for allowed, expected, refused in (([str(root)], [False, False, True], {1, 2}),
                                           ([str(root), f"{host.base}/clips/"], [True, False, True], {2}),
                                           (None, [True, False, True], set())):  # task 2: a 404 there
            served = serve(root, studio, ALLOWED_PREFIXES=",".join(allowed) if allowed else None)
            caplog.clear()
            try:
                status, answer, _ = post(served, "/labelstudio/predict", body)
            finally:
                served.close()
            assert status == 200, answer
            assert [bool(entry) for entry in answer["results"]] == expected, (allowed, answer)
            assert {task for task in (1, 2, 3) if any(f"task {task}:" in r.getMessage() and
                    "outside ORCA_ALLOWED_PREFIXES" in r.getMessage() for r in caplog.records)} == refused
    finally:
        host.close()


def test_s3_media_are_read_through_the_service_storage_and_its_allow_list(tmp_path, spread_srkw_h5, studio, s3_env):
    """Tasks whose media are s3:// URLs (moto's server over HTTP): scored as the same clip from Label
    Studio's upload is; a bucket outside ORCA_ALLOWED_PREFIXES, or a missing key, gets no prediction."""
    client = s3_env.client()
    client.upload_file(str(CLIPS[0]), s3_env.bucket, f"clips/{CLIPS[0].name}")
    root = make_root(tmp_path, spread_srkw_h5)
    tasks = [{"id": 1, "data": {"audio": f"s3://{s3_env.bucket}/clips/{CLIPS[0].name}"}},
             {"id": 2, "data": {"audio": f"s3://{s3_env.bucket}/clips/missing.mp3"}},
             {"id": 3, "data": {"audio": f"/data/upload/1/{CLIPS[0].name}"}}]
    body = {"tasks": tasks, "project": 1, "label_config": AUDIO_CONFIG}
    answers = {}
    for allowed in (None, f"{root},s3://{s3_env.bucket}/clips/", f"{root},s3://{s3_env.bucket}/other/"):
        served = serve(root, studio, ALLOWED_PREFIXES=allowed)
        try:
            status, answer, _ = post(served, "/labelstudio/predict", body)
        finally:
            served.close()
        assert status == 200, answer
        answers[allowed] = answer["results"]
    for allowed, results in answers.items():
        refused = allowed is not None and allowed.endswith("/other/")
        assert bool(results[0]) is not refused and results[1] == [] and results[2], (allowed, results)
        if not refused:
            assert results[0]["score"] == results[2]["score"] and results[0]["result"] == results[2]["result"]


def test_start_training_while_the_projects_training_waits_answers_that_job(tmp_path, spread_srkw_h5, studio):
    """Label Studio's "train on annotation submission" sends START_TRAINING after every annotation: one
    waiting training per project takes them all, and only one new version is written."""
    root = make_root(tmp_path, spread_srkw_h5)
    served = serve(root, studio)
    runtime = served.app.extensions["orca"]
    studio.tasks = [dict(task, annotations=[{"id": 900 + i, "result": [
        {"from_name": "call", "type": "choices", "value": {"choices": [clip.parent.name]}}]}])
        for i, (task, clip) in enumerate(zip(audio_tasks([c.name for c in CLIPS]), CLIPS))]
    gate = threading.Event()
    try:
        runtime.jobs.submit("hold", {}, lambda job: gate.wait(60) and {})  # the queue's one worker is busy
        start = {"action": "START_TRAINING", "project": {"id": 1}}
        answers = [post(served, "/labelstudio/webhook", start) for _ in range(3)]
        assert [status for status, _, _ in answers] == [201] * 3, answers
        assert len({answer["job_id"] for _, answer, _ in answers}) == 1
        gate.set()
        assert wait_job(served, answers[0][1]["job_id"])["status"] == "succeeded"
        assert sorted(p.name for p in (root / "models").glob("*.h5")) == ["srkw_cnn_0.h5", "srkw_cnn_1.h5"]
        status, again, _ = post(served, "/labelstudio/webhook", start)  # after it: a new training
        assert status == 201 and again["job_id"] != answers[0][1]["job_id"]
        assert wait_job(served, again["job_id"])["status"] == "succeeded"
        assert (root / "models" / "srkw_cnn_2.h5").exists()
    finally:
        gate.set()
        studio.tasks = []
        served.close()
