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


@pytest.mark.slow
def test_the_device_benchmark_runs_on_the_cpu_and_finds_the_2020_pixels(tmp_path, capsys):
    """`python -m bench.audio_gpu` (gpu_check.sh's audio step) with --device cpu, small: the parity part
    compares with the real 2020 PNGs, so on the CPU every count is 0; the rates are reported."""
    from bench import audio_gpu

    out = tmp_path / "audio_gpu.json"
    result = audio_gpu.main(["--device", "cpu", "--batch", "2", "--clips", "4", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    parity = result["parity"]
    assert len(parity["clips"]) == 4 and parity["pixels_per_clip"] == 607 * 617
    assert parity["pixels_differing_from_2020_png"] == [0, 0, 0, 0] == parity["pixels_differing_from_cpu"]
    assert parity["resampled_equal_to_cpu"] and set(parity["max_abs_diff_from_cpu"].values()) == {0}
    assert result["samples_to_pixels"]["clips"] == 4 and result["mp3_to_input"]["clips"] == 4
    assert result["samples_to_pixels"]["clips_per_second"] > 0 and result["mp3_to_input"]["clips_per_second"] > 0
    assert "pixels differing from the 2020 PNGs [0, 0, 0, 0]" in capsys.readouterr().out


def test_the_2020_environment_must_have_its_ffmpeg_wrapper_and_draw_writes_one_png_per_clip(tmp_path):
    """--original-python names setup.sh's DEST/venv/bin/python, whose DEST/bin/ffmpeg (the fixed-point
    decoder's wrapper) must be there; `--draw` (what bench.reference runs with that interpreter) draws each
    clip's PNG, here with the current-library stand-in."""
    python = tmp_path / "dest" / "venv" / "bin" / "python"
    with pytest.raises(SystemExit, match="no ffmpeg wrapper at .*dest/bin/ffmpeg"):
        bench_audio.original_environment(str(python))
    wrapper = tmp_path / "dest" / "bin" / "ffmpeg"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text("#!/bin/sh\n")
    wrapper.chmod(0o755)
    env = bench_audio.original_environment(str(python))
    assert env["PATH"].startswith(f"{wrapper.parent}:") and env["SPECREF_DEST"] == str(tmp_path / "dest")
    clips = sorted((repo_data.AUDIO_DIR / "mp3").rglob("*.mp3"))[:2]
    drawn = bench_audio.draw(tmp_path / "png", [str(c) for c in clips])
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == sorted(c.stem + ".png" for c in clips)
    assert drawn["spectrograms_s"] > 0 and drawn["name"].startswith("2020 calls (librosa ")
