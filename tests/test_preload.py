"""ORCA_PRELOAD_TORCH: torch is imported on a background thread at start-up (by default; `auto` only
where a GPU driver is), `/ready` says 503 until it has loaded; a bad value stops the service clearly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.preload import PreloadSettingError, should_preload

ROOT = Path(__file__).resolve().parent.parent


def test_preload_setting_values(monkeypatch):
    assert should_preload("1") is True and should_preload("true") is True
    assert should_preload("0") is False and should_preload("off") is False
    monkeypatch.setattr("service.preload.no_nvidia_driver", lambda: True)
    assert should_preload("auto") is False and should_preload(None) is False
    monkeypatch.setattr("service.preload.no_nvidia_driver", lambda: False)
    assert should_preload("auto") is True
    with pytest.raises(PreloadSettingError, match="ORCA_PRELOAD_TORCH"):
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
            "app = create_app()\n"
            "print('torch at start', 'torch' in sys.modules)\n"
            "app.extensions['orca'].preload.join(90)\n"
            "print('loaded', 'torch._dynamo' in sys.modules, 'training.loop' in sys.modules)\n"
            "from audio import _resample_kernels as k\n"
            "print('kernels', k._clips_kernel.cache_info().currsize, len(k.one_clip.signatures),\n"
            "      len(k.tap_weights.signatures))\n")
    asked = run_python(code, ORCA_PRELOAD_TORCH="1")
    assert asked.returncode == 0, asked.stderr[-2000:]
    assert "loaded True True" in asked.stdout
    from scoring.device import no_nvidia_driver

    # where the CPU draws, the audio path's numba kernels are loaded ahead (warm_up); on CUDA they are not
    assert ("kernels 1 1 1" if no_nvidia_driver() else "kernels 0 0 0") in asked.stdout


def test_default_imports_torch_at_start_up_and_auto_does_not_on_a_cpu_and_a_bad_setting_stops_it():
    code = ("import sys, time\n"
            "from service.app import create_app\n"
            "create_app()\n"
            "time.sleep(1)\n"
            "print('torch', 'torch' in sys.modules)\n")
    default = run_python(code, CUDA_VISIBLE_DEVICES="")
    assert default.returncode == 0, default.stderr[-2000:]
    assert "torch True" in default.stdout
    auto = run_python(code, CUDA_VISIBLE_DEVICES="", ORCA_PRELOAD_TORCH="auto")
    assert auto.returncode == 0, auto.stderr[-2000:]
    if not Path("/dev/nvidiactl").exists() and not Path("/proc/driver/nvidia").exists():
        assert "torch False" in auto.stdout  # no NVIDIA driver: auto means no preload
    bad = run_python(code, ORCA_PRELOAD_TORCH="sometimes")
    assert bad.returncode != 0 and "ORCA_PRELOAD_TORCH must be auto, 1 or 0" in bad.stderr


def test_ready_answers_503_naming_torch_while_it_loads_and_200_once_loaded(monkeypatch, tmp_path):
    import threading

    from service.app import create_app

    release = threading.Event()
    monkeypatch.setattr("service.preload._preload", lambda: release.wait(30))
    client = create_app({"LOCAL_ROOT": str(tmp_path), "PRELOAD_TORCH": "1"}).test_client()
    loading = client.get("/ready")
    assert loading.status_code == 503
    assert loading.get_json()["checks"] == {"local_root": "ok", "state_dir": "ok", "torch": "loading"}
    assert "torch is still loading" in loading.get_json()["error"]
    assert client.get("/health").status_code == 200  # served meanwhile
    release.set()
    client.application.extensions["orca"].preload.join(30)
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.get_json()["checks"] == {"local_root": "ok", "state_dir": "ok", "torch": "ok"}
    without = create_app({"LOCAL_ROOT": str(tmp_path), "PRELOAD_TORCH": "0"}).test_client().get("/ready")
    assert without.status_code == 200 and "torch" not in without.get_json()["checks"]


def test_ready_answers_503_naming_the_import_error_when_torch_cannot_be_imported(monkeypatch, tmp_path):
    import builtins

    from service.app import create_app

    real_import = builtins.__import__

    def broken_import(name, *args, **kwargs):
        if name == "torch._dynamo":
            raise ImportError("libcudart.so.13: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken_import)
    app = create_app({"LOCAL_ROOT": str(tmp_path), "PRELOAD_TORCH": "1"})
    app.extensions["orca"].preload.join(60)
    monkeypatch.setattr(builtins, "__import__", real_import)
    answer = app.test_client().get("/ready")
    assert answer.status_code == 503
    assert answer.get_json()["checks"]["torch"] == "failed: ImportError: libcudart.so.13: cannot open shared object file"
    assert "/train cannot run" in answer.get_json()["error"]
