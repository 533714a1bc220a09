"""`python -m service.demo` (what `orca demo`, and so `make demo`, runs): lays out the sample data, serves, and the
curl lines it prints work as printed."""

import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_serves_the_sample_data_and_its_curl_lines_work(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ORCA_DEVICE": "cpu"}
    process = subprocess.Popen([sys.executable, "-m", "service.demo", "--port", "0"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, curls = [], []
    timer = threading.Timer(120, process.kill)  # never hang the suite
    timer.start()
    try:
        for line in process.stdout:
            lines.append(line)
            if line.strip().startswith("curl "):
                curls.append(re.search(r"'([^']+)'", line)[1])
            if len(curls) == 2:
                break
        assert len(curls) == 2, "".join(lines)
        threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()  # keep the pipe drained
        train_url, predict_url = curls
        assert "/train?" in train_url and "/predict?" in predict_url
        with urllib.request.urlopen(predict_url, timeout=300) as response:
            items = json.loads(response.read())
        assert len(items) == 9
        assert items[0]["location"] == "Haro Strait"
        base = predict_url.split("/predict?", 1)[0]  # the demo serves local/: its clips under /clips/
        assert items[0]["audio_url"] == f"{base}/clips/unlabeled/mp3/orcasoundlab_1594154118.mp3"
        with urllib.request.urlopen(train_url, timeout=300) as response:
            result = json.loads(response.read())
        assert result["model_url"] == "local/models/srkw_cnn_1.h5"
        assert result["labeled_files"] == 10 and sum(result["cm"]) == 4
        assert sorted(os.listdir(tmp_path / "local/models")) == ["srkw_cnn_0.h5", "srkw_cnn_1.h5", "srkw_cnn_1.json",
                                                                     "srkw_cnn_1.png", "srkw_cnn_1.tensorboard"]
    finally:
        timer.cancel()
        process.terminate()
        process.wait(timeout=30)
    # the licence notice travels with the sample spectrograms
    assert "MIT License" in (ROOT / "sample_data/orcasound/LICENSE").read_text()
