"""The training precision policy (ORCA_PRECISION=auto|fp32|bf16) and the scoring opt-in
(ORCA_PREDICT_PRECISION): auto picks bf16 only where the hardware computes it natively, a bf16
training really runs its forward in bf16 while the written model stays float32, and the precision
used is recorded in the provenance sidecar."""

from __future__ import annotations

import json
import shutil

import torch
import h5py
import numpy as np
import pytest

from models.srkw_cnn import write_fresh_h5
from repo_data import SAMPLE_DIR, SRKW_COLS, SRKW_ROWS
from service.params import TrainParams
from service.runtime import Runtime
from training.data import decode_split, load_labeled
from training.precision import check_training_precision, cpu_flags, native_bf16, training_precision
from training.errors import TrainingError
from training.loop import evaluate, load_model
from training.optim import make_loss

ROWS, COLS = 67, 83


@pytest.mark.parametrize("flags, expected", [({"fpu", "avx2", "avx512f"}, "fp32"),
                                             ({"avx512f", "avx512_bf16"}, "bf16"),
                                             ({"amx_tile", "amx_bf16"}, "bf16")])
def test_auto_trains_in_bf16_only_on_cpus_that_compute_it_natively(flags, expected):
    assert training_precision("auto", "cpu", frozenset(flags)) == expected
    assert training_precision(None, "cpu", frozenset(flags)) == expected  # auto is the default
    assert training_precision("FP32", "cpu", frozenset(flags)) == "fp32"  # a forced value wins
    assert training_precision("bf16", "cpu", frozenset(flags)) == "bf16"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 amx_bf16 avx512_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(str(cpuinfo)) == {"fpu", "sse2", "amx_bf16", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()
    assert native_bf16("cpu", cpu_flags(str(cpuinfo))) is True


def test_an_unknown_precision_is_refused_naming_its_variable(monkeypatch):
    with pytest.raises(TrainingError, match="ORCA_PRECISION"):
        check_training_precision("fp16")
    monkeypatch.setenv("ORCA_PREDICT_PRECISION", "auto")  # scoring has no auto: fp32 unless asked
    with pytest.raises(SystemExit, match="ORCA_PREDICT_PRECISION"):
        Runtime.from_config()


def test_the_bf16_validation_pass_differs_from_fp32_but_only_by_rounding(srkw_h5):
    _, _, validation = load_labeled(SAMPLE_DIR)
    decode_split(validation, SRKW_ROWS, SRKW_COLS)
    model = load_model(srkw_h5, torch.device("cpu"))
    loss_fn = make_loss(model.training_config)
    fp32 = evaluate(model, loss_fn, validation, torch.device("cpu"), 32, "fp32")
    bf16 = evaluate(model, loss_fn, validation, torch.device("cpu"), 32, "bf16")
    difference = np.abs(fp32.scores - bf16.scores).max()
    assert 0 < difference < 2e-2  # autocast ran (bf16 rounds), and only rounding separates the two


@pytest.mark.slow
def test_a_bf16_training_writes_float32_weights_and_records_its_precision(tmp_path, monkeypatch):
    """The forward passes of a bf16 /train compute in bf16, seen by hooks on the layers with weights in the
    training steps and in the validation pass: every convolution answers bfloat16 and feeds the first
    Dense layer bfloat16 (whose float32 bias then promotes its sum), while the weights written stay float32."""
    import training.loop

    labeled = tmp_path / "labeled"
    shutil.copytree(SAMPLE_DIR, labeled, ignore=shutil.ignore_patterns("test", "*.md", "LICENSE"))
    model = write_fresh_h5(tmp_path / "models" / "srkw_cnn_0.h5", ROWS, COLS, seed=3)
    calls = []  # (layer class, training?, input dtype, output dtype) of every call of a layer with weights
    real_load_model = training.loop.load_model

    def load_model_with_hooks(model_h5, device):
        loaded = real_load_model(model_h5, device)
        for layer in loaded.modules():
            if list(layer.parameters(recurse=False)):  # srkw_cnn's four Conv2D and two Dense
                layer.register_forward_hook(lambda module, args, out: calls.append(
                    (type(module).__name__, module.training, args[0].dtype, out.dtype)))
        return loaded

    monkeypatch.setattr(training.loop, "load_model", load_model_with_hooks)
    runtime = Runtime.from_config({"LOCAL_ROOT": None, "DEVICE": "cpu", "CACHE_DIR": str(tmp_path / "cache"),
                                   "PRECISION": "bf16"})
    answer = runtime.run_train(runtime, TrainParams(str(model), str(labeled), ROWS, COLS, epochs=1, seed=0))
    assert {(name, mode) for name, mode, _, _ in calls} == {("Conv", True), ("Conv", False), ("Dense", True),
                                                           ("Dense", False)}  # training steps, validation
    assert {out for name, _, _, out in calls if name == "Conv"} == {torch.bfloat16}, calls
    assert {mode for name, mode, fed, _ in calls if name == "Dense" and fed == torch.bfloat16} == {True, False}
    written = tmp_path / "models" / "srkw_cnn_1.h5"
    assert answer["model_url"].endswith("srkw_cnn_1.h5") and np.isfinite(answer["loss"][0])
    sidecar = json.loads((tmp_path / "models" / "srkw_cnn_1.json").read_text())
    assert sidecar["precision"] == "bf16" and sidecar["hyperparameters"]["precision"] == "bf16"
    with h5py.File(written, "r") as new, h5py.File(model, "r") as old:
        kernels = []
        new["model_weights"].visititems(lambda name, obj: kernels.append(name) if isinstance(obj, h5py.Dataset) else None)
        assert kernels and all(new["model_weights"][k].dtype == np.float32 for k in kernels)
        assert any(not np.array_equal(new["model_weights"][k][()], old["model_weights"][k][()]) for k in kernels)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
def test_auto_trains_in_bf16_on_cuda_from_compute_capability_8():
    capability = torch.cuda.get_device_capability(0)
    assert training_precision("auto", "cuda") == ("bf16" if capability[0] >= 8 else "fp32")
