"""`python -m service.demo` (what `orca demo`, and so `make demo`, runs): lays out the sample data, serves, and the
curl lines it prints work as printed."""

import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_serves_the_sample_data_and_its_curl_lines_work(tmp_path):
    env = {key: value for key, value in os.environ.items()  # the demo's own defaults for its state and caches
           if key not in ("ORCA_STATE_DIR", "ORCA_CACHE_DIR", "ORCA_WORK_DIR", "ORCA_ONNX_CACHE")}
    env.update(PYTHONPATH=str(ROOT), ORCA_DEVICE="cpu")
    process = subprocess.Popen([sys.executable, "-m", "service.demo", "--port", "0"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, curls = [], []
    timer = threading.Timer(120, process.kill)  # never hang the suite
    timer.start()
    try:
        for line in process.stdout:
            lines.append(line)
            if line.strip().startswith("curl "):
                curls.append(re.search(r"'([^']+)'", line)[1])
            if len(curls) == 4:
                break
        assert len(curls) == 4, "".join(lines)
        threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()  # keep the pipe drained
        train_url, predict_url, train_audio_url, predict_audio_url = curls
        assert "/train?" in train_url and "/predict?" in predict_url
        assert "labeled_audio/" in train_audio_url and "unlabeled_audio/" in predict_audio_url
        with urllib.request.urlopen(predict_audio_url, timeout=300) as response:
            from_audio = json.loads(response.read())
        assert [item["audio_url"].rsplit("/", 1)[1] for item in from_audio] == [
            "orcasoundlab_1594154118.mp3", "orcasoundlab_1594154121.mp3", "orcasoundlab_1594154127.mp3",
            "orcasoundlab_1594154202.mp3"]
        with urllib.request.urlopen(predict_url, timeout=300) as response:
            items = json.loads(response.read())
        assert len(items) == 9
        assert items[0]["location"] == "Haro Strait"
        base = predict_url.split("/predict?", 1)[0]  # the demo serves local/: its clips under /clips/
        assert items[0]["audio_url"] == f"{base}/clips/unlabeled/mp3/orcasoundlab_1594154118.mp3"
        with urllib.request.urlopen(train_url, timeout=300) as response:
            result = json.loads(response.read())
        assert result["model_url"] == "local/models/srkw_cnn_1.h5"
        assert result["labeled_files"] == 10 and sum(result["cm"]) == 4
        assert sorted(os.listdir(tmp_path / "local/models")) == ["srkw_cnn_0.h5", "srkw_cnn_1.h5", "srkw_cnn_1.json",
                                                                     "srkw_cnn_1.png", "srkw_cnn_1.tensorboard"]
        assert (tmp_path / "local/state/jobs.sqlite3").is_file()  # the job database of this demo alone
        assert (tmp_path / "local/cache").is_dir() and (tmp_path / "local/work").is_dir()
        assert not os.listdir(tmp_path / "local/work")  # a request's scratch goes once it is done
    finally:
        timer.cancel()
        process.terminate()
        process.wait(timeout=30)
    # the licence notice travels with the sample spectrograms
    assert "MIT License" in (ROOT / "sample_data/orcasound/LICENSE").read_text()


SERVICE_FOLDERS = ("ORCA_STATE_DIR", "ORCA_CACHE_DIR", "ORCA_WORK_DIR", "ORCA_ONNX_CACHE")


def test_demo_keeps_its_state_and_caches_under_its_folder(tmp_path, monkeypatch):
    """`orca demo --prepare-only`, then the app the demo serves: its job database, model cache, ONNX
    exports, pixel cache and scratch space all lie under the demo's folder (what `make clean` removes)."""
    from orca.cli import main
    from service import create_app
    from service.demo import service_config

    for name in SERVICE_FOLDERS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--prepare-only"]) == 0
    local = (tmp_path / "local").resolve()
    app = create_app({**service_config("local"), "DEVICE": "cpu"})
    runtime = app.extensions["orca"]
    assert app.test_client().get("/jobs").status_code == 200  # opens the job database
    assert (local / "state" / "jobs.sqlite3").is_file()
    assert runtime.cache.root == local / "cache"
    assert Path(runtime.scorers.onnx_cache) == local / "cache" / "onnx"
    assert runtime.pixels.root == local / "cache" / "pixels"
    assert runtime.config["WORK_DIR"] == str(local / "work") and (local / "work").is_dir()
    assert runtime.config["LOCAL_ROOT"] == str(local)

    # a folder the environment names still wins
    monkeypatch.setenv("ORCA_STATE_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("ORCA_CACHE_DIR", str(tmp_path / "cached"))
    config = service_config("local")
    assert "STATE_DIR" not in config and "CACHE_DIR" not in config
    assert create_app({**config, "DEVICE": "cpu"}).extensions["orca"].cache.root == tmp_path / "cached"


def test_make_clean_removes_the_demo_folder_and_the_venv():
    """`make clean`'s recipe removes ./local (where the demo keeps its data, state and caches) and the
    venv, and names nothing outside the checkout."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = lines.index("clean:")
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    assert recipe, "make clean has no recipe"
    removed = [word for line in recipe if line.startswith("rm -rf ") for word in line.split()[2:]]
    assert "local" in removed and "$(VENV)" in removed, recipe
    assert not [word for word in removed if word.startswith(("/", "~", ".."))], removed


def test_demo_lays_out_audio_sets_that_predict_like_the_2020_pngs(tmp_path):
    """The audio-only unlabeled set and the audio labeled set beside the PNG ones (existing files kept), a curl
    line for each set, and /predict on the audio set answering, at srkw_cnn's 607x617, the scores of the
    real 2020 PNGs of the same clips (sample_data/orcasound_audio/png)."""
    import shutil

    from repo_data import AUDIO_DIR, json_client
    from service import create_app
    from service.demo import curl_lines, prepare

    root = tmp_path / "local"
    kept = root / "unlabeled_audio" / "mp3" / "orcasoundlab_1594154118.mp3"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"mine")
    urls = prepare(root)
    assert kept.read_bytes() == b"mine"  # files already there are left alone
    kept.unlink()
    urls = prepare(root)
    clips = sorted(p.name for p in AUDIO_DIR.glob("mp3/*/*.mp3"))
    assert sorted(p.name for p in (root / "unlabeled_audio" / "mp3").iterdir()) == clips
    laid = sorted(p.relative_to(root / "labeled_audio").as_posix() for p in (root / "labeled_audio").rglob("*.mp3"))
    assert laid == ["train/calls/orcasoundlab_1594154121.mp3", "train/nocalls/orcasoundlab_1594154118.mp3",
                    "validation/calls/orcasoundlab_1594154202.mp3", "validation/nocalls/orcasoundlab_1594154127.mp3"]
    lines = curl_lines("http://h", urls)
    assert len(lines) == 4
    assert f"labeled_url={root.as_posix()}/labeled_audio/&" in lines[2] and "/train?" in lines[2]
    assert f"unlabeled_url={root.as_posix()}/unlabeled_audio/&" in lines[3] and "/predict?" in lines[3]

    pngs = tmp_path / "pngs" / "spectrograms"  # the real 2020 pictures of the same clips
    pngs.mkdir(parents=True)
    for png in AUDIO_DIR.glob("png/*/*.png"):
        shutil.copy(png, pngs / png.name)
    client = json_client(create_app({"LOCAL_ROOT": str(tmp_path), "DEVICE": "cpu",
                                     "CACHE_DIR": str(tmp_path / "cache"), "STATE_DIR": str(tmp_path / "state")}))
    query = lines[3].split("?", 1)[1].rstrip("'")
    from_audio = client.get(f"/predict?{query}").get_json()
    from_png = client.get(f"/predict?{query.replace(urls['unlabeled_audio_url'], str(tmp_path / 'pngs') + '/')}").get_json()
    assert [i["audio_url"].rsplit("/", 1)[1] for i in from_audio] == [c for c in clips]
    assert from_audio[0]["audio_url"].endswith("/local/unlabeled_audio/mp3/orcasoundlab_1594154118.mp3")
    assert len(from_png) == 4
    for a, b in zip(from_audio, from_png):
        assert abs(a["predicted_value"] - b["predicted_value"]) <= 1e-6, (a, b)
