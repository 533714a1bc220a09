"""ONNX → PyTorch: a small interpreter module whose float weights are trainable parameters.

`onnx_to_torch(path)` reads an ONNX file and returns an `OnnxModule`: an `nn.Module` that runs
the graph's nodes in order with torch functional ops, in the file's own layout (NCHW for a
PyTorch export). Unlike onnx2torch (see docs/design.md, "Measured facts"):

- every floating-point initializer the graph uses as data (Conv/Gemm/MatMul weights and biases,
  Add/Mul operands, BatchNormalization scale and bias, …) is a trainable `nn.Parameter`;
  BatchNormalization running mean/variance are buffers, updated in `train()` with the node's
  ONNX momentum; integer initializers and constants that only configure an op (shapes, axes,
  pads, Clip bounds, Dropout ratio) are buffers, never parameters;
- Dropout nodes stay and are active in `train()`;
- BatchNormalization uses batch statistics in `train()`.

Parameters are named after the initializers (`params.<sanitized name>`); `initializer_names`
maps each sanitized name back to the ONNX one. One function per op type, registered by ONNX op
name with `@op("Name")`, like `conversion/layers.py`; an op without one raises
`ConversionError` (naming every such op type and node) before any weight is read.

`torch_to_onnx(module, out)` works on the result: the interpreter traces into ordinary ONNX ops.
"""

from __future__ import annotations

import math
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConversionError
from .keras_geometry import same_padding

# --------------------------------------------------------------------------- registry

OpFn = Callable[["Node", list], list]
_OPS: dict[str, OpFn] = {}
# Input positions of each op that configure it (shapes, axes, bounds…) rather than carry data:
# a float initializer used only there is a buffer, never a parameter.
_CONFIG_INPUTS: dict[str, tuple[int, ...]] = {}
# Input positions that are BatchNormalization-like running statistics: buffers.
_STAT_INPUTS: dict[str, tuple[int, ...]] = {}


def op(*names: str, config_inputs: tuple[int, ...] = (), stat_inputs: tuple[int, ...] = ()):
    def register(fn: OpFn) -> OpFn:
        for name in names:
            _OPS[name] = fn
            _CONFIG_INPUTS[name] = config_inputs
            _STAT_INPUTS[name] = stat_inputs
        return fn
    return register


def supported_onnx_ops() -> list[str]:
    return sorted(_OPS)


# --------------------------------------------------------------------------- node

@dataclass
class Node:
    """One ONNX node as the interpreter runs it."""

    op_type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict
    opset: int
    module: "OnnxModule" = field(repr=False, default=None)
    static: list = field(default_factory=list)  # numpy value of each input known before running, else None

    def attr(self, key, default=None):
        return self.attrs.get(key, default)

    def static_input(self, i):
        """The value of input i as numpy when it is a constant of the graph (else None)."""
        return self.static[i] if i < len(self.static) else None

    def ints_input(self, i, tensor) -> list[int] | None:
        """Input i as a list of python ints (constant if known, else read from the tensor)."""
        value = self.static_input(i)
        if value is not None:
            return [int(v) for v in np.asarray(value).reshape(-1)]
        if tensor is None:
            return None
        return [int(v) for v in tensor.reshape(-1).tolist()]

    def fail(self, message) -> ConversionError:
        return ConversionError(f"ONNX node {self.name!r} ({self.op_type}): {message}")


def _attr_value(attr):
    import onnx
    from onnx import numpy_helper

    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


def _sanitize(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^0-9A-Za-z_]", "_", name).strip("_") or "w"
    if base[0].isdigit():
        base = "w_" + base
    candidate, i = base, 1
    while candidate in taken:
        i += 1
        candidate = f"{base}_{i}"
    taken.add(candidate)
    return candidate


# --------------------------------------------------------------------------- the module

