"""Shared fixtures. torch is imported before anything may import TensorFlow (see docs/design.md)."""

import torch  # noqa: F401  (must precede TensorFlow in every test process)
import torch._dynamo  # noqa: F401  (so must the compiler stack torch.optim loads on its first step)
import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

import repo_data

# CI replays the same examples on every run (a red run must mean a change, not a new draw);
# a developer's run explores new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


# ------------------------------------------------------------------------------ data in the repository

@pytest.fixture(scope="session", autouse=True)
def private_state_dir(tmp_path_factory):
    """Apps that are given no STATE_DIR keep their job database in this session's own folder, not in
    the machine-wide default that another test run may be using at the same time."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ORCA_STATE_DIR", str(tmp_path_factory.mktemp("orca-state")))
        yield


@pytest.fixture(scope="session", autouse=True)
def no_torch_preload():
    """The apps and services the tests start do not import torch on a start-up thread (the service's
    default, ORCA_PRELOAD_TORCH=1): this process has torch already, and a service started by a test
    would spend seconds of the two cores importing it. tests/test_preload.py checks the default."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ORCA_PRELOAD_TORCH", "0")
        yield


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """sample_data/orcasound: the real spectrograms, {train,validation,test}/{calls,nocalls}/*.png.
    (Module-level constants take the same path from repo_data.SAMPLE_DIR.)"""
    return repo_data.SAMPLE_DIR


@pytest.fixture(scope="session")
def srkw_h5():
    """Path (str) of one fresh, untrained 67x83 srkw_cnn_0.h5 (seed 0), written once per session.
    Shared: read it, upload it, use it as a template; a test that trains or versions a model beside
    it copies it first (shutil.copyfile). The session fails if a test changed its bytes."""
    yield from _read_only(repo_data.srkw_h5(), "srkw_h5")


@pytest.fixture(scope="session")
def spread_srkw_h5():
    """Path (str) of a 67x83 srkw_cnn_0.h5 whose predictions on the sample clips spread over at least
    repo_data.MIN_SPREAD (0.2), built once per session (repo_data.spread_srkw_h5). Every numeric
    comparison of scores (ONNX vs torch vs tf_keras, bf16 vs fp32, CPU vs CUDA) uses it: on the fresh
    `srkw_h5` every clip scores ≈ 0.5 and a 1e-4 tolerance hides all but gross errors. Shared and
    read only, as srkw_h5."""
    yield from _read_only(repo_data.spread_srkw_h5(), "spread_srkw_h5")


def _read_only(path: str, name: str):
    """Yields `path`; fails the session if a test changed the file's bytes."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    yield path
    if hashlib.sha256(Path(path).read_bytes()).hexdigest() != digest:
        raise AssertionError(f"a test modified the shared {path}: copy the {name} fixture before writing")


# ------------------------------------------------------------------------------------- AWS and S3

AWS_TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _point_boto3_at(mp: pytest.MonkeyPatch, endpoint: str | None) -> None:
    """Dummy credentials and region, no profile; AWS_ENDPOINT_URL = endpoint (unset when None)."""
    for name, value in AWS_TEST_CREDENTIALS.items():
        mp.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        mp.delenv(name, raising=False)
    if endpoint is not None:
        mp.setenv("AWS_ENDPOINT_URL", endpoint)


@pytest.fixture
def aws_env(monkeypatch):
    """Dummy AWS credentials and region, no real endpoint (for moto's in-process mock_aws); tests
    add AWS_ENDPOINT_URL as needed."""
    _point_boto3_at(monkeypatch, None)


@pytest.fixture
def bucket(aws_env):
    """An S3 client (boto3) on moto's in-process mock, with an empty bucket `orca`."""
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="orca")
        yield client


@pytest.fixture(scope="session")
def use_s3_endpoint():
    """A function (monkeypatch, endpoint_url) pointing boto3 at an S3 endpoint with dummy
    credentials, for module-scoped fixtures (pytest.MonkeyPatch.context()) and for a test's own
    server (one it stops and restarts, which the shared `moto_server` must never be)."""
    return _point_boto3_at


@pytest.fixture(scope="session")
def moto_server() -> str:
    """moto's S3 server on a free loopback port, one for the whole session; yields its endpoint URL.
    Tests share it: each works in a bucket of its own (`s3_env`) and never stops it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@dataclass(frozen=True)
class S3Env:
    endpoint: str  # the shared moto server's URL, also in AWS_ENDPOINT_URL
    bucket: str  # created empty for this test alone

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)


@pytest.fixture
def s3_env(moto_server, monkeypatch) -> S3Env:
    """boto3 pointed at the shared moto server (dummy credentials, AWS_ENDPOINT_URL, through
    monkeypatch) and a fresh bucket with a unique name, so tests sharing the server stay independent.
    Yields S3Env(endpoint, bucket) with .client()."""
    _point_boto3_at(monkeypatch, moto_server)
    env = S3Env(moto_server, f"test-{uuid.uuid4().hex[:24]}")
    env.client().create_bucket(Bucket=env.bucket)
    return env
