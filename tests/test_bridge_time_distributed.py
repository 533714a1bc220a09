"""Issue 24: TimeDistributed around a nested Sequential or functional model (a CRNN: a small CNN on
every frame, then an LSTM), in files written by tf_keras and by Keras 3.

Random non-zero weights (BatchNormalization statistics too), odd frame sizes; a mask from
Embedding(mask_zero) goes through a TimeDistributed model into an LSTM, as Keras hands it on.
Each branch is an output compared with the Keras that wrote the file.
"""

from __future__ import annotations

import torch  # noqa: F401  (before TensorFlow)

import numpy as np
import pytest

from bridge_checks import assert_backward_reaches_every_weight, assert_weights_bit_exact, onnx_runtime_outputs, torch_outputs  # noqa: E402
import keras_zoo  # noqa: E402,F401  (imports tf_keras, after torch)
import tf_keras  # noqa: E402

from conversion import ConversionError, keras_to_torch, torch_to_keras  # noqa: E402

TOLERANCE = 1e-4
FRAMES, FRAME = 4, (9, 7, 2)
STEPS, VOCAB = 7, 11


def _close(got, expected, what=""):
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    assert np.abs(got - expected).max() <= TOLERANCE * max(1.0, np.abs(expected).max()), what


def _build(k):
    L = k.layers
    frames = k.Input((FRAMES, *FRAME), name="frames")
    tokens = k.Input((STEPS,), name="tokens")
    cnn = k.Sequential([k.Input(FRAME), L.Conv2D(3, 3, padding="same", activation="relu", name="frame_conv"),
                        L.BatchNormalization(name="frame_bn"), L.MaxPooling2D(2, name="frame_pool"),
                        L.Flatten(name="frame_flat")], name="frame_cnn")
    frame_in = k.Input(FRAME, name="frame_in")
    f = L.Conv2D(2, (2, 3), strides=(2, 1), name="f_conv")(frame_in)
    f = L.Concatenate(name="f_concat")([L.GlobalAveragePooling2D(name="f_gap")(f), L.Flatten(name="f_flat")(f)])
    framewise = k.Model(frame_in, L.Dense(4, activation="tanh", name="f_dense")(f), name="framewise")
    vector = k.Sequential([k.Input((5,)), L.Dense(4, activation="relu", name="v_dense"), L.Dense(3, name="v_out")],
                          name="vector_mlp")
    out = {}
    seq = L.TimeDistributed(cnn, name="td_cnn")(frames)                  # 4 x 24
    out["crnn"] = L.LSTM(3, return_sequences=True, name="crnn_lstm")(seq)
    out["td_functional"] = L.TimeDistributed(framewise, name="td_functional")(frames)
    out["td_conv_layer"] = L.TimeDistributed(L.Flatten(), name="td_flat")(
        L.TimeDistributed(L.Conv2D(2, 3, strides=2), name="td_conv")(frames))
    embedded = L.Embedding(VOCAB, 5, mask_zero=True, name="emb")(tokens)
    out["masked"] = L.LSTM(2, return_sequences=True, name="masked_lstm")(
        L.TimeDistributed(vector, name="td_mlp")(embedded))               # the mask goes through the wrapper
    return k.Model([frames, tokens], list(out.values())), list(out)


def _randomize(model, rng):
    for w in model.weights:
        name = getattr(w, "path", w.name)
        value = rng.uniform(0.5, 1.5, tuple(w.shape)) if "variance" in name else rng.normal(0, 0.5, tuple(w.shape))
        w.assign(value.astype(np.float32))


def _inputs(seed, batch=3):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, VOCAB, (batch, STEPS)).astype(np.float32)
    tokens[0, 4:] = 0
    tokens[1, 1:3] = 0
    return [rng.normal(0.0, 1.0, (batch, FRAMES, *FRAME)).astype(np.float32), tokens]


def _keras(flavour):
    if flavour == "tf_keras":
        return tf_keras
    import keras
    if not keras.__version__.startswith("3"):
        pytest.skip("needs Keras 3")
    return keras


@pytest.fixture(scope="module", params=["tf_keras", "keras3"])
def saved(request, tmp_path_factory):
    k = _keras(request.param)
    model, names = _build(k)
    _randomize(model, np.random.default_rng(5))
    path = tmp_path_factory.mktemp("td") / f"td_{request.param}.h5"
    model.save(path)
    return k, model, str(path), names


def test_wrapped_models_match_the_keras_that_wrote_them(saved):
    k, model, path, names = saved
    module = keras_to_torch(path)
    arrays = _inputs(0)
    expected = [np.asarray(o) for o in model(arrays, training=False)]
    for name, got, want in zip(names, torch_outputs(module, arrays), expected):
        _close(got, want, name)
    # the mask reached the LSTM: a padded step repeats the previous output, as Keras gives it
    masked = torch_outputs(module, arrays)[names.index("masked")]
    assert np.array_equal(masked[0, 4], masked[0, 6]) and np.array_equal(masked[1, 0], masked[1, 2])


def test_round_trip_is_bit_exact_training_reaches_every_weight_and_the_file_reloads(saved, tmp_path):
    k, model, path, names = saved
    out = torch_to_keras(keras_to_torch(path), path, tmp_path / "copy.h5")
    found = assert_weights_bit_exact(path, out, same_config=False)
    assert any("frame_conv" in n for n in found) and any("f_dense" in n for n in found)

    module = keras_to_torch(path).train()
    params = dict(module.named_parameters())
    assert len(params) == len(model.trainable_weights)
    assert "graph.layers.td_cnn.layer.layers.frame_conv.kernel" in params
    assert "graph.layers.td_cnn.layer.layers.frame_bn.moving_mean" in dict(module.named_buffers())
    arrays = _inputs(1)
    assert_backward_reaches_every_weight(module, [torch.from_numpy(a) for a in arrays])
    torch.optim.SGD(module.parameters(), lr=0.05).step()
    trained = torch_to_keras(module.eval(), path, tmp_path / "trained.h5")
    expected = torch_outputs(module, arrays)
    if k is tf_keras:  # Keras 3 cannot load its own .h5 of a masked model (its NotEqual mask op)
        reloaded = k.models.load_model(trained, compile=False)
        for name, want, got in zip(names, expected, reloaded(arrays, training=False)):
            _close(want, np.asarray(got), f"after training, reloaded: {name}")
    model.load_weights(trained)  # the Keras that wrote the file reads the trained weights
    for name, want, got in zip(names, expected, model(arrays, training=False)):
        _close(want, np.asarray(got), f"after training: {name}")


def test_torch_onnx_export_matches_onnxruntime(saved, tmp_path):
    _, _, path, names = saved
    module = keras_to_torch(path)
    other = _inputs(3, batch=2)
    got = onnx_runtime_outputs(module, tmp_path / "td.onnx", _inputs(2), other)
    for name, g, e in zip(names, got, torch_outputs(module, other)):
        _close(g, e, f"onnx: {name}")


def test_an_unsupported_layer_inside_a_wrapped_model_is_named(tmp_path):
    L = tf_keras.layers
    inner = tf_keras.Sequential([tf_keras.Input((5,)), L.Dense(3, name="ok"), L.Lambda(lambda t: t * 2, name="doubler")])
    inp = tf_keras.Input((STEPS, 5))
    path = tmp_path / "td_lambda_model.h5"
    tf_keras.Model(inp, L.TimeDistributed(inner, name="td_inner")(inp)).save(path)
    with pytest.raises(ConversionError, match=r"Lambda layer 'doubler' in TimeDistributed 'td_inner'"):
        keras_to_torch(path)