class OnnxModule(nn.Module):
    """Runs an ONNX graph with torch ops; see the module docstring."""

    def __init__(self, model, source: str = ""):
        super().__init__()
        from onnx import numpy_helper

        graph = model.graph
        self.source = source
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.opset = int(opset)

        unsupported = [f"{n.op_type} (node {n.name or '<unnamed>'!r})" for n in graph.node
                       if n.domain not in ("", "ai.onnx") or n.op_type not in _OPS]
        if unsupported:
            raise ConversionError(f"{source or 'ONNX model'}: unsupported ONNX ops: {', '.join(unsupported)}")

        initializers = {init.name: init for init in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in initializers]
        self.output_names = [o.name for o in graph.output]
        self.input_shapes = [_value_shape(i) for i in graph.input if i.name not in initializers]

        # roles of each initializer: data (parameter), stat (buffer), config (buffer)
        roles: dict[str, set[str]] = {name: set() for name in initializers}
        for n in graph.node:
            for i, name in enumerate(n.input):
                if name in roles:
                    if i in _STAT_INPUTS[n.op_type]:
                        roles[name].add("stat")
                    elif i in _CONFIG_INPUTS[n.op_type]:
                        roles[name].add("config")
                    else:
                        roles[name].add("data")

        self.params = nn.ParameterDict()
        self.consts = nn.Module()  # buffers: running statistics, integer and configuring constants
        self.initializer_names: dict[str, str] = {}  # sanitized → ONNX name
        self._slots: dict[str, tuple[str, str]] = {}  # ONNX name → ("params"|"consts", sanitized)
        static: dict[str, np.ndarray] = {}
        taken: set[str] = set()
        for name, init in initializers.items():
            array = numpy_helper.to_array(init).copy()
            key = _sanitize(name, taken)
            self.initializer_names[key] = name
            floating = np.issubdtype(array.dtype, np.floating)
            tensor = torch.from_numpy(np.ascontiguousarray(array))
            if floating and "data" in roles[name] and "stat" not in roles[name]:
                self.params[key] = nn.Parameter(tensor)
                self._slots[name] = ("params", key)
            else:
                self.consts.register_buffer(key, tensor)
                self._slots[name] = ("consts", key)
                if "stat" not in roles[name]:  # constants only: never a weight that trains
                    static[name] = array

        ranks = _inferred_shapes(model)
        partial: dict[str, tuple[list, bool]] = {}  # 1-D/0-d int values with some entries known
        self.nodes: list[Node] = []
        for index, n in enumerate(graph.node):
            node = Node(n.op_type, n.name or f"{n.op_type}_{index}", list(n.input), list(n.output),
                        {a.name: _attr_value(a) for a in n.attribute}, self.opset)
            object.__setattr__(node, "module", self)  # not a submodule
            node.static = [static.get(name) for name in node.inputs]
            if node.op_type == "Constant":
                value = _constant_value(node)
                static[node.outputs[0]] = value
                key = _sanitize("const_" + node.outputs[0], taken)
                self.consts.register_buffer(key, torch.from_numpy(np.array(value)), persistent=False)
                node.attrs["_buffer"] = key
            elif node.op_type in _FOLDABLE and node.inputs and all(
                    s is not None for s, name in zip(node.static, node.inputs) if name):
                try:
                    with torch.no_grad():
                        values = _run_node(node, [None if s is None else torch.from_numpy(np.array(s))
                                                  for s in node.static])
                    for name, v in zip(node.outputs, values):
                        static[name] = v.numpy()
                except ConversionError:
                    raise
                except Exception:
                    pass
            _propagate_partial(node, static, partial, ranks)
            node.attrs["_partial"] = [partial.get(name) for name in node.inputs]
            self.nodes.append(node)
        self.static_values = static  # ONNX name → numpy: every value known at load time (not weights)
        # output → the input of the Sigmoid/Softmax that produces it, for losses on logits
        self.logit_sources = {n.outputs[0]: n.inputs[0] for n in self.nodes
                              if n.op_type in ("Sigmoid", "Softmax") and n.outputs[0] in self.output_names}
        self._node_hooks: OrderedDict[int, tuple[str, object]] = OrderedDict()  # handle id → (node name, hook)

    # ------------------------------------------------------------------ hooks

    def weighted_nodes(self) -> list[str]:
        """Names of the nodes that read a trainable weight, in the order they run."""
        return [n.name for n in self.nodes if any(self._slots.get(i, ("",))[0] == "params" for i in n.inputs)]

    def register_node_input_hook(self, node_name: str, hook):
        """`hook(inputs)` with node `node_name`'s input tensors each time before it runs: torch's forward
        pre-hooks for the nodes of a graph (an embedding is the input of the output layer). Returns a
        handle whose `remove()` unregisters it."""
        from torch.utils.hooks import RemovableHandle

        if node_name not in {n.name for n in self.nodes}:
            raise ConversionError(f"{self.source or 'ONNX model'}: no node named {node_name!r}")
        handle = RemovableHandle(self._node_hooks)
        self._node_hooks[handle.id] = (node_name, hook)
        return handle

    # ------------------------------------------------------------------ running

    def _initializer(self, name):
        where, key = self._slots[name]
        return self.params[key] if where == "params" else getattr(self.consts, key)

    def forward(self, *inputs):
        return self._run(inputs, logits=False)

    def forward_logits(self, *inputs):
        """The outputs before a final Sigmoid/Softmax node (the outputs themselves otherwise)."""
        return self._run(inputs, logits=True)

    def _run(self, inputs, logits: bool):
        if len(inputs) != len(self.input_names):
            raise ConversionError(f"expected {len(self.input_names)} inputs ({self.input_names}), got {len(inputs)}")
        env: dict[str, torch.Tensor] = dict(zip(self.input_names, inputs))
        for node in self.nodes:
            args = []
            for name in node.inputs:
                if not name:
                    args.append(None)
                elif name in env:
                    args.append(env[name])
                elif name in self._slots:
                    args.append(self._initializer(name))
                else:
                    raise node.fail(f"input {name!r} is not computed before this node")
            if self._node_hooks:
                for hooked, hook in list(self._node_hooks.values()):
                    if hooked == node.name:
                        hook(args)
            results = _run_node(node, args)
            for name, value in zip(node.outputs, results):
                if name:
                    env[name] = value
        names = [self.logit_sources.get(name, name) if logits else name for name in self.output_names]
        outs = tuple(env[name] if name in env else self._initializer(name) for name in names)
        return outs[0] if len(outs) == 1 else outs

    def extra_repr(self):
        return f"source={self.source!r}, opset={self.opset}, nodes={len(self.nodes)}"


