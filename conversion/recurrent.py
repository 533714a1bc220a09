"""Converters for sequence layers: Embedding, Masking, SimpleRNN, LSTM, GRU, Bidirectional and
TimeDistributed.

Recurrent weights stay in Keras' array layout and names (`kernel` (in, gates·units),
`recurrent_kernel` (units, gates·units), `bias`; GRU with reset_after keeps its (2, 3·units) bias),
so writing back is a plain copy. Gate order is Keras': LSTM i, f, c, o; GRU z, r, h.

Masks: Embedding(mask_zero) and Masking produce a (batch, steps) boolean mask; `graph.py` carries
it along the layers Keras carries it along (`MASK_PASSING`) to the layers that use it. Recurrent
layers then do what Keras' backend `rnn` does: a masked step keeps the previous states and repeats
the previous output (zeros instead inside a Bidirectional with return_sequences, where Keras sets
`zero_output_for_mask`).

Stateful layers run from zero states on every call (the bridge keeps no state between batches).
Dropout and recurrent_dropout are applied in train() with one mask per sequence shared by the
gates (Keras' implementation 2; implementation 1 draws one per gate), so training mode matches
Keras in distribution, not draw for draw; inference is exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConversionError
from .layers import (CONVERTERS, ConvertContext, KerasLayer, LayerWeights, activation_name, converter,
                     make_activation)
from .layout import to_internal, to_keras

# Layer classes that hand their input's mask on unchanged (Keras' `supports_masking` without a
# `compute_mask` of their own); merge layers AND the masks of their inputs. Every other layer
# without a mask rule of its own drops the mask, as Keras does.
MASK_PASSING = frozenset({
    "Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "Activation", "Dense",
    "BatchNormalization", "LayerNormalization", "ReLU", "LeakyReLU", "PReLU", "ELU", "ThresholdedReLU",
    "InputLayer",
})
MASK_MERGING = frozenset({"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"})


def masked_global_average(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GlobalAveragePooling1D under a mask: the mean over unmasked steps, as Keras computes it."""
    weight = mask.to(x.dtype).unsqueeze(-1)
    return (x * weight).sum(dim=1) / weight.sum(dim=1)


def _flag(config: dict, key: str) -> bool:
    """Keras booleans; very old files wrote `stateful: -1` and such, which Keras reads as truthy."""
    return bool(config.get(key, False))


# --------------------------------------------------------------------------- Embedding and Masking

class EmbeddingLayer(KerasLayer):
    """Looks up rows of `embeddings` (input_dim, output_dim); float indices are truncated to int,
    as Keras casts them. With mask_zero the mask is `index != 0`."""

    takes_mask = True

    def __init__(self, mask_zero: bool):
        super().__init__()
        self.mask_zero = mask_zero

    def forward(self, x, mask=None):
        index = to_keras(x).long()
        return to_internal(F.embedding(index, self.embeddings))

    def forward_logits(self, x, mask=None):
        return self.forward(x)

    def output_mask(self, inputs, mask):
        if not self.mask_zero:
            return None
        return to_keras(inputs[0]).long() != 0


@converter("Embedding")
def convert_embedding(config, weights, ctx):
    layer = EmbeddingLayer(_flag(config, "mask_zero"))
    layer.add_weight(weights, "embeddings", bool(config.get("trainable", True)), config,
                     "embeddings_regularizer")
    return layer


class MaskingLayer(KerasLayer):
    """Zeroes the steps whose features all equal `mask_value` and masks them."""

    takes_mask = True

    def __init__(self, mask_value: float):
        super().__init__()
        self.mask_value = mask_value

    def _keep(self, x):
        return (to_keras(x) != self.mask_value).any(dim=-1)

    def forward(self, x, mask=None):
        xk = to_keras(x)
        return to_internal(xk * self._keep(x).unsqueeze(-1).to(xk.dtype))

    def forward_logits(self, x, mask=None):
        return self.forward(x)

    def output_mask(self, inputs, mask):
        return self._keep(inputs[0])


@converter("Masking")
def convert_masking(config, weights, ctx):
    return MaskingLayer(float(config.get("mask_value", 0.0)))


# --------------------------------------------------------------------------- recurrent layers

GATES = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}


