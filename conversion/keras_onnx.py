"""A Keras .h5 Sequential model straight to ONNX, with h5py and onnx alone: no torch, no TensorFlow.

Why: a CPU service scores with ONNX Runtime, and exporting through the torch bridge costs a torch
import (≈ 2 s of a cold /predict on two cores) in a child process. For the plain image classifiers
this service trains (srkw_cnn: Conv2D, Dropout, Flatten, Dense) the ONNX graph is a few nodes per
layer, written here from the layer configs and the weights as Keras stored them.

One emitter per Keras layer class, registered by name like the torch converters in `layers.py`;
a model with anything else (another layer, a Functional graph, an option not handled) raises
`NotEmittable`, and the caller exports through the torch bridge instead. The graph takes the
Keras NHWC batch (`batch` × rows × cols × channels, float32), as the bridge's export does, and
returns the model's output (after its final activation).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .keras_file import layer_weight_paths, open_h5, read_keras_file
from .keras_geometry import pair, same_padding

OPSET = 17


class NotEmittable(Exception):
    """The model uses something this emitter does not write; export it through the bridge instead."""


@dataclass
class Emitter:
    """The graph being written: nodes, initializers, and the current tensor's name, layout and shape."""
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    tensor: str = "input"
    layout: str = "NHWC"            # "NHWC" for images as Keras holds them, "NCHW" inside convolutions
    shape: tuple = ()               # Keras' shape without the batch: (rows, cols, channels) or (features,)
    count: int = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def node(self, op: str, inputs: list[str], hint: str, **attributes) -> str:
        from onnx import helper

        out = self.name(hint)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attributes))
        self.tensor = out
        return out

    def constant(self, array: np.ndarray, hint: str) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def to_layout(self, layout: str) -> None:
        if self.layout != layout:
            perm = [0, 3, 1, 2] if layout == "NCHW" else [0, 2, 3, 1]
            self.node("Transpose", [self.tensor], "transpose", perm=perm)
            self.layout = layout


EMITTERS: dict[str, Callable] = {}


def emitter(*class_names: str):
    def register(function):
        for class_name in class_names:
            EMITTERS[class_name] = function
        return function
    return register


def activation(g: Emitter, name: str | None, layer: str) -> None:
    name = name or "linear"
    if name == "linear":
        return
    if name == "softmax":  # over the last Keras axis: channels, which are axis 1 inside convolutions
        g.node("Softmax", [g.tensor], "softmax", axis=1 if g.layout == "NCHW" else -1)
        return
    ops = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}
    if name not in ops:
        raise NotEmittable(f"layer {layer}: activation {name!r}")
    g.node(ops[name], [g.tensor], name)


@emitter("InputLayer", "Dropout", "SpatialDropout2D", "GaussianDropout", "GaussianNoise", "AlphaDropout")
def emit_inference_identity(g: Emitter, config: dict, weights: list[np.ndarray]) -> None:
    return None  # the input itself, or a layer active only in training: scoring sees the identity


@emitter("Activation")
def emit_activation(g: Emitter, config: dict, weights: list[np.ndarray]) -> None:
    activation(g, config.get("activation"), config.get("name", "activation"))


@emitter("ReLU")
def emit_relu(g: Emitter, config: dict, weights: list[np.ndarray]) -> None:
    if config.get("max_value") is not None or float(config.get("negative_slope") or 0) or float(config.get("threshold") or 0):
        raise NotEmittable(f"layer {config.get('name')}: ReLU with max_value/negative_slope/threshold")
    activation(g, "relu", config.get("name", "relu"))


@emitter("Conv2D", "Convolution2D")
def emit_conv2d(g: Emitter, config: dict, weights: list[np.ndarray]) -> None:
    name = config.get("name", "conv2d")
    if len(g.shape) != 3 or config.get("data_format", "channels_last") != "channels_last":
        raise NotEmittable(f"layer {name}: Conv2D needs a channels_last image input")
    if int(config.get("groups", 1) or 1) != 1:
        raise NotEmittable(f"layer {name}: grouped Conv2D")
    kernel = weights[0]  # Keras (kh, kw, in, out)
    kh, kw = kernel.shape[0], kernel.shape[1]
    strides, dilation = pair(config.get("strides", 1)), pair(config.get("dilation_rate", 1))
    if strides != (1, 1) and dilation != (1, 1):
        raise NotEmittable(f"layer {name}: strides and dilation together")
    rows, cols, _ = g.shape
    padding = config.get("padding", "valid")
    if padding == "same":
        top, bottom = same_padding(rows, kh, strides[0], dilation[0])
        left, right = same_padding(cols, kw, strides[1], dilation[1])
        out_rows, out_cols = math.ceil(rows / strides[0]), math.ceil(cols / strides[1])
    elif padding == "valid":
        top = bottom = left = right = 0
        out_rows = (rows - (kh - 1) * dilation[0] - 1) // strides[0] + 1
        out_cols = (cols - (kw - 1) * dilation[1] - 1) // strides[1] + 1
    else:
        raise NotEmittable(f"layer {name}: padding {padding!r}")
    g.to_layout("NCHW")
    inputs = [g.tensor, g.constant(kernel.transpose(3, 2, 0, 1), f"{name}_kernel")]
    if config.get("use_bias", True):
        inputs.append(g.constant(weights[1], f"{name}_bias"))
    g.node("Conv", inputs, name, kernel_shape=[kh, kw], strides=list(strides), dilations=list(dilation),
           pads=[top, left, bottom, right])
    g.shape = (out_rows, out_cols, kernel.shape[3])
    activation(g, config.get("activation"), name)


