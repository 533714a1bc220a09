"""A real Label Studio server for the end-to-end tests (tests/test_labelstudio_e2e.py).

Label Studio's pins conflict with ours (numpy, pyarrow, boto3), so it lives in a virtual environment of
its own, `.venv-labelstudio`, installed from `tests/labelstudio-requirements.txt` by `make labelstudio`
(which `make test` runs first); a test run without it creates it the same way. Each server runs on
SQLite in a folder of its own, with one local user and a legacy API token, on a free port of 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv-labelstudio"
START_TIMEOUT = 240  # seconds; it starts in ≈ 25-30 s on 2 cores (migrations on a new SQLite file included)


def ensure_venv() -> Path:
    """The `label-studio` program of `.venv-labelstudio`, made by `make labelstudio` if missing."""
    if not (VENV / ".installed").exists():
        subprocess.run(["make", "-C", str(REPO), "labelstudio"], check=True)
    return VENV / "bin" / "label-studio"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabelStudio:
    """`label-studio start` in a child process (own process group), and its REST API with the token."""

    def __init__(self, folder: Path, username: str = "orca@example.org"):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = uuid.uuid4().hex  # the user's legacy API token (`Authorization: Token …`)
        self.username, self.password = username, uuid.uuid4().hex
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env.update({
            "PATH": f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}",
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.folder / "data"),  # nothing under ~/.local/share
            "LABEL_STUDIO_HOST": self.url,
            # This backend runs on 127.0.0.1: Label Studio refuses private addresses by default.
            "ML_BLOCK_LOCAL_IP": "false", "SSRF_PROTECTION_ENABLED": "false",
            # The Data Manager's "Prediction score" of the connected backend's own model version (without it,
            # only of the project's model version, which Label Studio sets to the backend's title: empty)
            "ff_front_dev_1682_model_version_dropdown_070622_short": "true",
            "COLLECT_ANALYTICS": "false", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
        })
        self.log_path = self.folder / "label-studio.log"
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [str(ensure_venv()), "start", "--no-browser", "--port", str(self.port), "--internal-host", "127.0.0.1",
             "--data-dir", str(self.folder / "data"), "--username", self.username, "--password", self.password,
             "--user-token", self.token, "--enable-legacy-api-token", "--log-level", "WARNING"],
            cwd=self.folder, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {self.token}"
        self._wait_up()

    def _wait_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Label Studio exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200 and \
                        self.session.get(f"{self.url}/api/projects/", timeout=10).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.close()
        raise RuntimeError(f"Label Studio did not answer in {START_TIMEOUT} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def api(self, method: str, path: str, expect: int | tuple[int, ...] | None = None, **kwargs):
        """One call of Label Studio's API; the JSON answer (or the text). `expect`: the status it must have."""
        response = self.session.request(method, f"{self.url}{path}", timeout=300, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if expect is not None and response.status_code not in ((expect,) if isinstance(expect, int) else expect):
            raise AssertionError(f"{method} {path}: {response.status_code} {json.dumps(body)[:2000]}\n"
                                 f"Label Studio's log:\n{self.log_tail()}")
        return response.status_code, body

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.session.close()
        self.log.close()
