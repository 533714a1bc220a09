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

import keras_zoo  # noqa: E402  (imports tf_keras, pinned in requirements.txt: missing, it fails the run)
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
    keras = keras_zoo.keras_3()
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


def _converts_with_parity_and_round_trips(path, tmp_path, seed=0):
    """The saved .h5 at `path` through the bridge: outputs equal Keras' (logits), the round trip is
    bit-exact; returns the converted module."""
    module = keras_to_torch(path)
    arrays = _inputs(module, seed=seed)
    for got, expected in zip(_torch_logits(module, arrays), _keras_logits(path, arrays)):
        _close(got, expected)
    _assert_bit_exact_round_trip(path, tmp_path)
    return module


def test_gelu_model_parity_round_trip_and_training(tmp_path):
    """GELU (exact, erf) through the bridge and both ONNX exports (tf2onnx 1.17 alone cannot export TF's Erfc)."""
    path = tmp_path / "gelu.h5"
    _gelu_model().save(path)
    module = _converts_with_parity_and_round_trips(path, tmp_path)
    arrays = _inputs(module)
    # `convert` .h5 → .onnx (tf2onnx, with conversion.onnx_export's handler for TF's Erfc) and the
    # torch.onnx export both give ONNX Runtime a graph with Keras' outputs
    import onnxruntime as ort

    from conversion import torch_to_onnx
    from conversion.converting import convert

    keras_outputs = keras_reference.predict(keras_reference.load_keras_model(path)[0], arrays)[0]
    for onnx_path in (convert(path, tmp_path / "gelu_tf2onnx.onnx"), torch_to_onnx(module.eval(), tmp_path / "gelu.onnx")):
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        _close(session.run(None, {session.get_inputs()[0].name: arrays[0]})[0], keras_outputs)
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


def test_converters_refuse_what_they_cannot_do_naming_the_option(tmp_path):
    from conversion.layers import CONVERTERS, LayerWeights

    with pytest.raises(ConversionError, match="not a permutation"):
        CONVERTERS["Permute"]({"name": "p", "dims": [1, 1]}, LayerWeights("p"), ConvertContext())
    with pytest.raises(ConversionError, match="padding='full'"):
        CONVERTERS["Conv1D"]({"name": "c", "padding": "full"}, LayerWeights("c"), ConvertContext())
    with pytest.raises(ConversionError, match="padding='causal'"):
        CONVERTERS["Conv2D"]({"name": "c", "padding": "causal"}, LayerWeights("c"), ConvertContext())
    with pytest.raises(ConversionError, match="padding='causal'"):
        CONVERTERS["Conv1DTranspose"]({"name": "c", "padding": "causal"}, LayerWeights("c"), ConvertContext())
    with pytest.raises(ConversionError, match="noise_shape"):
        CONVERTERS["AlphaDropout"]({"name": "a", "rate": 0.1, "noise_shape": [None, 1]}, LayerWeights("a"),
                                   ConvertContext())
    with pytest.raises(ConversionError, match="Normalization without saved or configured mean"):
        CONVERTERS["Normalization"]({"name": "n", "axis": -1}, LayerWeights("n"), ConvertContext())
    with pytest.raises(ConversionError, match="unsupported regularizer 'OrthogonalRegularizer'"):
        CONVERTERS["Flatten"]({"name": "f", "activity_regularizer": {"class_name": "OrthogonalRegularizer",
                                                                      "config": {"factor": 0.01}}},
                              LayerWeights("f"), ConvertContext())


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
    keras = keras_zoo.keras_3()
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
    module = _converts_with_parity_and_round_trips(path, tmp_path, seed=3)
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == model.count_params()


# --------------------------------------------------------------------------- convolutions, second slice

