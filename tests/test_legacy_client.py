"""The legacy client stays safe when a request fails.

Orcasound's active-learning API (orcasound/orcaal, `api/app/active_learning.py`) calls this service
with `requests.get(url).json()`, no status check; for /predict it then deletes its prediction rows and
inserts one row per item of the answer, in one transaction. The original endpoint's errors were HTML
pages, so `.json()` raised before the client touched its database. Here `client_round` re-enacts that
sequence (written from reading the client, against SQLite instead of its PostgreSQL, with its column
widths as CHECK constraints: `audio_url` VARCHAR(100), `location` VARCHAR(30)) over real HTTP, from a
local root deeper than 100 characters; the audio_urls it stores play back (`GET /clips/…`).
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import threading

import torch  # noqa: F401  (before anything that may import TensorFlow)
import pytest
import requests

from ops_support import Served, make_root
from repo_data import REPO
from service import create_app

SAMPLE_MP3 = sorted((REPO / "sample_data" / "orcasound_audio" / "mp3").glob("*/*.mp3"))  # where the repo ships them


def clip_audio(i: int) -> bytes:
    """The audio of clip i: a real Orcasound mp3 where the repository has them, else bytes of an .mp3's size
    (the service serves clips as they are; it does not decode them)."""
    if SAMPLE_MP3:
        return SAMPLE_MP3[i % len(SAMPLE_MP3)].read_bytes()
    return b"ID3\x04\x00" + random.Random(i).randbytes(24_000)


def client_round(base: str, query: dict, db: sqlite3.Connection, headers=None) -> None:
    """The client's predict step: parse the answer, replace the prediction rows, commit."""
    predictions = requests.get(f"{base}/predict", params=query, headers=headers, timeout=60).json()
    db.execute("DELETE FROM prediction")
    db.executemany("INSERT INTO prediction VALUES (?, ?, ?, ?, ?)",
                   [(p["predicted_value"], p["audio_url"], p["location"], p["duration"], p["timestamp"])
                    for p in predictions])
    db.commit()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    # the service runs from a folder deeper than the client's VARCHAR(100), as a checkout in a home folder can be
    root = tmp_path_factory.mktemp("legacy") / ("a-checkout-in-a-deep-home-folder-" * 3) / "orca-ml-endpoint"
    assert len(str(root)) > 100
    args = make_root(root)
    spectrograms, mp3 = root / "unlabeled" / "spectrograms", root / "unlabeled" / "mp3"
    spectrograms.mkdir(parents=True)
    mp3.mkdir()
    for i, png in enumerate(sorted((root / "labeled" / "validation").glob("*/*.png"))):
        shutil.copy(png, spectrograms / f"orcasoundlab_{1594154118 + 3 * i}.png")
        (mp3 / f"orcasoundlab_{1594154118 + 3 * i}.mp3").write_bytes(clip_audio(i))
    server = Served(create_app({"LOCAL_ROOT": str(root), "DEVICE": "cpu", "CACHE_DIR": str(root / "cache"),
                                "STATE_DIR": str(root / "state")}))
    query = {"model_url": args["model_url"], "unlabeled_url": str(root / "unlabeled") + "/",
             "img_width": args["img_width"], "img_height": args["img_height"]}
    yield server, query, args
    server.close()


@pytest.fixture
def db():
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE prediction (predicted_value REAL, "
                       "audio_url TEXT CHECK (length(audio_url) <= 100), location TEXT CHECK (length(location) <= 30), "
                       "duration INTEGER, timestamp TEXT)")  # the client's VARCHAR(100) and VARCHAR(30)
    connection.execute("INSERT INTO prediction VALUES (0.3, 'https://b.s3.amazonaws.com/u/mp3/x.mp3', "
                       "'Haro Strait', 3, 'Tue, 07 Jul 2020 20:35:18 GMT')")
    connection.commit()
    yield connection
    connection.close()


def rows(db):
    return db.execute("SELECT audio_url FROM prediction").fetchall()


FAILURES = {
    "missing parameter": ({"unlabeled_url": None}, 400, "unlabeled_url"),
    "missing folder": ({"unlabeled_url": "{root}/no_such_folder/"}, 404, "no_such_folder"),
    "wrong image size": ({"img_width": "60"}, 422, "67x83"),
    "unknown scheme": ({"model_url": "ftp://host/m_0.h5"}, 400, "model_url"),
}


@pytest.mark.parametrize("case", FAILURES, ids=list(FAILURES))
def test_a_failed_predict_stops_the_client_before_it_touches_its_data(served, db, case):
    server, query, args = served
    change, status, named = FAILURES[case]
    root = args["model_url"].rsplit("/models/", 1)[0]
    bad = {k: v for k, v in {**query, **{k: (v.format(root=root) if v else v) for k, v in change.items()}}.items()
           if v is not None}
    answer = requests.get(f"{server.base}/predict", params=bad, timeout=60)
    assert answer.status_code == status
    assert answer.headers["Content-Type"].startswith("text/plain") and named in answer.text
    with pytest.raises(requests.exceptions.JSONDecodeError):
        client_round(server.base, bad, db)
    assert rows(db) == [("https://b.s3.amazonaws.com/u/mp3/x.mp3",)] and not db.in_transaction


