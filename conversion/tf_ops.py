"""TFOpLambda and SlicingOpLambda: the TensorFlow functions tf.keras 2.4–2.15 records as layers.

A TensorFlow function applied to a Keras tensor in a functional model (`x + y`, `tf.nn.relu(x)`,
`tf.reshape(x, …)`, `x[:, 1:]`) is saved as a `TFOpLambda` (`SlicingOpLambda` for getitem) whose
config names the function (`"function": "math.multiply"`) and whose inbound node holds the call:
the first argument's structure of `[layer, node, tensor, kwargs]` entries (or `["_CONSTANT_VALUE",
-1, value, kwargs]` for a constant), and, in every entry, the other arguments by parameter name,
where a Keras tensor is written `[layer, node, tensor]` (tf_keras `Node.serialize` and
`functional.process_node`). Slices are `{"start", "stop", "step"}` dicts, `...` is
`{"class_name": "__ellipsis__"}`, `tf.newaxis` is null.

`graph.py` takes a call's input tensors from `call_tensor_refs`; the converter turns the same node
into a template whose tensors are filled in at run time. Every op runs in Keras' layout (a rank-4
tensor is turned back to NHWC first and the result to the internal layout), so the axes, shapes
and perms in the config mean what they meant to TensorFlow. Functions not listed in `OPS` are
refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import ConversionError
from .layers import KerasLayer, converter
from .layout import to_internal, to_keras

OP_LAYER_CLASSES = ("TFOpLambda", "SlicingOpLambda")
CONSTANT = "_CONSTANT_VALUE"


# --------------------------------------------------------------------------- the call in the config

@dataclass(frozen=True)
class Arg:
    """Placeholder for the call's `index`-th input tensor."""

    index: int


def _is_entry(value) -> bool:
    """tf_keras' `_is_serialized_node_data`: [layer_name, node_index, tensor_index(, kwargs)]."""
    return isinstance(value, list) and len(value) in (3, 4) and isinstance(value[0], str)


