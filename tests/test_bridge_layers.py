"""Issue 12, first slice: activation strings and layers, Permute/RepeatVector/LayerNormalization,
legacy model_config spellings. The zoo models (`advanced_zoo`, `activation_strings_zoo`) get the
parity, round-trip and training-step tests of test_conversion_bridge.py; this file adds what those
cannot reach: each activation function alone against tf_keras and Keras 3, GELU (which tf2onnx
cannot export), and model_config variants written by older Keras versions.
"""

from __future__ import annotations

import json
import shutil

import torch  # noqa: F401  (before TensorFlow)

import h5py
import numpy as np
import pytest

pytest.importorskip("tf_keras", reason="the Keras bridge tests need tf_keras (requirements.txt)")
import keras_zoo  # noqa: E402  (imports tf_keras)
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from tf_keras import layers as L  # noqa: E402

from conversion import ConversionError, keras_to_torch, torch_to_keras  # noqa: E402
from conversion import keras_reference  # noqa: E402
from conversion.layers import ACTIVATION_NAMES, ConvertContext, activation_name, make_activation  # noqa: E402

TOLERANCE = 1e-4

# Names a Keras 2 config might hold that tf_keras' `activations.get` does not know (Keras 3 only, or none).
NOT_IN_TF_KERAS = {"hard_silu", "hard_swish"}


def _close(got, expected, tolerance=TOLERANCE):
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= tolerance * max(1.0, np.abs(expected).max())


def _sample(shape=(3, 5, 7, 4)):
    # both signs, values near the kinks (0, ±2.5 for hard_sigmoid, ±3) and some large ones
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 3.0, shape).astype(np.float32)
    x.flat[:8] = [0.0, -2.5, 2.5, -3.0, 3.0, 12.0, -12.0, 1e-3]
    return x


def test_every_tf_keras_activation_string_is_converted():
    """Every string tf_keras' activations.get accepts is in the zoo list and converts."""
    accepted = []
    for name in ACTIVATION_NAMES:
        try:
            tf_keras.activations.get(name)
            accepted.append(name)
        except (ValueError, TypeError):
            pass
    assert set(accepted) == set(ACTIVATION_NAMES) - NOT_IN_TF_KERAS
    assert set(keras_zoo.KERAS2_ACTIVATIONS) == set(accepted)
    public = {n for n in dir(tf_keras.activations) if not n.startswith("_")} - {"get", "serialize", "deserialize"}
    assert public <= set(ACTIVATION_NAMES), public - set(ACTIVATION_NAMES)
    with pytest.raises(ConversionError, match="unsupported activation 'no_such'"):
        make_activation("no_such", ConvertContext())


