"""`orca score` (batch_scoring) on a local Ray with two CPUs over moto S3: the values, order and clip
fields of /predict on the same files, a corrupt clip recorded instead of failing the run, and a run
killed with SIGKILL completed by a re-run that writes each clip exactly once.

One Ray instance serves the whole module (start-up takes seconds); the killed run is a real `orca
score` process that joins it through RAY_ADDRESS, so killing it leaves no Ray process behind."""

from __future__ import annotations

import hashlib
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ops_support import COLS, ROWS, upload_stack
from repo_data import AUDIO_DIR, SAMPLE_DIR, json_client

import pyarrow.parquet  # noqa: E402,F401  (ray and pyarrow are pinned in requirements.txt: missing, the run fails)
import ray  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # Ray's start-up (~5 s) and its actors' (~2 s each) on 2 cores


@pytest.fixture(scope="module")
def ray_address(moto_server, use_s3_endpoint):
    """A local Ray with 2 CPUs for this module. Its workers inherit the environment of this moment,
    so boto3 is pointed at the shared moto server first (the actors read the clips from there)."""
    with pytest.MonkeyPatch.context() as mp:
        use_s3_endpoint(mp, moto_server)
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        context = ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
        try:
            yield context.address_info["gcs_address"]
        finally:
            ray.shutdown()


def _score(bucket: str, out: str, **options):
    from batch_scoring.run import score_archive

    return score_archive(f"s3://{bucket}/models/srkw_cnn_0.h5", f"s3://{bucket}/unlabeled/", out, rows=ROWS,
                         cols=COLS, progress=False, **options)


def _scores(url: str):
    from batch_scoring.parts import read_scores
    from service.storage import locate

    return read_scores(locate(url, "out", local_root=None)).to_pylist()


def _predict(bucket: str, tmp_path) -> dict:
    """/predict's answer through the real app (ONNX Runtime on the CPU, like the actors here)."""
    from service.app import create_app

    app = create_app({"LOCAL_ROOT": "", "DEVICE": "cpu", "STATE_DIR": str(tmp_path / "state"),
                      "CACHE_DIR": str(tmp_path / "cache")})
    answer = json_client(app).get("/predict", query_string={
        "model_url": f"s3://{bucket}/models/srkw_cnn_0.h5", "unlabeled_url": f"s3://{bucket}/unlabeled/",
        "img_width": ROWS, "img_height": COLS})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return answer.get_json()


def test_scores_equal_predict_in_order_and_a_corrupt_clip_is_recorded(ray_address, s3_env, srkw_h5, tmp_path):
    s3, bucket = s3_env.client(), s3_env.bucket
    upload_stack(s3, bucket, srkw_h5)  # three clips orcasoundlab_<ts>.png
    more = sorted(SAMPLE_DIR.glob("train/*/*.png"))[:2]
    s3.upload_file(str(more[0]), bucket, "unlabeled/spectrograms/bush_point_1600000000.png")
    s3.upload_file(str(more[1]), bucket, "unlabeled/spectrograms/clip-without-time.png")  # null location/time
    s3.put_object(Bucket=bucket, Key="unlabeled/spectrograms/orcasoundlab_1594154200.png", Body=b"\x89PNG not one")
    out = f"s3://{bucket}/scores/"

    summary = _score(bucket, out, part_size=2, workers=1)
    rows = _scores(out)
    predicted = _predict(bucket, tmp_path)

    assert (summary.clips, summary.parts, summary.parts_written, summary.scored, summary.failed) == (6, 3, 3, 5, 1)
    assert summary.engine == "onnxruntime"  # no GPU in this Ray
    corrupt = f"s3://{bucket}/unlabeled/spectrograms/orcasoundlab_1594154200.png"
    good = [row for row in rows if row["error"] is None]
    bad = [row for row in rows if row["error"] is not None]
    # the same clips in the same order (/predict leaves the corrupt one out of its answer)
    assert [row["audio_url"] for row in good] == [item["audio_url"] for item in predicted]
    for row, item in zip(good, predicted):
        assert (row["timestamp"], row["location"], row["duration"]) == (item["timestamp"], item["location"],
                                                                       item["duration"])
        assert abs(row["predicted_value"] - item["predicted_value"]) <= 1e-6, (row, item)
    assert any(row["location"] is None and row["timestamp"] is None for row in good)
    assert {row["location"] for row in good} >= {"Haro Strait", "Bush Point"}
    assert len(bad) == 1 and bad[0]["spectrogram_url"] == corrupt and bad[0]["predicted_value"] is None
    assert corrupt in bad[0]["error"] and "not a readable image" in bad[0]["error"]
    assert bad[0]["audio_url"] == f"https://{bucket}.s3.amazonaws.com/unlabeled/mp3/orcasoundlab_1594154200.mp3"
    digest = hashlib.sha256(Path(srkw_h5).read_bytes()).hexdigest()
    assert {(row["model_url"], row["model_sha256"]) for row in rows} == {(f"s3://{bucket}/models/srkw_cnn_0.h5",
                                                                          digest)}
    assert all(math.isfinite(row["predicted_value"]) and 0 <= row["predicted_value"] <= 1 for row in good)

    again = _score(bucket, out, part_size=2, workers=1)  # everything written: nothing to do, Ray not used
    assert (again.parts_skipped, again.parts_written, again.scored) == (3, 0, 0)
    assert _scores(out) == rows


