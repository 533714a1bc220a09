"""ONNX → Keras: a channels_last tf_keras model of built-in layers, saved as a legacy `.h5`.

`onnx_to_keras(onnx_path, out_h5)` rebuilds what `torch.onnx.export` makes of ordinary CNNs as a
tf_keras Functional model whose input is the NHWC transpose of the ONNX (NCHW) input, and saves
it in HDF5; the file loads with `tf_keras.models.load_model(path)` without custom objects, and
with `conversion.keras_to_torch`. Outputs of rank 2 equal ONNX Runtime's; a rank-4 output comes
out NHWC (the transpose of ONNX's NCHW).

How: every ONNX value is tracked with its layout in Keras: `nhwc` (a 4-D ONNX NCHW tensor held
as NHWC), `plain` (same layout as ONNX) or `flat` (a Keras Flatten of an NHWC map: the same
elements as ONNX's NCHW flatten, in another order). A Gemm/MatMul that reads a `flat` value gets
its kernel rows permuted instead of a Permute layer, so the graph stays
`Conv … Flatten → Dense` as a Keras author would write it. Values known at load time (shape
arithmetic, Constant nodes, Clip bounds) are folded with `conversion.onnx_interpreter`'s ops and
produce no layer. One function per ONNX op type, registered with `@keras_op("Name")`; any other
op raises `ConversionError` naming every such op and node before anything is built.

Imports TensorFlow (after torch and torch._dynamo, see docs/design.md).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .atomic import atomic_output
from .errors import ConversionError
from .keras_geometry import same_padding

_KERAS_OPS: dict[str, Callable] = {}
# ops that only compute shapes: fine when folded or feeding a Reshape's shape input
_SHAPE_OPS = {"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Constant", "ConstantOfShape",
              "Slice", "Identity"}
_NCHW_TO_NHWC_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}


def keras_op(*names: str):
    def register(fn):
        for name in names:
            _KERAS_OPS[name] = fn
        return fn
    return register


def supported_keras_ops() -> list[str]:
    return sorted(set(_KERAS_OPS) | {"Constant", "Shape", "Gather", "Unsqueeze", "Squeeze", "Cast",
                                     "ConstantOfShape", "Slice"})


@dataclass
class Value:
    """A non-constant ONNX value as a Keras tensor."""

    tensor: object
    layout: str  # "nhwc" | "plain" | "flat"
    onnx_rank: int
    perm: np.ndarray | None = None  # flat: Keras element i is ONNX element perm[i]
    source: object = None  # flat: the NHWC tensor it flattens
    nonneg: bool = False  # known ≥ 0 (after ReLU…): zero padding is then as good as −inf


@dataclass
class Builder:
    tf_keras: object
    module: object  # the OnnxModule: static values and partial shapes
    weights: dict  # initializer name → numpy
    values: dict = field(default_factory=dict)
    names: set = field(default_factory=set)
    consumers: dict = field(default_factory=dict)
    outputs: set = field(default_factory=set)
    done: set = field(default_factory=set)  # node names already converted by a fusion

    @property
    def L(self):
        return self.tf_keras.layers

    def name(self, node, suffix=""):
        base = re.sub(r"[^0-9A-Za-z_]", "_", node.name + suffix).strip("_") or node.op_type.lower()
        if base[0].isdigit():
            base = "n_" + base
        candidate, i = base, 1
        while candidate in self.names:
            i += 1
            candidate = f"{base}_{i}"
        self.names.add(candidate)
        return candidate

    def const(self, name):
        """numpy value of a constant input (initializer, Constant or folded), else None."""
        if not name:
            return None
        if name in self.module.static_values:
            return np.asarray(self.module.static_values[name])
        if name in self.weights:
            return self.weights[name]
        source = next((n.inputs[0] for n in self.module.nodes  # the exporter dedups equal weights
                       if n.op_type == "Identity" and n.outputs[0] == name), None)
        return self.const(source) if source else None

    def need_const(self, node, i, what):
        value = self.const(node.inputs[i]) if i < len(node.inputs) else None
        if value is None:
            raise node.fail(f"{what} must be a constant of the graph")
        return value

    def value(self, node, i) -> Value:
        name = node.inputs[i]
        if name not in self.values:
            raise node.fail(f"input {name!r} is not a tensor the Keras model computes "
                            "(a shape computed at run time is only supported as a Reshape's shape)")
        return self.values[name]

    def set(self, node, value: Value, i=0):
        self.values[node.outputs[i]] = value

    # ---------------------------------------------------------------- layouts

    def nhwc(self, node, v: Value):
        if v.layout == "nhwc":
            return v.tensor
        if v.layout == "plain" and v.onnx_rank == 4:
            return self.L.Permute((2, 3, 1), name=self.name(node, "_to_nhwc"))(v.tensor)
        raise node.fail(f"needs a 4-D (NCHW) input, got a rank-{v.onnx_rank} {v.layout} tensor")

    def plain(self, node, v: Value):
        """The Keras tensor in ONNX's own element order."""
        if v.layout == "plain":
            return v.tensor
        if v.layout == "nhwc":
            return self.L.Permute((3, 1, 2), name=self.name(node, "_to_nchw"))(v.tensor)
        nchw = self.L.Permute((3, 1, 2), name=self.name(node, "_to_nchw"))(v.source)
        return self.L.Flatten(name=self.name(node, "_flatten_nchw"))(nchw)

    def spatial(self, tensor):
        shape = tuple(tensor.shape)
        return int(shape[1]), int(shape[2]), int(shape[3])


