"""The torch scoring path used on CUDA: bf16 autocast (ORCA_PREDICT_PRECISION) and the device choice, tested
on the CPU with the same function; the CUDA-only checks are marked `cuda` and skipped without one."""

from __future__ import annotations

import torch
import numpy as np
import pytest

from repo_data import SAMPLE_DIR as SAMPLE, SRKW_COLS as COLS, SRKW_ROWS as ROWS
from scoring.device import device_label, resolve_precision, scoring_backend
from scoring.errors import ScoringError
from scoring.torch_scoring import predict

PATHS = sorted(SAMPLE.glob("*/*/*.png"))
BF16_TOLERANCE = 2e-2  # |bf16 − fp32| of predicted values; fp32 is held to 1e-4 against Keras


@pytest.fixture(scope="module")
def model_h5(spread_srkw_h5):
    """The session's srkw_cnn whose scores spread over ≥ 0.2 (conftest.spread_srkw_h5), read only: on a
    fresh model every clip scores ≈ 0.5, within 2e-2 of fp32 whatever bf16 did."""
    return spread_srkw_h5


def test_bf16_autocast_on_cpu_stays_within_tolerance(model_h5):
    fp32 = predict(model_h5, PATHS, ROWS, COLS, device="cpu", precision="fp32")
    bf16 = predict(model_h5, PATHS, ROWS, COLS, device="cpu", precision="bf16")
    assert len(fp32) == len(bf16) == len(PATHS) == 23 and max(fp32) - min(fp32) >= 0.2
    diff = np.abs(np.array(bf16) - np.array(fp32)).max()
    print("bf16 vs fp32 max |diff|", diff)
    assert 0 < diff <= BF16_TOLERANCE  # > 0: autocast did run in bf16


def test_precision_and_backend_choice():
    assert resolve_precision() == "fp32" and resolve_precision("BF16") == "bf16"
    with pytest.raises(ScoringError, match="ORCA_PREDICT_PRECISION"):
        resolve_precision("fp8")
    assert scoring_backend("cpu") == "onnxruntime" and scoring_backend("cuda:0") == "torch"
    assert scoring_backend(None) == ("torch" if torch.cuda.is_available() else "onnxruntime")
    assert device_label("cpu") == "cpu"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-4), ("bf16", BF16_TOLERANCE)])
def test_cuda_predict_matches_cpu(model_h5, precision, tolerance):
    cpu = predict(model_h5, PATHS, ROWS, COLS, device="cpu")
    cuda = predict(model_h5, PATHS, ROWS, COLS, device="cuda", precision=precision)
    assert len(cpu) == len(cuda) == 23 and max(cpu) - min(cpu) >= 0.2
    assert np.abs(np.array(cuda) - np.array(cpu)).max() <= tolerance
