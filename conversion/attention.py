"""Converters for attention layers: MultiHeadAttention, Attention and AdditiveAttention.

These layers take several tensors (query, value, key; MultiHeadAttention an `attention_mask`) and
call arguments (`use_causal_mask`, `return_attention_scores`, `training`) that the functional
config stores with each call: Keras 2 as the kwargs of its inbound node (`value`, `key` and
`attention_mask` there as `[layer, node, tensor]`), Keras 3 as the node's `args`/`kwargs`.
`graph.py` hands a layer with `takes_call_kwargs` the call's positional inputs, its keyword
arguments with their tensors in place, and the mask of every input (Embedding(mask_zero) or
Masking upstream), so each call of a shared layer keeps its own arguments.

Weights stay in Keras' layout and names. MultiHeadAttention's projections are the EinsumDense
sublayers `query`, `key`, `value` (kernel (dim, heads, key_dim or value_dim), bias (heads, …)),
`attention_output` (kernel (heads, value_dim, *output_shape), bias (*output_shape)) and Keras 3's
`gate`; here they are submodules of the same names, saved back to `…/query/kernel` and so on.
Attention keeps `scale` and `concat_score_weight` (scalars), AdditiveAttention `scale` (dim,).

Masks follow Keras: masked scores are replaced by -1e9 before the softmax (a row with nothing left
to attend to averages over every position, as in Keras), Attention zeroes the outputs of masked
query steps, and the output carries the query's mask. Dropout on the attention probabilities is
applied in train() only (or where the call says `training=True`): it matches Keras in
distribution, not draw for draw.
"""

from __future__ import annotations

import math
import string

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConversionError
from .layers import ConvertContext, KerasLayer, LayerWeights, converter, regularizer_factors
from .layout import to_internal, to_keras

NEGATIVE = -1e9  # what Keras puts in place of a masked score (float32)


def _keep(mask):
    """A Keras mask (bool, or 0/1 numbers) as booleans; None stays None."""
    if mask is None:
        return None
    mask = to_keras(mask)
    return mask if mask.dtype == torch.bool else mask != 0