class RecurrentLayer(KerasLayer):
    """Keras SimpleRNN / LSTM / GRU over (batch, steps, features).

    Called as `layer(x, *initial_states, mask=None)`; returns the output (last step, or every step
    with return_sequences, in processing order as Keras does with go_backwards), followed by the
    final states when return_state is set.
    """

    takes_mask = True

    def __init__(self, kind: str, units: int, activation: str, recurrent_activation: str,
                 return_sequences: bool, return_state: bool, go_backwards: bool, reset_after: bool,
                 dropout: float, recurrent_dropout: float, ctx: ConvertContext):
        super().__init__()
        self.kind, self.units = kind, units
        self.cell_activation = make_activation(activation, ctx)
        self.gate_activation = make_activation(recurrent_activation, ctx)
        self.return_sequences, self.return_state = return_sequences, return_state
        self.go_backwards, self.reset_after = go_backwards, reset_after
        self.dropout, self.recurrent_dropout = dropout, recurrent_dropout
        self.zero_output_for_mask = False  # Keras 3 stores it; Bidirectional sets it with return_sequences

    @property
    def state_count(self) -> int:
        return 2 if self.kind == "LSTM" else 1

    def keras_weights(self):
        """(kernel, recurrent_kernel, bias or None) in the standard layer's layout (CuDNN layers convert theirs)."""
        return self.kernel, self.recurrent_kernel, getattr(self, "bias", None)

    def _input_projection(self, x, kernel, bias):
        """x @ kernel (+ the input bias) for every step at once: (batch, steps, gates·units)."""
        xw = x @ kernel
        if bias is not None:
            xw = xw + (bias[0] if bias.dim() == 2 else bias)
        return xw

    def _step(self, xw_t, states, recurrent_keep, recurrent_kernel, bias):
        h = states[0]
        hr = h if recurrent_keep is None else h * recurrent_keep
        act, gate = self.cell_activation, self.gate_activation
        if self.kind == "SimpleRNN":
            h_new = act(xw_t + hr @ recurrent_kernel)
            return h_new, (h_new,)
        if self.kind == "LSTM":
            z = xw_t + hr @ recurrent_kernel
            i, f, c_hat, o = z.chunk(4, dim=-1)
            c = gate(f) * states[1] + gate(i) * act(c_hat)
            h_new = gate(o) * act(c)
            return h_new, (h_new, c)
        u = self.units
        x_z, x_r, x_h = xw_t.chunk(3, dim=-1)
        if self.reset_after:
            inner = hr @ recurrent_kernel
            if bias is not None and bias.dim() == 2:
                inner = inner + bias[1]
            r_z, r_r, r_h = inner.chunk(3, dim=-1)
            z, r = gate(x_z + r_z), gate(x_r + r_r)
            h_hat = act(x_h + r * r_h)
        else:
            kernel = recurrent_kernel
            r_zr = hr @ kernel[:, :2 * u]
            z, r = gate(x_z + r_zr[..., :u]), gate(x_r + r_zr[..., u:])
            h_hat = act(x_h + (r * hr) @ kernel[:, 2 * u:])
        h_new = z * h + (1 - z) * h_hat
        return h_new, (h_new,)

    def _dropout_keep(self, like: torch.Tensor, rate: float):
        if not self.training or rate <= 0.0:
            return None
        return F.dropout(torch.ones_like(like), rate, True)

    def run(self, x, states=(), mask=None):
        """(outputs, final states); outputs is (batch, steps, units) or (batch, units)."""
        batch, steps = x.shape[0], x.shape[1]
        if self.go_backwards:
            x = x.flip(1)
            mask = None if mask is None else mask.flip(1)
        input_keep = self._dropout_keep(x[:, 0], self.dropout)
        if input_keep is not None:
            x = x * input_keep.unsqueeze(1)
        kernel, recurrent_kernel, bias = self.keras_weights()
        xw = self._input_projection(x, kernel, bias)
        states = list(states)
        if not states:
            zero = x.new_zeros((batch, self.units))
            states = [zero] * self.state_count
        elif len(states) != self.state_count:
            raise ConversionError(f"{self.kind} takes {self.state_count} initial state(s), got {len(states)}")
        recurrent_keep = self._dropout_keep(states[0], self.recurrent_dropout)
        outputs = []
        previous = x.new_zeros((batch, self.units))
        for t in range(steps):
            out, new_states = self._step(xw[:, t], states, recurrent_keep, recurrent_kernel, bias)
            if mask is not None:
                keep = mask[:, t].unsqueeze(-1)
                new_states = [torch.where(keep, n, s) for n, s in zip(new_states, states)]
                out = torch.where(keep, out, torch.zeros_like(out) if self.zero_output_for_mask else previous)
            states, previous = list(new_states), out
            outputs.append(out)
        sequence = torch.stack(outputs, dim=1) if self.return_sequences else outputs[-1]
        return sequence, states

    def forward(self, x, *initial_states, mask=None):
        out, states = self.run(x, initial_states, mask)
        return (out, *states) if self.return_state else out

    def forward_logits(self, x, *initial_states, mask=None):
        return self.forward(x, *initial_states, mask=mask)

    def output_mask(self, inputs, mask):
        out_mask = mask if self.return_sequences else None  # Keras does not flip it for go_backwards
        if self.return_state:
            return (out_mask,) + (None,) * self.state_count
        return out_mask


