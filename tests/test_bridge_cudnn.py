"""Issue 24: Keras 2's CuDNNLSTM and CuDNNGRU (tf.compat.v1.keras.layers), which Keras cannot run on a
CPU. tf_keras builds and saves them without running them; the reference is Keras' own conversion of
the saved CuDNN weights into standard LSTM / GRU(reset_after=True) layers (tf_keras'
`preprocess_weights_for_loading`, what `load_weights` applies), run in the same architecture.
Random non-zero kernels and biases (the CuDNN layers' two bias vectors differ), odd sizes.
"""

from __future__ import annotations

import torch  # noqa: F401  (before TensorFlow)

import h5py
import numpy as np
import pytest

from bridge_checks import assert_backward_reaches_every_weight, assert_weights_bit_exact, onnx_runtime_outputs, torch_outputs  # noqa: E402
import keras_zoo  # noqa: E402,F401  (imports tf_keras, after torch)
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from tf_keras.src.saving.legacy.hdf5_format import preprocess_weights_for_loading  # noqa: E402

from conversion import ConversionError, keras_to_torch, torch_to_keras  # noqa: E402

TOLERANCE = 1e-4
STEPS, FEATURES = 9, 5
CUDNN = tf.compat.v1.keras.layers


def _close(got, expected, what=""):
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    assert np.abs(got - expected).max() <= TOLERANCE * max(1.0, np.abs(expected).max()), what


def _build(cudnn: bool):
    """The same architecture with CuDNN layers or with their standard equivalents."""
    L = tf_keras.layers

    def lstm(units, **kw):
        return CUDNN.CuDNNLSTM(units, **kw) if cudnn else L.LSTM(units, recurrent_activation="sigmoid", **kw)

    def gru(units, **kw):
        return CUDNN.CuDNNGRU(units, **kw) if cudnn else L.GRU(units, recurrent_activation="sigmoid",
                                                               reset_after=True, **kw)

    seq = L.Input((STEPS, FEATURES), name="seq")
    x = lstm(4, return_sequences=True, name="lstm_seq")(seq)
    out = {"lstm_seq": x}
    out["gru_back"] = gru(3, return_sequences=True, go_backwards=True, name="gru_back")(x)
    y, h, c = lstm(3, return_state=True, name="lstm_state")(seq)
    out["lstm_state"] = L.Concatenate(name="states")([y, h, c])
    g, gh = gru(2, return_state=True, name="gru_state")(seq)
    out["gru_state"] = L.Add(name="gru_sum")([g, gh])
    out["bi_lstm"] = L.Bidirectional(lstm(2), name="bi_lstm")(seq)
    out["bi_gru_seq"] = L.Bidirectional(gru(2, return_sequences=True), merge_mode="sum", name="bi_gru_seq")(x)
    out["score"] = L.Dense(1, activation="sigmoid", name="score")(out["lstm_state"])
    return tf_keras.Model(seq, list(out.values()), name="cudnn" if cudnn else "standard"), list(out)


def _reference_with_weights_of(cudnn_model):
    """The standard-layer model holding Keras' conversion of the CuDNN model's weights."""
    reference, _ = _build(cudnn=False)
    for layer in cudnn_model.layers:
        if layer.weights:
            target = reference.get_layer(layer.name)
            target.set_weights(preprocess_weights_for_loading(target, layer.get_weights()))
    return reference


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, names = _build(cudnn=True)
    rng = np.random.default_rng(4)
    for w in model.weights:
        w.assign(rng.normal(0.0, 0.5, tuple(w.shape)).astype(np.float32))
    path = tmp_path_factory.mktemp("cudnn") / "cudnn.h5"
    model.save(path)
    return model, str(path), names


def _inputs(seed, batch=3):
    return [np.random.default_rng(seed).normal(0.0, 1.0, (batch, STEPS, FEATURES)).astype(np.float32)]


def test_cudnn_layers_match_keras_conversion_into_lstm_and_gru(saved):
    model, path, names = saved
    with h5py.File(path) as f:
        config = f.attrs["model_config"]
        assert f["model_weights/lstm_seq/lstm_seq/bias:0"].shape == (32,)  # CuDNN's two bias vectors
    config = config.decode() if isinstance(config, bytes) else config
    assert '"CuDNNLSTM"' in config and '"CuDNNGRU"' in config
    module = keras_to_torch(path)
    arrays = _inputs(0)
    expected = [np.asarray(o) for o in _reference_with_weights_of(model)(arrays, training=False)]
    for name, got, want in zip(names, torch_outputs(module, arrays), expected):
        _close(got, want, name)
    # the weights keep the CuDNN layout as parameters; the standard one is computed from them
    params = dict(module.named_parameters())
    assert tuple(params["graph.layers.lstm_seq.bias"].shape) == (32,)
    assert tuple(params["graph.layers.gru_back.bias"].shape) == (18,)
    assert tuple(params["graph.layers.bi_lstm.backward_layer.bias"].shape) == (16,)


def test_round_trip_keeps_the_cudnn_classes_bit_exact_and_training_reaches_every_weight(saved, tmp_path):
    model, path, names = saved
    out = torch_to_keras(keras_to_torch(path), path, tmp_path / "copy.h5")
    assert len(assert_weights_bit_exact(path, out)) == len(model.weights)  # the same model_config: CuDNNLSTM / CuDNNGRU stay

    module = keras_to_torch(path).train()
    arrays = _inputs(1)
    assert_backward_reaches_every_weight(module, [torch.from_numpy(a) for a in arrays], len(model.trainable_weights))
    torch.optim.SGD(module.parameters(), lr=0.05).step()
    trained = torch_to_keras(module.eval(), path, tmp_path / "trained.h5")
    reloaded = tf_keras.models.load_model(trained, compile=False)  # tf_keras reads the CuDNN file back
    assert type(reloaded.get_layer("lstm_seq")).__name__ == "CuDNNLSTM"
    expected = torch_outputs(module, arrays)
    for name, want, got in zip(names, expected, _reference_with_weights_of(reloaded)(arrays, training=False)):
        _close(want, np.asarray(got), f"after training: {name}")


def test_torch_onnx_export_matches_onnxruntime(saved, tmp_path):
    _, path, names = saved
    module = keras_to_torch(path)
    other = _inputs(3, batch=2)
    got = onnx_runtime_outputs(module, tmp_path / "cudnn.onnx", _inputs(2), other)
    for name, g, e in zip(names, got, torch_outputs(module, other)):
        _close(g, e, f"onnx: {name}")


def test_a_mask_into_a_cudnn_layer_is_refused_as_keras_refuses_it(saved):
    model, path, _ = saved
    module = keras_to_torch(path)
    layer = module.graph.layers["lstm_seq"]
    with pytest.raises(ConversionError, match="mask"):
        layer(torch.zeros(2, STEPS, FEATURES), mask=torch.ones(2, STEPS, dtype=torch.bool))
