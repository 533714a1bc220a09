"""Dockerfile.gpu runs something that exists, and the README's docker lines match it."""

import importlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile.gpu"
IMAGE = "orca-ml-endpoint:gpu"


def instructions():
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                           if not line.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def command():
    cmd = [rest for word, rest in instructions() if word == "CMD"]
    assert len(cmd) == 1
    return json.loads(cmd[0])  # exec form: no shell in between


def test_dockerfile_serves_the_wsgi_app_on_port_5001_with_gunicorn():
    cmd = command()
    assert cmd[0] == "gunicorn"
    assert cmd[cmd.index("--bind") + 1] == "0.0.0.0:5001"
    assert cmd[cmd.index("--workers") + 1] == "1"
    module, _, attribute = cmd[-1].partition(":")
    assert hasattr(importlib.import_module(module), attribute)
    assert ("EXPOSE", "5001") in instructions()


def test_dockerfile_copies_what_exists_and_installs_the_pinned_requirements():
    for word, rest in instructions():
        if word == "COPY":
            *sources, _ = shlex.split(rest)
            for source in sources:
                assert (ROOT / source).exists(), source
    requirements = (ROOT / "requirements.txt").read_text()
    for package in ("torch", "flask", "gunicorn", "boto3", "h5py", "pillow"):
        assert re.search(rf"^{package}==", requirements, re.M | re.I), package
    assert any(word == "RUN" and "requirements.txt" in rest for word, rest in instructions())


def test_the_dockerfiles_gunicorn_command_answers_http():
    cmd = command()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd[cmd.index("--bind") + 1] = f"127.0.0.1:{port}"
    gunicorn = Path(sys.executable).with_name("gunicorn")
    process = subprocess.Popen([str(gunicorn)] + cmd[1:], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env={**os.environ, "ORCA_LOCAL_ROOT": ""})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    body = json.loads(response.read())
                break
            except OSError:
                assert process.poll() is None, process.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "gunicorn did not answer within 60 s"
                time.sleep(0.3)
        assert body["name"] == "orca-ml-endpoint" and "/train" in body["endpoints"]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_readme_docker_lines_match_the_dockerfile():
    readme = ROOT / "README.md"
    text = readme.read_text() if readme.exists() else ""
    runs = [line for line in text.splitlines() if "docker run" in line and IMAGE in line]
    if not runs:
        pytest.skip("README.md has no `docker run ... orca-ml-endpoint:gpu` line yet")
    for line in runs:
        assert "-p 5001:5001" in line and "--gpus all" in line
    builds = [line for line in text.splitlines() if "docker build" in line and IMAGE in line]
    for line in builds:
        assert "-f Dockerfile.gpu" in line
