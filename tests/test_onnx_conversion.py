"""ONNX → PyTorch (trainable) and ONNX → Keras (.h5): parity with ONNX Runtime, training, errors.

Models come from `torch_zoo` (random weights, non-zero biases, 3×29×37 inputs), exported with
`conversion.torch_to_onnx`. Parity is max|Δ| ≤ 1e-4 × max(1, |y|).
"""

from __future__ import annotations

import torch  # noqa: F401  (before TensorFlow)
import torch._dynamo  # noqa: F401

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import torch_zoo
from conversion import ConversionError, keras_to_torch, torch_to_onnx
from conversion.keras_from_onnx import onnx_to_keras
from conversion.onnx_interpreter import onnx_to_torch

TOLERANCE = 1e-4
NAMES = sorted(torch_zoo.MODELS)


def assert_close(actual, expected, what=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    bound = TOLERANCE * max(1.0, float(np.abs(expected).max()))
    diff = float(np.abs(actual - expected).max())
    assert diff <= bound, f"{what}: max|Δ| = {diff:.3g} > {bound:.3g}"
    return diff


def ort_run(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("onnx_zoo")
    paths = {}
    for name in NAMES:
        model = torch_zoo.build(name)
        paths[name] = torch_to_onnx(model, folder / f"{name}.onnx", example_inputs=torch_zoo.example_input(1))
    return paths


# --------------------------------------------------------------------------- ONNX → PyTorch

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_onnx_to_torch_weights_are_parameters_and_outputs_match(exported, name):
    path = exported[name]
    graph = onnx.load(path).graph
    module = onnx_to_torch(path)
    params = dict(module.named_parameters())
    by_onnx = {onnx_name: key for key, onnx_name in module.initializer_names.items()}
    stats = {n.input[i] for n in graph.node if n.op_type == "BatchNormalization" for i in (3, 4)}
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        if not np.issubdtype(array.dtype, np.floating) or init.name in stats:
            continue
        key = f"params.{by_onnx[init.name]}"
        assert key in params and params[key].requires_grad, init.name
        np.testing.assert_array_equal(params[key].detach().numpy(), array)
    assert all(p.is_floating_point() for p in params.values())
    buffers = dict(module.named_buffers())
    for name_ in stats:
        assert f"consts.{by_onnx[name_]}" in buffers

    x = torch_zoo.example_input(3, seed=5)
    with torch.no_grad():
        y = module.eval()(x).numpy()
    assert_close(y, ort_run(path, x.numpy()), "onnx_to_torch vs onnxruntime")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_onnx_to_torch_adam_step_trains_every_parameter(exported, name):
    module = onnx_to_torch(exported[name]).train()
    before = {k: v.detach().clone() for k, v in module.named_parameters()}
    stats_before = {k: v.clone() for k, v in module.named_buffers() if "running" in k}
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    y = module(torch_zoo.example_input(4, seed=7))
    (y * torch.linspace(-1, 1, y.shape[1])).sum().backward()
    optimizer.step()
    unchanged = [k for k, v in module.named_parameters() if torch.equal(v, before[k])]
    assert not unchanged
    assert stats_before and all(not torch.equal(v, stats_before[k])
                                for k, v in module.named_buffers() if k in stats_before)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_onnx_to_torch_exports_back_to_onnx(exported, name, tmp_path):
    module = onnx_to_torch(exported[name])
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(1.1)  # trained weights must be what is exported
    out = torch_to_onnx(module, tmp_path / "back.onnx")
    x = torch_zoo.example_input(5, seed=11)
    with torch.no_grad():
        expected = module.eval()(x).numpy()
    assert_close(ort_run(out, x.numpy()), expected, "re-exported ONNX vs module")
    again = onnx_to_torch(out)
    with torch.no_grad():
        assert_close(again.eval()(x).numpy(), expected, "re-imported")
    assert len(list(again.parameters())) == len(list(module.parameters()))


def _single_node_model(node, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph([node], "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_dropout_node_is_active_only_in_train(tmp_path):
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 64])
    ratio = numpy_helper.from_array(np.array(0.5, np.float32), "ratio")
    model = _single_node_model(helper.make_node("Dropout", ["x", "ratio"], ["y"], name="drop"),
                               [x_info], [y_info], [ratio])
    onnx.save(model, tmp_path / "d.onnx")
    module = onnx_to_torch(tmp_path / "d.onnx")
    assert not list(module.parameters())  # the ratio configures the op: not a weight
    x = torch.ones(8, 64)
    assert torch.equal(module.eval()(x), x)
    y = module.train()(x)
    assert (y == 0).any() and torch.allclose(y[y != 0], torch.tensor(2.0))


def test_batchnorm_updates_running_statistics_with_onnx_momentum(tmp_path):
    c = 3
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, c, 4, 5])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, c, 4, 5])
    inits = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in
             [("s", np.full(c, 1.5)), ("b", np.full(c, 0.1)), ("m", np.full(c, 0.3)), ("v", np.full(c, 2.0))]]
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn",
                            momentum=0.8, epsilon=1e-3)
    onnx.save(_single_node_model(node, [x_info], [y_info], inits), tmp_path / "bn.onnx")
    module = onnx_to_torch(tmp_path / "bn.onnx")
    assert sorted(k for k, _ in module.named_parameters()) == ["params.b", "params.s"]
    x = torch.randn(6, c, 4, 5)
    with torch.no_grad():
        assert_close(module.eval()(x).numpy(), ort_run(tmp_path / "bn.onnx", x.numpy()), "eval BN")
        y = module.train()(x)
    mean = x.mean(dim=(0, 2, 3))
    torch.testing.assert_close(module.consts.m, 0.8 * 0.3 + 0.2 * mean)
    expected = 1.5 * (x - mean.view(1, c, 1, 1)) / torch.sqrt(x.var(dim=(0, 2, 3), unbiased=False).view(1, c, 1, 1) + 1e-3) + 0.1
    torch.testing.assert_close(y, expected, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- ONNX → Keras

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_onnx_to_keras_matches_onnxruntime_and_loads_in_the_bridge(exported, name, tmp_path):
    from conversion import keras_reference  # imports TensorFlow (after torch)

    h5 = onnx_to_keras(exported[name], tmp_path / f"{name}.h5")
    model = keras_reference.tf_keras.models.load_model(h5)  # built-in layers only: no custom objects
    assert not any(type(layer).__name__ == "Lambda" for layer in model.layers)
    x = torch_zoo.example_input(3, seed=5).numpy()
    expected = ort_run(exported[name], x)
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    assert tuple(model.input_shape[1:]) == x_nhwc.shape[1:]
    assert_close(model.predict(x_nhwc, verbose=0), expected, "tf_keras vs onnxruntime")
    bridged = keras_to_torch(h5).eval()
    with torch.no_grad():
        assert_close(bridged(torch.from_numpy(x_nhwc)).numpy(), expected, "keras_to_torch vs onnxruntime")


def test_onnx_to_keras_flatten_is_a_dense_with_permuted_rows(exported, tmp_path):
    from conversion import keras_reference

    h5 = onnx_to_keras(exported["flatten_head"], tmp_path / "f.h5")
    model = keras_reference.tf_keras.models.load_model(h5)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert "Permute" not in kinds and kinds.index("Flatten") + 1 == kinds.index("Dense")


# --------------------------------------------------------------------------- errors

def _graph_with(op_type, tmp_path, **attrs):
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    relu = helper.make_node("Relu", ["x"], ["r"], name="relu")
    odd = helper.make_node(op_type, ["r"], ["y"], name=f"my_{op_type.lower()}", **attrs)
    graph = helper.make_graph([relu, odd], "g", [x_info], [y_info])
    path = tmp_path / f"{op_type}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("op_type", ["Erf", "HardSwish"])
def test_unsupported_op_is_named(op_type, tmp_path):
    path = _graph_with(op_type, tmp_path)
    with pytest.raises(ConversionError, match=rf"{op_type} \(node 'my_{op_type.lower()}'\)"):
        onnx_to_torch(path)
    with pytest.raises(ConversionError, match=rf"{op_type} \(node 'my_{op_type.lower()}'\)"):
        onnx_to_keras(path, tmp_path / "never.h5")
    assert not (tmp_path / "never.h5").exists()


def test_lstm_is_named(tmp_path):
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, None, 4])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = numpy_helper.from_array(np.zeros((1, 24, 4), np.float32), "W")
    r = numpy_helper.from_array(np.zeros((1, 24, 6), np.float32), "R")
    node = helper.make_node("LSTM", ["x", "W", "R"], ["y"], name="rnn", hidden_size=6)
    onnx.save(_single_node_model(node, [x_info], [y_info], [w, r]), tmp_path / "lstm.onnx")
    with pytest.raises(ConversionError, match=r"LSTM \(node 'rnn'\)"):
        onnx_to_torch(tmp_path / "lstm.onnx")


def test_keras_rejects_what_its_layers_cannot_express(tmp_path):
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4, 6, 7])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = numpy_helper.from_array(np.ones((4, 2, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="grouped", group=2, kernel_shape=[3, 3])
    onnx.save(_single_node_model(node, [x_info], [y_info], [w]), tmp_path / "g.onnx")
    x = np.random.default_rng(0).standard_normal((2, 4, 6, 7)).astype(np.float32)
    with torch.no_grad():  # the torch interpreter runs it
        assert_close(onnx_to_torch(tmp_path / "g.onnx")(torch.from_numpy(x)).numpy(),
                     ort_run(tmp_path / "g.onnx", x), "grouped conv")
    with pytest.raises(ConversionError, match=r"'grouped' \(Conv\).*group=2"):
        onnx_to_keras(tmp_path / "g.onnx", tmp_path / "g.h5")