def _fail(node, message):
    return ConversionError(f"ONNX node {node.name!r} ({node.op_type}): {message}")


def _pair(values, default):
    if values is None:
        return [default, default]
    values = [int(v) for v in values]
    if len(values) != 2:
        raise ValueError(values)
    return values


def _pads4(node, h, w, kernel, strides, dilations):
    """ONNX (top, left, bottom, right) after auto_pad, for a 2-D op."""
    auto = node.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", "", None):
        pads = node.attr("pads")
        return [0, 0, 0, 0] if pads is None else [int(p) for p in pads]
    if auto == "VALID":
        return [0, 0, 0, 0]
    out = [same_padding(size, k, s, d, extra_at_end=auto == "SAME_UPPER")
           for size, k, s, d in ((h, kernel[0], strides[0], dilations[0]), (w, kernel[1], strides[1], dilations[1]))]
    return [out[0][0], out[1][0], out[0][1], out[1][1]]


def _check_2d(node, kernel):
    if len(kernel) != 2:
        raise node.fail(f"only 2-D ops are supported (kernel {list(kernel)})")


def _zero_pad(b, node, x, pads):
    t, l, bo, r = pads
    if min(pads) < 0:
        raise node.fail(f"negative pads {pads} are not supported")
    if not any(pads):
        return x
    return b.L.ZeroPadding2D(((t, bo), (l, r)), name=b.name(node, "_pad"))(x)


# --------------------------------------------------------------------------- convolutions

@keras_op("Conv")
def _conv(b: Builder, node):
    v = b.value(node, 0)
    x = b.nhwc(node, v)
    w = b.need_const(node, 1, "the Conv weight")
    bias = b.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if len(node.inputs) > 2 and node.inputs[2] and bias is None:
        raise node.fail("the Conv bias must be a constant of the graph")
    kernel = [int(k) for k in (node.attr("kernel_shape") or w.shape[2:])]
    _check_2d(node, kernel)
    strides, dilations = _pair(node.attr("strides"), 1), _pair(node.attr("dilations"), 1)
    if max(strides) > 1 and max(dilations) > 1:
        raise node.fail("Keras has no convolution with both strides and dilations > 1")
    h, wd, c = b.spatial(x)
    x = _zero_pad(b, node, x, _pads4(node, h, wd, kernel, strides, dilations))
    group = int(node.attr("group", 1))
    out_channels = w.shape[0]
    use_bias = bias is not None
    if group == 1:
        layer = b.L.Conv2D(out_channels, kernel, strides=strides, dilation_rate=dilations, padding="valid",
                           use_bias=use_bias, name=b.name(node))
        y = layer(x)
        params = [w.transpose(2, 3, 1, 0)]
    elif group == c and w.shape[1] == 1:
        multiplier = out_channels // c
        layer = b.L.DepthwiseConv2D(kernel, strides=strides, dilation_rate=dilations, padding="valid",
                                    depth_multiplier=multiplier, use_bias=use_bias, name=b.name(node))
        y = layer(x)
        # ONNX output channel ci·m + j ← depthwise_kernel[:, :, ci, j]
        params = [w.reshape(c, multiplier, kernel[0], kernel[1]).transpose(2, 3, 0, 1)]
    else:
        raise node.fail(f"grouped convolution with group={group} (input channels {c}) is not supported; "
                        "only group=1 and depthwise (group = input channels)")
    if use_bias:
        params.append(bias.reshape(-1))
    layer.set_weights(params)
    b.set(node, Value(y, "nhwc", 4))


