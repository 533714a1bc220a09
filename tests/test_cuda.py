"""The CUDA training path against the CPU one: same weights and batch give the same loss and gradients,
and a whole /train run on CUDA writes a model that scores alike on both devices. Marked `cuda`:
skipped with a reason on a machine without one (the same functions run on the CPU in
tests/test_training_loop.py)."""

from __future__ import annotations

import torch
import numpy as np
import pytest

from conversion.formats import load_trainable
from repo_data import SAMPLE_DIR as SAMPLE, SRKW_COLS as COLS, SRKW_ROWS as ROWS
from training.loop import train
from training.data import decode_split, load_labeled
from scoring.tensors import to_batch
from training.loop import _logits
from training.optim import make_loss
from scoring.torch_scoring import predict

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")]


@pytest.fixture()
def exact_fp32():
    """TF32 off for matmuls and cuDNN convolutions (cuDNN's default is on), restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def model_h5(spread_srkw_h5):
    """The session's srkw_cnn whose scores spread over ≥ 0.2 (conftest.spread_srkw_h5), read only: train()
    writes its own out. On a fresh model every clip scores ≈ 0.5 and the devices agree whatever they do."""
    return spread_srkw_h5


def loss_and_gradients(model_h5, split, device):
    model = load_trainable(model_h5).to(device)
    model.eval()  # no dropout: the two devices draw different masks
    loss_fn = make_loss(model.training_config)
    x = to_batch(split.pixels, torch.device(device))
    y = torch.from_numpy(split.labels).to(device)
    loss = loss_fn(_logits(model, x), y) + model.regularization_loss().to(device)
    loss.backward()
    return loss.item(), {name: p.grad.detach().cpu().numpy() for name, p in model.named_parameters()}


def test_cuda_loss_and_gradients_match_cpu(model_h5, exact_fp32):
    _, split, _ = load_labeled(SAMPLE)
    decode_split(split, ROWS, COLS)
    cpu_loss, cpu_grads = loss_and_gradients(model_h5, split, "cpu")
    cuda_loss, cuda_grads = loss_and_gradients(model_h5, split, "cuda")
    assert abs(cuda_loss - cpu_loss) <= 1e-5 * max(1.0, abs(cpu_loss))
    assert cpu_grads.keys() == cuda_grads.keys()
    for name, grad in cpu_grads.items():
        scale = max(float(np.abs(grad).max()), 1e-8)
        assert np.abs(cuda_grads[name] - grad).max() <= 1e-4 * scale, name


def test_train_on_cuda_writes_a_model_that_scores_alike_on_both_devices(model_h5, tmp_path, exact_fp32):
    out = tmp_path / "srkw_cnn_1.h5"
    result = train(model_h5, SAMPLE, ROWS, COLS, 2, out, device="cuda", seed=0)
    assert result.device.startswith("cuda")
    assert len(result.loss) == 2 and all(np.isfinite(result.loss + result.val_loss))
    paths = sorted(SAMPLE.glob("test/*/*.png"))
    cpu = np.array(predict(out, paths, ROWS, COLS, device="cpu"))
    cuda = np.array(predict(out, paths, ROWS, COLS, device="cuda"))
    assert len(cpu) == len(cuda) == len(paths) == 9 and np.ptp(cpu) >= 0.2
    assert np.abs(cuda - cpu).max() <= 1e-4
    before = np.array(predict(model_h5, paths, ROWS, COLS, device="cpu"))
    assert np.abs(cpu - before).max() > 0  # the weights did change


def test_predict_service_on_cuda_answers_like_the_cpu_service(model_h5, tmp_path, monkeypatch):
    """/predict's CUDA branch (torch scoring, torchvision decoding) against its CPU one (ONNX Runtime, PIL).
    The two share a cache folder: the pixel cache's entries are per decoder, so the CUDA run decodes
    every clip with torchvision rather than reading the pixels PIL decoded for the CPU run."""
    import shutil

    import scoring.torch_decode

    from service.params import PredictParams
    from service.runtime import Runtime
    spectrograms = tmp_path / "unlabeled" / "spectrograms"
    spectrograms.mkdir(parents=True)
    for i, png in enumerate(sorted(SAMPLE.glob("*/*/*.png"))):
        shutil.copy(png, spectrograms / f"orcasoundlab_{1594154118 + 3 * i}.png")
    params = PredictParams(model_url=str(model_h5), unlabeled_url=str(tmp_path / "unlabeled"), rows=ROWS, cols=COLS)
    results, decoded = {}, []
    real_decode = scoring.torch_decode.decode_png_torch
    monkeypatch.setattr(scoring.torch_decode, "decode_png_torch",
                        lambda source, rows, cols: decoded.append(source) or real_decode(source, rows, cols))
    for device in ("cpu", "cuda"):
        runtime = Runtime.from_config({"LOCAL_ROOT": None, "DEVICE": device, "CACHE_DIR": str(tmp_path / "cache")})
        results[device] = runtime.run_predict(runtime, params)
        assert len(decoded) == (0 if device == "cpu" else 23), device
    cpu, cuda = results["cpu"], results["cuda"]
    assert [item["audio_url"] for item in cuda] == [item["audio_url"] for item in cpu] and len(cpu) == 23
    assert max(item["predicted_value"] for item in cpu) - min(item["predicted_value"] for item in cpu) >= 0.2
    assert max(abs(a["predicted_value"] - b["predicted_value"]) for a, b in zip(cuda, cpu)) <= 1e-4