def _inferred_shapes(model) -> dict[str, tuple]:
    """Shapes (None for unknown dims) of the graph's values, by ONNX shape inference."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    graph = inferred.graph
    shapes = {}
    for info in list(graph.value_info) + list(graph.input) + list(graph.output):
        if info.type.tensor_type.HasField("shape"):
            shapes[info.name] = _value_shape(info)
    return shapes


def _propagate_partial(node: Node, static, partial, shapes):
    """Track shape vectors whose length is known and some entries too (Shape→Gather→Concat…).

    Reshape uses this to keep known entries as python ints, so that a traced re-export stays the
    plain Shape→Gather→Unsqueeze→Concat→Reshape chain it came from.
    """
    def get(i):
        name = node.inputs[i] if i < len(node.inputs) else ""
        if not name:
            return None
        if name in static:
            value = np.asarray(static[name])
            if value.ndim <= 1 and np.issubdtype(value.dtype, np.integer):
                return [int(v) for v in value.reshape(-1)], value.ndim == 0
            return None
        return partial.get(name)

    out = None
    t = node.op_type
    if t == "Shape" and node.inputs[0] in shapes:
        dims = list(shapes[node.inputs[0]])
        start, end = node.attr("start"), node.attr("end")
        if start is not None or end is not None:
            dims = dims[(start or 0):(end if end is not None else len(dims))]
        out = (dims, False)
    elif t in ("Identity", "Cast") and get(0) is not None:
        out = get(0)
    elif t == "Gather" and get(0) is not None and get(1) is not None and int(node.attr("axis", 0)) == 0:
        (entries, _), (indices, scalar) = get(0), get(1)
        if all(v is not None for v in indices):
            out = ([entries[i] for i in indices], scalar)
    elif t == "Unsqueeze" and get(0) is not None and get(0)[1]:
        out = (get(0)[0], False)
    elif t == "Squeeze" and get(0) is not None and len(get(0)[0]) == 1:
        out = (get(0)[0], True)
    elif t == "Concat" and all(get(i) is not None for i in range(len(node.inputs))):
        out = ([v for i in range(len(node.inputs)) for v in get(i)[0]], False)
    if out is not None and node.outputs[0] not in static:
        partial[node.outputs[0]] = out


def _value_shape(value_info):
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)


def _run_node(node: Node, args: list) -> list:
    out = _OPS[node.op_type](node, args)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def onnx_to_torch(onnx_path) -> OnnxModule:
    """Load an ONNX file as a trainable `OnnxModule` (its own layout: NCHW for a PyTorch export)."""
    import onnx

    path = os.fspath(onnx_path)
    try:
        model = onnx.load(path)
    except Exception as exc:
        raise ConversionError(f"{path}: not a readable ONNX file: {exc}") from exc
    return OnnxModule(model, source=path)


# --------------------------------------------------------------------------- helpers

def _constant_value(node: Node) -> np.ndarray:
    a = node.attrs
    if "value" in a:
        return np.asarray(a["value"])
    if "value_float" in a:
        return np.asarray(a["value_float"], dtype=np.float32)
    if "value_floats" in a:
        return np.asarray(a["value_floats"], dtype=np.float32)
    if "value_int" in a:
        return np.asarray(a["value_int"], dtype=np.int64)
    if "value_ints" in a:
        return np.asarray(a["value_ints"], dtype=np.int64)
    raise node.fail(f"Constant with attributes {sorted(a)} is not supported")


def _spatial(node: Node, x, key, default):
    value = node.attr(key)
    n = x.dim() - 2
    return [default] * n if value is None else [int(v) for v in value]


def _pads(node: Node, x, kernel, strides, dilations) -> list[int]:
    """ONNX pads [b1, b2, …, e1, e2, …] after resolving auto_pad for this input."""
    n = x.dim() - 2
    auto = node.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = node.attr("pads")
        return [0] * (2 * n) if pads is None else [int(p) for p in pads]
    if auto == "VALID":
        return [0] * (2 * n)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pairs = [same_padding(int(x.shape[2 + i]), kernel[i], strides[i], dilations[i],
                              extra_at_end=auto == "SAME_UPPER") for i in range(n)]
        return [begin for begin, _ in pairs] + [end for _, end in pairs]
    raise node.fail(f"auto_pad={auto!r} is not supported")


def _torch_pad(pads: list[int]) -> list[int]:
    """ONNX [b1..bn, e1..en] → F.pad's (bn, en, …, b1, e1)."""
    n = len(pads) // 2
    out = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def _symmetric(pads: list[int]) -> bool:
    n = len(pads) // 2
    return pads[:n] == pads[n:]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}