def test_an_audio_only_source_scores_like_its_pngs_and_records_bad_audio(ray_address, s3_env, srkw_h5, tmp_path):
    """unlabeled/mp3/<stem>.mp3 without spectrograms/: each clip's score equals /predict's on the PNG that
    `orca spectrogram` writes for it (≤ 1e-6); a file that is not audio is a row with its reason."""
    from audio.spectrogram import spectrogram_png

    s3, bucket = s3_env.client(), s3_env.bucket
    s3.upload_file(str(srkw_h5), bucket, "models/srkw_cnn_0.h5")
    for clip in sorted(AUDIO_DIR.glob("mp3/*/*.mp3"))[:3]:
        s3.upload_file(str(clip), bucket, f"unlabeled/mp3/{clip.name}")
        png = spectrogram_png(clip, tmp_path / "png" / f"{clip.stem}.png")
        s3.upload_file(str(png), bucket, f"pngs/spectrograms/{png.name}")
    s3.put_object(Bucket=bucket, Key="unlabeled/mp3/orcasoundlab_1594154400.mp3", Body=b"not audio" * 50)
    out = f"s3://{bucket}/scores/"

    summary = _score(bucket, out, part_size=2, workers=1)
    rows = _scores(out)
    from service.app import create_app

    app = create_app({"LOCAL_ROOT": "", "DEVICE": "cpu", "STATE_DIR": str(tmp_path / "state"),
                      "CACHE_DIR": str(tmp_path / "cache")})
    predicted = json_client(app).get("/predict", query_string={
        "model_url": f"s3://{bucket}/models/srkw_cnn_0.h5", "unlabeled_url": f"s3://{bucket}/pngs/",
        "img_width": ROWS, "img_height": COLS}).get_json()

    assert (summary.clips, summary.scored, summary.failed) == (4, 3, 1)
    good = [row for row in rows if row["error"] is None]
    assert [row["audio_url"].rsplit("/", 1)[1] for row in good] == [i["audio_url"].rsplit("/", 1)[1] for i in predicted]
    assert good[0]["audio_url"].startswith(f"https://{bucket}.s3.amazonaws.com/unlabeled/mp3/")
    for row, item in zip(good, predicted):
        assert abs(row["predicted_value"] - item["predicted_value"]) <= 1e-6, (row, item)
    bad = [row for row in rows if row["error"] is not None]
    assert bad[0]["spectrogram_url"] == f"s3://{bucket}/unlabeled/mp3/orcasoundlab_1594154400.mp3"
    assert "not an audio file" in bad[0]["error"] and bad[0]["spectrogram_url"] in bad[0]["error"]


def test_a_killed_run_resumes_and_writes_each_clip_once(ray_address, s3_env, srkw_h5):
    s3, bucket = s3_env.client(), s3_env.bucket
    s3.upload_file(srkw_h5, bucket, "models/srkw_cnn_0.h5")
    pngs = sorted(SAMPLE_DIR.glob("*/*/*.png"))
    clips = 40
    for i in range(clips):
        key = f"unlabeled/spectrograms/orcasoundlab_{1594154118 + 3 * i}.png"
        s3.upload_file(str(pngs[i % len(pngs)]), bucket, key)
    out = f"s3://{bucket}/scores/"
    command = [sys.executable, "-m", "orca", "score", f"s3://{bucket}/models/srkw_cnn_0.h5",
               f"s3://{bucket}/unlabeled/", "--out", out, "--img_width", str(ROWS), "--img_height", str(COLS),
               "--part-size", "1", "--batch-size", "1", "--workers", "1"]
    env = {**os.environ, "RAY_ADDRESS": ray_address, "PYTHONPATH": str(ROOT)}
    run = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def parts():
        listing = s3.list_objects_v2(Bucket=bucket, Prefix="scores/part-").get("Contents", [])
        return {o["Key"]: (o["ETag"], o["LastModified"]) for o in listing}

    deadline = time.monotonic() + 120
    try:
        while not parts() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        run.send_signal(signal.SIGKILL)  # mid-run: its first part is written, not all of them
    finally:
        run.kill()
        stderr = run.communicate()[1].decode(errors="replace")
    before = parts()
    assert run.returncode == -signal.SIGKILL, stderr[-3000:]
    assert 0 < len(before) < clips, f"the kill did not land mid-run ({len(before)} parts)\n{stderr[-3000:]}"

    summary = _score(bucket, out, part_size=1, workers=1)

    assert (summary.parts_skipped, summary.parts_written) == (len(before), clips - len(before))
    after = parts()
    assert {key: after[key] for key in before} == before  # the parts written before the kill are untouched
    rows = _scores(out)
    assert [row["spectrogram_url"] for row in rows] == [
        f"s3://{bucket}/unlabeled/spectrograms/orcasoundlab_{1594154118 + 3 * i}.png" for i in range(clips)]
    assert all(row["error"] is None and 0 <= row["predicted_value"] <= 1 for row in rows)


def test_an_out_planned_for_another_model_is_refused(s3_env, srkw_h5, tmp_path):
    """The plan under --out names its model: resuming with another one would mix two models' scores.
    (`prepare` is all of a run before Ray: model check, then plan.)"""
    from batch_scoring.run import prepare
    from models.srkw_cnn import write_fresh_h5
    from service.errors import BadRequest

    s3, bucket = s3_env.client(), s3_env.bucket
    upload_stack(s3, bucket, srkw_h5)
    out = str(tmp_path / "scores")
    args = (f"s3://{bucket}/models/srkw_cnn_0.h5", f"s3://{bucket}/unlabeled/", out)
    first = prepare(*args, part_size=2)
    assert (first.plan.rows, first.plan.cols) == (ROWS, COLS)  # taken from the model's input
    assert prepare(*args, part_size=5).plan.part_size == 2  # a re-run follows the plan written first
    other = write_fresh_h5(tmp_path / "srkw_cnn_1.h5", ROWS, COLS, seed=1)
    s3.upload_file(str(other), bucket, "models/srkw_cnn_0.h5")  # the same URL, other bytes
    with pytest.raises(BadRequest, match=r"--out .* another model"):
        prepare(*args)