def _conv_variants_model():
    """One output per variant: SeparableConv1D / DepthwiseConv1D / grouped Conv1D with valid, same and
    causal padding, strides, dilation and depth multipliers; grouped Conv2D; Conv1D/2DTranspose with
    output_padding and stride > kernel (TF's CPU kernel has no dilated transposed convolution)."""
    seq = L.Input((keras_zoo.STEPS, 6), name="seq")
    img = L.Input((keras_zoo.ROWS, keras_zoo.COLS, 4), name="img")
    outs = [
        L.SeparableConv1D(5, 3, depth_multiplier=3, padding="causal", dilation_rate=3, name="sep_causal_d3")(seq),
        L.SeparableConv1D(4, 4, strides=3, padding="same", name="sep_same_s3")(seq),
        L.SeparableConv1D(7, 2, depth_multiplier=2, strides=2, use_bias=False, name="sep_valid_s2")(seq),
        L.DepthwiseConv1D(4, depth_multiplier=2, strides=3, padding="same", name="dw_same_s3")(seq),
        L.DepthwiseConv1D(3, dilation_rate=2, name="dw_valid_d2")(seq),
        L.Conv1D(9, 3, groups=3, strides=2, padding="causal", name="conv1d_g3_causal")(seq),
        L.Conv1D(4, 2, groups=2, dilation_rate=3, activation="tanh", name="conv1d_g2_d3")(seq),
        L.Conv2D(6, (3, 2), groups=2, dilation_rate=(2, 1), padding="same", name="conv2d_g2")(img),
        L.Conv2D(8, 3, groups=4, strides=(2, 3), use_bias=False, name="conv2d_g4")(img),
        L.Conv1DTranspose(3, 4, strides=3, padding="same", output_padding=2, name="deconv1d_same_op")(seq),
        L.Conv1DTranspose(3, 2, strides=3, name="deconv1d_stride_gt_kernel")(seq),
        L.Conv1DTranspose(2, 3, strides=2, output_padding=1, name="deconv1d_valid_op")(seq),
        L.Conv2DTranspose(3, (3, 2), strides=(2, 3), padding="same", output_padding=(1, 2), name="deconv2d_same_op")(img),
        L.Conv2DTranspose(2, (2, 3), strides=(3, 2), output_padding=(2, 0), name="deconv2d_valid_op")(img),
    ]
    return keras_zoo.randomize(tf_keras.Model([seq, img], outs, name="conv_variants"), 11)


def _assert_every_trainable_weight_gets_a_gradient(module, arrays):
    module.train()
    outputs = module.forward_logits(*[torch.from_numpy(a) for a in arrays])
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    loss = sum(o.square().mean() for o in outputs) + module.regularization_loss()
    loss.backward()
    missing = [n for n, p in module.named_parameters()
               if p.requires_grad and (p.grad is None or not torch.any(p.grad != 0))]
    assert not missing, f"weights backward does not reach: {missing}"
    module.eval()


def test_conv_variants_match_tf_keras_round_trip_and_train(tmp_path):
    path = tmp_path / "conv_variants.h5"
    _conv_variants_model().save(path)
    module = keras_to_torch(path)
    arrays = _inputs(module, seed=4)
    keras_out = _keras_logits(path, arrays)
    torch_out = _torch_logits(module, arrays)
    assert [o.shape for o in torch_out] == [o.shape for o in keras_out]
    assert keras_out[11].shape == (3, 36 * 2 + 3 + 1, 2)  # valid + output_padding: TF's zero-filled tail
    for got, expected in zip(torch_out, keras_out):
        _close(got, expected)
    _assert_bit_exact_round_trip(path, tmp_path)
    params = dict(module.named_parameters())
    assert tuple(params["graph.layers.dw_same_s3.depthwise_kernel"].shape) == (4, 6, 2)  # Keras' layout
    assert tuple(params["graph.layers.conv2d_g4.kernel"].shape) == (3, 3, 1, 8)
    _assert_every_trainable_weight_gets_a_gradient(module, arrays)


# --------------------------------------------------------------------------- noise and activity regularization

def _noise_layers(keras_layers):
    return {"GaussianNoise": (keras_layers.GaussianNoise(0.7), {"stddev": 0.7}),
            "GaussianDropout": (keras_layers.GaussianDropout(0.3), {"rate": 0.3}),
            "AlphaDropout": (keras_layers.AlphaDropout(0.2), {"rate": 0.2})}