# ops whose output is computed at load time when every input is a constant (shape arithmetic)
_FOLDABLE = {"ConstantOfShape", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Add", "Sub", "Mul", "Div",
             "Reshape", "Slice", "Identity", "Transpose", "Flatten"}


# --------------------------------------------------------------------------- ops: convolution

@op("Conv")
def _conv(node, args):
    x, w, b = (args + [None, None])[:3]
    n = x.dim() - 2
    if n not in _CONV:
        raise node.fail(f"{n}-d convolution is not supported")
    kernel = [int(k) for k in (node.attr("kernel_shape") or w.shape[2:])]
    strides = _spatial(node, x, "strides", 1)
    dilations = _spatial(node, x, "dilations", 1)
    pads = _pads(node, x, kernel, strides, dilations)
    padding = pads[:n]
    if not _symmetric(pads):
        x = F.pad(x, _torch_pad(pads))
        padding = [0] * n
    return _CONV[n](x, w, b, strides, padding, dilations, int(node.attr("group", 1)))


@op("ConvTranspose")
def _conv_transpose(node, args):
    x, w, b = (args + [None, None])[:3]
    n = x.dim() - 2
    if n not in _CONV_T:
        raise node.fail(f"{n}-d transposed convolution is not supported")
    if node.attr("output_shape") is not None:
        raise node.fail("the output_shape attribute is not supported (give pads instead)")
    if node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID", ""):
        raise node.fail(f"auto_pad={node.attr('auto_pad')!r} is not supported")
    strides = _spatial(node, x, "strides", 1)
    dilations = _spatial(node, x, "dilations", 1)
    output_padding = _spatial(node, x, "output_padding", 0)
    pads = node.attr("pads")
    pads = [0] * (2 * n) if pads is None or node.attr("auto_pad") == "VALID" else [int(p) for p in pads]
    groups = int(node.attr("group", 1))
    if _symmetric(pads) and all(op_ < max(s, d) for op_, s, d in zip(output_padding, strides, dilations)):
        return _CONV_T[n](x, w, b, strides, pads[:n], output_padding, groups, dilations)
    y = _CONV_T[n](x, w, None, strides, 0, 0, groups, dilations)
    if any(output_padding):  # rows past the full output: only the bias reaches them
        y = F.pad(y, _torch_pad([0] * n + output_padding))
    slices = [slice(None), slice(None)]
    for i in range(n):
        size = y.shape[2 + i]
        slices.append(slice(pads[i], size - pads[i + n]))
    y = y[tuple(slices)]
    return y if b is None else y + b.reshape((1, -1) + (1,) * n)


