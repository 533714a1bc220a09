"""Importing torch at start-up, on a thread (ORCA_PRELOAD_TORCH), so a request does not wait for
it: torch, and torch._dynamo, which torch.optim loads when an optimizer is built, and where no NVIDIA
driver is (the CPU scores and draws) the audio path's first-use costs (`audio.spectrogram.warm_up`:
numba's kernels, the colour table, the resampling weights of 48 kHz clips; ≈ 1 s on 2 cores; the loop
that cuts the model input from a picture, `scoring.clips.input_pixels`) and ONNX
(0.7 s to import);
`/ready` answers 503 until it has finished."""

from __future__ import annotations

import logging
import threading
import time

from scoring.device import no_nvidia_driver

LOG = logging.getLogger("service")


class PreloadSettingError(ValueError):
    """ORCA_PRELOAD_TORCH has a value other than auto, 1 or 0."""


def should_preload(setting: str | None) -> bool:
    """ORCA_PRELOAD_TORCH: "1"/"true" (the service's default) always, "0"/"false" never, "auto" where
    an NVIDIA driver is present. Preloading keeps the import (5–9 s on 2 cores) out of the first
    /train; "auto" and "0" let a CPU service that only scores (ONNX Runtime) keep torch's ≈ 650 MiB
    out until a /train needs it."""
    value = (setting or "auto").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    if value != "auto":
        raise PreloadSettingError(f"ORCA_PRELOAD_TORCH must be auto, 1 or 0, got {setting!r}")
    return not no_nvidia_driver()


def _preload() -> None:
    started = time.perf_counter()
    try:
        import torch
        import torch._dynamo  # noqa: F401  (torch.optim imports it when the first optimizer is built)

        import training.loop  # noqa: F401  (and with it conversion's bridge)

        if not no_nvidia_driver():
            import scoring.torch_decode  # noqa: F401  (torchvision: how the CUDA path decodes PNGs)
        import matplotlib.backends.backend_agg  # noqa: F401  (the learning curves drawn after a training)
        import av  # noqa: F401  (PyAV: how audio clips are decoded)
        if no_nvidia_driver():  # the CPU scores (ONNX Runtime) and draws the spectrograms (numba, torch)
            import onnx  # noqa: F401  (0.7 s: the CPU scorer's export and input edit, in the first /predict)
            import onnxruntime  # noqa: F401
            from audio.spectrogram import warm_up

            warm_up()  # numba's kernels, the colour table, the weights of 48 kHz clips: ahead of the first clip
            import numpy as np

            from audio.spectrogram import HEIGHT, WIDTH
            from scoring.clips import input_pixels

            input_pixels(np.zeros((HEIGHT, WIDTH, 4), np.uint8), HEIGHT, WIDTH)  # its numba loop, loaded
    except Exception as error:  # noqa: BLE001 - the request that needs torch reports it properly
        LOG.warning("preloading torch failed: %s", error)
        threading.current_thread().error = f"{type(error).__name__}: {error}"  # for /ready
        return
    LOG.info("torch %s loaded in the background in %.1f s", torch.__version__, time.perf_counter() - started)


def preload_torch_in_background() -> threading.Thread:
    """Start importing torch and the training modules on a daemon thread; `join()` it to wait. Its
    `error` is None, or what the import raised. Imports are safe across threads (a module imported
    twice at once waits for the first)."""
    thread = threading.Thread(target=_preload, name="orca-preload-torch", daemon=True)
    thread.error = None
    thread.start()
    return thread
