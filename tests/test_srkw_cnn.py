"""models/srkw_cnn.py: the PyTorch module and the Keras 2 .h5 it writes agree with tf_keras."""

from __future__ import annotations

import json

import torch  # noqa: F401  (before TensorFlow)

import h5py
import numpy as np
import pytest

import tf_keras  # noqa: E402,F401  (the Keras parity tests; pinned in requirements.txt: missing, it fails the run)
from conversion import keras_reference, keras_to_torch, read_training_config  # noqa: E402
from models.srkw_cnn import SRKWCNN, write_fresh_h5, write_keras_h5


def test_fresh_full_size_model_loads_in_tf_keras_with_the_original_parameter_count(tmp_path):
    path = write_fresh_h5(tmp_path / "srkw_cnn_0.h5")
    model, flavour = keras_reference.load_keras_model(path, compile=True)
    assert flavour == "tf_keras"
    assert model.count_params() == 2_819_649
    assert tuple(model.input_shape) == (None, 607, 617, 3)
    assert model.layers[-1].activation.__name__ == "sigmoid"
    assert type(model.optimizer).__name__ == "Adam"
    assert float(model.optimizer.learning_rate) == pytest.approx(3e-5)
    with h5py.File(path) as f:
        assert json.loads(f.attrs["model_config"])["class_name"] == "Sequential"
        assert f["model_weights/dense/dense/kernel:0"].shape == (8192, 256)
    config = read_training_config(path)
    assert (config.optimizer, config.loss) == ("Adam", "binary_crossentropy")


def test_fresh_model_has_glorot_kernels_and_zero_biases(tmp_path):
    path = write_fresh_h5(tmp_path / "m.h5", rows=67, cols=83, seed=5)
    with h5py.File(path) as f:
        kernel = f["model_weights/conv2d/conv2d/kernel:0"][()]
        bias = f["model_weights/conv2d/conv2d/bias:0"][()]
    limit = np.sqrt(6.0 / (5 * 5 * 3 + 5 * 5 * 64))
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.9 * limit
    assert not bias.any()
    again = write_fresh_h5(tmp_path / "again.h5", rows=67, cols=83, seed=5)
    with h5py.File(again) as f:
        assert np.array_equal(f["model_weights/conv2d/conv2d/kernel:0"][()], kernel)


def test_pytorch_module_keras_file_and_bridge_agree_on_logits(tmp_path):
    torch.manual_seed(0)
    module = SRKWCNN(67, 83).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.1)  # biases non-zero too
    path = write_keras_h5(module, tmp_path / "srkw.h5")
    x = np.random.default_rng(0).random((3, 67, 83, 3), dtype=np.float32)
    keras_model, _ = keras_reference.load_keras_model(path)
    keras_logits = keras_reference.predict(keras_model, [x], logits=True)[0]
    with torch.no_grad():
        native = module(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
        bridged = keras_to_torch(path).forward_logits(torch.from_numpy(x)).numpy()
    scale = max(1.0, float(np.abs(keras_logits).max()))
    assert np.abs(native - keras_logits).max() <= 1e-4 * scale
    assert np.abs(bridged - keras_logits).max() <= 1e-4 * scale