def _gru_reset_after(config: dict, bias_shape) -> bool:
    if "reset_after" in config:
        return bool(config["reset_after"])
    return bias_shape is not None and len(bias_shape) == 2  # files older than the option: it was False


def build_recurrent(class_name: str, config: dict, weights: LayerWeights, ctx: ConvertContext) -> RecurrentLayer:
    name = config.get("name", "")
    if config.get("time_major"):
        raise ConversionError(f"layer {name!r}: time_major=True is not supported")
    if class_name == "SimpleRNN":
        default_gate = "sigmoid"
    else:  # Keras 2.0–2.2 defaulted to hard_sigmoid, tf.keras 2 and Keras 3 to sigmoid
        default_gate = "sigmoid" if ctx.keras_major >= 3 else "hard_sigmoid"
    units = int(config["units"])
    bias_shape = next((w.value.shape for w in weights.saved if w.var == "bias"), None)
    reset_after = class_name == "GRU" and _gru_reset_after(config, bias_shape)
    layer = RecurrentLayer(class_name, units, activation_name(config.get("activation", "tanh")),
                           activation_name(config.get("recurrent_activation", default_gate)),
                           _flag(config, "return_sequences"), _flag(config, "return_state"),
                           _flag(config, "go_backwards"), reset_after,
                           float(config.get("dropout", 0.0) or 0.0),
                           float(config.get("recurrent_dropout", 0.0) or 0.0), ctx)
    layer.zero_output_for_mask = _flag(config, "zero_output_for_mask")
    trainable = bool(config.get("trainable", True))
    layer.add_weight(weights, "kernel", trainable, config, "kernel_regularizer")
    layer.add_weight(weights, "recurrent_kernel", trainable, config, "recurrent_regularizer")
    if config.get("use_bias", True):
        layer.add_weight(weights, "bias", trainable, config, "bias_regularizer")
    gates = GATES[class_name] * units
    if tuple(layer.kernel.shape[1:]) != (gates,) or tuple(layer.recurrent_kernel.shape) != (units, gates):
        raise ConversionError(f"layer {name!r}: {class_name} weights of shapes {tuple(layer.kernel.shape)}, "
                              f"{tuple(layer.recurrent_kernel.shape)} do not fit {units} units")
    return layer


for _class in GATES:
    converter(_class)(lambda config, weights, ctx, _class=_class: build_recurrent(_class, config, weights, ctx))


# --------------------------------------------------------------------------- CuDNNLSTM, CuDNNGRU