@keras_op("ConvTranspose")
def _conv_transpose(b: Builder, node):
    x = b.nhwc(node, b.value(node, 0))
    w = b.need_const(node, 1, "the ConvTranspose weight")
    bias = b.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    kernel = [int(k) for k in (node.attr("kernel_shape") or w.shape[2:])]
    _check_2d(node, kernel)
    if int(node.attr("group", 1)) != 1:
        raise node.fail("grouped transposed convolution is not supported")
    if node.attr("output_shape") is not None or node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID", ""):
        raise node.fail("output_shape / auto_pad SAME are not supported")
    strides, dilations = _pair(node.attr("strides"), 1), _pair(node.attr("dilations"), 1)
    if max(dilations) > 1:
        raise node.fail("dilated transposed convolution is not supported")
    output_padding = _pair(node.attr("output_padding"), 0)
    pads = node.attr("pads")
    pads = [0, 0, 0, 0] if pads is None or node.attr("auto_pad") == "VALID" else [int(p) for p in pads]
    crop = ((pads[0], pads[2] - output_padding[0]), (pads[1], pads[3] - output_padding[1]))
    if min(crop[0] + crop[1]) < 0:
        raise node.fail("output_padding larger than the end pads is not supported")
    layer = b.L.Conv2DTranspose(w.shape[1], kernel, strides=strides, padding="valid",
                                use_bias=bias is not None, name=b.name(node))
    y = layer(x)
    params = [w.transpose(2, 3, 1, 0)] + ([bias.reshape(-1)] if bias is not None else [])
    layer.set_weights(params)
    if any(crop[0] + crop[1]):
        y = b.L.Cropping2D(crop, name=b.name(node, "_crop"))(y)
    b.set(node, Value(y, "nhwc", 4))


# --------------------------------------------------------------------------- activations

def _unary(b: Builder, node, layer, nonneg=False):
    v = b.value(node, 0)
    src = v.tensor
    y = layer(src)
    b.set(node, Value(y, v.layout, v.onnx_rank, v.perm, v.source, nonneg or False))


@keras_op("Relu")
def _relu(b, node):
    _unary(b, node, b.L.ReLU(name=b.name(node)), nonneg=True)


@keras_op("LeakyRelu")
def _leaky(b, node):
    _unary(b, node, b.L.LeakyReLU(alpha=float(node.attr("alpha", 0.01)), name=b.name(node)))


@keras_op("Sigmoid", "Tanh")
def _activation(b, node):
    _unary(b, node, b.L.Activation(node.op_type.lower(), name=b.name(node)), nonneg=node.op_type == "Sigmoid")


@keras_op("Softmax")
def _softmax(b, node):
    v = b.value(node, 0)
    rank = v.onnx_rank
    axis = int(node.attr("axis", -1 if node.opset >= 13 else 1))
    axis = axis + rank if axis < 0 else axis
    if node.opset < 13 and axis != rank - 1:
        raise node.fail("opset < 13 Softmax over several axes is not supported")
    keras_axis = _NCHW_TO_NHWC_AXIS[axis] if v.layout == "nhwc" else axis
    if v.layout == "flat" or keras_axis != rank - 1:
        raise node.fail("Softmax is only supported over the channel (last Keras) axis")
    _unary(b, node, b.L.Activation("softmax", name=b.name(node)), nonneg=True)


