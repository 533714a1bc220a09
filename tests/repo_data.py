"""The test data the repository itself ships, defined once. conftest.py's fixtures (`sample_dir`,
`srkw_h5`, `spread_srkw_h5`) and the helper modules (ops_support.py, module-level constants of test files) all take
it from here, never from ../shared: a clone outside the project has no ../shared."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO / "sample_data" / "orcasound"  # {train,validation,test}/{calls,nocalls}/*.png
SRKW_ROWS, SRKW_COLS = 67, 83  # the small srkw_cnn the tests train and score with
MIN_SPREAD = 0.2  # max - min of spread_srkw_h5's predictions over the sample clips, at least


@cache
def srkw_h5() -> str:
    """Path of one fresh (untrained, seed 0) 67x83 srkw_cnn_0.h5, written once per test process.

    Shared by every test that asks: read it, upload it, use it as a template, but never write to it
    or beside it. A test that trains or versions a model in place copies it first
    (shutil.copyfile). conftest.py's `srkw_h5` fixture fails the session if its bytes changed."""
    from models.srkw_cnn import write_fresh_h5

    folder = Path(tempfile.mkdtemp(prefix="orca-srkw-h5-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return write_fresh_h5(folder / "srkw_cnn_0.h5", SRKW_ROWS, SRKW_COLS, seed=0)


def sample_clips() -> list[Path]:
    """The 23 sample spectrograms, sorted by path (train, then test, then validation)."""
    return sorted(SAMPLE_DIR.glob("*/*/*.png"))


@cache
def spread_srkw_h5() -> str:
    """Path of a 67x83 srkw_cnn_0.h5 whose predictions on the sample clips spread over at least
    MIN_SPREAD (about 0.35 to 0.76), written once per test process; shared and read only like srkw_h5.

    For numeric comparisons of scores (ONNX Runtime vs torch vs tf_keras, bf16 vs fp32, CPU vs
    CUDA, one decoder vs another). A fresh model answers 0.4997-0.5006 on every clip, so a 1e-4
    comparison on it sees only gross errors; this one moves by the full size of a small error.

    Built deterministically: a seeded torch-initialised SRKWCNN, whose two Dense layers alone are
    then fitted (Adam, full batch, no dropout) to the clips' labels on the flattened convolution
    features, until the fitted predictions spread over 2 * MIN_SPREAD. The convolutions stay at their
    initial weights, so this costs one forward pass of the convolutions and ~100 steps of a 256x256
    layer (about 2 s). Raises if the file written does not spread over MIN_SPREAD when scored."""
    import numpy as np
    import torch

    from models.srkw_cnn import SRKWCNN, write_keras_h5
    from scoring.images import decode_image
    from scoring.tensors import to_batch
    from scoring.torch_scoring import predict

    clips = sample_clips()
    labels = torch.tensor([[float(p.parent.name == "nocalls")] for p in clips])  # P(nocalls), as srkw_cnn answers
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = SRKWCNN(SRKW_ROWS, SRKW_COLS).eval()
    pixels = np.stack([decode_image(p, SRKW_ROWS, SRKW_COLS) for p in clips])
    features = []
    hook = module.fc1.register_forward_pre_hook(lambda layer, args: features.append(args[0].detach()))
    with torch.no_grad():
        module(to_batch(pixels, torch.device("cpu")).permute(0, 3, 1, 2))  # SRKWCNN takes NCHW
    hook.remove()
    head = list(module.fc1.parameters()) + list(module.fc2.parameters())
    optimizer = torch.optim.Adam(head, lr=1e-2)
    for _ in range(1000):
        logits = module.fc2(torch.relu(module.fc1(features[0])))  # SRKWCNN.forward after the flatten
        fitted = torch.sigmoid(logits.detach())
        if float(fitted.max() - fitted.min()) >= 2 * MIN_SPREAD:
            break
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    folder = Path(tempfile.mkdtemp(prefix="orca-spread-h5-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = write_keras_h5(module, folder / "srkw_cnn_0.h5")
    scores = predict(path, clips, SRKW_ROWS, SRKW_COLS, device="cpu")
    if max(scores) - min(scores) < MIN_SPREAD:
        raise AssertionError(f"spread_srkw_h5 scores the sample clips {min(scores):.4f}-{max(scores):.4f}, "
                             f"a spread under {MIN_SPREAD}")
    return path


def json_client(app):
    """A Flask test client that prefers JSON, as API clients that read error bodies do: on /train and
    /predict an error is then `{"error": …}` rather than the plain text legacy clients get."""
    client = app.test_client()
    client.environ_base["HTTP_ACCEPT"] = "application/json"
    return client

# Real Orcasound clips with the PNGs the 2020 tool drew from them (MIT, sample_data/orcasound_audio/README.md):
# mp3/{calls,nocalls}/<stem>.mp3, png/{calls,nocalls}/<stem>.png, hls/live000.ts.
AUDIO_DIR = REPO / "sample_data" / "orcasound_audio"
