"""The /predict score cache: unchanged clips under an unchanged model are answered without being
read; a changed clip, another model file or a disabled cache means scoring again."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch  # noqa: F401  (before anything that may import TensorFlow)
import pytest

from models.srkw_cnn import write_fresh_h5
from service import cache, jobs
from service.params import PredictParams

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data" / "orcasound"
ROWS, COLS = 67, 83


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "SCORES", cache.ScoreCache(max_entries=1000))
    spectrograms = tmp_path / "unlabeled" / "spectrograms"
    spectrograms.mkdir(parents=True)
    pngs = sorted(SAMPLE.glob("test/*/*.png"))
    for i, png in enumerate(pngs[:4]):
        shutil.copy(png, spectrograms / f"orcasoundlab_{1594154118 + 3 * i}.png")
    model = write_fresh_h5(tmp_path / "srkw_cnn_0.h5", ROWS, COLS, seed=2)
    params = PredictParams(model_url=str(model), unlabeled_url=str(tmp_path / "unlabeled"), rows=ROWS, cols=COLS)
    return params, spectrograms, pngs


def scores(params):
    return [item["predicted_value"] for item in jobs.run_predict(params, jobs.Settings(local_root=None))]


def test_unchanged_clips_under_the_same_model_are_not_read_again(setup):
    params, spectrograms, _ = setup
    first = scores(params)
    target = spectrograms / "orcasoundlab_1594154118.png"
    stat = target.stat()
    target.write_bytes(b"\0" * stat.st_size)  # unreadable now, but the same identity
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert scores(params) == first


def test_a_changed_clip_is_scored_again(setup):
    params, spectrograms, pngs = setup
    first = scores(params)
    target = spectrograms / "orcasoundlab_1594154118.png"
    shutil.copy(pngs[-1], target)  # new content, new size or mtime
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    second = scores(params)
    assert second[1:] == first[1:] and second[0] != first[0]


def test_another_model_file_is_scored_afresh(setup, tmp_path):
    params, _, _ = setup
    first = scores(params)
    other = write_fresh_h5(tmp_path / "srkw_cnn_1.h5", ROWS, COLS, seed=9)
    second = scores(PredictParams(str(other), params.unlabeled_url, ROWS, COLS))
    assert second != first


def test_a_disabled_cache_reads_every_clip(setup, monkeypatch):
    params, spectrograms, _ = setup
    monkeypatch.setattr(cache, "SCORES", cache.ScoreCache(max_entries=0))
    scores(params)
    target = spectrograms / "orcasoundlab_1594154118.png"
    stat = target.stat()
    target.write_bytes(b"\0" * stat.st_size)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    items = jobs.run_predict(params, jobs.Settings(local_root=None))
    assert len(items) == 3 and len(items.skipped) == 1  # reread: now unreadable, skipped
