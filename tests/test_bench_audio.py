"""`python -m bench.audio` on one real clip, one repeat: both pipelines run and the results JSON has its
shape (timings are never asserted)."""

from __future__ import annotations

import json
import shutil

import pytest

import librosa  # noqa: F401  (pinned: a missing one fails the run)
import skimage  # noqa: F401  (pinned: a missing one fails the run)
import audio.spectrogram  # noqa: F401  (the pipeline it times)

import repo_data  # noqa: E402
from bench import audio as bench_audio  # noqa: E402


def test_the_benchmark_runs_both_pipelines_on_one_clip(tmp_path, capsys):
    clip = sorted((repo_data.AUDIO_DIR / "mp3").rglob("*.mp3"))[0]
    source = tmp_path / "clips"
    source.mkdir()
    shutil.copy(clip, source / clip.name)
    out = tmp_path / "audio.json"
    assert bench_audio.main(["--clips", "1", "--repeats", "1", "--source", str(source), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "decode + spectrogram + PNG file" in printed and "CPU: " in printed
    results = json.loads(out.read_text())
    assert results["config"]["clips"] == 1 and results["config"]["cpu_model"]
    for side in ("original", "ours"):
        for measure in ("png", "pixels"):
            assert results["pipelines"][side][measure]["seconds_per_clip"] > 0
    assert set(results["speedup"]) >= {"png", "pixels", "cpu_png", "cpu_pixels"}