class CuDNNRecurrentLayer(RecurrentLayer):
    """Keras 2's CuDNNLSTM / CuDNNGRU as the standard recurrence (tanh, sigmoid gates; GRU with
    reset_after) on the weights as the CuDNN layer saved them, converted at each call as tf_keras
    converts them when it loads them into LSTM / GRU (`_convert_rnn_weights`): the CuDNN layer hands
    each gate's (in, units) kernel block to CuDNN as flat memory that CuDNN reads as a (units, in)
    matrix, so the standard kernel of a gate is `block.reshape(units, in).T`; a recurrent block is
    transposed; the LSTM's input and recurrent biases (8·units) are summed, the GRU's (6·units) are
    the (2, 3·units) bias of reset_after. Parameters keep the file's layout, so the round trip is
    a copy, and the conversion is differentiable."""

    def keras_weights(self):
        gates, units = GATES[self.kind], self.units

        def blocks(w, fn):
            return torch.cat([fn(b) for b in w.split(units, dim=1)], dim=1)

        kernel = blocks(self.kernel, lambda b: b.reshape(units, b.shape[0]).t())
        recurrent_kernel = blocks(self.recurrent_kernel, lambda b: b.t())
        bias = self.bias.reshape(2, gates * units)
        return kernel, recurrent_kernel, (bias.sum(dim=0) if self.kind == "LSTM" else bias)

    def forward(self, x, *initial_states, mask=None):
        if mask is not None:  # Keras: "Masking is not supported for CuDNN RNNs."
            raise ConversionError(f"{self.kind} (CuDNN) receives a mask, which Keras refuses too")
        return super().forward(x, *initial_states)


def build_cudnn(class_name: str, config: dict, weights: LayerWeights, ctx: ConvertContext) -> RecurrentLayer:
    name = config.get("name", "")
    if config.get("time_major"):
        raise ConversionError(f"layer {name!r}: time_major=True is not supported")
    kind = class_name[len("CuDNN"):]
    units = int(config["units"])
    layer = CuDNNRecurrentLayer(kind, units, "tanh", "sigmoid", _flag(config, "return_sequences"),
                                _flag(config, "return_state"), _flag(config, "go_backwards"), kind == "GRU",
                                0.0, 0.0, ctx)
    trainable = bool(config.get("trainable", True))
    layer.add_weight(weights, "kernel", trainable, config, "kernel_regularizer")
    layer.add_weight(weights, "recurrent_kernel", trainable, config, "recurrent_regularizer")
    layer.add_weight(weights, "bias", trainable, config, "bias_regularizer")
    gates = GATES[kind] * units
    if (tuple(layer.kernel.shape[1:]) != (gates,) or tuple(layer.recurrent_kernel.shape) != (units, gates)
            or tuple(layer.bias.shape) != (2 * gates,)):
        raise ConversionError(f"layer {name!r}: {class_name} weights of shapes {tuple(layer.kernel.shape)}, "
                              f"{tuple(layer.recurrent_kernel.shape)}, {tuple(layer.bias.shape)} do not fit {units} units")
    return layer


CUDNN_CLASSES = ("CuDNNLSTM", "CuDNNGRU")
for _class in CUDNN_CLASSES:
    converter(_class)(lambda config, weights, ctx, _class=_class: build_cudnn(_class, config, weights, ctx))


# --------------------------------------------------------------------------- Bidirectional

def _split_weights(weights: LayerWeights) -> tuple[LayerWeights, LayerWeights]:
    """The forward layer's saved weights and the backward layer's: Keras saves the forward ones
    first, under `…/forward_<layer>/…` and `…/backward_<layer>/…`."""
    forward = [w for w in weights.saved if "/forward_" in w.h5_path]
    backward = [w for w in weights.saved if "/backward_" in w.h5_path]
    if not forward or not backward or len(forward) + len(backward) != len(weights.saved):
        half = len(weights.saved) // 2
        forward, backward = weights.saved[:half], weights.saved[half:]
    return LayerWeights(f"{weights.layer}/forward", forward), LayerWeights(f"{weights.layer}/backward", backward)