@pytest.mark.parametrize("flavour", ["tf_keras", "keras3"])
@pytest.mark.parametrize("class_name", ["GaussianNoise", "GaussianDropout", "AlphaDropout"])
def test_noise_layer_is_identity_in_eval_and_draws_keras_distribution_in_train(class_name, flavour):
    """Not the same draws as Keras (different generators): the same distribution, by a two-sample
    Kolmogorov–Smirnov test on 60,000 seeded draws each, and the identity at inference."""
    from scipy.stats import ks_2samp

    from conversion.layers import CONVERTERS, LayerWeights

    if flavour == "keras3":
        keras = keras_zoo.keras_3()
        keras_layers = keras.layers
        keras.utils.set_random_seed(5)
    else:
        keras_layers = L
        tf.random.set_seed(5)
    keras_layer, config = _noise_layers(keras_layers)[class_name]
    x = np.random.default_rng(6).normal(0.5, 1.5, (200, 300)).astype(np.float32)
    expected = np.asarray(keras_layer(x, training=True))
    layer = CONVERTERS[class_name]({"name": "noise", **config}, LayerWeights("noise"), ConvertContext())
    torch.manual_seed(5)
    got = layer.train()(torch.from_numpy(x)).detach().numpy()
    assert not np.array_equal(got, x)
    for transform in (lambda y: y - x, lambda y: y):  # the noise itself, and what the layer outputs
        assert ks_2samp(transform(got).ravel(), transform(expected).ravel()).pvalue > 1e-3
    assert abs(np.std(got - x) - np.std(expected - x)) < 0.02 * np.std(expected - x)
    with torch.no_grad():
        assert torch.equal(layer.eval()(torch.from_numpy(x)), torch.from_numpy(x))


def _without_noise(model):
    """Zero every random layer's rate/stddev: training-mode outputs become deterministic on both sides."""
    for layer in model.layers:
        for attribute in ("rate", "stddev"):
            if hasattr(layer, attribute):
                setattr(layer, attribute, 0.0)
    return model


@pytest.mark.parametrize("training", [False, True])
def test_more_layers_zoo_matches_keras_in_both_modes_with_its_activity_penalties(tmp_path, training):
    path = tmp_path / "more.h5"
    _without_noise(keras_zoo.more_layers_zoo()).save(path)
    module = keras_to_torch(path).train(training)
    keras_model, _ = keras_reference.load_keras_model(path)
    arrays = _inputs(module, seed=7)
    expected = np.asarray(keras_model(arrays, training=training))
    got = module(*[torch.from_numpy(a) for a in arrays])
    _close(got.detach().numpy(), expected)
    keras_penalty = float(sum(keras_model.losses))  # the activity penalties of that call
    assert keras_penalty > 0
    penalty = module.regularization_loss()
    if training:  # ActivityRegularization and Dense(activity_regularizer=…), divided by the batch size
        assert float(penalty) == pytest.approx(keras_penalty, rel=1e-5)
        assert penalty.requires_grad
        assert float(module.regularization_loss()) == 0.0  # taken once: the next step starts afresh
    else:  # eval() records none: evaluation losses leave activity penalties out (see docs)
        assert float(penalty) == 0.0


def test_normalization_from_config_and_adapted_rescaling_unit_norm_and_dot(tmp_path):
    """Normalization with the statistics in its config (no weights) and inverted; Dot over steps and
    normalized; UnitNormalization over two axes; per-channel Rescaling (Keras 3 accepts lists too)."""
    inp = L.Input((9, 5), name="x")
    a = L.Normalization(axis=-1, mean=[0.1, 0.2, -0.3, 1.0, 2.0], variance=[1.0, 4.0, 0.25, 2.0, 9.0], name="n_cfg")(inp)
    b = L.Normalization(axis=1, mean=np.linspace(-1, 1, 9), variance=np.linspace(0.5, 2, 9), invert=True,
                        name="n_inv_steps")(inp)
    c = L.UnitNormalization(axis=[1, 2], name="unit_12")(L.Dense(4, name="d")(a))
    d = L.Dot(axes=(2, 1), name="dot_21")([L.Dense(9, name="d9")(b), inp])                 # (9, 5)
    e = L.Dot(axes=-1, normalize=True, name="dot_norm")([a, b])                             # (9, 9)
    f = L.Rescaling(1 / 255.0, name="scale")(inp)
    model = keras_zoo.randomize(tf_keras.Model(inp, [a, b, c, d, e, f], name="preprocessing"), 12)
    path = tmp_path / "preprocessing.h5"
    model.save(path)
    module = _converts_with_parity_and_round_trips(path, tmp_path, seed=8)
    assert len(list(module.buffers())) == 0  # configured statistics are not weights, as in Keras


