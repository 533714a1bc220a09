"""The shared fixtures of conftest.py: the repository's own sample data (never ../shared), one
fresh srkw model for the session, one moto S3 server with a bucket of its own for each test."""

from __future__ import annotations

import json
import os

import boto3
import h5py
import pytest

import repo_data

BUCKETS_SEEN: list[str] = []


def test_sample_dir_is_the_repositorys_copy_with_every_split_and_class(sample_dir):
    assert sample_dir == repo_data.SAMPLE_DIR and sample_dir.parent.parent == repo_data.REPO
    counts = {(split, cls): len(list((sample_dir / split / cls).glob("*.png")))
              for split in ("train", "validation", "test") for cls in ("calls", "nocalls")}
    assert all(counts.values()), counts
    assert sum(counts.values()) == 23
    assert (sample_dir / "LICENSE").is_file()  # the images ship with their licence


def test_srkw_h5_is_one_fresh_67x83_srkw_cnn(srkw_h5):
    assert srkw_h5 == repo_data.srkw_h5()  # the same file for the fixture and the helper modules
    assert os.path.basename(srkw_h5) == "srkw_cnn_0.h5"
    with h5py.File(srkw_h5, "r") as f:
        config = json.loads(f.attrs["model_config"])
    assert config["config"]["layers"][0]["config"]["batch_input_shape"] == [
        None, repo_data.SRKW_ROWS, repo_data.SRKW_COLS, 3]


@pytest.mark.parametrize("turn", [1, 2])
def test_s3_env_gives_each_test_an_empty_bucket_on_the_shared_server(s3_env, moto_server, turn):
    assert s3_env.endpoint == moto_server == os.environ["AWS_ENDPOINT_URL"]
    assert s3_env.bucket not in BUCKETS_SEEN
    BUCKETS_SEEN.append(s3_env.bucket)
    s3 = boto3.client("s3")  # the environment alone points it at the server
    assert s3.list_objects_v2(Bucket=s3_env.bucket)["KeyCount"] == 0
    s3.put_object(Bucket=s3_env.bucket, Key=f"turn_{turn}", Body=b"x")
    assert [o["Key"] for o in s3_env.client().list_objects_v2(Bucket=s3_env.bucket)["Contents"]] == [f"turn_{turn}"]


def test_spread_srkw_h5_scores_the_sample_clips_over_a_spread_of_at_least_0_2(spread_srkw_h5, srkw_h5, tmp_path):
    """The model the score comparisons use: its predictions cover ≥ 0.2 in both engines, the calls
    below the nocalls on average (it was fitted to their labels), where the fresh model's sit at 0.5."""
    import numpy as np

    from scoring.onnx_scoring import OnnxScorer
    from scoring.torch_scoring import predict

    clips = repo_data.sample_clips()
    assert len(clips) == 23 and spread_srkw_h5 == repo_data.spread_srkw_h5()
    assert os.path.basename(spread_srkw_h5) == "srkw_cnn_0.h5"  # a name the service accepts as a version
    rows, cols = repo_data.SRKW_ROWS, repo_data.SRKW_COLS
    torch_scores = np.array(predict(spread_srkw_h5, clips, rows, cols, device="cpu"))
    onnx_scores = np.array(OnnxScorer(spread_srkw_h5, cache_dir=tmp_path).score(clips, rows, cols))
    for scores in (torch_scores, onnx_scores):
        assert np.ptp(scores) >= repo_data.MIN_SPREAD >= 0.2, scores
        assert 0.05 < scores.min() and scores.max() < 0.95  # not saturated: a small error still moves a score
    nocalls = np.array([p.parent.name == "nocalls" for p in clips])
    assert torch_scores[nocalls].mean() > torch_scores[~nocalls].mean() + 0.1
    fresh = np.array(predict(srkw_h5, clips, rows, cols, device="cpu"))
    assert np.ptp(fresh) < 0.01  # why the comparisons do not use the fresh model