# --------------------------------------------------------------------------- ops: activations

@op("Relu")
def _relu(node, args):
    return F.relu(args[0])


@op("LeakyRelu")
def _leaky_relu(node, args):
    return F.leaky_relu(args[0], float(node.attr("alpha", 0.01)))


@op("Sigmoid")
def _sigmoid(node, args):
    return torch.sigmoid(args[0])


@op("Tanh")
def _tanh(node, args):
    return torch.tanh(args[0])


@op("Elu")
def _elu(node, args):
    return F.elu(args[0], float(node.attr("alpha", 1.0)))


@op("Softmax", "LogSoftmax")
def _softmax(node, args):
    x = args[0]
    fn = torch.softmax if node.op_type == "Softmax" else torch.log_softmax
    if node.opset >= 13:
        return fn(x, _axis(int(node.attr("axis", -1)), x.dim()))
    axis = _axis(int(node.attr("axis", 1)), x.dim())  # opset < 13: coerced to 2-D at axis
    flat = torch.flatten(torch.flatten(x, axis), 0, axis - 1) if axis > 0 else x.reshape(1, -1)
    return fn(flat, 1).reshape(x.shape)


@op("Clip", config_inputs=(1, 2))
def _clip(node, args):
    x = args[0]
    lo = args[1] if len(args) > 1 else None
    hi = args[2] if len(args) > 2 else None
    if node.opset < 11:
        lo, hi = node.attr("min"), node.attr("max")
    if lo is None and hi is None:
        return x
    if node.opset >= 11:  # bounds known at load time become python floats
        if lo is not None and node.static_input(1) is not None:
            lo = float(np.asarray(node.static_input(1)).reshape(-1)[0])
        if hi is not None and node.static_input(2) is not None:
            hi = float(np.asarray(node.static_input(2)).reshape(-1)[0])
    if isinstance(lo, torch.Tensor) or isinstance(hi, torch.Tensor):
        lo = lo.to(x.dtype) if isinstance(lo, torch.Tensor) else lo
        hi = hi.to(x.dtype) if isinstance(hi, torch.Tensor) else hi
        if isinstance(lo, float):
            lo = torch.tensor(lo, dtype=x.dtype)
        if isinstance(hi, float):
            hi = torch.tensor(hi, dtype=x.dtype)
    return torch.clamp(x, lo, hi)


# --------------------------------------------------------------------------- ops: pooling

