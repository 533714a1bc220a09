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
