"""`python -m bench.run --quick` end to end on tiny images: moto S3, the tf_keras reference in its own
process, the service over HTTP, and the from-audio comparison on 4 clips; checks the shape of results.json
and the chart, never timings."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("predict_cold", "predict_warm", "train", "predict_new_model")


def run_bench(out: Path, *options: str) -> subprocess.CompletedProcess:
    """`python -m bench.run` on 67x83 images, 1 epoch, into `out`; fails the test if it fails."""
    completed = subprocess.run([sys.executable, "-m", "bench.run", "--rows", "67", "--cols", "83", "--epochs", "1",
                                "--out", str(out), *options], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed


@pytest.mark.slow
def test_bench_quick_run_writes_results_and_chart(tmp_path):
    out = tmp_path / "results"
    completed = run_bench(out, "--quick", "--unlabeled", "8", "--labeled", "8", "--audio-clips", "4")
    assert "speed-up" in completed.stdout

    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"config", "reference", "ours", "images_per_second", "speedup", "parity"}
    config = results["config"]
    assert (config["unlabeled"], config["labeled"], config["rows"], config["cols"], config["epochs"]) == (8, 8, 67, 83, 1)
    assert config["train_images"] == 6 and config["validation_images"] == 2
    for side in ("reference", "ours"):
        assert set(results[side]["seconds"]) == set(STAGES)
        assert all(results[side]["seconds"][s] > 0 for s in STAGES)
        assert results[side]["peak_rss_mib"] > 0
    for stage in STAGES:
        assert results["images_per_second"][stage]["reference"] > 0
        assert results["images_per_second"][stage]["ours"] > 0
        assert results["speedup"][stage] > 0
    assert all(v > 0 for v in results["reference"]["download_s"].values())
    assert results["parity"]["compared_predictions"] == 8
    assert results["parity"]["max_abs_diff_predict"] < 1e-4  # same weights, same preprocessing
    trained = results["ours"]["train_result"]
    assert trained["model_url"].endswith("/models/srkw_cnn_1.h5") and len(trained["loss"]) == 1
    assert len(results["reference"]["train_result"]["loss"]) == 1

    rounds = results["rounds"]  # --quick: one whole round on each side
    assert rounds["rounds"] == 1 and len(rounds["ours"]) == len(rounds["reference"]) == 1
    assert rounds["ours"][0]["moved"] == rounds["reference"][0]["moved"] == 1  # 5 % of 8, at least one
    assert rounds["ours"][0]["train_images"] == rounds["reference"][0]["train_images"] == 6  # same dataset
    assert rounds["speedup"] > 0 and "seconds per round" in completed.stdout

    cold = results["cold_pairs"]  # --quick: one more cold /predict on each side, in new processes
    (pair,) = cold["pairs"]
    assert pair["images"] == 8 - 1 and pair["reference_s"] > 0 and pair["ours_s"] > 0  # after the round's move
    assert cold["median_speedup"] == pair["speedup"] == pair["reference_s"] / pair["ours_s"]
    assert (out / "reference_cold_1.json").exists() and "predict: 7 scored (0 from the score cache)" in (
        out / "service_cold_1.log").read_text()  # an empty cache: every clip scored
    assert "cold /predict in pairs" in completed.stdout and "median" in completed.stdout

    audio = results["audio"]  # the 4 clips: the 2020 preprocessing + the original /predict, ours from audio and PNG
    assert config["audio_clips"] == audio["clips"] == 4
    assert set(audio) == {"clips", "original", "ours_audio", "ours_png", "speedup", "audio_vs_png", "compared_scores",
                          "max_abs_diff_audio_png", "breakdown"}
    original = audio["original"]
    assert set(original) == {"preprocess", "pipeline", "predict", "seconds", "seconds_per_clip", "clips", "scored"}
    assert original["pipeline"].startswith("2020 calls (librosa ")  # the stand-in, naming its libraries
    assert original["clips"] == original["scored"] == original["preprocess"]["pngs"] == 4
    assert set(original["preprocess"]) >= {"download_s", "warmup_s", "spectrograms_s", "upload_s", "total_s"}
    for side in ("ours_audio", "ours_png"):
        assert set(audio[side]) == {"seconds", "seconds_per_clip", "scored"} and audio[side]["scored"] == 4
    assert audio["speedup"] == original["seconds"] / audio["ours_audio"]["seconds"]
    assert audio["compared_scores"] == 4 and audio["max_abs_diff_audio_png"] <= 1e-6  # the same pixels
    breakdown = audio["breakdown"]
    assert set(breakdown["cpu_seconds_per_clip"]) == {"decode", "spectrogram", "scoring", "png_decode"}
    assert set(breakdown["shares_from_audio"]) == {"decode", "spectrogram", "scoring"} and breakdown["clips"] == 4
    assert "predict: 4 scored (0 from the score cache)" in (out / "service_audio_audio.log").read_text()
    assert "mirror of mp3/: 4 downloaded" in (out / "service_audio_audio.log").read_text()  # from audio, no PNG
    assert "from audio to scores, 4 clips" in completed.stdout and "goal >= 15x" in completed.stdout

    png = out / "results.png"
    assert png.stat().st_size > 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_audio_dataset_is_the_real_clips_under_distinct_names_and_bytes_with_the_same_audio(tmp_path):
    import numpy as np
    from PIL import Image

    from audio.decode import decode
    from audio.spectrogram import pixels_from_file
    from bench.dataset import make_audio_dataset, sample_clips, spectrogram_copies

    data = make_audio_dataset(tmp_path / "audio", clips=5)
    assert [p.name for p in data["clips"][:2]] == ["orcasoundlab_1594154118.mp3", "orcasoundlab_1594154121.mp3"]
    assert data["sources"] == sample_clips() + sample_clips()[:1]  # cycled
    assert len({p.read_bytes() for p in data["clips"]}) == 5  # another ETag each: no cache takes one for another
    first, fifth = decode(data["clips"][0]).samples, decode(data["clips"][4]).samples
    assert np.array_equal(first, fifth) and np.array_equal(first, decode(sample_clips()[0]).samples)
    pngs = spectrogram_copies(data, tmp_path / "png")
    assert [p.name for p in pngs] == [p.stem + ".png" for p in data["clips"]]
    assert len({p.read_bytes() for p in pngs}) == 5
    with Image.open(pngs[4]) as img:  # orca spectrogram's pixels for the clip
        assert np.array_equal(np.asarray(img), pixels_from_file(data["clips"][4]))


def test_dataset_is_real_spectrograms_all_different(tmp_path):
    from PIL import Image

    from bench.dataset import make_dataset

    data = make_dataset(tmp_path, unlabeled=30, labeled=8)
    names = [p.name for p in data["unlabeled"]]
    assert names[0] == "orcasoundlab_1594154118.png" and names[1] == "orcasoundlab_1594154121.png"
    every = data["unlabeled"] + [p for files in data["labeled"].values() for p in files]
    assert len({p.read_bytes() for p in every}) == len(every)
    for path in every[:3] + every[-3:]:
        with Image.open(path) as img:
            assert img.size == (640, 480) and img.mode == "RGBA"
    assert {key: len(v) for key, v in data["labeled"].items()} == {
        ("train", "calls"): 3, ("train", "nocalls"): 3, ("validation", "calls"): 1, ("validation", "nocalls"): 1}


@pytest.mark.slow
def test_bench_without_reference_times_the_service_alone_and_says_so(tmp_path):
    """What a GPU machine without TensorFlow runs (bench/gpu_check.sh): ours only, no speed-up."""
    out = tmp_path / "results"
    completed = run_bench(out, "--no-reference", "--unlabeled", "4", "--labeled", "4", "--rounds", "2",
                          "--cold-pairs", "1", "--audio-clips", "0")
    assert "reference not run (--no-reference)" in completed.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["reference"] is None and results["speedup"] is None and results["parity"] is None
    assert results["reference_skipped"] == "--no-reference"
    assert all(results["ours"]["seconds"][s] > 0 for s in STAGES)
    assert all(set(results["images_per_second"][s]) == {"ours"} for s in STAGES)
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "reference.json").exists()
    first, second = results["rounds"]["ours"]  # the moved clip is trained on and no longer scored
    assert (first["train_images"], first["unlabeled"], first["moved"]) == (2, 4, 1)
    assert (second["train_images"], second["unlabeled"]) == (3, 3)
    assert results["rounds"]["reference"] is None and results["rounds"]["speedup"] is None
    (pair,) = results["cold_pairs"]["pairs"]  # the service's cold /predict alone
    assert pair["reference_s"] is None and pair["speedup"] is None and pair["ours_s"] > 0 and pair["images"] == 2
    assert results["cold_pairs"]["median_speedup"] is None
    assert results["audio"] is None and results["config"]["audio_clips"] == 0  # --audio-clips 0: none
    cache = results["pixel_cache"]  # every clip was decoded once; later rounds and models hit the cache
    assert cache["orca_pixel_decodes_total"] == 8
    assert cache['orca_pixel_cache_lookups_total{result="hit",tier="disk"}'] > 8


def test_decode_threads_reports_every_thread_count_up_to_the_cores(capsys):
    from bench.decode_threads import main, thread_counts

    assert thread_counts(1) == [1] and thread_counts(2) == [1, 2] and thread_counts(16) == [1, 2, 4, 8, 16]
    assert thread_counts(6) == [1, 2, 4, 6]
    assert main(["--images", "6", "--rows", "67", "--cols", "83"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [int(r[0]) for r in rows] == thread_counts(__import__("os").cpu_count() or 1)
    assert all(float(r[1]) > 0 for r in rows)


def test_decode_threads_can_first_set_glibc_as_the_service_does(capsys):
    from bench.decode_threads import main
    from service.allocator import keep_freed_blocks

    assert main(["--images", "4", "--rows", "67", "--cols", "83", "--malloc", "kept"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.endswith("glibc keeping freed blocks, one arena" if keep_freed_blocks() else
                           "glibc's defaults (keep_freed_blocks() is a no-op here)")


def test_pipeline_bench_times_decode_score_and_stream_with_the_services_scorer(capsys):
    from bench.pipeline import main

    assert main(["--images", "8", "--rows", "67", "--cols", "83", "--batch", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out.splitlines()[0]
    rates = [float(line.split()[-2]) for line in out.splitlines()[1:]]
    assert len(rates) == 3 and all(rate > 0 for rate in rates)


def test_gpu_check_runs_only_the_steps_named_in_STEPS_and_refuses_a_machine_without_a_gpu(tmp_path):
    """bench/gpu_check.sh with a stand-in nvidia-smi and `echo` as Python: the commands it would run."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho stand-in GPU\n")
    (fake / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}", "PY": "echo", "STEPS": "tests rounds",
           "ROUND_ARGS": "--unlabeled 20 --labeled 8"}
    run = subprocess.run(["bash", "bench/gpu_check.sh", "--quick"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    commands = [line for line in run.stdout.splitlines() if line.startswith("-m ")]
    assert commands == ["-m pytest -q -m cuda -p no:cacheprovider",
                        "-m bench.run --out bench/results-cuda-rounds --cold-pairs 0 --unlabeled 20 --labeled 8"]
    env.pop("STEPS")
    every = subprocess.run(["bash", "bench/gpu_check.sh", "--quick"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=60)
    ran = [line.split()[1] for line in every.stdout.splitlines() if line.startswith("-m ")]
    assert ran == ["pytest", "bench.audio_gpu", "bench.run", "bench.cuda_parity", "bench.decode_threads",
                   "bench.decode_threads", "bench.pipeline", "bench.pipeline",
                   "bench.run", "bench.run", "bench.precision_check"]
    audio = [line for line in every.stdout.splitlines() if line.startswith("-m bench.run --out bench/results-cuda-audio")]
    assert audio and audio[0].endswith("--audio-clips 4096")
    no_gpu = {**env, "PATH": "/usr/bin:/bin"}
    if shutil.which("nvidia-smi", path=no_gpu["PATH"]) is None:  # a GPU machine has it there
        assert subprocess.run(["bash", "bench/gpu_check.sh"], cwd=ROOT, env=no_gpu, capture_output=True,
                              timeout=60).returncode == 2