@keras_op("Clip")
def _clip(b, node):
    if node.opset < 11:
        lo, hi = node.attr("min"), node.attr("max")
    else:
        lo = b.need_const(node, 1, "the Clip minimum") if len(node.inputs) > 1 and node.inputs[1] else None
        hi = b.need_const(node, 2, "the Clip maximum") if len(node.inputs) > 2 and node.inputs[2] else None
    lo = None if lo is None else float(np.asarray(lo).reshape(-1)[0])
    hi = None if hi is None else float(np.asarray(hi).reshape(-1)[0])
    if lo != 0.0:
        raise node.fail(f"Clip({lo}, {hi}) is not supported: Keras' ReLU needs a lower bound of 0")
    max_value = None if hi is None or not np.isfinite(hi) else hi
    _unary(b, node, b.L.ReLU(max_value=max_value, name=b.name(node)), nonneg=True)


@keras_op("Dropout")
def _dropout(b, node):
    ratio = float(node.attr("ratio", 0.5))
    if node.opset >= 12 and len(node.inputs) > 1 and node.inputs[1]:
        ratio = float(b.need_const(node, 1, "the Dropout ratio").reshape(-1)[0])
    v = b.value(node, 0)
    _unary(b, node, b.L.Dropout(ratio, name=b.name(node)), nonneg=v.nonneg)


@keras_op("Identity")
def _identity(b, node):
    b.set(node, b.value(node, 0))


# --------------------------------------------------------------------------- pooling

def _pool_geometry(b, node, x):
    kernel = [int(k) for k in node.attr("kernel_shape")]
    _check_2d(node, kernel)
    strides = _pair(node.attr("strides"), 1)
    dilations = _pair(node.attr("dilations"), 1)
    if max(dilations) > 1:
        raise node.fail("dilated pooling is not supported")
    h, w, _ = b.spatial(x)
    pads = _pads4(node, h, w, kernel, strides, dilations)
    if node.attr("ceil_mode", 0):
        for size, k, s, pb, pe in ((h, kernel[0], strides[0], pads[0], pads[2]), (w, kernel[1], strides[1], pads[1], pads[3])):
            if (size + pb + pe - k) % s:
                raise node.fail("ceil_mode=1 changing the output size is not supported")
    same = [*same_padding(h, kernel[0], strides[0]), *same_padding(w, kernel[1], strides[1])]
    is_same = [pads[0], pads[2], pads[1], pads[3]] == same
    return kernel, strides, pads, is_same


@keras_op("MaxPool")
def _max_pool(b, node):
    if len(node.outputs) > 1 and node.outputs[1]:
        raise node.fail("the Indices output is not supported")
    v = b.value(node, 0)
    x = b.nhwc(node, v)
    kernel, strides, pads, is_same = _pool_geometry(b, node, x)
    padding = "valid"
    if any(pads):
        if is_same:
            padding = "same"
        elif v.nonneg:
            x = _zero_pad(b, node, x, pads)
        else:
            raise node.fail(f"max pooling with pads {pads} on values that may be negative: Keras pads "
                            "with zeros or as TF 'same', neither matches here")
    y = b.L.MaxPooling2D(kernel, strides=strides, padding=padding, name=b.name(node))(x)
    b.set(node, Value(y, "nhwc", 4, nonneg=v.nonneg))


@keras_op("AveragePool")
def _avg_pool(b, node):
    v = b.value(node, 0)
    x = b.nhwc(node, v)
    kernel, strides, pads, is_same = _pool_geometry(b, node, x)
    padding = "valid"
    if any(pads):
        if node.attr("count_include_pad", 0):
            x = _zero_pad(b, node, x, pads)
        elif is_same:
            padding = "same"
        else:
            raise node.fail(f"average pooling with pads {pads} not counted: only TF 'same' pads are supported")
    y = b.L.AveragePooling2D(kernel, strides=strides, padding=padding, name=b.name(node))(x)
    b.set(node, Value(y, "nhwc", 4, nonneg=v.nonneg))


@keras_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(b, node):
    v = b.value(node, 0)
    x = b.nhwc(node, v)
    cls = b.L.GlobalAveragePooling2D if node.op_type == "GlobalAveragePool" else b.L.GlobalMaxPooling2D
    y = cls(keepdims=True, name=b.name(node))(x)
    b.set(node, Value(y, "nhwc", 4, nonneg=v.nonneg))


