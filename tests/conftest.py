"""Shared fixtures. torch is imported before anything may import TensorFlow (see DESIGN.md)."""

import torch  # noqa: F401  (must precede TensorFlow in every test process)
import torch._dynamo  # noqa: F401  (so must the compiler stack torch.optim loads on its first step)
import os

import pytest
from hypothesis import settings

# CI replays the same examples on every run (a red run must mean a change, not a new draw);
# a developer's run explores new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def aws_env(monkeypatch):
    """Dummy AWS credentials and region, no real endpoint; tests add AWS_ENDPOINT_URL as needed."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


AWS_TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def start_moto_s3(mp: pytest.MonkeyPatch):
    """Start moto's S3 server on a free loopback port and point boto3 at it (dummy credentials);
    returns the server (call .stop() when done)."""
    from moto.server import ThreadedMotoServer

    for name, value in AWS_TEST_CREDENTIALS.items():
        mp.setenv(name, value)
    mp.delenv("AWS_PROFILE", raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    mp.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    return server