def test_with_json_errors_the_same_client_would_crash_inside_its_open_transaction(served, db):
    """Why the errors are plain text: a JSON body parses, the client deletes its rows, then fails while
    iterating the error object, and its transaction stays open (the rows locked in PostgreSQL)."""
    server, query, _ = served
    bad = {k: v for k, v in query.items() if k != "unlabeled_url"}
    with pytest.raises(TypeError):
        client_round(server.base, bad, db, headers={"Accept": "application/json"})
    assert db.in_transaction and rows(db) == []
    db.rollback()


def test_a_good_predict_replaces_the_rows(served, db):
    server, query, _ = served
    client_round(server.base, query, db)
    assert len(rows(db)) == 4 and not db.in_transaction


def test_the_stored_audio_urls_play_back_from_a_deep_folder(served, db):
    """The labeler's browser fetches each stored audio_url: the clip's mp3, byte for byte, and the ranges
    its player asks for. The client files a label by the URL's last segment's stem (`update_s3_dir`)."""
    server, query, _ = served
    client_round(server.base, query, db)
    stored = [url for (url,) in rows(db)]
    mp3 = [f"orcasoundlab_{1594154118 + 3 * i}.mp3" for i in range(4)]
    assert stored == [f"{server.base}/clips/unlabeled/mp3/{name}" for name in mp3]
    for i, url in enumerate(stored):
        assert url.split("/")[-1].split(".")[0] == mp3[i][:-4]
        played = requests.get(url, timeout=60)
        assert played.status_code == 200 and played.content == clip_audio(i)
        assert played.headers["Content-Type"] == "audio/mpeg" and played.headers["Accept-Ranges"] == "bytes"
        middle = requests.get(url, headers={"Range": "bytes=1000-1999"}, timeout=60)
        assert middle.status_code == 206 and middle.content == clip_audio(i)[1000:2000]
        assert middle.headers["Content-Range"] == f"bytes 1000-1999/{len(clip_audio(i))}"


def test_audio_urls_name_the_host_the_client_called(served):
    """Behind a name (the client's ML_ENDPOINT_URL), the answer's URLs use it: the request's Host."""
    server, query, _ = served
    port = server.server.server_port
    answer = requests.get(f"{server.base}/predict", params=query, headers={"Host": f"orca-ml:{port}"}, timeout=60)
    assert [item["audio_url"].split("/clips/")[0] for item in answer.json()] == [f"http://orca-ml:{port}"] * 4


def test_the_original_file_urls_would_not_fit_the_client(served, db):
    """What the CHECK constraint stands for: the file:// URL of a clip under this root overflows
    VARCHAR(100), as PostgreSQL's `value too long for type character varying(100)` did in round 1."""
    _, query, _ = served
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO prediction VALUES (0.5, ?, 'Haro Strait', 3, '')",
                   (f"file://{query['unlabeled_url']}mp3/orcasoundlab_1594154118.mp3",))


def test_a_failed_train_raises_at_json_too(served):
    server, _, args = served
    bad = {**args, "epochs": "{epochs}"}  # an unexpanded template, as a misconfigured client sends
    answer = requests.get(f"{server.base}/train", params=bad, timeout=60)
    assert answer.status_code == 400 and "epochs" in answer.text
    with pytest.raises(requests.exceptions.JSONDecodeError):
        answer.json()


@pytest.mark.parametrize("accept, json_body", [
    (None, False), ("*/*", False), ("text/html,application/xhtml+xml", False),
    ("application/json", True), ("application/json, text/plain;q=0.5", True),
    ("text/plain, application/json;q=0.9", False), ("application/*", True),
])
def test_errors_of_train_and_predict_are_json_only_for_clients_that_prefer_it(served, accept, json_body):
    server, _, _ = served
    headers = {} if accept is None else {"Accept": accept}
    for path in ("/train", "/predict"):
        answer = requests.get(f"{server.base}{path}", headers=headers, timeout=60)
        assert answer.status_code == 400
        if json_body:
            assert answer.headers["Content-Type"] == "application/json" and "model_url" in answer.json()["error"]
        else:
            assert answer.headers["Content-Type"].startswith("text/plain") and "model_url" in answer.text


def test_new_endpoints_answer_errors_in_json_whatever_the_client_accepts(served):
    server, _, _ = served
    for path in ("/jobs/no-such-job", "/models", "/no/such/route"):
        answer = requests.get(f"{server.base}{path}", headers={"Accept": "*/*"}, timeout=60)
        assert answer.status_code in (400, 404) and "error" in answer.json(), path


def test_a_full_queue_is_plain_text_for_the_legacy_client(tmp_path):
    """429 from GET /train (the training queue is full) is plain text too."""
    release = threading.Event()
    app = create_app({"LOCAL_ROOT": "", "MAX_QUEUED": 0, "STATE_DIR": str(tmp_path)},
                     run_train=lambda runtime, params, on_epoch=None: release.wait(10) and {})
    server = Served(app)
    try:
        query = {"model_url": "s3://b/m_0.h5", "labeled_url": "s3://b/l/", "img_width": 3, "img_height": 3,
                 "epochs": 1}
        first = threading.Thread(target=requests.get, args=(f"{server.base}/train",),
                                 kwargs={"params": query, "timeout": 60})
        first.start()
        for _ in range(200):
            if app.extensions["orca"].jobs.list() and app.extensions["orca"].jobs.list()[0].status == "running":
                break
            threading.Event().wait(0.02)
        answer = requests.get(f"{server.base}/train", params=query, timeout=60)
        assert answer.status_code == 429 and answer.headers["Content-Type"].startswith("text/plain")
        with pytest.raises(requests.exceptions.JSONDecodeError):
            answer.json()
    finally:
        release.set()
        first.join()
        server.close()