@keras_op("ReduceMean", "ReduceMax")
def _reduce(b, node):
    v = b.value(node, 0)
    if node.opset >= 18:
        axes = b.need_const(node, 1, "the axes") if len(node.inputs) > 1 and node.inputs[1] else None
    else:
        axes = node.attr("axes")
    axes = None if axes is None else sorted(int(a) % v.onnx_rank for a in np.asarray(axes).reshape(-1))
    if v.onnx_rank != 4 or axes != [2, 3]:
        raise node.fail(f"only reductions over the spatial axes [2, 3] of a 4-D tensor are supported (axes {axes})")
    keep = bool(node.attr("keepdims", 1))
    x = b.nhwc(node, v)
    cls = b.L.GlobalAveragePooling2D if node.op_type == "ReduceMean" else b.L.GlobalMaxPooling2D
    y = cls(keepdims=keep, name=b.name(node))(x)
    b.set(node, Value(y, "nhwc", 4, nonneg=v.nonneg) if keep else Value(y, "plain", 2, nonneg=v.nonneg))


# --------------------------------------------------------------------------- normalization, dense

@keras_op("BatchNormalization")
def _batch_norm(b, node):
    v = b.value(node, 0)
    if len(node.outputs) > 1 and any(node.outputs[1:]):
        raise node.fail("training-mode BatchNormalization (running statistics outputs) is not supported")
    gamma, beta, mean, var = (b.need_const(node, i, "BatchNormalization parameters") for i in (1, 2, 3, 4))
    if v.onnx_rank == 4:
        x = b.nhwc(node, v)
    elif v.layout == "plain" and v.onnx_rank == 2:
        x = v.tensor
    else:
        raise node.fail(f"BatchNormalization of a rank-{v.onnx_rank} {v.layout} tensor is not supported")
    layer = b.L.BatchNormalization(axis=-1, momentum=float(node.attr("momentum", 0.9)),
                                   epsilon=float(node.attr("epsilon", 1e-5)), name=b.name(node))
    y = layer(x)
    layer.set_weights([gamma, beta, mean, var])
    b.set(node, Value(y, "nhwc" if v.onnx_rank == 4 else "plain", v.onnx_rank))


def _dense(b, node, v: Value, kernel: np.ndarray, bias, out_name=None):
    if v.onnx_rank != 2:
        raise node.fail(f"a dense product needs a 2-D input, got rank {v.onnx_rank}")
    x = v.tensor
    if v.layout == "flat":
        kernel = kernel[v.perm]  # Keras flattens NHWC: reorder the rows instead of the tensor
    elif v.layout != "plain":
        raise node.fail(f"unexpected {v.layout} input")
    layer = b.L.Dense(kernel.shape[1], use_bias=bias is not None, name=b.name(node))
    y = layer(x)
    layer.set_weights([kernel.astype(np.float32)] + ([bias.astype(np.float32)] if bias is not None else []))
    b.values[out_name or node.outputs[0]] = Value(y, "plain", 2)


def _bias_vector(node, c, units):
    c = np.asarray(c, dtype=np.float32)
    if c.size == 1:
        return np.full(units, float(c.reshape(-1)[0]), np.float32)
    if c.size == units and c.shape[-1] == units:
        return c.reshape(-1)
    raise node.fail(f"bias of shape {c.shape} does not broadcast to ({units},) per row")


@keras_op("Gemm")
def _gemm(b, node):
    v = b.value(node, 0)
    if node.attr("transA", 0):
        raise node.fail("transA=1 is not supported")
    w = b.need_const(node, 1, "the Gemm weight")
    kernel = (w.T if node.attr("transB", 0) else w) * float(node.attr("alpha", 1.0))
    bias = None
    if len(node.inputs) > 2 and node.inputs[2]:
        bias = _bias_vector(node, b.need_const(node, 2, "the Gemm bias"), kernel.shape[1]) * float(node.attr("beta", 1.0))
    _dense(b, node, v, kernel, bias)