@op("MaxPool")
def _max_pool(node, args):
    x = args[0]
    if len(node.outputs) > 1 and node.outputs[1]:
        raise node.fail("the Indices output is not supported")
    n = x.dim() - 2
    kernel = [int(k) for k in node.attr("kernel_shape")]
    strides = _spatial(node, x, "strides", 1)
    dilations = _spatial(node, x, "dilations", 1)
    pads = _pads(node, x, kernel, strides, dilations)
    ceil = bool(node.attr("ceil_mode", 0))
    padding = pads[:n]
    if not _symmetric(pads) or any(2 * p > k for p, k in zip(padding, kernel)):
        x = F.pad(x, _torch_pad(pads), value=-math.inf)
        padding = [0] * n
    return _MAX_POOL[n](x, kernel, strides, padding, dilations, ceil_mode=ceil)


@op("AveragePool")
def _avg_pool(node, args):
    x = args[0]
    n = x.dim() - 2
    kernel = [int(k) for k in node.attr("kernel_shape")]
    strides = _spatial(node, x, "strides", 1)
    pads = _pads(node, x, kernel, strides, [1] * n)
    ceil = bool(node.attr("ceil_mode", 0))
    include = bool(node.attr("count_include_pad", 0))
    if _symmetric(pads) and all(2 * p <= k for p, k in zip(pads[:n], kernel)):
        return _AVG_POOL[n](x, kernel, strides, pads[:n], ceil_mode=ceil, count_include_pad=include)
    padded = F.pad(x, _torch_pad(pads))
    total = _AVG_POOL[n](padded, kernel, strides, 0, ceil_mode=ceil)
    if include:
        return total
    ones = F.pad(torch.ones_like(x[:1, :1]), _torch_pad(pads))
    return total / _AVG_POOL[n](ones, kernel, strides, 0, ceil_mode=ceil)


@op("GlobalAveragePool")
def _global_avg_pool(node, args):
    x = args[0]
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@op("GlobalMaxPool")
def _global_max_pool(node, args):
    x = args[0]
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


def _reduce_axes(node, args, x):
    if node.opset >= 18 or (node.op_type == "ReduceSum" and node.opset >= 13):
        axes = node.ints_input(1, args[1] if len(args) > 1 else None)
    else:
        axes = node.attr("axes")
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return None
        return list(range(x.dim()))
    return sorted(_axis(int(a), x.dim()) for a in axes)


@op("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", config_inputs=(1,))
def _reduce(node, args):
    x = args[0]
    axes = _reduce_axes(node, args, x)
    if axes is None:
        return x
    keep = bool(node.attr("keepdims", 1))
    if node.op_type == "ReduceMean":
        return x.mean(dim=axes, keepdim=keep)
    if node.op_type == "ReduceSum":
        return x.sum(dim=axes, keepdim=keep)
    if node.op_type == "ReduceMax":
        return x.amax(dim=axes, keepdim=keep)
    return x.amin(dim=axes, keepdim=keep)


# --------------------------------------------------------------------------- ops: normalization

@op("BatchNormalization", stat_inputs=(3, 4))
def _batch_norm(node, args):
    x, scale, bias, mean, var = args[:5]
    if len(node.outputs) > 1 and any(node.outputs[1:]):
        raise node.fail("the running-statistics outputs are not supported (the module updates its buffers itself)")
    momentum = float(node.attr("momentum", 0.9))
    training = node.module.training
    return F.batch_norm(x, mean, var, scale, bias, training, 1.0 - momentum, float(node.attr("epsilon", 1e-5)))


# --------------------------------------------------------------------------- ops: linear algebra

@op("Gemm")
def _gemm(node, args):
    a, b = args[0], args[1]
    c = args[2] if len(args) > 2 else None
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    if node.attr("transA", 0):
        a = a.t()
    if node.attr("transB", 0) and alpha == 1.0 and beta == 1.0:
        return F.linear(a, b, c)
    if node.attr("transB", 0):
        b = b.t()
    y = a @ b
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c if beta == 1.0 else beta * c)
    return y


@op("MatMul")
def _matmul(node, args):
    return torch.matmul(args[0], args[1])


