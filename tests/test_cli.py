"""The `orca` command on the bundled sample data: a researcher's PyTorch model from `new` to a served
`.h5`, with the same JSON as the HTTP API; `serve` and `demo`; one-line errors.

Most tests call `orca.cli.main([...])` in process; the console script itself (`.venv/bin/orca`,
installed by `make setup`) runs once in a subprocess, `python -m orca` where it is not installed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import torch  # noqa: F401  (before anything that may import TensorFlow)

import pytest

from orca.cli import main

REPO = Path(__file__).resolve().parents[1]
ROWS, COLS = 48, 60
TRAIN_KEYS = {"acc", "val_acc", "loss", "val_loss", "cm", "labeled_files", "model_acc", "model_loss", "model_url"}
COMMANDS = ("serve", "demo", "train", "predict", "evaluate", "new", "convert", "verify", "score", "embed", "query",
            "simulate", "spectrogram", "preprocess")


def orca_command() -> list[str]:
    """The installed console script beside this interpreter, else `python -m orca`."""
    script = Path(sys.executable).with_name("orca")
    return [str(script)] if script.exists() else [sys.executable, "-m", "orca"]


def subprocess_env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "ORCA_DEVICE": "cpu", **extra}


@pytest.fixture
def workspace(tmp_path, sample_dir):
    labeled = tmp_path / "labeled"
    for split in ("train", "validation"):
        shutil.copytree(sample_dir / split, labeled / split)
    spectrograms = tmp_path / "unlabeled" / "spectrograms"
    spectrograms.mkdir(parents=True)
    for i, png in enumerate(sorted((sample_dir / "test").rglob("*.png"))):
        shutil.copy(png, spectrograms / f"orcasoundlab_{1594154118 + 3 * i}.png")
    (tmp_path / "models").mkdir()
    return tmp_path


def run_json(capsys, *argv):
    assert main(list(argv)) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_a_researchers_model_goes_from_new_to_a_trained_pt_and_an_h5(workspace, sample_dir, capsys):
    first = workspace / "models" / "small_cnn_0.pt"
    assert main(["new", "small_cnn", str(first), "--rows", str(ROWS), "--cols", str(COLS)]) == 0
    assert f"wrote {first} (small_cnn, {ROWS}x{COLS}x3)" in capsys.readouterr().err
    result, err = run_json(capsys, "train", "--model_url", str(first), "--labeled_url", str(workspace / "labeled"),
                           "--img_width", str(ROWS), "--img_height", str(COLS), "--epochs", "2", "--seed", "1")
    assert set(result) == TRAIN_KEYS
    assert len(result["acc"]) == len(result["val_loss"]) == 2
    assert sum(result["cm"]) == 4 and result["labeled_files"] == 10
    assert result["model_url"] == str(workspace / "models" / "small_cnn_1.pt")
    # tqdm's bar on stderr: epochs, with the last epoch's metrics
    assert "epochs" in err and "2/2" in err and "val_loss=" in err and "val_acc=" in err
    assert (workspace / "models" / "small_cnn_1.json").exists()  # provenance beside it

    items, err = run_json(capsys, "predict", "--model_url", result["model_url"],
                          "--unlabeled_url", str(workspace / "unlabeled"), "--img_width", str(ROWS),
                          "--img_height", str(COLS))
    assert "scored" in err and "9/9" in err
    assert [i["timestamp"] for i in items][0] == "Tue, 07 Jul 2020 20:35:18 GMT"
    assert len(items) == 9 and all(0.0 <= i["predicted_value"] <= 1.0 for i in items)

    h5 = workspace / "models" / "small_cnn_keras_1.h5"
    assert main(["convert", result["model_url"], str(h5)]) == 0
    assert f"wrote {h5}" in capsys.readouterr().err
    scores, _ = run_json(capsys, "evaluate", "--model_url", str(h5), "--data_url", str(sample_dir / "test"),
                         "--img_width", str(ROWS), "--img_height", str(COLS))
    assert scores["classes"] == ["calls", "nocalls"] and scores["images"] == 9
    assert 0.0 <= scores["accuracy"] <= 1.0 and 0.0 <= scores["roc_auc"] <= 1.0
    out = workspace / "served.json"
    assert main(["predict", "--model_url", str(h5), "--unlabeled_url", str(workspace / "unlabeled"),
                 "--img_width", str(ROWS), "--img_height", str(COLS), "--output", str(out)]) == 0
    assert capsys.readouterr().out == ""  # --output: the JSON goes to the file
    served = json.loads(out.read_text())
    assert [b["audio_url"] for b in served] == [a["audio_url"] for a in items] and len(served) == 9
    for a, b in zip(items, served, strict=True):  # the .h5 scores what the .pt scored
        assert abs(a["predicted_value"] - b["predicted_value"]) <= 1e-4


def test_convert_refuses_to_replace_an_existing_file(workspace, capsys):
    source = workspace / "models" / "m_0.pt"
    main(["new", "small_cnn", str(source), "--rows", "32", "--cols", "32"])
    target = workspace / "models" / "m.onnx"
    target.write_text("keep me")
    with pytest.raises(SystemExit, match="exists"):
        main(["convert", str(source), str(target)])
    assert target.read_text() == "keep me"


def test_convert_without_the_bridge_names_the_extra(workspace, monkeypatch, capsys):
    source = workspace / "models" / "m_0.pt"
    main(["new", "small_cnn", str(source), "--rows", "32", "--cols", "32"])
    for name in ("tensorflow", "tf_keras"):  # as in an install without the `bridge` extra
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "conversion.keras_reference", raising=False)
    monkeypatch.delattr(sys.modules["conversion"], "keras_reference", raising=False)
    capsys.readouterr()
    assert main(["convert", str(source), str(workspace / "models" / "m.h5")]) == 2
    assert capsys.readouterr().err == ("error: `orca convert` needs tensorflow, which is not installed (the `bridge` "
                                       "extra): pip install '.[bridge]'\n")
    assert not (workspace / "models" / "m.h5").exists()


def test_the_missing_extra_hint_is_the_readmes_install_line():
    readme = (REPO / "README.md").read_text()
    from orca.cli import MissingExtra

    for extra in ("bridge", "scale"):
        line = f"pip install '.[{extra}]'"
        assert line in readme and str(MissingExtra("x", "y", extra)).endswith(line)


def test_verify_without_tensorflow_names_the_extra_and_exits_2(workspace):
    """A lean install (no TensorFlow): one line naming the extra, exit status 2, no traceback."""
    model = workspace / "models" / "m_0.h5"
    assert main(["new", "srkw_cnn", str(model), "--rows", "32", "--cols", "32"]) == 0
    lean = ("import sys; sys.modules['tensorflow'] = None; from orca.cli import main; "
            f"sys.exit(main(['verify', {str(model)!r}]))")
    done = subprocess.run([sys.executable, "-c", lean], env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr == ("error: `orca verify` needs tensorflow, which is not installed (the `bridge` extra): "
                           "pip install '.[bridge]'\n")
    assert "ModuleNotFoundError" not in done.stdout


def test_verify_quiets_tensorflow_unless_told_otherwise(monkeypatch):
    """TF_CPP_MIN_LOG_LEVEL is set before TensorFlow's first import (its C++ start-up lines, such as
    `failed call to cuInit`, stay off the terminal); a value the user set is kept."""
    import conversion.__main__

    seen = []
    monkeypatch.setattr(conversion.__main__, "main",
                        lambda argv: seen.append(os.environ.get("TF_CPP_MIN_LOG_LEVEL")) or 0)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "unset")  # so that the teardown restores the session's own
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    assert main(["verify", "m.h5"]) == 0
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    assert main(["verify", "m.h5"]) == 0
    assert seen == ["3", "0"]


@pytest.mark.slow  # TensorFlow's import in a new process (~10 s on 2 cores)
def test_verify_prints_its_table_without_tensorflow_s_start_up_lines(workspace):
    """The console script's stderr holds none of TensorFlow's absl start-up lines (oneDNN's notice,
    `Could not find cuda drivers`, absl's preamble); with TF_CPP_MIN_LOG_LEVEL=0 they are there again,
    so the test sees them when they are printed."""
    model = workspace / "models" / "m_0.h5"
    assert main(["new", "srkw_cnn", str(model), "--rows", "32", "--cols", "32"]) == 0
    quiet = subprocess.run(orca_command() + ["verify", str(model)], env=subprocess_env(), capture_output=True,
                           text=True, timeout=300)
    loud = subprocess.run([sys.executable, "-c", "import conversion.keras_reference"],
                          env=subprocess_env(TF_CPP_MIN_LOG_LEVEL="0"), capture_output=True, text=True, timeout=300)

    assert quiet.returncode == 0, quiet.stderr
    assert "keras vs torch" in quiet.stdout
    assert "absl::InitializeLog" not in quiet.stderr and not re.search(r"^[IW]\d{4} ", quiet.stderr, re.M), quiet.stderr
    assert loud.returncode == 0 and "absl::InitializeLog" in loud.stderr, loud.stderr


def test_tensorflow_start_up_lines_follow_the_log_level():
    from conversion.keras_reference import ABSL_PREAMBLE, startup_line_shown

    info = "I0000 00:00:1796622114.657601    6646 port.cc:153] oneDNN custom operations are on.\n"
    warning, error = "W" + info[1:], "E" + info[1:]
    python_warning = "/x.py:3: UserWarning: something\n"
    assert [startup_line_shown(line, 2) for line in (ABSL_PREAMBLE, info, warning, error, python_warning)] == [
        False, False, False, True, True]
    assert [startup_line_shown(line, 1) for line in (info, warning)] == [False, True]
    assert all(startup_line_shown(line, 0) for line in (ABSL_PREAMBLE, info, warning, error))
    assert not startup_line_shown(error, 3)


@pytest.mark.parametrize("argv, message", [
    (["new", "no_such_model", "x_0.pt"], "unknown model 'no_such_model'"),
    (["new", "small_cnn", "x_0.h5"], "`new` writes .pt checkpoints"),
    (["convert", "a.onnx", "b.pt"], "cannot convert .onnx to .pt"),
])
def test_library_errors_are_one_line(tmp_path, argv, message):
    argv = [str(tmp_path / a) if a.endswith((".pt", ".h5", ".onnx")) else a for a in argv]
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_evaluate_needs_two_class_folders(workspace, capsys):
    model = workspace / "models" / "m_0.pt"
    main(["new", "small_cnn", str(model), "--rows", "32", "--cols", "32"])
    with pytest.raises(SystemExit, match="exactly two class folders"):
        main(["evaluate", "--model_url", str(model), "--data_url", str(workspace / "unlabeled"),
              "--img_width", "32", "--img_height", "32"])


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as raised:
        main(["--help"])
    assert raised.value.code == 0
    text = capsys.readouterr().out
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s", text, re.M), command


def test_the_console_script_reports_errors_in_one_line_and_a_nonzero_status(workspace):
    done = subprocess.run(orca_command() + ["predict", "--model_url", str(workspace / "models" / "absent_0.h5"),
                                            "--unlabeled_url", str(workspace / "unlabeled"),
                                            "--img_width", "48", "--img_height", "60"],
                          capture_output=True, text=True, cwd=workspace, env=subprocess_env(), timeout=120)
    assert done.returncode == 2, done.stderr
    assert "model_url not found" in done.stderr and "Traceback" not in done.stderr


def _first_lines(process, wanted, seconds=120):
    """Lines of `process`'s stdout until `wanted(lines)`; then keep draining in the background."""
    lines = []
    timer = threading.Timer(seconds, process.kill)  # never hang the suite
    timer.start()
    try:
        for line in process.stdout:
            lines.append(line)
            if wanted(lines):
                break
    finally:
        timer.cancel()
    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    return lines


def test_serve_listens_where_told_and_answers_health(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "orca", "serve", "--host", "127.0.0.1", "--port", "0"],
                               cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        lines = _first_lines(process, lambda lines: "listening on" in lines[-1])
        url = re.search(r"listening on (http://127\.0\.0\.1:\d+/)", "".join(lines))
        assert url, "".join(lines)
        with urllib.request.urlopen(url[1] + "health", timeout=60) as response:
            assert json.loads(response.read())["status"] == "ok"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_demo_prepare_only_lays_out_the_sample_data(tmp_path, capsys):
    assert main(["demo", "--dir", str(tmp_path / "local"), "--prepare-only", "--port", "5099"]) == 0
    out = capsys.readouterr().out
    curls = [line.strip() for line in out.splitlines() if line.strip().startswith("curl ")]
    assert len(curls) == 4 and "127.0.0.1:5099/train?" in curls[0] and "/predict?" in curls[1]
    assert "/train?" in curls[2] and "labeled_audio/" in curls[2] and "unlabeled_audio/" in curls[3]
    local = tmp_path / "local"
    assert (local / "models" / "srkw_cnn_0.h5").is_file()
    assert len(list((local / "labeled").rglob("*.png"))) == 14
    assert len(list((local / "unlabeled" / "spectrograms").glob("orcasoundlab_*.png"))) == 9
    assert len(list((local / "unlabeled_audio" / "mp3").glob("orcasoundlab_*.mp3"))) == 4
    assert len(list((local / "labeled_audio").rglob("*.mp3"))) == 4


@pytest.mark.slow
def test_query_embed_and_simulate_commands_on_a_registered_torch_model(workspace, sample_dir, capsys, tmp_path):
    model = workspace / "models" / "small_cnn_0.pt"
    assert main(["new", "small_cnn", str(model), "--rows", str(ROWS), "--cols", str(COLS)]) == 0
    capsys.readouterr()
    common = ["--model_url", str(model), "--unlabeled_url", str(workspace / "unlabeled"),
              "--img_width", str(ROWS), "--img_height", str(COLS)]
    chosen, _ = run_json(capsys, "query", *common, "--k", "3", "--strategy", "bald", "--passes", "3", "--seed", "1")
    assert [row["rank"] for row in chosen] == [1, 2, 3] and len({row["audio_url"] for row in chosen}) == 3
    rows, err = run_json(capsys, "embed", *common, "--npy", str(tmp_path / "e.npy"))
    import numpy as np

    assert np.load(tmp_path / "e.npy").shape == (len(rows), 64) and "embedding" not in rows[0]
    assert main(["simulate", str(sample_dir), "--model", "small_cnn", "--out", str(tmp_path / "sim"),
                 "--strategies", "uncertainty,random", "--rounds", "2", "--k", "2", "--epochs", "1",
                 "--img_width", "32", "--img_height", "40", "--device", "cpu"]) == 0
    results = json.loads((tmp_path / "sim" / "simulation.json").read_text())
    assert [run["strategy"] for run in results["runs"]] == ["uncertainty", "random"]
    assert (tmp_path / "sim" / "simulation.png").stat().st_size > 0
    assert "rounds" in capsys.readouterr().err  # the progress bar


def test_query_with_a_bad_strategy_is_one_line_naming_it(workspace, capsys):
    code = main(["query", "--model_url", str(workspace / "models" / "x_0.pt"), "--unlabeled_url",
                 str(workspace / "unlabeled"), "--img_width", "8", "--img_height", "8", "--k", "2",
                 "--strategy", "cleverest"])
    assert code == 2 and "strategy must be one of" in capsys.readouterr().err


def test_predict_query_and_score_preparation_run_without_flask(workspace):
    """`orca predict`, `orca query` (a strategy that loads the model in torch) and what `orca score` does
    before Ray, in one fresh process on the sample data: they call the service's use cases, which need no
    Flask; only `serve` and `demo` load it."""
    model = workspace / "models" / "small_cnn_0.pt"
    assert main(["new", "small_cnn", str(model), "--rows", str(ROWS), "--cols", str(COLS)]) == 0
    common = ["--model_url", str(model), "--unlabeled_url", str(workspace / "unlabeled"),
              "--img_width", str(ROWS), "--img_height", str(COLS)]
    predicted, chosen = workspace / "predicted.json", workspace / "chosen.json"
    code = "\n".join([
        "import json, sys",
        "from orca.cli import main",
        f"assert main(['predict', *{common!r}, '--output', {str(predicted)!r}]) == 0",
        f"assert main(['query', *{common!r}, '--k', '3', '--strategy', 'bald', '--passes', '2', '--seed', '1',",
        f"             '--output', {str(chosen)!r}]) == 0",
        "from batch_scoring.run import prepare",
        f"plan = prepare({str(model)!r}, {str(workspace / 'unlabeled')!r}, {str(workspace / 'scores')!r}, part_size=4).plan",
        "print(json.dumps({'clips': plan.table.num_rows, 'parts': plan.parts, 'rows': plan.rows, 'cols': plan.cols,",
        "                  'web': sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'werkzeug'))}))",
    ])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=workspace,
                          env=subprocess_env(ORCA_PUBLIC_URL="http://orca.example.org:5001"), timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"clips": 9, "parts": 3, "rows": ROWS, "cols": COLS, "web": []}
    items = json.loads(predicted.read_text())
    assert len(items) == 9 and all(0.0 <= item["predicted_value"] <= 1.0 for item in items)
    assert items[0]["audio_url"] == "http://orca.example.org:5001/clips/unlabeled/mp3/orcasoundlab_1594154118.mp3"
    ranked = json.loads(chosen.read_text())
    assert [row["rank"] for row in ranked] == [1, 2, 3]
    assert {row["audio_url"] for row in ranked} <= {item["audio_url"] for item in items}