@emitter("MaxPooling2D")
def emit_max_pooling(g: Emitter, config: dict, weights: list[np.ndarray]) -> None:
    pooling(g, config, "MaxPool")


@emitter("AveragePooling2D")
def emit_average_pooling(g: Emitter, config: dict, weights: list[np.ndarray]) -> None:
    pooling(g, config, "AveragePool")


def pooling(g: Emitter, config: dict, op: str) -> None:
    name = config.get("name", "pooling")
    if len(g.shape) != 3 or config.get("data_format", "channels_last") != "channels_last":
        raise NotEmittable(f"layer {name}: pooling needs a channels_last image input")
    pool = pair(config.get("pool_size", 2))
    strides = pair(config.get("strides") or pool)
    rows, cols, channels = g.shape
    padding = config.get("padding", "valid")
    if padding == "same":
        if op == "AveragePool":
            raise NotEmittable(f"layer {name}: 'same' average pooling")  # Keras averages over the real pixels
        top, bottom = same_padding(rows, pool[0], strides[0])
        left, right = same_padding(cols, pool[1], strides[1])
        out = (math.ceil(rows / strides[0]), math.ceil(cols / strides[1]))
    elif padding == "valid":
        top = bottom = left = right = 0
        out = ((rows - pool[0]) // strides[0] + 1, (cols - pool[1]) // strides[1] + 1)
    else:
        raise NotEmittable(f"layer {name}: padding {padding!r}")
    g.to_layout("NCHW")
    g.node(op, [g.tensor], name, kernel_shape=list(pool), strides=list(strides), pads=[top, left, bottom, right])
    g.shape = (out[0], out[1], channels)


@emitter("Flatten")
def emit_flatten(g: Emitter, config: dict, weights: list[np.ndarray]) -> None:
    if config.get("data_format", "channels_last") != "channels_last":
        raise NotEmittable(f"layer {config.get('name')}: Flatten of channels_first data")
    g.to_layout("NHWC")  # Keras flattens in NHWC order; the next Dense's rows follow it
    g.node("Flatten", [g.tensor], "flatten", axis=1)
    g.shape = (int(np.prod(g.shape)),)


@emitter("Dense")
def emit_dense(g: Emitter, config: dict, weights: list[np.ndarray]) -> None:
    name = config.get("name", "dense")
    if len(g.shape) != 1:
        raise NotEmittable(f"layer {name}: Dense on a {len(g.shape) + 1}-d input")
    kernel = weights[0]  # Keras (in, out)
    g.node("MatMul", [g.tensor, g.constant(kernel, f"{name}_kernel")], f"{name}_matmul")
    if config.get("use_bias", True):
        g.node("Add", [g.tensor, g.constant(weights[1], f"{name}_bias")], name)
    g.shape = (kernel.shape[1],)
    activation(g, config.get("activation"), name)


def _sequential_layers(model_config: dict) -> tuple[list[dict], tuple | None]:
    if model_config.get("class_name") != "Sequential":
        raise NotEmittable(f"model class {model_config.get('class_name')!r} (only Sequential is written directly)")
    config = model_config.get("config")
    layers = config if isinstance(config, list) else (config or {}).get("layers", [])
    shape = None
    for entry in layers[:1]:
        layer_config = entry.get("config") or {}
        shape = layer_config.get("batch_input_shape") or layer_config.get("batch_shape")
    if shape is None and isinstance(config, dict) and config.get("build_input_shape"):
        shape = config["build_input_shape"]
    return layers, (tuple(shape) if shape else None)


def keras_h5_to_onnx_bytes(model_h5: str | os.PathLike) -> bytes:
    """The serialized ONNX model of a Sequential Keras .h5 file; NotEmittable if it is not one this
    module writes, ConversionError if the file is not a Keras model."""
    import onnx
    from onnx import TensorProto, helper

    keras = read_keras_file(model_h5)
    if keras.keras_major >= 3:
        raise NotEmittable("a Keras 3 file")
    layers, shape = _sequential_layers(keras.model_config)
    if shape is None or len(shape) != 4 or any(not isinstance(v, int) for v in shape[1:]):
        raise NotEmittable(f"input shape {shape} is not a fixed-size image batch")
    g = Emitter(shape=tuple(shape[1:]))
    with open_h5(model_h5) as f:
        for entry in layers:
            class_name = entry.get("class_name", "")
            config = entry.get("config") or {}
            write = EMITTERS.get(class_name)
            if write is None:
                raise NotEmittable(f"layer {config.get('name')}: {class_name}")
            weights = [np.asarray(f[path][()], dtype=np.float32)
                       for path in layer_weight_paths(f, config.get("name", ""))]
            write(g, config, weights)
    g.to_layout("NHWC")
    dims = ["batch", *shape[1:]]
    graph = helper.make_graph(
        g.nodes, "keras_model",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(g.tensor, TensorProto.FLOAT, ["batch", *g.shape])],
        g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="orca conversion.keras_onnx")
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    return model.SerializeToString()


__all__ = ["EMITTERS", "NotEmittable", "emitter", "keras_h5_to_onnx_bytes"]