def _same_dtype(a, b):
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype != b.dtype:
        if a.is_floating_point() and not b.is_floating_point():
            return a, b.to(a.dtype)
        if b.is_floating_point() and not a.is_floating_point():
            return a.to(b.dtype), b
    return a, b


@op("Add")
def _add(node, args):
    a, b = _same_dtype(args[0], args[1])
    return a + b


@op("Sub")
def _sub(node, args):
    a, b = _same_dtype(args[0], args[1])
    return a - b


@op("Mul")
def _mul(node, args):
    a, b = _same_dtype(args[0], args[1])
    return a * b


@op("Div")
def _div(node, args):
    a, b = _same_dtype(args[0], args[1])
    if not a.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


# --------------------------------------------------------------------------- ops: shapes

@op("Concat")
def _concat(node, args):
    return torch.cat([a for a in args if a is not None], dim=int(node.attr("axis")))


@op("Flatten")
def _flatten(node, args):
    x = args[0]
    axis = _axis(int(node.attr("axis", 1)), x.dim())
    if axis == 0:
        return x.reshape(1, -1)
    y = torch.flatten(x, axis) if axis < x.dim() else x.unsqueeze(-1)
    return torch.flatten(y, 0, axis - 1)


@op("Reshape", config_inputs=(1,))
def _reshape(node, args):
    x, shape = args[0], args[1]
    allow_zero = bool(node.attr("allowzero", 0))
    static = node.static_input(1)
    if static is not None:
        dims = [int(d) for d in np.asarray(static).reshape(-1)]
        if not allow_zero:
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return x.reshape(dims)
    known_entries = node.attrs["_partial"][1]
    if known_entries is not None:
        dims = [shape[i] if d is None else int(d) for i, d in enumerate(known_entries[0])]
        if allow_zero or all(d is None or int(d) != 0 for d in known_entries[0]):
            return x.reshape(dims)
    if not allow_zero:
        known = torch._shape_as_tensor(x)
        n = shape.shape[0]
        if n <= x.dim():
            shape = torch.where(shape == 0, known[:n], shape)
    return x.reshape(list(shape.unbind(0)))


@op("Transpose")
def _transpose(node, args):
    x = args[0]
    perm = node.attr("perm")
    perm = list(reversed(range(x.dim()))) if perm is None else [int(p) for p in perm]
    return x.permute(perm)


@op("Shape")
def _shape(node, args):
    shape = torch._shape_as_tensor(args[0])
    start, end = node.attr("start"), node.attr("end")
    if start is not None or end is not None:
        shape = shape[(start or 0):(end if end is not None else shape.shape[0])]
    return shape


@op("Gather", config_inputs=(1,))
def _gather(node, args):
    data, indices = args[0], args[1]
    axis = _axis(int(node.attr("axis", 0)), data.dim())
    static = node.static_input(1)
    if static is not None and np.asarray(static).ndim == 0:
        return data.select(axis, int(static))
    size = data.shape[axis]
    indices = torch.where(indices < 0, indices + size, indices)
    picked = torch.index_select(data, axis, indices.reshape(-1))
    return picked.reshape(tuple(data.shape[:axis]) + tuple(indices.shape) + tuple(data.shape[axis + 1:]))


def _axes(node, args, index):
    if node.opset >= 13:
        return node.ints_input(index, args[index] if len(args) > index else None)
    axes = node.attr("axes")
    return None if axes is None else [int(a) for a in axes]


@op("Unsqueeze", config_inputs=(1,))
def _unsqueeze(node, args):
    x = args[0]
    axes = _axes(node, args, 1)
    rank = x.dim() + len(axes)
    for a in sorted(_axis(a, rank) for a in axes):
        x = x.unsqueeze(a)
    return x