def test_predicts_audio_urls_are_the_servers_under_orca_public_url_else_file_urls(workspace, capsys, monkeypatch):
    """No request, no host: `orca predict` names a clip under ORCA_LOCAL_ROOT as the server configured by
    the same environment serves it (`<ORCA_PUBLIC_URL>/clips/…`), and by its file:// URL otherwise."""
    model = workspace / "models" / "small_cnn_0.pt"
    assert main(["new", "small_cnn", str(model), "--rows", str(ROWS), "--cols", str(COLS)]) == 0
    common = ["predict", "--model_url", str(model), "--unlabeled_url", str(workspace / "unlabeled"),
              "--img_width", str(ROWS), "--img_height", str(COLS)]
    capsys.readouterr()
    clip = "unlabeled/mp3/orcasoundlab_1594154118.mp3"
    monkeypatch.setenv("ORCA_LOCAL_ROOT", str(workspace))
    items, _ = run_json(capsys, *common)
    assert items[0]["audio_url"] == (workspace / clip).as_uri()
    monkeypatch.setenv("ORCA_PUBLIC_URL", "https://orca.example.org/ml/")
    items, _ = run_json(capsys, *common)
    assert items[0]["audio_url"] == f"https://orca.example.org/ml/clips/{clip}"
    monkeypatch.setenv("ORCA_LOCAL_ROOT", str(workspace / "models"))  # the clips lie outside what is served
    items, _ = run_json(capsys, *common)
    assert items[0]["audio_url"] == (workspace / clip).as_uri()


