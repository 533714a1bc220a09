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