@op("Squeeze", config_inputs=(1,))
def _squeeze(node, args):
    x = args[0]
    axes = _axes(node, args, 1)
    if not axes:
        return x.squeeze()
    for a in sorted((_axis(a, x.dim()) for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


@op("Slice", config_inputs=(1, 2, 3, 4))
def _slice(node, args):
    x = args[0]
    if node.opset < 10:
        starts, ends, axes, steps = node.attr("starts"), node.attr("ends"), node.attr("axes"), None
    else:
        starts = node.ints_input(1, args[1])
        ends = node.ints_input(2, args[2])
        axes = node.ints_input(3, args[3]) if len(args) > 3 and node.inputs[3] else None
        steps = node.ints_input(4, args[4]) if len(args) > 4 and node.inputs[4] else None
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * x.dim()
    reversed_axes = []
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = _axis(int(a), x.dim())
        size = int(x.shape[a])
        s = s + size if s < 0 else s
        e = e + size if e < 0 else e
        if st > 0:
            index[a] = slice(max(min(s, size), 0), max(min(e, size), 0), st)
        elif st < 0:
            s, e = max(min(s, size - 1), -1), max(min(e, size - 1), -1)
            reversed_axes.append((a, list(range(s, e, st))))
        else:
            raise node.fail("a zero step")
    x = x[tuple(index)]
    for a, picked in reversed_axes:
        x = torch.index_select(x, a, torch.tensor(picked, dtype=torch.long, device=x.device))
    return x


@op("Cast")
def _cast(node, args):
    from onnx import helper

    dtype = helper.tensor_dtype_to_np_dtype(int(node.attr("to")))
    return args[0].to(torch.from_numpy(np.zeros(0, dtype=dtype)).dtype)


@op("Pad", config_inputs=(1, 2, 3))
def _pad(node, args):
    x = args[0]
    mode = node.attr("mode", "constant")
    if node.opset < 11:
        pads, value, axes = [int(p) for p in node.attr("pads")], float(node.attr("value", 0.0)), None
    else:
        pads = node.ints_input(1, args[1])
        value = 0.0
        if len(args) > 2 and node.inputs[2]:
            static = node.static_input(2)
            value = float(np.asarray(static).reshape(-1)[0]) if static is not None else float(args[2])
        axes = node.ints_input(3, args[3]) if len(args) > 3 and node.inputs[3] else None
    rank = x.dim()
    if axes is not None:
        full = [0] * (2 * rank)
        for i, a in enumerate(axes):
            a = _axis(int(a), rank)
            full[a], full[a + rank] = pads[i], pads[i + len(axes)]
        pads = full
    # F.pad only pads as many leading dims as needed: drop leading zeros
    torch_pads = _torch_pad(pads)
    while len(torch_pads) > 2 and torch_pads[-1] == 0 and torch_pads[-2] == 0:
        torch_pads = torch_pads[:-2]
    modes = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}
    if mode not in modes:
        raise node.fail(f"mode={mode!r} is not supported")
    if mode == "constant":
        return F.pad(x, torch_pads, value=value)
    return F.pad(x, torch_pads, mode=modes[mode])


# --------------------------------------------------------------------------- ops: the rest

@op("Dropout", config_inputs=(1, 2))
def _dropout(node, args):
    x = args[0]
    ratio = float(node.attr("ratio", 0.5))
    if node.opset >= 12 and len(args) > 1 and node.inputs[1]:
        static = node.static_input(1)
        ratio = float(np.asarray(static).reshape(-1)[0]) if static is not None else float(args[1])
    y = F.dropout(x, ratio, training=node.module.training)
    if len(node.outputs) > 1 and node.outputs[1]:
        mask = (y != 0) if node.module.training else torch.ones_like(x, dtype=torch.bool)
        return y, mask
    return y


@op("Identity")
def _identity(node, args):
    return args[0]


@op("Constant")
def _constant(node, args):
    key = node.attrs.get("_buffer")
    if key is not None and node.module is not None:
        return getattr(node.module.consts, key)
    return torch.from_numpy(np.array(_constant_value(node)))


@op("ConstantOfShape", config_inputs=(0,))
def _constant_of_shape(node, args):
    value = node.attr("value")
    value = np.zeros(1, dtype=np.float32) if value is None else np.asarray(value).reshape(-1)
    shape = node.ints_input(0, args[0])
    return torch.full(shape, value[0].item(), dtype=torch.from_numpy(value).dtype)