def test_every_option_of_every_command_has_help():
    """`orca COMMAND -h` explains each argument: every action of every subcommand (but -h) has help text,
    and so does every subcommand in `orca -h`."""
    import argparse

    from orca.cli import parser

    top = parser()
    (commands,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(COMMANDS) <= set(commands.choices)
    listed = {a.dest: a.help for a in commands._choices_actions}
    missing = [name for name in commands.choices if not listed.get(name)]
    for name, sub in commands.choices.items():
        missing += [f"{name} {'/'.join(a.option_strings) or a.dest}" for a in sub._actions
                    if not isinstance(a, argparse._HelpAction) and not (a.help and a.help.strip())]
    assert not missing, f"no help text: {missing}"


@pytest.mark.slow  # a local Ray's start-up in the subprocess (~10 s on 2 cores)
def test_score_shows_its_bar_and_summary_without_ray_s_own_lines(srkw_h5, tmp_path):
    """`orca score` starting its own local Ray: stderr holds the progress bar, not Ray's token-auth notice,
    Ray Data's INFO lines (execution plan, its logged progress) or its warning about an actor pool wider
    than its input (3 clips make one block: one actor, though 2 are asked for)."""
    from repo_data import SRKW_COLS, SRKW_ROWS

    source = tmp_path / "unlabeled" / "spectrograms"
    source.mkdir(parents=True)
    for i, png in enumerate(sorted((REPO / "sample_data" / "orcasound" / "test").glob("*/*.png"))[:3]):
        shutil.copyfile(png, source / f"orcasoundlab_{1594154118 + 3 * i}.png")
    env = {key: value for key, value in subprocess_env().items() if key != "RAY_ADDRESS"}
    run = subprocess.run(orca_command() + ["score", str(srkw_h5), str(tmp_path / "unlabeled"), "--out",
                                           str(tmp_path / "scores"), "--img_width", str(SRKW_ROWS),
                                           "--img_height", str(SRKW_COLS), "--num-cpus", "2", "--workers", "2"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)
    assert (summary["scored"], summary["failed"], summary["workers"]) == (3, 0, 1)
    assert "scored: 100%" in run.stderr
    for noise in ("Token authentication", "streaming_executor", "logging_progress", "Execution plan",
                  "UserWarning", "override_num_blocks"):
        assert noise not in run.stderr, run.stderr[-3000:]