def _and(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a & b


def _causal(rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
    """Keras' lower-triangular mask: position i attends to j <= i."""
    return torch.ones((rows, cols), dtype=torch.bool, device=like.device).tril()


def _refuse_common(config: dict, name: str, class_name: str):
    if config.get("activity_regularizer"):
        raise ConversionError(f"layer {name!r}: {class_name} with an activity_regularizer is not supported")


def _take(weights: LayerWeights, sub: str | None, var: str) -> str:
    """The h5 path of the saved variable `var` (of EinsumDense `sub`), marked as taken."""
    for w in weights.saved:
        parts = w.h5_path.split(":")[0].split("/")
        if parts[-1] == var and (sub is None or (len(parts) > 1 and parts[-2] == sub)) \
                and w.h5_path not in weights.taken.values():
            key = f"{sub}/{var}" if sub else var
            weights.taken[key] = w.h5_path
            return key
    where = f"{sub}/{var}" if sub else var
    raise ConversionError(f"layer {weights.layer!r}: no saved weight {where!r} "
                          f"(file has {[w.h5_path.split('/', 1)[-1] for w in weights.saved]})")


def _register(module: KerasLayer, weights: LayerWeights, key: str, var: str, trainable: bool, penalty):
    saved = next(w for w in weights.saved if w.h5_path == weights.taken[key])
    value = torch.from_numpy(np.array(saved.value, dtype=np.float32))
    if trainable:
        module.register_parameter(var, nn.Parameter(value))
    else:
        module.register_buffer(var, value)
    module.h5_paths[var] = saved.h5_path
    if penalty:
        module.regularizers[var] = penalty


def _move(x: torch.Tensor, source: int, destination: int) -> torch.Tensor:
    """movedim with non-negative axes (torch.onnx writes a negative one into Transpose's perm)."""
    order = [d for d in range(x.dim()) if d != source]
    order.insert(destination % x.dim(), source)
    return x.permute(order)


def _letters(count: int, start: int = 0) -> str:
    return string.ascii_lowercase[start:start + count]


# --------------------------------------------------------------------------- MultiHeadAttention

class EinsumProjection(KerasLayer):
    """One EinsumDense of MultiHeadAttention: contracts the last `bound` axes of x with the first
    `bound` axes of `kernel`, adds `bias` (the kernel's free axes), then the activation."""

    def __init__(self, bound: int, activation: str = "linear"):
        super().__init__(activation)
        self.bound = bound

    def linear(self, x):
        free = x.dim() - self.bound
        x_axes, k_bound = _letters(x.dim()), _letters(self.bound, free)
        k_free = _letters(self.kernel.dim() - self.bound, x.dim())
        y = torch.einsum(f"{x_axes},{k_bound}{k_free}->{x_axes[:free]}{k_free}", x, self.kernel)
        bias = getattr(self, "bias", None)
        return y if bias is None else y + bias


def _projection(weights, sub, bound, config, trainable, activation="linear") -> EinsumProjection:
    layer = EinsumProjection(bound, activation)
    _register(layer, weights, _take(weights, sub, "kernel"), "kernel", trainable,
              regularizer_factors(config.get("kernel_regularizer")))
    if config.get("use_bias", True):
        _register(layer, weights, _take(weights, sub, "bias"), "bias", trainable,
                  regularizer_factors(config.get("bias_regularizer")))
    return layer


class MultiHeadAttentionLayer(KerasLayer):
    """Keras MultiHeadAttention over one attention axis.

    query (B, …, T, …, dim) → `query` (B, …, T, …, heads, key_dim), scaled by 1/√key_dim; key and
    value likewise over S; scores (B, <other axes>, heads, T, S), softmax over S (masked scores
    -1e9), dropout in training; the heads' values go through `attention_output`. The scores, when
    the call returns them, have Keras' shape (B, <other axes>, heads, T, S).
    """

    takes_call_kwargs = True

    def __init__(self, num_heads, key_dim, dropout, attention_axes, sliding_window, name):
        super().__init__()
        self.num_heads, self.key_dim, self.dropout = num_heads, key_dim, dropout
        self.attention_axes, self.sliding_window, self.layer_name = attention_axes, sliding_window, name

    def _axis(self, rank: int) -> int:
        axes = self.attention_axes
        if axes is None:  # Keras' default: every axis between the batch and the features
            axes = tuple(range(1, rank - 1))
        axes = tuple(a if a >= 0 else rank + a for a in axes)
        if len(axes) != 1 or not 0 < axes[0] < rank - 1:
            raise ConversionError(f"layer {self.layer_name!r}: MultiHeadAttention over attention_axes "
                                  f"{self.attention_axes} of a rank-{rank} query is not supported (one axis only)")
        return axes[0]

    def _bind(self, inputs, masks, call_kwargs, kwarg_masks):
        named = dict(zip(("query", "value", "key"), zip(inputs, masks)))
        for name in ("query", "value", "key", "attention_mask"):
            if call_kwargs.get(name) is not None:
                named[name] = (call_kwargs[name], kwarg_masks.get(name))
        if "query" not in named or "value" not in named:
            raise ConversionError(f"layer {self.layer_name!r}: MultiHeadAttention called without query and value")
        return named

    def _attend(self, inputs, masks=(), call_kwargs=None, kwarg_masks=None):
        call_kwargs, kwarg_masks = call_kwargs or {}, kwarg_masks or {}
        named = self._bind(inputs, list(masks) + [None] * len(inputs), call_kwargs, kwarg_masks)
        query, query_mask = named["query"]
        value, value_mask = named["value"]
        key, key_mask = named.get("key", named["value"])
        query, value, key = to_keras(query), to_keras(value), to_keras(key)
        # Keras: query mask (B, T, 1) & value and key masks (B, 1, S) & causal (1, T, S) & attention_mask
        mask = None
        if query_mask is not None:
            mask = _keep(query_mask).unsqueeze(-1)
        for m in (value_mask, key_mask):
            if m is not None:
                mask = _and(mask, _keep(m).unsqueeze(-2))
        if call_kwargs.get("use_causal_mask"):
            mask = _and(mask, _causal(query.shape[1], value.shape[1], query).unsqueeze(0))
        if self.sliding_window is not None:
            rows = torch.arange(query.shape[1], device=query.device).unsqueeze(-1)
            cols = torch.arange(value.shape[1], device=query.device)
            mask = _and(mask, ((rows - cols).abs() < self.sliding_window).unsqueeze(0))
        explicit = named.get("attention_mask", (None, None))[0]
        if explicit is not None:
            mask = _and(_keep(explicit), mask)

        axis = self._axis(query.dim())
        q = self.query(query) * (1.0 / math.sqrt(float(self.key_dim)))
        k, v = self.key(key), self.value(value)
        q, k, v = (_move(t, axis, -3) for t in (q, k, v))  # (B, <others>, T|S, heads, dim)
        scores = torch.einsum("...tnh,...snh->...nts", q, k)
        if mask is not None:
            while mask.dim() < scores.dim():  # Keras expands the mask before the heads axis
                mask = mask.unsqueeze(-3)
            scores = torch.where(mask, scores, torch.full_like(scores, NEGATIVE))
        probabilities = torch.softmax(scores, dim=-1)
        training = call_kwargs.get("training")
        training = self.training if training is None else bool(training)
        dropped = F.dropout(probabilities, self.dropout, True) if training and self.dropout > 0 else probabilities
        heads = torch.einsum("...nts,...snh->...tnh", dropped, v)
        heads = _move(heads, heads.dim() - 3, axis)
        gate = getattr(self, "gate", None)
        if gate is not None:
            heads = heads * gate(query)
        out = to_internal(self.attention_output(heads))
        if call_kwargs.get("return_attention_scores"):
            return out, to_internal(probabilities)
        return out

    def forward(self, *inputs, masks=(), call_kwargs=None, kwarg_masks=None):
        return self._attend(inputs, masks, call_kwargs, kwarg_masks)

    def forward_logits(self, *inputs, masks=(), call_kwargs=None, kwarg_masks=None):
        return self._attend(inputs, masks, call_kwargs, kwarg_masks)

    def call_output_mask(self, masks, call_kwargs):
        """The output keeps the query's mask (the scores none), as Keras sets it."""
        query_mask = masks[0] if masks else None
        if call_kwargs.get("query") is not None:
            query_mask = None  # a query passed by keyword: Keras takes the mask of the first argument
        return (query_mask, None) if call_kwargs.get("return_attention_scores") else query_mask


def _output_shape(config):
    shape = config.get("output_shape")
    if shape is None:
        return None
    return tuple(int(s) for s in shape) if isinstance(shape, (list, tuple)) else (int(shape),)


@converter("MultiHeadAttention")
def convert_multi_head_attention(config, weights, ctx: ConvertContext):
    name = config.get("name", "")
    _refuse_common(config, name, "MultiHeadAttention")
    num_heads, key_dim = int(config["num_heads"]), int(config["key_dim"])
    value_dim = int(config.get("value_dim") or key_dim)
    axes = config.get("attention_axes")
    if axes is not None:
        axes = (int(axes),) if isinstance(axes, int) else tuple(int(a) for a in axes)
        if len(axes) != 1:
            raise ConversionError(f"MultiHeadAttention over attention_axes {axes} is not supported (one axis only)")
    window = config.get("sliding_window")
    layer = MultiHeadAttentionLayer(num_heads, key_dim, float(config.get("dropout", 0.0) or 0.0), axes,
                                    int(window) if window else None, name)
    trainable = bool(config.get("trainable", True))
    layer.query = _projection(weights, "query", 1, config, trainable)
    layer.key = _projection(weights, "key", 1, config, trainable)
    layer.value = _projection(weights, "value", 1, config, trainable)
    if config.get("use_gate"):
        layer.gate = _projection(weights, "gate", 1, config, trainable, activation="sigmoid")
    layer.attention_output = _projection(weights, "attention_output", 2, config, trainable)
    expected = {"query": (num_heads, key_dim), "key": (num_heads, key_dim), "value": (num_heads, value_dim)}
    for sub, tail in expected.items():
        shape = tuple(getattr(layer, sub).kernel.shape)
        if shape[1:] != tail:
            raise ConversionError(f"layer {name!r}: {sub} kernel of shape {shape} does not fit "
                                  f"{num_heads} heads of {tail[1]}")
    out_shape = tuple(layer.attention_output.kernel.shape)
    wanted = _output_shape(config)
    if out_shape[:2] != (num_heads, value_dim) or (wanted is not None and out_shape[2:] != wanted):
        raise ConversionError(f"layer {name!r}: attention_output kernel of shape {out_shape} does not fit "
                              f"{num_heads} heads of {value_dim} and output_shape {wanted}")
    return layer


# --------------------------------------------------------------------------- Attention, AdditiveAttention

class DenseAttentionLayer(KerasLayer):
    """Keras Attention (dot or concat scores, `use_scale`) and AdditiveAttention over
    [query (B, Tq, dim), value (B, Tv, dim), key (B, Tv, dim) or the value].

    Masks: [query_mask, value_mask] from the call's `mask` or, without one, the inputs' masks; the
    value mask and the causal mask (`use_causal_mask`, or the `causal` of older configs) take 1e9
    off the masked scores, the query mask zeroes masked query steps of the output.
    """

    takes_call_kwargs = True

    def __init__(self, kind: str, score_mode: str, dropout: float, causal: bool, name: str):
        super().__init__()
        self.kind, self.score_mode, self.dropout = kind, score_mode, dropout
        self.causal, self.layer_name = causal, name

    def _scores(self, q, k):
        scale = getattr(self, "scale", None)
        if self.kind == "AdditiveAttention":
            summed = torch.tanh(q.unsqueeze(-2) + k.unsqueeze(-3))
            return (summed * scale if scale is not None else summed).sum(-1)
        if self.score_mode == "dot":
            scores = q @ k.transpose(-2, -1)
            return scores * scale if scale is not None else scores
        summed = q.unsqueeze(-2) + k.unsqueeze(-3)
        return self.concat_score_weight * torch.tanh(summed * scale if scale is not None else summed).sum(-1)

    def _attend(self, inputs, masks=(), call_kwargs=None, kwarg_masks=None):
        call_kwargs = call_kwargs or {}
        if not 2 <= len(inputs) <= 3:
            raise ConversionError(f"layer {self.layer_name!r}: {self.kind} takes [query, value] or "
                                  f"[query, value, key], got {len(inputs)} tensors")
        q, v = to_keras(inputs[0]), to_keras(inputs[1])
        k = to_keras(inputs[2]) if len(inputs) > 2 else v
        given = call_kwargs.get("mask")
        if given is not None:  # the call's own masks replace the inputs'
            given = list(given) if isinstance(given, (list, tuple)) else [given]
            query_mask, value_mask = (given + [None, None])[:2]
        else:
            masks = list(masks) + [None, None]
            query_mask, value_mask = masks[0], masks[1]
        query_mask, value_mask = _keep(query_mask), _keep(value_mask)
        scores = self._scores(q, k)
        mask = None if value_mask is None else value_mask.unsqueeze(-2)
        if self.causal or call_kwargs.get("use_causal_mask"):
            mask = _and(mask, _causal(scores.shape[-2], scores.shape[-1], scores))
        if mask is not None:
            scores = scores - 1e9 * (~mask).to(scores.dtype)
        weights = torch.softmax(scores, dim=-1)
        training = call_kwargs.get("training")
        training = self.training if training is None else bool(training)
        dropped = F.dropout(weights, self.dropout, True) if training and self.dropout > 0 else weights
        out = dropped @ v
        if query_mask is not None:
            out = out * query_mask.unsqueeze(-1).to(out.dtype)
        if call_kwargs.get("return_attention_scores"):
            return to_internal(out), weights
        return to_internal(out)

    def forward(self, *inputs, masks=(), call_kwargs=None, kwarg_masks=None):
        return self._attend(inputs, masks, call_kwargs, kwarg_masks)

    def forward_logits(self, *inputs, masks=(), call_kwargs=None, kwarg_masks=None):
        return self._attend(inputs, masks, call_kwargs, kwarg_masks)

    def call_output_mask(self, masks, call_kwargs):
        """Keras: the output carries the query's mask (the call's own, where it passes one)."""
        given = call_kwargs.get("mask")
        if given is not None:
            given = list(given) if isinstance(given, (list, tuple)) else [given]
            query_mask = given[0] if given else None
            query_mask = None if query_mask is None else _keep(query_mask)
        else:
            query_mask = masks[0] if masks else None
        return (query_mask, None) if call_kwargs.get("return_attention_scores") else query_mask


def _scalar_or_vector(weights, config, layer, var, trainable):
    _register(layer, weights, _take(weights, None, var), var, trainable, None)


@converter("Attention")
def convert_attention(config, weights, ctx):
    name = config.get("name", "")
    _refuse_common(config, name, "Attention")
    score_mode = config.get("score_mode", "dot")
    if score_mode not in ("dot", "concat"):
        raise ConversionError(f"layer {name!r}: Attention score_mode={score_mode!r} is not supported")
    layer = DenseAttentionLayer("Attention", score_mode, float(config.get("dropout", 0.0) or 0.0),
                                bool(config.get("causal", False)), name)
    trainable = bool(config.get("trainable", True))
    if config.get("use_scale"):
        _scalar_or_vector(weights, config, layer, "scale", trainable)
    if score_mode == "concat":
        _scalar_or_vector(weights, config, layer, "concat_score_weight", trainable)
    return layer


@converter("AdditiveAttention")
def convert_additive_attention(config, weights, ctx):
    name = config.get("name", "")
    _refuse_common(config, name, "AdditiveAttention")
    layer = DenseAttentionLayer("AdditiveAttention", "additive", float(config.get("dropout", 0.0) or 0.0),
                                bool(config.get("causal", False)), name)
    if config.get("use_scale", True):
        _scalar_or_vector(weights, config, layer, "scale", bool(config.get("trainable", True)))
    return layer
