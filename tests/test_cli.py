"""`python -m service.cli` on the bundled sample data: a researcher's PyTorch model from `new` to a
served `.h5`, with the same JSON as the HTTP API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch  # noqa: F401  (before anything that may import TensorFlow)

import pytest

from service.cli import main

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_data" / "orcasound"
ROWS, COLS = 48, 60
TRAIN_KEYS = {"acc", "val_acc", "loss", "val_loss", "cm", "labeled_files", "model_acc", "model_loss", "model_url"}


@pytest.fixture
def workspace(tmp_path):
    labeled = tmp_path / "labeled"
    for split in ("train", "validation"):
        shutil.copytree(SAMPLES / split, labeled / split)
    spectrograms = tmp_path / "unlabeled" / "spectrograms"
    spectrograms.mkdir(parents=True)
    for i, png in enumerate(sorted((SAMPLES / "test").rglob("*.png"))):
        shutil.copy(png, spectrograms / f"orcasoundlab_{1594154118 + 3 * i}.png")
    (tmp_path / "models").mkdir()
    return tmp_path


def run_json(capsys, *argv):
    assert main(list(argv)) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_a_researchers_model_goes_from_new_to_a_trained_pt_and_an_h5(workspace, capsys):
    first = workspace / "models" / "small_cnn_0.pt"
    assert main(["new", "small_cnn", str(first), "--rows", str(ROWS), "--cols", str(COLS)]) == 0
    capsys.readouterr()
    result, err = run_json(capsys, "train", "--model_url", str(first), "--labeled_url", str(workspace / "labeled"),
                           "--img_width", str(ROWS), "--img_height", str(COLS), "--epochs", "2", "--seed", "1")
    assert set(result) == TRAIN_KEYS
    assert len(result["acc"]) == len(result["val_loss"]) == 2
    assert sum(result["cm"]) == 4 and result["labeled_files"] == 10
    assert result["model_url"] == str(workspace / "models" / "small_cnn_1.pt")
    assert "epochs [" in err and "2/2" in err  # the progress bar
    assert (workspace / "models" / "small_cnn_1.json").exists()  # provenance beside it

    items, err = run_json(capsys, "predict", "--model_url", result["model_url"],
                          "--unlabeled_url", str(workspace / "unlabeled"), "--img_width", str(ROWS),
                          "--img_height", str(COLS))
    assert "scored [" in err and "9/9" in err
    assert [i["timestamp"] for i in items][0] == "Tue, 07 Jul 2020 20:35:18 GMT"
    assert len(items) == 9 and all(0.0 <= i["predicted_value"] <= 1.0 for i in items)

    h5 = workspace / "models" / "small_cnn_keras_1.h5"
    assert main(["convert", result["model_url"], str(h5)]) == 0
    capsys.readouterr()
    scores, _ = run_json(capsys, "evaluate", "--model_url", str(h5), "--data_url", str(SAMPLES / "test"),
                         "--img_width", str(ROWS), "--img_height", str(COLS))
    assert scores["classes"] == ["calls", "nocalls"] and scores["images"] == 9
    assert 0.0 <= scores["accuracy"] <= 1.0 and 0.0 <= scores["roc_auc"] <= 1.0
    served, _ = run_json(capsys, "predict", "--model_url", str(h5), "--unlabeled_url", str(workspace / "unlabeled"),
                         "--img_width", str(ROWS), "--img_height", str(COLS))
    for a, b in zip(items, served):  # the .h5 scores what the .pt scored
        assert abs(a["predicted_value"] - b["predicted_value"]) <= 1e-4


def test_convert_refuses_to_replace_an_existing_file(workspace, capsys):
    source = workspace / "models" / "m_0.pt"
    main(["new", "small_cnn", str(source), "--rows", "32", "--cols", "32"])
    target = workspace / "models" / "m.onnx"
    target.write_text("keep me")
    with pytest.raises(SystemExit, match="exists"):
        main(["convert", str(source), str(target)])
    assert target.read_text() == "keep me"


def test_cli_errors_are_one_line_and_a_nonzero_status(workspace):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "service.cli", "predict", "--model_url",
                           str(workspace / "models" / "absent_0.h5"), "--unlabeled_url",
                           str(workspace / "unlabeled"), "--img_width", "48", "--img_height", "60"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert done.returncode == 2
    assert "model_url not found" in done.stderr and "Traceback" not in done.stderr