@pytest.mark.parametrize("name", sorted(set(ACTIVATION_NAMES) - NOT_IN_TF_KERAS))
def test_activation_function_matches_tf_keras(name):
    x = _sample()
    if name == "exponential":
        x = np.clip(x, -10, 10)
    expected = np.asarray(tf_keras.activations.get(name)(tf.constant(x)))
    module = make_activation(activation_name(name), ConvertContext(keras_major=2))
    with torch.no_grad():
        got = module(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # rank 4 runs NCHW inside
    _close(got.numpy(), expected)


@pytest.mark.parametrize("name", ["hard_silu", "hard_swish", "hard_sigmoid", "gelu", "leaky_relu", "silu",
                                  "log_softmax", "mish", "relu6"])
def test_activation_function_matches_keras_3(name):
    keras = pytest.importorskip("keras")
    if not keras.__version__.startswith("3"):
        pytest.skip("needs Keras 3")
    x = _sample((4, 9))
    expected = np.asarray(keras.activations.get(name)(x))
    with torch.no_grad():
        got = make_activation(activation_name(name), ConvertContext(keras_major=3))(torch.from_numpy(x))
    _close(got.numpy(), expected)


def _gelu_model():
    inp = L.Input((keras_zoo.ROWS, keras_zoo.COLS, 2), name="image")
    x = L.Conv2D(3, (3, 4), strides=(2, 3), activation="gelu", name="conv_gelu")(inp)
    x = L.Flatten(name="flat")(x)
    x = L.Activation("gelu", name="act_gelu")(L.Dense(6, name="d")(x))
    out = L.Dense(2, activation="softmax", name="probs")(x)
    return keras_zoo._compile(keras_zoo.randomize(tf_keras.Model(inp, out, name="gelu_model"), 6))


def _keras_logits(path, arrays):
    model, _ = keras_reference.load_keras_model(path)
    return keras_reference.predict(model, arrays, logits=True)


def _torch_logits(module, arrays):
    with torch.no_grad():
        out = module.eval().forward_logits(*[torch.from_numpy(a) for a in arrays])
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def _inputs(module, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((3,) + tuple(d if d is not None else 17 for d in s[1:]), dtype=np.float32)
            for s in module.input_shapes]


def _assert_bit_exact_round_trip(source, tmp_path):
    out = torch_to_keras(keras_to_torch(source), source, tmp_path / "round_trip.h5")
    with h5py.File(source) as a, h5py.File(out) as b:
        assert a.attrs["model_config"] == b.attrs["model_config"]
        names = []
        a["model_weights"].visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        assert names
        for n in names:
            assert a["model_weights"][n][()].tobytes() == b["model_weights"][n][()].tobytes(), n


def test_gelu_model_parity_round_trip_and_training(tmp_path):
    """GELU (exact, erf) through the bridge; tf2onnx cannot export it, so it is not in the zoo."""
    path = tmp_path / "gelu.h5"
    _gelu_model().save(path)
    module = keras_to_torch(path)
    arrays = _inputs(module)
    for got, expected in zip(_torch_logits(module, arrays), _keras_logits(path, arrays)):
        _close(got, expected)
    _assert_bit_exact_round_trip(path, tmp_path)
    # the service's fallback export (the direct writer has no gelu): torch.onnx gives ONNX Runtime a valid graph
    import onnxruntime as ort

    from conversion import torch_to_onnx

    onnx_path = torch_to_onnx(module.eval(), tmp_path / "gelu.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: arrays[0]})[0]
    with torch.no_grad():
        _close(got, module(torch.from_numpy(arrays[0])).numpy())
    module.train()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    loss = module.forward_logits(torch.from_numpy(arrays[0])).square().sum()
    loss.backward()
    torch.optim.SGD(module.parameters(), lr=0.1).step()
    assert all(not torch.equal(before[n], p) for n, p in module.named_parameters())
    trained = torch_to_keras(module, path, tmp_path / "trained.h5")
    for got, expected in zip(_torch_logits(module, arrays), _keras_logits(trained, arrays)):
        _close(got, expected)


def test_new_layers_keep_keras_weights_as_named_trainable_parameters(tmp_path):
    path = tmp_path / "advanced.h5"
    keras_zoo.advanced_zoo().save(path)
    module = keras_to_torch(path)
    params = dict(module.named_parameters())
    keras_model, _ = keras_reference.load_keras_model(path)
    by_name = {w.name.split(":")[0]: w for w in keras_model.weights}
    for layer, var in [("prelu_shared", "alpha"), ("prelu_full", "alpha"), ("prelu_after_permute", "alpha"),
                       ("prelu_seq", "alpha"), ("ln_13", "gamma"), ("ln_13", "beta"), ("ln_last", "gamma"),
                       ("ln_nocenter", "gamma"), ("ln_noscale", "beta")]:
        p = params[f"graph.layers.{layer}.{var}"]
        assert p.requires_grad
        keras_weight = by_name[f"{layer}/{var}"]
        assert tuple(p.shape) == tuple(keras_weight.shape), (layer, var)  # Keras' layout
        assert np.array_equal(p.detach().numpy(), keras_weight.numpy())
    assert "graph.layers.ln_nocenter.beta" not in params and "graph.layers.ln_noscale.gamma" not in params
    assert tuple(params["graph.layers.prelu_shared.alpha"].shape) == (1, 1, 5)
    assert tuple(params["graph.layers.prelu_full.alpha"].shape) == (19, 24, 4)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("zoo_name", ["advanced_zoo", "conv1d_zoo"])
def test_new_zoo_models_match_keras_in_both_modes(tmp_path, zoo_name, training):
    """Keras(training=True) = torch.train() (conv1d_zoo's BatchNormalization over (batch, steps) uses
    batch statistics), and likewise in inference. Dropout is random: its rate is set to 0 on both sides."""
    path = tmp_path / f"{zoo_name}.h5"
    model = keras_zoo.BUILDERS[zoo_name]()
    for layer in model.layers:
        if hasattr(layer, "rate"):
            layer.rate = 0.0
    model.save(path)
    module = keras_to_torch(path).train(training)
    keras_model, _ = keras_reference.load_keras_model(path)
    arrays = _inputs(module, seed=1)
    expected = np.asarray(keras_model(arrays[0], training=training))
    with torch.no_grad():
        got = module(torch.from_numpy(arrays[0])).numpy()
    _close(got, expected)


def test_spatial_dropout_1d_drops_whole_channels_in_train_mode_only(tmp_path):
    path = tmp_path / "conv1d.h5"
    keras_zoo.conv1d_zoo().save(path)
    layer = keras_to_torch(path).graph.layers["spatial_dropout"]
    assert layer.rate == pytest.approx(0.25)
    x = torch.rand(64, 19, 6) + 0.5
    layer.eval()
    assert torch.equal(layer(x), x)
    layer.train()
    torch.manual_seed(0)
    y = layer(x)
    dropped = (y == 0).all(dim=1)  # (batch, channels) whose every step is zero
    assert torch.equal(y == 0, dropped.unsqueeze(1).expand_as(y))
    assert 0.15 < dropped.float().mean().item() < 0.35
    kept = ~dropped.unsqueeze(1).expand_as(y)
    torch.testing.assert_close(y[kept], x[kept] / 0.75)


def test_permute_conv1d_and_layer_norm_refuse_what_they_cannot_do(tmp_path):
    from conversion.layers import CONVERTERS, LayerWeights

    with pytest.raises(ConversionError, match="not a permutation"):
        CONVERTERS["Permute"]({"name": "p", "dims": [1, 1]}, LayerWeights("p"), ConvertContext())
    with pytest.raises(ConversionError, match="padding='full'"):
        CONVERTERS["Conv1D"]({"name": "c", "padding": "full"}, LayerWeights("c"), ConvertContext())
    with pytest.raises(ConversionError, match="grouped"):
        CONVERTERS["Conv1D"]({"name": "c", "groups": 2}, LayerWeights("c"), ConvertContext())
    with pytest.raises(ConversionError, match="rms_scaling"):
        CONVERTERS["LayerNormalization"]({"name": "ln", "rms_scaling": True}, LayerWeights("ln"), ConvertContext())


# --------------------------------------------------------------------------- model_config variants

def _walk(entry):
    yield entry
    config = entry.get("config")
    if isinstance(config, dict):
        for layer in config.get("layers", []):
            yield from _walk(layer)


def _edited_copy(source, target, edit):
    shutil.copyfile(source, target)
    with h5py.File(target, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        edit(config)
        f.attrs["model_config"] = json.dumps(config)
    return target


def _flat_nodes(config):
    """tf.keras 2.2.4-tf: a call of one tensor written as [name, node, tensor, kwargs], not [[…]]."""
    for layer in _walk(config):
        nodes = layer.get("inbound_nodes")
        if nodes:
            layer["inbound_nodes"] = [n[0] if len(n) == 1 else n for n in nodes]


def _bare_nodes(config):
    """A layer called once on one tensor: inbound_nodes is that one bare [name, node, tensor, kwargs]."""
    for layer in _walk(config):
        nodes = layer.get("inbound_nodes")
        if nodes and len(nodes) == 1 and len(nodes[0]) == 1:
            layer["inbound_nodes"] = nodes[0][0]


def _rename(old, new):
    def edit(config):
        for layer in _walk(config):
            if layer.get("class_name") == old:
                layer["class_name"] = new
    return edit


def _batch_shape(config):
    for layer in _walk(config):
        cfg = layer.get("config")
        if isinstance(cfg, dict) and "batch_input_shape" in cfg:
            cfg["batch_shape"] = cfg.pop("batch_input_shape")


def _first_layer_shape(key):
    """A Sequential without an InputLayer entry (Keras ≤ 2.2): the first layer carries the shape."""
    def edit(config):
        layers = config["config"]["layers"]
        first_input = layers.pop(0)
        assert first_input["class_name"] == "InputLayer"
        layers[0]["config"].pop("batch_input_shape", None)
        layers[0]["config"][key] = first_input["config"]["batch_input_shape"]
    return edit


# (zoo model, edit, whether tf_keras reads the edited file)
VARIANTS = {
    "flat_inbound_nodes": ("nested_multi", _flat_nodes, True),
    "flat_inbound_nodes_conv": ("conv_zoo", _flat_nodes, True),
    "bare_inbound_nodes": ("nested_multi", _bare_nodes, False),
    "class_Model": ("nested_multi", _rename("Functional", "Model"), True),
    "class_Model_advanced_zoo": ("advanced_zoo", _rename("Functional", "Model"), True),
    "batch_shape_input_layer": ("nested_multi", _batch_shape, False),
    "batch_shape_sequential": ("activation_zoo", _batch_shape, False),
    "batch_input_shape_first_layer": ("activation_zoo", _first_layer_shape("batch_input_shape"), True),
    "batch_shape_first_layer": ("activation_zoo", _first_layer_shape("batch_shape"), False),
}


@pytest.fixture(scope="module")
def variant_sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("variants")
    paths = {}
    for name in {v[0] for v in VARIANTS.values()}:
        paths[name] = folder / f"{name}.h5"
        keras_zoo.BUILDERS[name]().save(paths[name])
    return paths


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_model_config_variant_converts_with_parity(variant, variant_sources, tmp_path):
    zoo_name, edit, tf_keras_reads = VARIANTS[variant]
    source = variant_sources[zoo_name]
    edited = _edited_copy(source, tmp_path / f"{variant}.h5", edit)
    with h5py.File(source) as a, h5py.File(edited) as b:
        assert a.attrs["model_config"] != b.attrs["model_config"]
    module = keras_to_torch(edited)
    original = keras_to_torch(source)
    assert module.input_shapes == original.input_shapes
    arrays = _inputs(module, seed=2)
    if tf_keras_reads:  # the edited file itself is the reference
        reference = edited
        keras_reference.load_keras_model(edited)
    else:  # tf_keras refuses this spelling: the unedited file's Keras outputs are the reference
        with pytest.raises(Exception):
            keras_reference.load_keras_model(edited)
        reference = source
    for got, expected in zip(_torch_logits(module, arrays), _keras_logits(reference, arrays)):
        _close(got, expected)
    _assert_bit_exact_round_trip(edited, tmp_path)


def test_keras_3_file_with_the_new_layers(tmp_path):
    """Keras 3 spells these layers' configs its own way (dtype policies, list sizes, rms_scaling)."""
    keras = pytest.importorskip("keras")
    if not keras.__version__.startswith("3"):
        pytest.skip("needs Keras 3")
    layers = keras.layers
    inp = keras.Input((keras_zoo.STEPS, 3))
    x = layers.Conv1D(5, 4, strides=2, padding="causal", activation="hard_silu", name="k3_conv1d")(inp)
    x = layers.PReLU(shared_axes=[1], name="k3_prelu")(x)
    x = layers.LayerNormalization(name="k3_ln")(x)
    x = layers.AveragePooling1D(3, strides=2, padding="same", name="k3_avg")(x)
    x = layers.Permute((2, 1), name="k3_permute")(x)
    x = layers.ELU(alpha=0.5, name="k3_elu")(x)
    x = layers.Softmax(axis=-2, name="k3_softmax")(x)
    x = layers.Flatten(name="k3_flat")(x)
    x = layers.RepeatVector(2, name="k3_repeat")(layers.Dense(4, activation="gelu", name="k3_dense")(x))
    out = layers.Dense(1, activation="sigmoid", name="k3_out")(layers.GlobalMaxPooling1D(name="k3_gmp")(x))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(8)
    for w in model.weights:
        w.assign((rng.uniform(0.5, 1.5, tuple(w.shape)) if "gamma" in w.path
                  else rng.normal(0.0, 0.3, tuple(w.shape))).astype(np.float32))
    path = tmp_path / "keras3.h5"
    model.save(path)
    module = keras_to_torch(path)
    arrays = _inputs(module, seed=3)
    for got, expected in zip(_torch_logits(module, arrays), _keras_logits(path, arrays)):
        _close(got, expected)
    _assert_bit_exact_round_trip(path, tmp_path)
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == model.count_params()
