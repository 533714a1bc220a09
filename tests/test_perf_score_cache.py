"""The /predict score cache: unchanged clips under an unchanged model are answered without being
read; a changed clip, another model file or a disabled cache means scoring again."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch  # noqa: F401  (before anything that may import TensorFlow)
import pytest

from models.srkw_cnn import write_fresh_h5
from service.params import PredictParams
from service.runtime import Runtime

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data" / "orcasound"
ROWS, COLS = 67, 83


@pytest.fixture
def setup(tmp_path):
    spectrograms = tmp_path / "unlabeled" / "spectrograms"
    spectrograms.mkdir(parents=True)
    pngs = sorted(SAMPLE.glob("test/*/*.png"))
    for i, png in enumerate(pngs[:4]):
        shutil.copy(png, spectrograms / f"orcasoundlab_{1594154118 + 3 * i}.png")
    model = write_fresh_h5(tmp_path / "srkw_cnn_0.h5", ROWS, COLS, seed=2)
    params = PredictParams(model_url=str(model), unlabeled_url=str(tmp_path / "unlabeled"), rows=ROWS, cols=COLS)
    return params, spectrograms, pngs


def runtime_with(tmp_path, score_cache: int, pixel_cache: int = 10**9) -> Runtime:
    return Runtime.from_config({"LOCAL_ROOT": None, "DEVICE": "cpu", "CACHE_DIR": str(tmp_path / "cache"),
                                "SCORE_CACHE": score_cache, "PIXEL_CACHE_BYTES": pixel_cache})


@pytest.fixture
def scores(tmp_path):
    runtime = runtime_with(tmp_path, 1000)
    return lambda params: [item["predicted_value"] for item in runtime.run_predict(runtime, params)]


def test_unchanged_clips_under_the_same_model_are_not_read_again(setup, scores):
    params, spectrograms, _ = setup
    first = scores(params)
    target = spectrograms / "orcasoundlab_1594154118.png"
    stat = target.stat()
    target.write_bytes(b"\0" * stat.st_size)  # unreadable now, but the same identity
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert scores(params) == first


def test_a_changed_clip_is_scored_again(setup, scores):
    params, spectrograms, pngs = setup
    first = scores(params)
    target = spectrograms / "orcasoundlab_1594154118.png"
    shutil.copy(pngs[-1], target)  # new content, new size or mtime
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    second = scores(params)
    assert second[1:] == first[1:] and second[0] != first[0]


def test_another_model_file_is_scored_afresh(setup, scores, tmp_path):
    params, _, _ = setup
    first = scores(params)
    other = write_fresh_h5(tmp_path / "srkw_cnn_1.h5", ROWS, COLS, seed=9)
    second = scores(PredictParams(str(other), params.unlabeled_url, ROWS, COLS))
    assert second != first


def test_a_disabled_cache_reads_every_clip(setup, tmp_path):
    params, spectrograms, _ = setup
    runtime = runtime_with(tmp_path, 0, pixel_cache=0)  # the pixel cache would serve the forged identity
    runtime.run_predict(runtime, params)
    target = spectrograms / "orcasoundlab_1594154118.png"
    stat = target.stat()
    target.write_bytes(b"\0" * stat.st_size)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    items = runtime.run_predict(runtime, params)
    assert len(items) == 3 and len(items.skipped) == 1  # reread: now unreadable, skipped
