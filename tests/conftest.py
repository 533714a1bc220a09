"""Shared fixtures. torch is imported before anything may import TensorFlow (see DESIGN.md)."""

import torch  # noqa: F401  (must precede TensorFlow in every test process)
import torch._dynamo  # noqa: F401  (so must the compiler stack torch.optim loads on its first step)
import pytest


@pytest.fixture
def aws_env(monkeypatch):
    """Dummy AWS credentials and region, no real endpoint; tests add AWS_ENDPOINT_URL as needed."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