@keras_op("MatMul")
def _matmul(b, node):
    v = b.value(node, 0)
    w = b.const(node.inputs[1])
    if w is None or w.ndim != 2:
        raise node.fail("only a product with a constant 2-D weight (a dense layer) is supported")
    # fuse a following Add of a constant bias into the Dense layer
    users = b.consumers.get(node.outputs[0], [])
    if len(users) == 1 and users[0].op_type == "Add" and node.outputs[0] not in b.outputs:
        add = users[0]
        other = add.inputs[1] if add.inputs[0] == node.outputs[0] else add.inputs[0]
        c = b.const(other)
        if c is not None:
            try:
                bias = _bias_vector(add, c, w.shape[1])
            except ConversionError:
                bias = None
            if bias is not None:
                _dense(b, node, v, w, bias, out_name=add.outputs[0])
                b.done.add(id(add))
                return
    _dense(b, node, v, w, None)


# --------------------------------------------------------------------------- merging

def _common(b, node, vs: list[Value]):
    """Keras tensors of several values in one layout: nhwc if any is a 4-D nhwc map."""
    if any(v.layout == "nhwc" for v in vs) and all(v.onnx_rank == 4 for v in vs):
        return [b.nhwc(node, v) for v in vs], "nhwc"
    if all(v.layout == "flat" for v in vs) and all(np.array_equal(v.perm, vs[0].perm) for v in vs):
        return [v.tensor for v in vs], "flat"
    return [b.plain(node, v) for v in vs], "plain"


@keras_op("Add", "Sub", "Mul")
def _merge(b, node):
    for name in node.inputs[:2]:
        if b.const(name) is not None:
            raise node.fail("an elementwise op with a constant operand is not supported "
                            "(only a bias right after a MatMul, which becomes a Dense bias)")
    vs = [b.value(node, 0), b.value(node, 1)]
    if vs[0].onnx_rank != vs[1].onnx_rank:
        raise node.fail("operands of different ranks are not supported")
    tensors, layout = _common(b, node, vs)
    cls = {"Add": b.L.Add, "Sub": b.L.Subtract, "Mul": b.L.Multiply}[node.op_type]
    y = cls(name=b.name(node))(tensors)
    nonneg = node.op_type != "Sub" and vs[0].nonneg and vs[1].nonneg
    b.set(node, Value(y, layout, vs[0].onnx_rank, vs[0].perm if layout == "flat" else None,
                      vs[0].source if layout == "flat" else None, nonneg))


@keras_op("Concat")
def _concat(b, node):
    vs = [b.value(node, i) for i in range(len(node.inputs))]
    rank = vs[0].onnx_rank
    axis = int(node.attr("axis"))
    axis = axis + rank if axis < 0 else axis
    if axis == 0:
        raise node.fail("concatenation along the batch axis is not supported")
    tensors, layout = _common(b, node, vs)
    if layout == "flat":
        tensors, layout = [b.plain(node, v) for v in vs], "plain"
    keras_axis = _NCHW_TO_NHWC_AXIS[axis] if layout == "nhwc" else axis
    y = b.L.Concatenate(axis=keras_axis, name=b.name(node))(tensors)
    b.set(node, Value(y, layout, rank, nonneg=all(v.nonneg for v in vs)))


# --------------------------------------------------------------------------- reshaping

def _flatten_nhwc(b, node, v: Value):
    h, w, c = b.spatial(v.tensor)
    y = b.L.Flatten(name=b.name(node))(v.tensor)
    if h == 1 and w == 1:
        return Value(y, "plain", 2, nonneg=v.nonneg)
    perm = np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)
    return Value(y, "flat", 2, perm=perm, source=v.tensor, nonneg=v.nonneg)


@keras_op("Flatten")
def _flatten(b, node):
    v = b.value(node, 0)
    axis = int(node.attr("axis", 1))
    axis = axis + v.onnx_rank if axis < 0 else axis
    if axis != 1:
        raise node.fail(f"Flatten(axis={axis}) is not supported (only axis=1)")
    if v.onnx_rank == 2 or v.layout == "flat":
        b.set(node, v)
    elif v.layout == "nhwc":
        b.set(node, _flatten_nhwc(b, node, v))
    else:
        b.set(node, Value(b.L.Flatten(name=b.name(node))(v.tensor), "plain", 2, nonneg=v.nonneg))