def _decode(value):
    """tf_keras' JSON spellings of Ellipsis and tuples."""
    if isinstance(value, dict):
        if value.get("class_name") == "__ellipsis__":
            return Ellipsis
        if value.get("class_name") == "__tuple__":
            return tuple(_decode(v) for v in value.get("items", []))
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _parse_node(node) -> tuple[object, dict, list[tuple[str, int, int]]]:
    """(first argument template, kwargs template, input refs in Arg order) of one inbound node."""
    refs: list[tuple[str, int, int]] = []
    kwargs_data: list = [{}]

    def tensor(entry) -> Arg:
        refs.append((str(entry[0]), int(entry[1]), int(entry[2])))
        return Arg(len(refs) - 1)

    def first(value):
        if _is_entry(value):
            if len(value) == 4:
                kwargs_data[0] = value[3] or {}
            if value[0] == CONSTANT:
                return _decode(value[2])
            return tensor(value)
        if isinstance(value, list):
            return [first(v) for v in value]
        if isinstance(value, dict):
            raise ConversionError("a Keras 3 call in an op layer's config")
        return _decode(value)

    def rest(value):
        if _is_entry(value):
            return tensor(value)
        if isinstance(value, dict):
            if value.get("class_name") in ("__ellipsis__", "__tuple__"):
                return _decode(value)
            return {k: rest(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rest(v) for v in value]
        return value

    head = first(node)
    kwargs = rest(dict(kwargs_data[0]))
    kwargs.pop("name", None)  # TFOpLambda drops it
    return head, kwargs, refs


def call_tensor_refs(inbound_nodes) -> list[list[tuple[str, int, int]]]:
    """For graph.py: each call's input tensors, as (layer, node, tensor), in the converter's order."""
    return [_parse_node(node)[2] for node in inbound_nodes or []]


def _without_refs(template):
    if isinstance(template, Arg):
        return "tensor"
    if isinstance(template, dict):
        return {k: _without_refs(v) for k, v in template.items()}
    if isinstance(template, (list, tuple)):
        return [_without_refs(v) for v in template]
    return template


# --------------------------------------------------------------------------- helpers of the ops

def _tensor(value, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    device = like.device if like is not None else None
    dtype = like.dtype if like is not None and like.is_floating_point() else torch.float32
    return torch.as_tensor(value, dtype=dtype, device=device)


def _pair(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    like = x if isinstance(x, torch.Tensor) else y if isinstance(y, torch.Tensor) else None
    return _tensor(x, like), _tensor(y, like)


def _axes(axis, rank: int) -> list[int] | None:
    if axis is None:
        return None
    values = axis if isinstance(axis, (list, tuple)) else [axis]
    return sorted({int(a) % rank for a in values})


def _binary(fn):
    def op(x, y):
        a, b = _pair(x, y)
        return fn(a, b)
    return op


def _unary(fn):
    def op(x):
        return fn(_tensor(x))
    return op


def _reduction(fn):
    def op(input_tensor, axis=None, keepdims=False, reduction_indices=None, keep_dims=None):
        x = _tensor(input_tensor)
        axes = _axes(axis if axis is not None else reduction_indices, x.dim())
        keep = bool(keepdims if keep_dims is None else keep_dims)
        if axes is None:
            axes = list(range(x.dim()))
        if not axes:
            return x
        return fn(x, axes, keep)
    return op


def _std(x, axes, keep):
    return torch.sqrt(x.var(dim=axes, correction=0, keepdim=keep))


def _prod(x, axes, keep):
    for a in sorted(axes, reverse=True):
        x = x.prod(dim=a, keepdim=keep)
    return x


def _divide_no_nan(x, y):
    a, b = _pair(x, y)
    zero = b == 0
    return torch.where(zero, torch.zeros_like(a * b), a / torch.where(zero, torch.ones_like(b), b))


def _floormod(x, y):
    a, b = _pair(x, y)
    return torch.remainder(a, b)


def _floordiv(x, y):
    a, b = _pair(x, y)
    return torch.div(a, b, rounding_mode="floor")


def _add_n(inputs):
    out = _tensor(inputs[0])
    for x in inputs[1:]:
        out = out + _tensor(x, out)
    return out


def _clip(t, clip_value_min, clip_value_max):
    x = _tensor(t)
    return torch.minimum(torch.maximum(x, _tensor(clip_value_min, x)), _tensor(clip_value_max, x))


def _l2_normalize(x, axis=None, epsilon=1e-12, dim=None):
    x = _tensor(x)
    axes = _axes(axis if axis is not None else dim, x.dim()) or list(range(x.dim()))
    squares = x.square().sum(dim=axes, keepdim=True)
    return x * torch.rsqrt(torch.clamp(squares, min=float(epsilon)))


def _softmax(logits, axis=None, dim=None):
    x = _tensor(logits)
    chosen = axis if axis is not None else dim
    return torch.softmax(x, dim=-1 if chosen is None else int(chosen))


def _log_softmax(logits, axis=None, dim=None):
    x = _tensor(logits)
    chosen = axis if axis is not None else dim
    return torch.log_softmax(x, dim=-1 if chosen is None else int(chosen))


def _gelu(features, approximate=False):
    return F.gelu(_tensor(features), approximate="tanh" if approximate else "none")


def _leaky_relu(features, alpha=0.2):
    return F.leaky_relu(_tensor(features), float(alpha))


def _silu(features, beta=1.0):
    x = _tensor(features)
    return x * torch.sigmoid(float(beta) * x)


def _reshape(tensor, shape):
    if any(not isinstance(s, int) for s in shape):
        raise ConversionError(f"reshape to a shape computed at run time ({shape!r})")
    return _tensor(tensor).reshape([int(s) for s in shape])


def _transpose(a, perm=None, conjugate=False):
    x = _tensor(a)
    order = list(range(x.dim()))[::-1] if perm is None else [int(p) % x.dim() for p in perm]
    return x.permute(order)


def _concat(values, axis):
    tensors = [_tensor(v) for v in values]
    return torch.cat(tensors, dim=int(axis))


def _stack(values, axis=0):
    return torch.stack([_tensor(v) for v in values], dim=int(axis))


def _expand_dims(input, axis, dim=None):  # noqa: A002  (TensorFlow's parameter name)
    return _tensor(input).unsqueeze(int(axis if axis is not None else dim))


def _squeeze(input, axis=None, squeeze_dims=None):  # noqa: A002
    x = _tensor(input)
    chosen = axis if axis is not None else squeeze_dims
    if chosen is None:
        return x.squeeze()
    for a in sorted(_axes(chosen, x.dim()), reverse=True):
        if x.shape[a] != 1:
            raise ConversionError(f"squeeze of axis {a} of size {x.shape[a]}")
        x = x.squeeze(a)
    return x


def _matmul(a, b, transpose_a=False, transpose_b=False, adjoint_a=False, adjoint_b=False,
            a_is_sparse=False, b_is_sparse=False, output_type=None):
    x, y = _pair(a, b)
    if transpose_a or adjoint_a:
        x = x.transpose(-1, -2)
    if transpose_b or adjoint_b:
        y = y.transpose(-1, -2)
    return torch.matmul(x, y)


def _cast(x, dtype):
    if dtype not in ("float32", "float"):
        raise ConversionError(f"cast to {dtype!r} (only float32 is supported)")
    return _tensor(x).to(torch.float32)


def _where(condition, x=None, y=None):
    if x is None or y is None:
        raise ConversionError("where() without x and y")
    c = _tensor(condition)
    a, b = _pair(x, y)
    return torch.where(c.bool(), a, b)


def _tile(input, multiples):  # noqa: A002
    return _tensor(input).repeat([int(m) for m in multiples])


def _pad(tensor, paddings, mode="CONSTANT", constant_values=0):
    if str(mode).upper() != "CONSTANT":
        raise ConversionError(f"pad mode {mode!r} (only CONSTANT is supported)")
    flat = [int(v) for pair in reversed(paddings) for v in pair]
    return F.pad(_tensor(tensor), flat, value=float(constant_values))


def _slice_index(spec):
    if spec is None or spec is Ellipsis or isinstance(spec, int):
        return spec
    if isinstance(spec, dict) and set(spec) <= {"start", "stop", "step"}:
        bounds = [spec.get(k) for k in ("start", "stop", "step")]
        if any(b is not None and not isinstance(b, int) for b in bounds):
            raise ConversionError(f"slice with bounds computed at run time ({spec!r})")
        if bounds[2] == 0:
            raise ConversionError("slice step 0")
        return slice(*bounds)
    raise ConversionError(f"slice index {spec!r} is not supported (ints, slices, ..., newaxis)")


def _getitem(tensor, slice_spec):
    """TF strided slicing in Keras' layout: ints drop their axis, slices (negative steps too) keep it,
    None inserts one, ... stands for the axes not named."""
    x = _tensor(tensor)
    specs = [_slice_index(s) for s in (slice_spec if isinstance(slice_spec, (list, tuple)) else [slice_spec])]
    if specs.count(Ellipsis) > 1:
        raise ConversionError("more than one ... in a slice")
    consuming = sum(1 for s in specs if isinstance(s, (int, slice)))
    if consuming > x.dim():
        raise ConversionError(f"{consuming} indices for a tensor of rank {x.dim()}")
    if Ellipsis in specs:
        at = specs.index(Ellipsis)
        specs = specs[:at] + [slice(None)] * (x.dim() - consuming) + specs[at + 1:]
    axis = 0
    for s in specs:
        if s is None:
            x = x.unsqueeze(axis)
            axis += 1
        elif isinstance(s, int):
            x = x.select(axis, s)
        elif s.step is None or s.step > 0:
            x = x[(slice(None),) * axis + (s,)]
            axis += 1
        else:  # torch slices do not step backwards: pick the indices Python's slice gives
            index = torch.arange(*s.indices(x.shape[axis]), device=x.device)
            x = x.index_select(axis, index)
            axis += 1
    return x


OPS = {
    # arithmetic operators and tf.math
    "__operators__.add": _binary(torch.add), "math.add": _binary(torch.add), "add": _binary(torch.add),
    "math.subtract": _binary(torch.sub), "subtract": _binary(torch.sub),
    "math.multiply": _binary(torch.mul), "multiply": _binary(torch.mul),
    "math.truediv": _binary(torch.div), "math.divide": _binary(torch.div), "divide": _binary(torch.div),
    "math.divide_no_nan": _divide_no_nan,
    "math.negative": _unary(torch.neg), "negative": _unary(torch.neg),
    "math.pow": _binary(torch.pow), "pow": _binary(torch.pow),
    "math.floordiv": _floordiv, "compat.v1.floor_div": _floordiv, "math.floormod": _floormod, "math.mod": _floormod,
    "math.maximum": _binary(torch.maximum), "maximum": _binary(torch.maximum),
    "math.minimum": _binary(torch.minimum), "minimum": _binary(torch.minimum),
    "math.squared_difference": _binary(lambda a, b: (a - b).square()),
    "math.add_n": _add_n, "add_n": _add_n,
    "clip_by_value": _clip,
    # elementwise
    "math.abs": _unary(torch.abs), "abs": _unary(torch.abs),
    "math.exp": _unary(torch.exp), "exp": _unary(torch.exp), "math.expm1": _unary(torch.expm1),
    "math.log": _unary(torch.log), "math.log1p": _unary(torch.log1p),
    "math.sqrt": _unary(torch.sqrt), "sqrt": _unary(torch.sqrt), "math.rsqrt": _unary(torch.rsqrt),
    "math.square": _unary(torch.square), "square": _unary(torch.square),
    "math.sign": _unary(torch.sign), "math.reciprocal": _unary(torch.reciprocal),
    "math.sigmoid": _unary(torch.sigmoid), "nn.sigmoid": _unary(torch.sigmoid), "sigmoid": _unary(torch.sigmoid),
    "math.tanh": _unary(torch.tanh), "nn.tanh": _unary(torch.tanh), "tanh": _unary(torch.tanh),
    "math.softplus": _unary(F.softplus), "nn.softplus": _unary(F.softplus),
    "math.softsign": _unary(F.softsign), "nn.softsign": _unary(F.softsign),
    "math.erf": _unary(torch.erf), "math.sin": _unary(torch.sin), "math.cos": _unary(torch.cos),
    "math.floor": _unary(torch.floor), "math.ceil": _unary(torch.ceil), "math.round": _unary(torch.round),
    "math.l2_normalize": _l2_normalize, "nn.l2_normalize": _l2_normalize, "linalg.l2_normalize": _l2_normalize,
    # reductions
    "math.reduce_mean": _reduction(lambda x, a, k: x.mean(dim=a, keepdim=k)),
    "reduce_mean": _reduction(lambda x, a, k: x.mean(dim=a, keepdim=k)),
    "math.reduce_sum": _reduction(lambda x, a, k: x.sum(dim=a, keepdim=k)),
    "reduce_sum": _reduction(lambda x, a, k: x.sum(dim=a, keepdim=k)),
    "math.reduce_max": _reduction(lambda x, a, k: x.amax(dim=a, keepdim=k)),
    "reduce_max": _reduction(lambda x, a, k: x.amax(dim=a, keepdim=k)),
    "math.reduce_min": _reduction(lambda x, a, k: x.amin(dim=a, keepdim=k)),
    "reduce_min": _reduction(lambda x, a, k: x.amin(dim=a, keepdim=k)),
    "math.reduce_prod": _reduction(_prod),
    "math.reduce_std": _reduction(_std),
    "math.reduce_variance": _reduction(lambda x, a, k: x.var(dim=a, correction=0, keepdim=k)),
    "math.reduce_logsumexp": _reduction(lambda x, a, k: torch.logsumexp(x, dim=a, keepdim=k)),
    # tf.nn activations
    "nn.relu": _unary(torch.relu), "nn.relu6": _unary(F.relu6), "nn.elu": _unary(F.elu),
    "nn.selu": _unary(F.selu), "nn.gelu": _gelu, "nn.leaky_relu": _leaky_relu,
    "nn.silu": _silu, "nn.swish": _silu,
    "nn.softmax": _softmax, "math.softmax": _softmax, "nn.log_softmax": _log_softmax, "math.log_softmax": _log_softmax,
    # shapes
    "reshape": _reshape, "compat.v1.transpose": _transpose, "transpose": _transpose,
    "concat": _concat, "stack": _stack, "expand_dims": _expand_dims, "compat.v1.expand_dims": _expand_dims,
    "squeeze": _squeeze, "compat.v1.squeeze": _squeeze,
    "linalg.matmul": _matmul, "matmul": _matmul,
    "cast": _cast, "identity": _unary(lambda x: x), "where": _where, "tile": _tile,
    "compat.v1.pad": _pad, "pad": _pad,
    "__operators__.getitem": _getitem,
    # comparisons (for where / cast)
    "math.greater": _binary(torch.gt), "math.greater_equal": _binary(torch.ge),
    "math.less": _binary(torch.lt), "math.less_equal": _binary(torch.le),
    "math.equal": _binary(torch.eq), "math.not_equal": _binary(torch.ne),
}


def unsupported_function(class_name: str, config: dict) -> str | None:
    """For graph.check_supported: the function an op layer names when no op here computes it."""
    if class_name not in OP_LAYER_CLASSES:
        return None
    function = _function_name(config)
    return None if function in OPS else function


def _function_name(config: dict) -> str:
    name = str(config.get("function", ""))
    return name[3:] if name.startswith("tf.") else name


# --------------------------------------------------------------------------- the layer

class OpLayer(KerasLayer):
    """One TensorFlow function on its call's tensors (Keras layout), with the config's other arguments."""

    def __init__(self, function: str, head, kwargs):
        super().__init__()
        self.function, self.head, self.kwargs = function, head, kwargs
        self.op = OPS[function]

    def _fill(self, template, xs):
        if isinstance(template, Arg):
            return to_keras(xs[template.index])
        if isinstance(template, list):
            return [self._fill(v, xs) for v in template]
        if isinstance(template, dict):
            return {k: self._fill(v, xs) for k, v in template.items()}
        return template

    def linear(self, *xs):
        head = self._fill(self.head, xs)
        kwargs = self._fill(self.kwargs, xs)
        try:
            y = self.op(head, **kwargs)
        except TypeError as exc:
            raise ConversionError(f"TensorFlow function {self.function!r} called with arguments "
                                  f"it does not take ({exc})") from None
        if not isinstance(y, torch.Tensor):
            raise ConversionError(f"TensorFlow function {self.function!r} gave no tensor")
        return to_internal(y)


CALL_NODES = "__inbound_nodes__"  # graph.py puts the layer's inbound nodes into its config under this key


def convert_op_layer(config, weights, ctx):
    function = _function_name(config)
    if function not in OPS:
        raise ConversionError(f"TensorFlow function {config.get('function')!r} is not supported "
                              f"(supported: {', '.join(sorted(OPS))})")
    nodes = config.get(CALL_NODES)
    if not nodes:  # a call of one tensor and no arguments (an op layer in a Sequential)
        return OpLayer(function, Arg(0), {})
    parsed = [_parse_node(node) for node in nodes]
    head, kwargs, _ = parsed[0]
    if any(_without_refs((h, k)) != _without_refs((head, kwargs)) for h, k, _ in parsed[1:]):
        raise ConversionError(f"op layer {config.get('name')!r} is called with different arguments at each call")
    return OpLayer(function, head, kwargs)


converter(*OP_LAYER_CLASSES)(convert_op_layer)
