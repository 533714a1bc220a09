"""scoring.torch_scoring.predict scores images like the original tf_keras model.predict, streaming in batches."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import torch

import numpy as np
import pytest
from PIL import Image

os.environ["TF_USE_LEGACY_KERAS"] = "1"

from conversion import keras_to_torch
from scoring.device import pick_device
from scoring.errors import ImageError, ScoringError
from scoring.images import load_image
from scoring.torch_scoring import predict


from repo_data import SAMPLE_DIR as ORCASOUND  # sample_data/orcasound, in the repository
ROWS, COLS = 67, 83


@pytest.fixture(scope="module")
def perturbed_h5(spread_srkw_h5) -> str:
    """The session's srkw_cnn whose predictions spread over ≥ 0.2 (conftest.spread_srkw_h5), so they
    are not all ≈ 0.5 as a fresh model's are."""
    return spread_srkw_h5


def sample_paths() -> list[Path]:
    return sorted(ORCASOUND.glob("*/*/*.png"))


def synthetic_pngs(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (30, 40, 4), dtype=np.uint8), "RGBA").save(path)
        paths.append(path)
    return paths


def test_predict_equals_tf_keras_model_predict(perturbed_h5):
    from tf_keras.models import load_model

    paths = sample_paths()
    keras_model = load_model(perturbed_h5, compile=False)
    x = np.stack([load_image(p, ROWS, COLS) for p in paths])  # == flow_from_directory (test_training_images)
    expected = keras_model.predict(x, verbose=0)[:, 0]
    ours = predict(perturbed_h5, paths, ROWS, COLS, batch_size=5, device="cpu")
    assert len(ours) == len(paths) and all(type(v) is float for v in ours)
    assert np.abs(np.array(ours) - expected).max() < 1e-4
    print("predict parity max|diff|", np.abs(np.array(ours) - expected).max(), "values", expected.min(), expected.max())
    assert np.ptp(expected) >= 0.2  # tf_keras itself sees the spread: far from constant


def test_predict_keeps_input_order_and_accepts_a_module(perturbed_h5):
    paths = sample_paths()
    module = keras_to_torch(perturbed_h5)
    forward = predict(module, paths, ROWS, COLS, batch_size=4, device="cpu")
    order = np.random.default_rng(0).permutation(len(paths))
    shuffled = predict(module, [paths[i] for i in order], ROWS, COLS, batch_size=7, device="cpu")
    np.testing.assert_allclose(shuffled, [forward[i] for i in order], rtol=0, atol=1e-6)
    assert not module.training
    assert predict(module, [], ROWS, COLS) == []


def test_decoding_streams_a_bounded_number_of_batches_ahead(tmp_path):
    from scoring.images import decode_image
    from scoring.stream import stream_batches

    paths = synthetic_pngs(tmp_path, 40)
    decoded = []
    lock = threading.Lock()

    def counting_decode(path, rows, cols):
        with lock:
            decoded.append(path)
        return decode_image(path, rows, cols)

    batches = stream_batches(paths, None, 10, 12, batch_size=4, prefetch=2, decode=counting_decode)
    first = next(batches)
    time.sleep(0.2)
    assert first.pixels.shape == (4, 10, 12, 3) and first.pixels.dtype == np.uint8
    assert len(decoded) <= 4 + 3 * 4  # the batch handed out, the next one being stacked, two more decoding
    rest = list(batches)
    assert sum(len(b.items) for b in rest) == 36 and len(decoded) == 40


def test_the_next_batch_is_stacked_on_its_own_thread_while_the_caller_holds_one(tmp_path, monkeypatch):
    """`stream_batches` assembles (draws, stacks) batch k+1 on `orca-render` while the caller works on
    batch k, and still hands the batches out in order."""
    import scoring.stream as stream

    stacked = []
    real_stack = stream._stack

    def recording_stack(arrays):
        stacked.append(threading.current_thread().name)
        return real_stack(arrays)

    monkeypatch.setattr(stream, "_stack", recording_stack)
    paths = synthetic_pngs(tmp_path, 12)
    batches = stream.stream_batches(paths, None, 10, 12, batch_size=4, prefetch=1)
    first = next(batches)
    deadline = time.time() + 10
    while len(stacked) < 2 and time.time() < deadline:
        time.sleep(0.01)
    assert len(stacked) == 2 and all(name.startswith("orca-render") for name in stacked)
    rest = list(batches)
    assert [p for b in [first, *rest] for p in b.items] == paths and len(stacked) == 3


def test_the_first_batch_is_handed_out_before_the_next_one_is_decoded(tmp_path):
    """A batch is handed out as soon as it is stacked: the caller's first batch does not wait for the
    decoding of the second (which here waits for the caller to have the first)."""
    from scoring.images import decode_image
    from scoring.stream import stream_batches

    paths = synthetic_pngs(tmp_path, 8)
    handed = threading.Event()

    def decode(path, rows, cols):
        if paths.index(path) >= 4 and not handed.wait(timeout=10):
            raise AssertionError("the second batch was decoded before the first was handed out")
        return decode_image(path, rows, cols)

    batches = stream_batches(paths, None, 10, 12, batch_size=4, prefetch=1, decode=decode)
    first = next(batches)
    handed.set()
    rest = list(batches)
    assert [p for b in [first, *rest] for p in b.items] == paths


def test_unreadable_image_raises_image_error_naming_it(tmp_path, perturbed_h5):
    paths = synthetic_pngs(tmp_path, 3)
    paths[1].write_bytes(b"not an image")
    with pytest.raises(ImageError, match=paths[1].name):
        predict(perturbed_h5, paths, ROWS, COLS, device="cpu")


def test_predict_rejects_a_size_the_model_does_not_take(tmp_path, perturbed_h5):
    with pytest.raises(ScoringError, match="67x83"):
        predict(perturbed_h5, synthetic_pngs(tmp_path, 1), 60, 83)


def test_pick_device_prefers_cuda_and_refuses_missing_cuda():
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ScoringError, match="CUDA"):
            pick_device("cuda")