class BidirectionalLayer(KerasLayer):
    """Runs `forward_layer` and `backward_layer` (which reads the sequence back to front) and merges
    their outputs; the backward output sequence is flipped back into time order first."""

    takes_mask = True

    def __init__(self, forward_layer: RecurrentLayer, backward_layer: RecurrentLayer, merge_mode):
        super().__init__()
        self.forward_layer, self.backward_layer = forward_layer, backward_layer
        self.merge_mode = merge_mode
        self.return_sequences = forward_layer.return_sequences
        self.return_state = forward_layer.return_state

    def forward(self, x, *initial_states, mask=None):
        half = len(initial_states) // 2
        y, fwd_states = self.forward_layer.run(x, initial_states[:half], mask)
        y_rev, bwd_states = self.backward_layer.run(x, initial_states[half:], mask)
        if self.return_sequences:
            y_rev = y_rev.flip(1)
        if self.merge_mode == "concat":
            merged = (torch.cat([y, y_rev], dim=-1),)
        elif self.merge_mode == "sum":
            merged = (y + y_rev,)
        elif self.merge_mode == "mul":
            merged = (y * y_rev,)
        elif self.merge_mode == "ave":
            merged = ((y + y_rev) / 2,)
        else:
            merged = (y, y_rev)
        out = merged + ((*fwd_states, *bwd_states) if self.return_state else ())
        return out[0] if len(out) == 1 else out

    def forward_logits(self, x, *initial_states, mask=None):
        return self.forward(x, *initial_states, mask=mask)

    def output_mask(self, inputs, mask):
        out_mask = mask if self.return_sequences else None
        count = 2 if self.merge_mode is None else 1
        if self.return_state:
            count += 2 * self.forward_layer.state_count
        masks = (out_mask,) * (2 if self.merge_mode is None else 1)
        masks = masks + (None,) * (count - len(masks))
        return masks[0] if len(masks) == 1 else masks


@converter("Bidirectional")
def convert_bidirectional(config, weights, ctx):
    name = config.get("name", "")
    inner = config["layer"]
    merge_mode = config.get("merge_mode", "concat")
    if merge_mode not in ("concat", "sum", "mul", "ave", None):
        raise ConversionError(f"layer {name!r}: merge_mode={merge_mode!r} is not supported")
    inner_class = inner.get("class_name")
    if inner_class not in GATES and inner_class not in CUDNN_CLASSES:
        raise ConversionError(f"layer {name!r}: Bidirectional around {inner_class} is not supported "
                              f"(supported: {', '.join((*GATES, *CUDNN_CLASSES))})")
    backward_entry = config.get("backward_layer")
    if backward_entry is not None and backward_entry.get("class_name") not in (*GATES, *CUDNN_CLASSES):
        raise ConversionError(f"layer {name!r}: backward layer {backward_entry.get('class_name')} is not supported")
    forward_config = dict(inner["config"])
    if backward_entry is not None:
        backward_class, backward_config = backward_entry["class_name"], dict(backward_entry["config"])
    else:  # Keras builds it from the forward layer's config, reading the other way
        backward_class = inner_class
        backward_config = dict(forward_config, go_backwards=not _flag(forward_config, "go_backwards"))
    trainable = bool(config.get("trainable", True))
    forward_weights, backward_weights = _split_weights(weights)
    layers = []
    for cls, cfg, w in ((inner_class, forward_config, forward_weights),
                        (backward_class, backward_config, backward_weights)):
        if not trainable:
            cfg["trainable"] = False
        layer = (build_cudnn if cls in CUDNN_CLASSES else build_recurrent)(cls, cfg, w, ctx)
        w.check_all_taken()
        layer.zero_output_for_mask = layer.return_sequences
        layers.append(layer)
    for w in (forward_weights, backward_weights):  # mark them used in the layer's own list
        for var, path in w.taken.items():
            weights.taken[f"{w.layer}/{var}"] = path
    return BidirectionalLayer(layers[0], layers[1], merge_mode)


# --------------------------------------------------------------------------- TimeDistributed

class TimeDistributedLayer(KerasLayer):
    """Applies the wrapped layer (or a wrapped model's KerasGraph) to every step: (batch, steps, …) →
    (batch·steps, …) and back."""

    takes_mask = True

    def __init__(self, layer: KerasLayer):
        super().__init__()
        self.layer = layer

    def _apply(self, x, logits: bool):
        xk = to_keras(x)
        batch, steps = xk.shape[0], xk.shape[1]
        flat = to_internal(xk.reshape((batch * steps,) + tuple(xk.shape[2:])))
        y = self.layer.forward_logits(flat) if logits else self.layer(flat)
        yk = to_keras(y)
        return to_internal(yk.reshape((batch, steps) + tuple(yk.shape[1:])))

    def forward(self, x, mask=None):
        return self._apply(x, logits=False)

    def forward_logits(self, x, mask=None):
        return self._apply(x, logits=True)

    def output_mask(self, inputs, mask):
        return mask


def wrapped_layer(config: dict) -> tuple[str, dict]:
    inner = config.get("layer") or {}
    return inner.get("class_name", ""), dict(inner.get("config") or {})
