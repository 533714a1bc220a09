"""conversion.keras_onnx: Sequential Keras .h5 models written straight to ONNX (no torch) agree with
tf_keras itself and with the torch bridge, logits before the final activation included; what it does
not write is refused with NotEmittable, and the scorer then exports through the bridge."""

from __future__ import annotations

import sys
import subprocess
from pathlib import Path

import torch  # noqa: F401  (before TensorFlow)

import numpy as np
import pytest

import keras_zoo  # noqa: E402  (imports tf_keras after torch; pinned in requirements.txt: missing, it fails the run)
from keras_zoo import L, randomize, tf_keras  # noqa: E402

from conversion.keras_onnx import NotEmittable, keras_h5_to_onnx_bytes  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
ROOT = Path(__file__).resolve().parent.parent
ROWS, COLS = 37, 52  # non-square, odd: every 'same' padding below is asymmetric somewhere


def sequential(*layers, compile_it=True):
    model = tf_keras.Sequential([L.InputLayer((ROWS, COLS, 3))] + list(layers))
    randomize(model, seed=len(layers))
    if compile_it:
        model.compile(optimizer="adam", loss="binary_crossentropy")
    return model


MODELS = {
    "srkw_like_logits": lambda: sequential(
        L.Conv2D(8, 5, strides=3, padding="same", activation="relu"), L.Dropout(0.5),
        L.Conv2D(8, 5, strides=3, padding="same", activation="relu"),
        L.Conv2D(6, 3, strides=2, padding="same", activation="relu"), L.Dropout(0.6),
        L.Flatten(), L.Dense(16, activation="relu"), L.Dense(1)),  # logits: no final sigmoid
    "srkw_like_sigmoid": lambda: sequential(
        L.Conv2D(8, 5, strides=3, padding="same", activation="relu"), L.Flatten(),
        L.Dense(1, activation="sigmoid")),
    "valid_dilated_pooling_softmax": lambda: sequential(
        L.Conv2D(4, (3, 5), padding="valid", dilation_rate=(2, 1), use_bias=False), L.ReLU(),
        L.MaxPooling2D(3, strides=2, padding="same"), L.AveragePooling2D(2),
        L.Conv2D(5, 1, activation="tanh"), L.Activation("softmax"), L.Flatten(), L.Dense(3),
        L.Activation("softmax")),
    "image_output": lambda: sequential(L.Conv2D(4, 3, strides=(2, 3), padding="same", activation="sigmoid")),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keras_onnx")
    paths = {}
    for name, build in MODELS.items():
        model = build()
        paths[name] = (folder / f"{name}.h5", model)
        model.save(paths[name][0])
    return paths


@pytest.mark.parametrize("name", list(MODELS))
def test_direct_onnx_matches_keras_and_the_torch_bridge(saved, name):
    import onnxruntime as ort

    from conversion.formats import load_trainable

    path, model = saved[name]
    x = np.random.default_rng(7).random((3, ROWS, COLS, 3), dtype=np.float32)
    session = ort.InferenceSession(keras_h5_to_onnx_bytes(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", ROWS, COLS, 3]
    (ours,) = session.run(None, {session.get_inputs()[0].name: x})
    keras = model.predict(x, verbose=0)
    with torch.no_grad():
        bridge = load_trainable(path).eval()(torch.from_numpy(x)).numpy()
    assert ours.shape == keras.shape
    tolerance = 1e-4 * max(1.0, float(np.abs(keras).max()))
    assert np.abs(ours - keras).max() <= tolerance
    assert np.abs(ours - bridge).max() <= tolerance


def test_what_it_does_not_write_is_refused(tmp_path):
    batch_norm = sequential(L.Conv2D(4, 3), L.BatchNormalization(), L.Flatten(), L.Dense(1))
    batch_norm.save(tmp_path / "bn.h5")
    with pytest.raises(NotEmittable, match="BatchNormalization"):
        keras_h5_to_onnx_bytes(tmp_path / "bn.h5")
    functional = keras_zoo.conv_zoo()
    functional.save(tmp_path / "functional.h5")
    with pytest.raises(NotEmittable, match="only Sequential"):
        keras_h5_to_onnx_bytes(tmp_path / "functional.h5")
    leaky = sequential(L.Conv2D(4, 3, activation="elu"), L.Flatten(), L.Dense(1))
    leaky.save(tmp_path / "elu.h5")
    with pytest.raises(NotEmittable, match="elu"):
        keras_h5_to_onnx_bytes(tmp_path / "elu.h5")


def test_scorer_falls_back_to_the_bridge_for_what_it_does_not_write(tmp_path):
    from scoring.onnx_scoring import export_cached

    model = sequential(L.Conv2D(4, 3), L.BatchNormalization(), L.Flatten(), L.Dense(1, activation="sigmoid"))
    model.save(tmp_path / "bn.h5")
    onnx_path = export_cached(tmp_path / "bn.h5", tmp_path / "cache", isolate=False)
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((2, ROWS, COLS, 3), dtype=np.float32)
    (ours,) = session.run(None, {session.get_inputs()[0].name: x})
    assert np.abs(ours - model.predict(x, verbose=0)).max() <= 1e-4


def test_direct_export_imports_neither_torch_nor_tensorflow(saved):
    path, _ = saved["srkw_like_logits"]
    code = ("import sys\n"
            "from conversion.keras_onnx import keras_h5_to_onnx_bytes\n"
            f"data = keras_h5_to_onnx_bytes({str(path)!r})\n"
            "print(len(data) > 0, 'torch' in sys.modules, 'tensorflow' in sys.modules)\n")
    completed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.split() == ["True", "False", "False"]


SHARED_H5 = ROOT.parent / "shared" / "data" / "keras_h5"


@pytest.mark.skipif(not SHARED_H5.is_dir(), reason=f"real legacy .h5 files not found at {SHARED_H5}")
def test_real_legacy_files_are_written_faithfully_or_refused():
    """Files others saved (Keras 2.0 onwards): each one is either written and agrees with the bridge,
    or refused (nested or Functional models), never written wrong."""
    import onnxruntime as ort

    from conversion.formats import load_trainable

    written = 0
    for path in sorted(SHARED_H5.glob("*.h5")):
        try:
            data = keras_h5_to_onnx_bytes(path)
        except NotEmittable:
            continue
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).random([2] + session.get_inputs()[0].shape[1:], dtype=np.float32)
        (ours,) = session.run(None, {session.get_inputs()[0].name: x})
        with torch.no_grad():
            bridge = load_trainable(path).eval()(torch.from_numpy(x)).numpy()
        assert np.abs(ours - bridge).max() <= 1e-4 * max(1.0, float(np.abs(bridge).max())), path.name
        written += 1
    assert written >= 1  # the MNIST CNN is a plain Sequential
