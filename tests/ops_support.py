"""Helpers of the tests/test_ops_*.py files: a tiny local data root, a served app, JSON over HTTP."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import torch  # noqa: F401  (before anything may import TensorFlow)

from werkzeug.serving import make_server

from repo_data import SAMPLE_DIR as SAMPLE, SRKW_COLS as COLS, SRKW_ROWS as ROWS, srkw_h5

TRAIN_KEYS = {"acc", "val_acc", "loss", "val_loss", "cm", "labeled_files", "model_acc", "model_loss", "model_url"}


def make_root(root: Path, per_class: int = 2) -> dict:
    """root/models/srkw_cnn_0.h5 (a copy of the shared 67x83 model: training versions it in place)
    and root/labeled/{train,validation}/{calls,nocalls}/ with a few sample spectrograms; returns the
    /train parameters for them."""
    (root / "models").mkdir(parents=True, exist_ok=True)
    model = root / "models" / "srkw_cnn_0.h5"
    if not model.exists():
        shutil.copyfile(srkw_h5(), model)
    for split in ("train", "validation"):
        for cls in ("calls", "nocalls"):
            folder = root / "labeled" / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for png in sorted((SAMPLE / split / cls).glob("*.png"))[:per_class]:
                shutil.copyfile(png, folder / png.name)
    return {"model_url": str(model), "labeled_url": str(root / "labeled") + "/", "img_width": ROWS,
            "img_height": COLS, "epochs": 1, "seed": 0}


def upload_stack(s3, bucket: str, model_path: str) -> None:
    """The same small dataset in a bucket: models/srkw_cnn_0.h5, labeled/{train,validation}/{calls,
    nocalls}/ (two images each) and unlabeled/spectrograms/ (three clips named orcasoundlab_<ts>)."""
    s3.upload_file(str(model_path), bucket, "models/srkw_cnn_0.h5")
    for split in ("train", "validation"):
        for cls in ("calls", "nocalls"):
            for png in sorted((SAMPLE / split / cls).glob("*.png"))[:2]:
                s3.upload_file(str(png), bucket, f"labeled/{split}/{cls}/{png.name}")
    for i, png in enumerate(sorted(SAMPLE.glob("test/*/*.png"))[:3]):
        s3.upload_file(str(png), bucket, f"unlabeled/spectrograms/orcasoundlab_{1594154118 + 3 * i}.png")


class Served:
    """An app on a werkzeug threaded server on a free port."""

    def __init__(self, app):
        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_port}"

    def close(self):
        self.server.shutdown()
        self.thread.join()

    def request(self, method, path, params=None, body=None, headers=None, timeout=300):
        """One HTTP request; it prefers JSON (`Accept: application/json`, so errors of /train and
        /predict come as `{"error"}`) unless `headers` says otherwise."""
        url = f"{self.base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Accept": "application/json", **dict(headers or {})})
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw, status, kind = response.read(), response.status, response.headers.get_content_type()
                headers = dict(response.headers)
        except urllib.error.HTTPError as error:
            raw, status, kind = error.read(), error.code, error.headers.get_content_type()
            headers = dict(error.headers)
        body = json.loads(raw) if kind == "application/json" else raw.decode()
        return status, body, headers

    def get(self, path, **params):
        status, body, _ = self.request("GET", path, params or None)
        return status, body

    def wait_job(self, job_id, timeout=300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, job = self.get(f"/jobs/{job_id}")
            assert status == 200, job
            if job["status"] in ("succeeded", "failed"):
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not finish in {timeout} s")
