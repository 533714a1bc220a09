"""File modes and permissions as an operator meets them: published files readable as an ordinary
write would make them, unreadable inputs and unwritable folders named in clear errors."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import pytest

from conversion.atomic import atomic_output, published_mode, write_bytes_atomically
from tests.ops_support import Served, make_root


@contextlib.contextmanager
def umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_writes_get_an_ordinary_writes_mode(tmp_path, mask, expected):
    with umask(mask):
        assert published_mode() == expected
        write_bytes_atomically(tmp_path / "replaced", b"one")
        write_bytes_atomically(tmp_path / "replaced", b"two")  # os.replace over an existing file
        with atomic_output(tmp_path / "linked", overwrite=False) as tmp:
            assert mode(Path(tmp)) == 0o600  # private while it is written
            Path(tmp).write_bytes(b"x")
        with open(tmp_path / "ordinary", "wb"):
            pass
    assert mode(tmp_path / "ordinary") == expected  # the reference: what open() gives
    assert mode(tmp_path / "replaced") == expected and (tmp_path / "replaced").read_bytes() == b"two"
    assert mode(tmp_path / "linked") == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["linked", "ordinary", "replaced"]  # no temporaries


def test_a_real_training_publishes_every_file_0644_under_umask_022(tmp_path):
    from service.app import create_app

    args = make_root(tmp_path / "root")
    models = tmp_path / "root" / "models"
    before = {p for p in models.rglob("*")}
    with umask(0o022):
        served = Served(create_app({"LOCAL_ROOT": str(tmp_path), "DEVICE": "cpu"}))
        try:
            status, body = served.get("/train", **args)
        finally:
            served.close()
    assert status == 200, body
    published = sorted(p for p in models.rglob("*") if p not in before and p.is_file())
    names = [str(p.relative_to(models)) for p in published]
    assert {"srkw_cnn_1.h5", "srkw_cnn_1.json", "srkw_cnn_1.png"} <= set(names), names
    assert any(n.startswith("srkw_cnn_1.tensorboard/events.out.tfevents.") for n in names), names
    assert {n: oct(mode(p)) for n, p in zip(names, published)} == {n: oct(0o644) for n in names}


def test_spectrogram_pngs_and_clip_mp3s_get_an_ordinary_writes_mode(tmp_path):
    import numpy as np

    from audio.clips import write_mp3
    from audio.spectrogram import write_png

    with umask(0o022):
        write_png(np.zeros((4, 5, 4), np.uint8), tmp_path / "clip.png")
        write_mp3(np.zeros((1, 16000), np.float32), 16000, str(tmp_path / "clip.mp3"))
    assert {p.name: oct(mode(p)) for p in tmp_path.iterdir()} == {"clip.png": "0o644", "clip.mp3": "0o644"}


# ------------------------------------------------------------------------------ permission errors
# The tests run as root, which reads any file. The service runs here in a child process that is root
# without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (dropped from its bounding set before exec): the
# OS itself then refuses it what the permission bits refuse, as it refuses uid 1000 in the image.

ROOT_DIR = Path(__file__).resolve().parents[1]
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def _drop_file_capabilities():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def unprivileged(args, timeout=300, **env):
    import subprocess
    import sys

    return subprocess.run([sys.executable, *args], cwd=ROOT_DIR, preexec_fn=_drop_file_capabilities,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT_DIR), str(ROOT_DIR / "tests")]), **env},
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def capabilities_drop():
    if os.geteuid() != 0:  # an unprivileged run: chmod alone simulates it
        return
    probe = unprivileged(["-c", "open('/proc/1/environ').read()"], timeout=30)
    if probe.returncode == 0:
        pytest.skip("dropping CAP_DAC_OVERRIDE did not take effect here")


CHILD = """
import json, sys
from service.app import create_app
from tests.ops_support import Served

out = []
for config, path, params in json.loads(sys.argv[1]):
    served = Served(create_app(config))
    try:
        status, body = served.get(path, **params)
    finally:
        served.close()
    out.append([status, body])
