"""ORCA_PRELOAD_TORCH: torch is imported on a background thread at start-up where a GPU driver is
(or when asked), never on a CPU-only machine by default; a bad value stops the service clearly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from training.device import should_preload
from training.errors import TrainingError

ROOT = Path(__file__).resolve().parent.parent


def test_preload_setting_values(monkeypatch):
    assert should_preload("1") is True and should_preload("true") is True
    assert should_preload("0") is False and should_preload("off") is False
    monkeypatch.setattr("training.device._no_nvidia_driver", lambda: True)
    assert should_preload("auto") is False and should_preload(None) is False
    monkeypatch.setattr("training.device._no_nvidia_driver", lambda: False)
    assert should_preload("auto") is True
    with pytest.raises(TrainingError, match="ORCA_PRELOAD_TORCH"):
        should_preload("sometimes")


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    import os

    environ = {k: v for k, v in os.environ.items() if not k.startswith("ORCA_")}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow  # ~9 s
def test_service_preloads_torch_in_the_background_when_asked():
    code = ("import sys, time\n"
            "from service.app import create_app\n"
            "create_app()\n"
            "print('torch at start', 'torch' in sys.modules)\n"
            "deadline = time.time() + 90\n"
            "while 'training.loop' not in sys.modules and time.time() < deadline: time.sleep(0.05)\n"
            "time.sleep(0.5)\n"
            "print('loaded', 'torch._dynamo' in sys.modules, 'training.loop' in sys.modules)\n")
    asked = run_python(code, ORCA_PRELOAD_TORCH="1")
    assert asked.returncode == 0, asked.stderr[-2000:]
    assert "loaded True True" in asked.stdout


def test_cpu_service_does_not_import_torch_by_default_and_rejects_a_bad_setting():
    code = ("import sys, time\n"
            "from service.app import create_app\n"
            "create_app()\n"
            "time.sleep(1)\n"
            "print('torch', 'torch' in sys.modules)\n")
    default = run_python(code, CUDA_VISIBLE_DEVICES="")  # no GPU visible: auto means no preload
    assert default.returncode == 0, default.stderr[-2000:]
    assert "torch False" in default.stdout
    bad = run_python(code, ORCA_PRELOAD_TORCH="sometimes")
    assert bad.returncode != 0 and "ORCA_PRELOAD_TORCH must be auto, 1 or 0" in bad.stderr