# --------------------------------------------------------------------------- Keras 3 sweep

def _keras3_sweep_model(keras):
    """Keras 3 spellings of the layers of both slices on a signal and an image: DepthwiseConv1D (its
    kernel saved as `kernel`), SeparableConv1D, grouped Conv1D/Conv2D, Conv1DTranspose,
    LayerNormalization with rms_scaling / without weights, pooling, padding, cropping, upsampling,
    Softmax, PReLU, ELU, Permute, RepeatVector, noise, activity regularization, preprocessing, Dot."""
    layers = keras.layers
    seq = keras.Input((keras_zoo.STEPS, 4), name="seq")
    img = keras.Input((keras_zoo.ROWS, keras_zoo.COLS, 4), name="img")
    norm = layers.Normalization(name="k3_norm")
    norm.adapt(np.random.default_rng(13).normal(-1.0, 3.0, (8, keras_zoo.STEPS, 4)).astype(np.float32))
    x = layers.Rescaling([0.5, 1.0, 2.0, -1.0], offset=0.25, name="k3_rescale")(norm(seq))
    x = layers.ZeroPadding1D((2, 1), name="k3_zeropad")(x)                                           # 40
    x = layers.DepthwiseConv1D(3, depth_multiplier=2, strides=2, padding="same", name="k3_dw")(x)   # 20 x 8
    x = layers.SeparableConv1D(6, 3, padding="same", dilation_rate=2, name="k3_sep")(x)              # 20 x 6
    x = layers.Conv1D(6, 3, groups=3, padding="causal", activation="gelu", name="k3_conv_g3")(x)     # 20 x 6
    x = layers.LayerNormalization(rms_scaling=True, scale=False, name="k3_rms")(x)
    x = layers.PReLU(shared_axes=[1], name="k3_prelu")(x)
    x = layers.SpatialDropout1D(0.2, name="k3_spatial_dropout")(x)
    x = layers.GaussianNoise(0.3, name="k3_gauss_noise")(x)
    t = layers.Conv1DTranspose(4, 3, strides=2, output_padding=1, padding="same", name="k3_deconv")(x)  # 40 x 4
    t = layers.Cropping1D((3, 2), name="k3_crop")(t)                                                 # 35 x 4
    t = layers.MaxPooling1D(3, strides=2, padding="same", name="k3_maxpool")(t)                      # 18 x 4
    t = layers.UpSampling1D(2, name="k3_upsample")(t)                                                # 36 x 4
    # (one axis: Keras 3 reloads a legacy .h5 LayerNormalization over several axes as axis=-1)
    t = layers.LayerNormalization(axis=1, center=False, scale=False, name="k3_ln_bare")(t)
    t = layers.ELU(alpha=0.4, name="k3_elu")(t)
    t = layers.GaussianDropout(0.2, name="k3_gauss_dropout")(t)
    p = layers.Permute((2, 1), name="k3_permute")(t)                                                 # 4 x 36
    p = layers.Softmax(axis=1, name="k3_softmax")(p)
    p = layers.UnitNormalization(name="k3_unit")(p)
    d = layers.Flatten(name="k3_flat_dot")(layers.Dot(axes=(2, 2), name="k3_dot")([p, p]))         # 16
    g = layers.Concatenate(name="k3_pooled")([
        layers.GlobalAveragePooling1D(name="k3_gap")(x),
        layers.Flatten(name="k3_flat_gmp")(layers.GlobalMaxPooling1D(keepdims=True, name="k3_gmp")(t)), d])
    g = layers.Dense(6, activation="selu", activity_regularizer=keras.regularizers.L1L2(1e-3, 2e-3),
                     name="k3_dense")(g)
    g = layers.AlphaDropout(0.1, name="k3_alpha_dropout")(g)
    g = layers.ActivityRegularization(l1=1e-2, l2=1e-3, name="k3_activity")(g)
    r = layers.LayerNormalization(name="k3_ln")(layers.RepeatVector(3, name="k3_repeat")(g))       # 3 x 6
    i = layers.Conv2D(6, 3, strides=2, groups=2, padding="same", name="k3_conv2d_g2")(img)
    i = layers.GlobalAveragePooling2D(name="k3_gap_img")(i)
    features = layers.Concatenate(name="k3_features")([layers.Flatten(name="k3_flat_r")(r), i])
    out = layers.Dense(1, activation="sigmoid", name="k3_out")(features)
    model = keras.Model([seq, img], out, name="keras3_sweep")
    rng = np.random.default_rng(14)
    for w in model.weights:
        if "count" in w.path:
            continue
        positive = any(key in w.path for key in ("variance", "gamma"))
        w.assign((rng.uniform(0.5, 1.5, tuple(w.shape)) if positive
                  else rng.normal(0.0, 0.3, tuple(w.shape))).astype(np.float32))
    return model