def _reshape_target(b, node):
    static = b.const(node.inputs[1])
    if static is not None:
        return [int(d) for d in static.reshape(-1)]
    partial = node.attrs.get("_partial", [None, None])[1]
    if partial is None:
        raise node.fail("the target shape is computed at run time in a way the converter cannot follow")
    return [None if d is None else int(d) for d in partial[0]]


@keras_op("Reshape")
def _reshape(b, node):
    v = b.value(node, 0)
    target = _reshape_target(b, node)
    allow_zero = bool(node.attr("allowzero", 0))
    shape = [None] + [int(d) for d in v.tensor.shape[1:]]
    onnx_shape = shape if v.layout != "nhwc" else [None, shape[3], shape[1], shape[2]]
    if v.layout == "flat":
        onnx_shape = [None, int(np.prod(shape[1:]))]
    if not allow_zero:
        target = [onnx_shape[i] if d == 0 and i < len(onnx_shape) else d for i, d in enumerate(target)]
    rest = target[1:]
    if target[0] is not None and target[0] != -1:
        raise node.fail(f"reshape to {target}: the batch dimension must be kept")
    if any(d is None for d in rest):
        raise node.fail(f"reshape to {target}: only the batch dimension may be computed at run time")
    if target[0] == -1 and -1 in rest:
        raise node.fail(f"reshape to {target}: two inferred dimensions")
    total = int(np.prod(onnx_shape[1:]))
    if -1 in rest:
        known = int(np.prod([d for d in rest if d != -1]))
        rest = [total // known if d == -1 else d for d in rest]
    if int(np.prod(rest)) != total:
        raise node.fail(f"reshape of {onnx_shape} to {target}: the batch dimension must be kept")
    if len(rest) == 1 and v.layout in ("nhwc", "flat"):
        b.set(node, v if v.layout == "flat" else _flatten_nhwc(b, node, v))
        return
    if list(rest) == onnx_shape[1:]:
        b.set(node, v)
        return
    x = b.plain(node, v)
    y = b.L.Reshape(tuple(rest), name=b.name(node))(x)
    b.set(node, Value(y, "plain", len(rest) + 1, nonneg=v.nonneg))


@keras_op("Transpose")
def _transpose(b, node):
    v = b.value(node, 0)
    rank = v.onnx_rank
    perm = node.attr("perm")
    perm = list(reversed(range(rank))) if perm is None else [int(p) for p in perm]
    if perm[0] != 0:
        raise node.fail("transposing the batch axis is not supported")
    if v.layout == "nhwc":
        keras_perm = [_NCHW_TO_NHWC_AXIS[p] for p in perm]
        src = v.tensor
    else:
        keras_perm, src = perm, b.plain(node, v)
    if keras_perm == list(range(rank)):
        b.set(node, Value(src, "plain", rank, nonneg=v.nonneg))
        return
    # the result as NHWC when it is 4-D and that is cheaper (no layer at all)
    y = b.L.Permute(tuple(keras_perm[1:]), name=b.name(node))(src)
    b.set(node, Value(y, "plain", rank, nonneg=v.nonneg))


@keras_op("Pad")
def _pad(b, node):
    v = b.value(node, 0)
    mode = node.attr("mode", "constant")
    if node.opset < 11:
        pads, value = [int(p) for p in node.attr("pads")], float(node.attr("value", 0.0))
    else:
        pads = [int(p) for p in b.need_const(node, 1, "the pads").reshape(-1)]
        value = 0.0
        if len(node.inputs) > 2 and node.inputs[2]:
            value = float(b.need_const(node, 2, "the pad value").reshape(-1)[0])
        if len(node.inputs) > 3 and node.inputs[3]:
            raise node.fail("the axes input is not supported")
    if mode != "constant" or value != 0.0:
        raise node.fail(f"only zero padding is supported (mode={mode!r}, value={value})")
    if v.onnx_rank != 4 or any(pads[i] for i in (0, 1, 4, 5)):
        raise node.fail(f"only spatial padding of a 4-D tensor is supported (pads {pads})")
    x = b.nhwc(node, v)
    y = _zero_pad(b, node, x, [pads[2], pads[3], pads[6], pads[7]])
    if y is x:
        b.set(node, v)
    else:
        b.set(node, Value(y, "nhwc", 4, nonneg=v.nonneg))


# --------------------------------------------------------------------------- driver

def _check_supported(module) -> None:
    bad = []
    for node in module.nodes:
        if node.op_type in _KERAS_OPS:
            continue
        if all(name in module.static_values for name in node.outputs if name):
            continue
        if node.op_type in _SHAPE_OPS:
            continue
        bad.append(f"{node.op_type} (node {node.name!r})")
    if bad:
        raise ConversionError(f"{module.source or 'ONNX model'}: ONNX ops without a Keras equivalent: "
                              f"{', '.join(bad)}")


def onnx_to_keras(onnx_path, out_h5) -> str:
    """Build a channels_last tf_keras model equal to the ONNX graph and save it as `.h5`.

    The Keras input is the NHWC transpose of the ONNX NCHW input (a rank-2 input stays as it is).
    Returns the path written. Raises `ConversionError` for ops (or op settings) Keras' built-in
    layers cannot express.
    """
    import onnx
    from onnx import numpy_helper

    path = os.fspath(onnx_path)
    try:
        model = onnx.load(path)
    except Exception as exc:
        raise ConversionError(f"{path}: not a readable ONNX file: {exc}") from exc
    # op support first: the torch interpreter only knows a superset of the shape ops
    module = _interpreter(model, path)
    _check_supported(module)

    from . import keras_reference  # imports TensorFlow after torch and torch._dynamo

    tf_keras = keras_reference.tf_keras
    tf_keras.backend.clear_session()
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    b = Builder(tf_keras, module, weights)
    b.outputs = set(module.output_names)
    for node in module.nodes:
        for name in node.inputs:
            b.consumers.setdefault(name, []).append(node)

    inputs = []
    for name, shape in zip(module.input_names, module.input_shapes):
        dims = list(shape[1:])
        if any(d is None for d in dims):
            raise ConversionError(f"{path}: input {name!r} has a dynamic non-batch dimension {list(shape)}")
        keras_name = re.sub(r"[^0-9A-Za-z_]", "_", name) or "input"
        if len(dims) == 3:
            t = tf_keras.Input((dims[1], dims[2], dims[0]), name=keras_name)
            b.values[name] = Value(t, "nhwc", 4)
        else:
            t = tf_keras.Input(tuple(dims), name=keras_name)
            b.values[name] = Value(t, "plain", len(shape))
        b.names.add(keras_name)
        inputs.append(t)

    for node in module.nodes:
        if id(node) in b.done:
            continue
        if all(name in module.static_values for name in node.outputs if name):
            continue
        if node.op_type not in _KERAS_OPS:  # a shape op computed at run time: Reshape reads it
            continue
        if node.op_type in _SHAPE_OPS and not any(name in b.values for name in node.inputs if name):
            continue  # shape arithmetic (Concat of Unsqueezes…) on run-time shapes
        _KERAS_OPS[node.op_type](b, node)

    outputs = []
    for name in module.output_names:
        if name not in b.values:
            raise ConversionError(f"{path}: output {name!r} is not computed by the Keras model")
        v = b.values[name]
        fake = _OutputNode(name)
        outputs.append(v.tensor if v.layout in ("nhwc", "plain") else b.plain(fake, v))
    keras_model = tf_keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0],
                                 name=re.sub(r"[^0-9A-Za-z_]", "_", model.graph.name or "onnx_model"))
    out_h5 = os.fspath(out_h5)
    with atomic_output(out_h5, ".h5") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "HDF5 is legacy": it is the format this project exchanges
        keras_model.save(tmp, save_format="h5", include_optimizer=False)
    return out_h5


@dataclass
class _OutputNode:
    name: str
    op_type: str = "Output"

    def fail(self, message):
        return ConversionError(f"output {self.name!r}: {message}")


def _interpreter(model, path):
    from .onnx_interpreter import OnnxModule

    return OnnxModule(model, source=path)