print("RESULT " + json.dumps(out))
"""


def _run_child(calls) -> list:
    import json

    result = unprivileged(["-c", CHILD, json.dumps(calls)])
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_unreadable_models_and_datasets_are_403s_naming_them_and_unwritable_folders_fail_ready(
        tmp_path, capabilities_drop):
    root = tmp_path / "root"
    args = make_root(root)
    model = root / "models" / "srkw_cnn_0.h5"
    locked = root / "models" / "locked_0.h5"
    locked.write_bytes(model.read_bytes())
    private = root / "private"
    private.mkdir()
    (private / "m_0.h5").write_bytes(model.read_bytes())
    unlabeled = root / "unlabeled" / "spectrograms"
    unlabeled.mkdir(parents=True)
    (unlabeled / "orcasoundlab_1594154118.png").write_bytes(
        next((root / "labeled" / "train" / "calls").glob("*.png")).read_bytes())
    unreadable_folder = root / "labeled" / "train" / "calls"
    other = tmp_path / "root" / "labeled2"
    import shutil

    shutil.copytree(root / "labeled", other)
    unreadable_file = next((other / "validation" / "nocalls").glob("*.png"))
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    state = tmp_path / "state"
    for path, bits in [(locked, 0), (private, 0), (unreadable_folder, 0), (unreadable_file, 0), (read_only, 0o555)]:
        path.chmod(bits)
    config = {"LOCAL_ROOT": str(root), "DEVICE": "cpu", "STATE_DIR": str(state), "PRELOAD_TORCH": "0"}
    predict = {"unlabeled_url": str(root / "unlabeled") + "/", "img_width": args["img_width"],
               "img_height": args["img_height"]}
    calls = [
        [config, "/predict", {**predict, "model_url": str(locked)}],
        [config, "/predict", {**predict, "model_url": str(private / "m_0.h5")}],
        [config, "/train", args],
        [config, "/train", {**args, "labeled_url": str(other) + "/"}],
        [config, "/predict", {**predict, "model_url": str(model)}],  # the control: readable, 200
        [{**config, "LOCAL_ROOT": str(read_only)}, "/ready", {}],
        [{**config, "STATE_DIR": str(read_only / "state")}, "/ready", {}],
        [config, "/ready", {}],
    ]
    try:
        answers = _run_child(calls)
    finally:
        for path in (locked, private, unreadable_folder, unreadable_file, read_only):
            path.chmod(0o755)
    (s1, b1), (s2, b2), (s3, b3), (s4, b4), (s5, b5), (s6, b6), (s7, b7), (s8, b8) = answers
    assert s1 == 403 and str(locked) in b1["error"], b1
    assert s2 == 403 and str(private / "m_0.h5") in b2["error"], b2
    assert s3 == 403 and str(unreadable_folder) in b3["error"], b3
    assert s4 == 403 and str(unreadable_file) in b4["error"], b4
    assert s5 == 200, b5
    assert s6 == 503 and b6["checks"]["state_dir"] == "ok", b6
    assert f"{read_only} is not writable by uid {os.geteuid()}" in b6["checks"]["local_root"], b6
    assert "local_root" in b6["error"]
    assert s7 == 503 and b7["checks"]["local_root"] == "ok", b7
    assert f"{read_only / 'state'} is not writable" in b7["checks"]["state_dir"] and "state_dir" in b7["error"], b7
    assert s8 == 200 and b8["checks"] == {"local_root": "ok", "state_dir": "ok"}, b8


def test_a_start_up_that_cannot_open_the_job_database_says_so_in_one_line(tmp_path, capabilities_drop):
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)  # as a root-owned bind mount is to uid 1000 in the image
    result = unprivileged(["-m", "service"], timeout=120, ORCA_STATE_DIR=str(state), ORCA_LOCAL_ROOT=str(tmp_path),
                          PORT="0", HOST="127.0.0.1", ORCA_PRELOAD_TORCH="0")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert str(state) in last and "belongs to uid 65534" in last and f"writable by uid {os.geteuid()}" in last, last