@pytest.mark.slow  # ~4 s: a Keras 3 model built, saved, loaded twice
def test_keras_3_sweep_converts_in_both_modes_round_trips_trains_and_reloads(tmp_path):
    keras = keras_zoo.keras_3()
    path = tmp_path / "keras3_sweep.h5"
    model = _keras3_sweep_model(keras)
    model.save(path)
    module = keras_to_torch(path)
    arrays = _inputs(module, seed=9)
    reference = keras.models.load_model(path)  # the file's own reading (Normalization statistics included)
    for training in (False, True):
        deterministic = _without_noise(reference) if training else reference
        expected = np.asarray(deterministic(arrays, training=training))
        module.train(training)
        noise = {n: m.amount for n, m in module.graph.layers.items() if hasattr(m, "amount")}
        rates = {n: m.rate for n, m in module.graph.layers.items() if hasattr(m, "rate")}
        if training:  # the same zeroing on the torch side
            for n in noise:
                module.graph.layers[n].amount = 0.0
            for n in rates:
                module.graph.layers[n].rate = 0.0
        got = module(*[torch.from_numpy(a) for a in arrays])
        _close(got.detach().numpy(), expected)
        if training:
            assert float(module.regularization_loss()) == pytest.approx(float(sum(deterministic.losses)), rel=1e-5)
            for n, value in noise.items():
                module.graph.layers[n].amount = value
            for n, value in rates.items():
                module.graph.layers[n].rate = value
    module.eval()
    assert set(noise) == {"k3_gauss_noise", "k3_gauss_dropout", "k3_alpha_dropout"}
    logits = _torch_logits(module, arrays)[0]
    keras_logits = _keras_logits(path, arrays)[0]
    _close(logits, keras_logits)
    _assert_bit_exact_round_trip(path, tmp_path)
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == sum(
        int(np.prod(w.shape)) for w in model.trainable_weights)
    assert "graph.layers.k3_rms.gamma" in dict(module.named_parameters())  # rms_scaling keeps gamma
    _assert_every_trainable_weight_gets_a_gradient(module, arrays)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.01)
    trained = torch_to_keras(module, path, tmp_path / "trained.h5")
    reloaded, flavour = keras_reference.load_keras_model(trained)
    assert flavour == "keras3"
    _close(_keras_logits(trained, arrays)[0], _torch_logits(module, arrays)[0])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_verify_notes_what_tf2onnx_cannot_export_and_still_compares_the_rest(tmp_path):
    """Keras 3 runs a grouped convolution in an XLA function that tf2onnx leaves as a PartitionedCall:
    keras_to_onnx refuses it by name, and verify still compares Keras, torch and torch.onnx."""
    keras = keras_zoo.keras_3()
    from conversion.onnx_export import keras_to_onnx
    from conversion.verify import verify

    inp = keras.Input((keras_zoo.STEPS, 4))
    x = keras.layers.Conv1D(6, 3, groups=2, activation="gelu", name="grouped")(inp)
    model = keras.Model(inp, keras.layers.Dense(1, name="out")(keras.layers.Flatten()(x)))
    path = tmp_path / "keras3_grouped.h5"
    model.save(path)
    with pytest.raises(ConversionError, match="PartitionedCall"):
        keras_to_onnx(path, tmp_path / "grouped.onnx")
    report = verify(path, workdir=str(tmp_path))
    assert {c.name for c in report.comparisons} == {"keras vs torch", "keras vs onnxruntime(torch.onnx)"}
    assert report.ok(TOLERANCE), report.table()
    assert "tf2onnx) not compared" in report.table() and "PartitionedCall" in report.table()
