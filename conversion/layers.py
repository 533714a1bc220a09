"""One converter per Keras layer class, registered by class name.

A converter takes the layer's Keras config and its saved weights and returns a `KerasLayer`: a
torch module that computes what the Keras layer computes, on the bridge's internal layout
(`layout.py`). Weights stay in Keras' own array layout as parameters named after the Keras
variables (`kernel`, `bias`, `gamma`, `moving_mean`, …), so writing them back is a plain copy and
a round trip is bit-exact. Adding a layer is adding one function here and one test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConversionError
from .keras_geometry import pair as _pair, same_padding
from .layout import to_internal, to_keras, torch_axis


# --------------------------------------------------------------------------- context and weights

@dataclass
class ConvertContext:
    """What a converter may need beyond its own config: the file's Keras major version."""

    keras_major: int = 2
    source: str = ""


@dataclass
class SavedWeight:
    h5_path: str
    var: str  # Keras variable name: kernel, bias, gamma, moving_mean, …
    value: np.ndarray


@dataclass
class LayerWeights:
    """The saved weights of one leaf layer, taken by Keras variable name."""

    layer: str
    saved: list[SavedWeight] = field(default_factory=list)
    taken: dict[str, str] = field(default_factory=dict)  # var → h5 path

    def _find(self, names: tuple[str, ...]) -> SavedWeight:
        for name in names:
            for w in self.saved:
                if w.var == name and w.h5_path not in self.taken.values():
                    return w
        # Names that do not parse (very old or hand-made files): fall back to save order.
        remaining = [w for w in self.saved if w.h5_path not in self.taken.values()]
        if remaining and not any(w.var in names for w in self.saved):
            return remaining[0]
        raise ConversionError(f"layer {self.layer!r}: no saved weight {names[0]!r} "
                              f"(file has {[w.var for w in self.saved]})")

    def take(self, var: str, aliases: tuple[str, ...] = ()) -> np.ndarray:
        """The saved value of `var` (or of the first of `aliases` saved: another Keras version's name)."""
        w = self._find((var, *aliases))
        self.taken[var] = w.h5_path
        return w.value

    def check_all_taken(self):
        left = [w.h5_path for w in self.saved if w.h5_path not in self.taken.values()]
        if left:
            raise ConversionError(f"layer {self.layer!r}: saved weights not used by its converter: {left}")


class KerasLayer(nn.Module):
    """Base of converted layers: `linear` computes the layer, `activation` follows it.

    `forward_logits` stops before a fused sigmoid/softmax so parity tests and losses can work on
    logits. `regularizers` maps a parameter name to Keras' (l1, l2) penalty factors.

    `activity_regularizer` is Keras' (l1, l2) penalty on the layer's output: each call in train()
    mode with gradients on records l1·Σ|y| + l2·Σy² divided by the batch size (as tf_keras and
    Keras 3 do), and `take_activity_loss` hands the recorded sum to the model's
    `regularization_loss` once, so a training step adds the penalties of its own forward pass.
    """

    def __init__(self, activation: str | None = None, ctx: ConvertContext | None = None):
        super().__init__()
        self.activation_name = activation or "linear"
        self.activation = make_activation(self.activation_name, ctx or ConvertContext())
        self.h5_paths: dict[str, str] = {}
        self.regularizers: dict[str, tuple[float, float]] = {}
        self.activity_regularizer: tuple[float, float] | None = None
        self._activity_losses: list[torch.Tensor] = []

    def linear(self, *xs: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        y = self.activation(self.linear(*xs))
        self._record_activity(y)
        return y

    def forward_logits(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.activation_name in ("sigmoid", "softmax"):
            logits = self.linear(*xs)
            if self.activity_regularizer:  # Keras penalizes the layer's output, after its activation
                self._record_activity(self.activation(logits))
            return logits
        return self.forward(*xs)

    def _record_activity(self, outputs) -> None:
        if not (self.activity_regularizer and self.training and torch.is_grad_enabled()):
            return
        l1, l2 = self.activity_regularizer
        for y in outputs if isinstance(outputs, (tuple, list)) else (outputs,):
            penalty = (l1 * y.abs().sum() if l1 else 0) + (l2 * y.square().sum() if l2 else 0)
            self._activity_losses.append(penalty / max(int(y.shape[0]), 1) if y.dim() else penalty)

    def take_activity_loss(self) -> torch.Tensor | None:
        """The activity penalties recorded since the last take (None if none), forgotten afterwards."""
        if not self._activity_losses:
            return None
        total = torch.stack(self._activity_losses).sum()
        self._activity_losses = []
        return total

    def add_weight(self, weights: LayerWeights, var: str, trainable: bool, config: dict,
                   regularizer_key: str | None = None, aliases: tuple[str, ...] = ()):
        """Register the saved Keras variable `var` as a parameter (or buffer if not trainable)."""
        value = torch.from_numpy(np.array(weights.take(var, aliases), dtype=np.float32))
        if trainable:
            self.register_parameter(var, nn.Parameter(value))
        else:
            self.register_buffer(var, value)
        self.h5_paths[var] = weights.taken[var]
        penalty = regularizer_factors(config.get(regularizer_key)) if regularizer_key else None
        if penalty:
            self.regularizers[var] = penalty


def regularizer_factors(spec) -> tuple[float, float] | None:
    """Keras L1/L2/L1L2 regularizer config → (l1, l2) factors, None when there is none."""
    if not spec:
        return None
    if not isinstance(spec, dict):
        raise ConversionError(f"unsupported regularizer {spec!r}")
    name = spec.get("class_name", "")
    cfg = spec.get("config") or {}
    if name not in ("L1", "L2", "L1L2", "l1", "l2", "l1_l2"):
        raise ConversionError(f"unsupported regularizer {name!r}")
    l1, l2 = float(cfg.get("l1", 0.0) or 0.0), float(cfg.get("l2", 0.0) or 0.0)
    return (l1, l2) if (l1 or l2) else None


# --------------------------------------------------------------------------- activations

class HardSigmoid(nn.Module):
    """Keras 2: clip(0.2·x + 0.5, 0, 1); Keras 3: relu6(x + 3) / 6."""

    def __init__(self, keras_major: int):
        super().__init__()
        self.slope = 1.0 / 6.0 if keras_major >= 3 else 0.2

    def forward(self, x):
        return torch.clamp(self.slope * x + 0.5, 0.0, 1.0)


class Softmax(nn.Module):
    def __init__(self, axis: int = -1):
        super().__init__()
        self.axis = axis

    def forward(self, x):
        return torch.softmax(x, dim=torch_axis(self.axis, x.dim()))


class Lambda(nn.Module):
    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class HardSilu(nn.Module):
    """Keras 3 hard_silu / hard_swish: x · relu6(x + 3) / 6."""

    def forward(self, x):
        return x * torch.clamp(x / 6.0 + 0.5, 0.0, 1.0)


class LogSoftmax(nn.Module):
    def forward(self, x):
        return torch.log_softmax(x, dim=torch_axis(-1, x.dim()))


def _gelu(x):
    return F.gelu(x)  # exact (erf), Keras' default approximate=False


def _mish(x):
    return x * torch.tanh(F.softplus(x))


def activation_name(spec) -> str:
    """Keras activation as a plain name, from a string or a Keras 3 serialized dict."""
    if spec is None:
        return "linear"
    if isinstance(spec, dict):
        inner = spec.get("config")
        spec = inner if isinstance(inner, str) else spec.get("class_name", "")
    return {"softmax_v2": "softmax", "silu": "swish", "hard_swish": "hard_silu"}.get(str(spec), str(spec))


# Every string tf_keras' `activations.get` accepts (Keras 2), plus Keras 3's hard_silu / hard_swish.
ACTIVATION_NAMES = ("linear", "relu", "relu6", "leaky_relu", "sigmoid", "hard_sigmoid", "softmax",
                    "log_softmax", "tanh", "elu", "selu", "gelu", "softplus", "softsign", "swish",
                    "silu", "mish", "exponential", "hard_silu", "hard_swish")


def make_activation(name: str, ctx: ConvertContext) -> nn.Module:
    simple = {
        "linear": nn.Identity, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
        "elu": nn.ELU, "selu": nn.SELU, "softplus": nn.Softplus, "swish": nn.SiLU,
        "relu6": nn.ReLU6, "softsign": nn.Softsign, "hard_silu": HardSilu, "log_softmax": LogSoftmax,
    }
    if name in simple:
        return simple[name]()
    if name == "softmax":
        return Softmax(-1)
    if name == "hard_sigmoid":
        return HardSigmoid(ctx.keras_major)
    if name == "exponential":
        return Lambda(torch.exp)
    if name == "gelu":
        return Lambda(_gelu)
    if name == "mish":
        return Lambda(_mish)
    if name == "leaky_relu":  # tf.nn.leaky_relu and Keras 3: negative slope 0.2
        return nn.LeakyReLU(0.2)
    raise ConversionError(f"unsupported activation {name!r}")


# --------------------------------------------------------------------------- registry

Converter = Callable[[dict, LayerWeights, ConvertContext], KerasLayer]
CONVERTERS: dict[str, Converter] = {}


def converter(*class_names: str):
    """Register a function as the converter of the named Keras layer classes."""

    def register(fn: Converter) -> Converter:
        def convert(config: dict, weights: LayerWeights, ctx: ConvertContext) -> KerasLayer:
            layer = fn(config, weights, ctx)
            penalty = regularizer_factors(config.get("activity_regularizer"))  # any layer may have one
            if penalty:
                layer.activity_regularizer = penalty
            return layer

        for name in class_names:
            CONVERTERS[name] = convert
        return fn

    return register


def supported_layers() -> list[str]:
    return sorted(CONVERTERS)


def _check_channels_last(config: dict, layer: str):
    fmt = config.get("data_format") or "channels_last"
    if fmt != "channels_last":
        raise ConversionError(f"layer {layer!r}: data_format={fmt!r} is not supported (channels_last only)")


def pad_same(x: torch.Tensor, kernel, stride, dilation=(1, 1), value: float = 0.0) -> torch.Tensor:
    top, bottom = same_padding(x.shape[2], kernel[0], stride[0], dilation[0])
    left, right = same_padding(x.shape[3], kernel[1], stride[1], dilation[1])
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=value)
    return x


# --------------------------------------------------------------------------- layers without weights

class Identity(KerasLayer):
    def linear(self, x):
        return x


@converter("InputLayer")
def convert_input(config, weights, ctx):
    return Identity()


@converter("Dropout")
def convert_dropout(config, weights, ctx):
    return DropoutLayer(float(config.get("rate", 0.0)), spatial=False)


@converter("SpatialDropout1D", "SpatialDropout2D")
def convert_spatial_dropout(config, weights, ctx):
    _check_channels_last(config, config.get("name", ""))
    return DropoutLayer(float(config.get("rate", 0.0)), spatial=True)


def fast_dropout(x: torch.Tensor, rate: float) -> torch.Tensor:
    """Inverted dropout (as Keras and F.dropout): zero each element with probability `rate`, scale the
    rest by 1/(1 − rate).

    The mask is made from random bits, drawn 64 at a time: 8 bits per element where rate × 256 is a
    whole number (0.5, 0.25, …; then exactly Keras' probability), else 16 (within 2⁻¹⁷ of it), compared
    with rate × 2^bits. Measured on the 2-core CPU for srkw_cnn's first dropout (32 images at
    607×617): mask 0.44 s with `uniform_`, 0.31 s this way; `uniform_` alone was a seventh of a step.
    """
    if rate <= 0.0:
        return x
    if rate >= 1.0:
        return x * 0.0
    n = x.numel()
    if float(rate * 256).is_integer():
        draw_type, threshold, per_word = torch.uint8, int(rate * 256), 8
    else:
        draw_type, threshold, per_word = torch.int16, round(rate * 65536) - 32768, 4
    words = torch.empty((n + per_word - 1) // per_word, dtype=torch.int64, device=x.device)
    draws = words.random_(-2**63, 2**63 - 1).view(draw_type)[:n]
    keep = torch.ge(draws, threshold).to(x.dtype).mul_(1.0 / (1.0 - rate))
    dense = x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))
    keep = keep.as_strided(x.size(), x.stride()) if dense else keep.view(x.shape)  # x's memory layout
    return x * keep


class DropoutLayer(KerasLayer):
    """Active in train() only, with Keras' rate; spatial drops whole channels."""

    def __init__(self, rate: float, spatial: bool):
        super().__init__()
        self.rate, self.spatial = rate, spatial

    def linear(self, x):
        if self.spatial and x.dim() == 4:
            return F.dropout2d(x, self.rate, self.training)
        if self.spatial and x.dim() == 3:  # (batch, steps, channels): whole channels
            return F.dropout1d(x.transpose(1, 2), self.rate, self.training).transpose(1, 2)
        return fast_dropout(x, self.rate) if self.training else x


class NoiseLayer(KerasLayer):
    """GaussianNoise, GaussianDropout, AlphaDropout: the identity in eval(), Keras' noise in train().

    Additive N(0, stddev²); multiplicative N(1, rate / (1 − rate)); alpha dropout keeps SELU's mean
    and variance: dropped units become −λα, then a·x + b (torch's `alpha_dropout` is the same formula
    as Keras'). Same distribution as Keras, not the same draws.
    """

    def __init__(self, kind: str, amount: float):
        super().__init__()
        self.kind, self.amount = kind, amount

    def linear(self, x):
        if not self.training or self.amount <= 0:
            return x
        if self.kind == "gaussian_noise":
            return x + torch.randn_like(x) * self.amount
        if self.amount >= 1:  # Keras leaves rate ≥ 1 alone
            return x
        if self.kind == "gaussian_dropout":
            return x * (1.0 + torch.randn_like(x) * math.sqrt(self.amount / (1.0 - self.amount)))
        return F.alpha_dropout(x, self.amount, True)


@converter("GaussianNoise")
def convert_gaussian_noise(config, weights, ctx):
    return NoiseLayer("gaussian_noise", float(config.get("stddev", 0.0)))


@converter("GaussianDropout")
def convert_gaussian_dropout(config, weights, ctx):
    return NoiseLayer("gaussian_dropout", float(config.get("rate", 0.0)))


@converter("AlphaDropout")
def convert_alpha_dropout(config, weights, ctx):
    if config.get("noise_shape") is not None:
        raise ConversionError(f"layer {config.get('name')!r}: AlphaDropout noise_shape is not supported")
    return NoiseLayer("alpha_dropout", float(config.get("rate", 0.0)))


@converter("ActivityRegularization")
def convert_activity_regularization(config, weights, ctx):
    """The identity; its (l1, l2) penalty on the activations joins the model's regularization_loss."""
    layer = Identity()
    l1, l2 = float(config.get("l1", 0.0) or 0.0), float(config.get("l2", 0.0) or 0.0)
    if l1 or l2:
        layer.activity_regularizer = (l1, l2)
    return layer


class ActivationLayer(KerasLayer):
    def linear(self, x):
        return x


@converter("Activation")
def convert_activation(config, weights, ctx):
    return ActivationLayer(activation_name(config.get("activation")), ctx)


class ReLULayer(KerasLayer):
    """Keras ReLU: max_value, negative_slope below threshold."""

    def __init__(self, max_value, negative_slope, threshold):
        super().__init__()
        self.max_value = None if max_value is None else float(max_value)
        self.negative_slope, self.threshold = float(negative_slope), float(threshold)

    def linear(self, x):
        if self.negative_slope == 0 and self.threshold == 0:
            y = torch.relu(x)
        else:
            y = torch.where(x >= self.threshold, x, self.negative_slope * (x - self.threshold))
        if self.max_value is not None:
            y = torch.clamp(y, max=self.max_value)
        return y


@converter("ReLU")
def convert_relu(config, weights, ctx):
    return ReLULayer(config.get("max_value"), config.get("negative_slope", 0.0) or 0.0,
                     config.get("threshold", 0.0) or 0.0)


@converter("LeakyReLU")
def convert_leaky_relu(config, weights, ctx):
    slope = config.get("negative_slope", config.get("alpha", 0.3))
    return ReLULayer(None, slope, 0.0)


class FlattenLayer(KerasLayer):
    """Flattens in Keras' (NHWC) element order, so the next Dense sees what Keras' did."""

    def linear(self, x):
        return torch.flatten(to_keras(x), 1)


@converter("Flatten")
def convert_flatten(config, weights, ctx):
    _check_channels_last(config, config.get("name", ""))
    return FlattenLayer()


class ReshapeLayer(KerasLayer):
    def __init__(self, target):
        super().__init__()
        self.target = tuple(int(t) for t in target)

    def linear(self, x):
        return to_internal(to_keras(x).reshape((x.shape[0],) + self.target))


@converter("Reshape")
def convert_reshape(config, weights, ctx):
    return ReshapeLayer(config["target_shape"])


class GlobalPool(KerasLayer):
    """Global average or max pooling over `dims`: (2, 3) for 2-D maps (held NCHW), (1,) for 1-D
    sequences (held as Keras' (batch, steps, channels))."""

    def __init__(self, mode: str, keepdims: bool, dims: tuple[int, ...] = (2, 3)):
        super().__init__()
        self.mode, self.keepdims, self.dims = mode, keepdims, dims

    def linear(self, x):
        if self.mode == "avg":
            return x.mean(dim=self.dims, keepdim=self.keepdims)
        return x.amax(dim=self.dims, keepdim=self.keepdims)


@converter("GlobalAveragePooling2D")
def convert_global_avg(config, weights, ctx):
    _check_channels_last(config, config.get("name", ""))
    return GlobalPool("avg", bool(config.get("keepdims", False)))


@converter("GlobalMaxPooling2D")
def convert_global_max(config, weights, ctx):
    _check_channels_last(config, config.get("name", ""))
    return GlobalPool("max", bool(config.get("keepdims", False)))


class Pool2D(KerasLayer):
    """Max/average pooling with TF padding: 'same' pads with -inf (max) or is left out of the mean."""

    def __init__(self, mode, pool, strides, padding):
        super().__init__()
        self.mode, self.pool, self.strides, self.padding = mode, pool, strides, padding

    def linear(self, x):
        if self.padding == "valid":
            if self.mode == "max":
                return F.max_pool2d(x, self.pool, self.strides)
            return F.avg_pool2d(x, self.pool, self.strides)
        if self.mode == "max":
            return F.max_pool2d(pad_same(x, self.pool, self.strides, value=-math.inf), self.pool, self.strides)
        summed = F.avg_pool2d(pad_same(x, self.pool, self.strides), self.pool, self.strides)
        ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
        counted = F.avg_pool2d(pad_same(ones, self.pool, self.strides), self.pool, self.strides)
        return summed / counted


def _convert_pool(mode):
    def convert(config, weights, ctx):
        _check_channels_last(config, config.get("name", ""))
        pool = _pair(config.get("pool_size", 2))
        strides = _pair(config.get("strides") or pool)
        return Pool2D(mode, pool, strides, config.get("padding", "valid"))

    return convert


converter("MaxPooling2D", "MaxPool2D")(_convert_pool("max"))
converter("AveragePooling2D", "AvgPool2D")(_convert_pool("avg"))


def _crop_or_pad_spec(value) -> tuple[int, int, int, int]:
    """Keras ((top, bottom), (left, right)) in any of its spellings → (top, bottom, left, right)."""
    if isinstance(value, int):
        return (value,) * 4
    a, b = value
    if isinstance(a, int):
        return (a, a, b, b)
    return (int(a[0]), int(a[1]), int(b[0]), int(b[1]))


class ZeroPad(KerasLayer):
    def __init__(self, spec):
        super().__init__()
        self.spec = spec

    def linear(self, x):
        top, bottom, left, right = self.spec
        return F.pad(x, (left, right, top, bottom))


@converter("ZeroPadding2D")
def convert_zero_padding(config, weights, ctx):
    _check_channels_last(config, config.get("name", ""))
    return ZeroPad(_crop_or_pad_spec(config.get("padding", 1)))


class Crop(KerasLayer):
    def __init__(self, spec):
        super().__init__()
        self.spec = spec

    def linear(self, x):
        top, bottom, left, right = self.spec
        return x[:, :, top:x.shape[2] - bottom, left:x.shape[3] - right]


@converter("Cropping2D")
def convert_cropping(config, weights, ctx):
    _check_channels_last(config, config.get("name", ""))
    return Crop(_crop_or_pad_spec(config.get("cropping", 0)))


class UpSample(KerasLayer):
    def __init__(self, size, interpolation):
        super().__init__()
        self.size, self.interpolation = size, interpolation

    def linear(self, x):
        if self.interpolation == "nearest":
            return x.repeat_interleave(self.size[0], dim=2).repeat_interleave(self.size[1], dim=3)
        return F.interpolate(x, scale_factor=self.size, mode="bilinear", align_corners=False)


@converter("UpSampling2D")
def convert_upsampling(config, weights, ctx):
    _check_channels_last(config, config.get("name", ""))
    mode = config.get("interpolation", "nearest")
    if mode not in ("nearest", "bilinear"):
        raise ConversionError(f"layer {config.get('name')!r}: interpolation={mode!r} is not supported")
    return UpSample(_pair(config.get("size", 2)), mode)


class Merge(KerasLayer):
    def __init__(self, op: str, axis: int = -1):
        super().__init__()
        self.op, self.axis = op, axis

    def linear(self, *xs):
        if self.op == "concat":
            return torch.cat(xs, dim=torch_axis(self.axis, xs[0].dim()))
        if self.op == "subtract":
            return xs[0] - xs[1]
        out = xs[0]
        for x in xs[1:]:
            if self.op in ("add", "average"):
                out = out + x
            elif self.op == "multiply":
                out = out * x
            elif self.op == "maximum":
                out = torch.maximum(out, x)
            elif self.op == "minimum":
                out = torch.minimum(out, x)
        return out / len(xs) if self.op == "average" else out


for _name, _op in [("Add", "add"), ("Subtract", "subtract"), ("Multiply", "multiply"),
                   ("Average", "average"), ("Maximum", "maximum"), ("Minimum", "minimum")]:
    converter(_name)(lambda config, weights, ctx, _op=_op: Merge(_op))


class DotLayer(KerasLayer):
    """Keras Dot of two (batch, n) or (batch, n, m) tensors over one axis each (batch_dot): rank 2
    gives (batch, 1), rank 3 the remaining axis of the first input, then the second's; `normalize`
    l2-normalizes each input along its axis first (as tf.math.l2_normalize)."""

    def __init__(self, axes, normalize: bool):
        super().__init__()
        self.axes, self.normalize = axes, normalize

    def linear(self, a, b):
        if a.dim() != b.dim() or a.dim() not in (2, 3):
            raise ConversionError(f"Dot of inputs of rank {a.dim()} and {b.dim()} (2 or 3 supported)")
        axes = self.axes if isinstance(self.axes, (list, tuple)) else (self.axes, self.axes)
        ax, bx = int(axes[0]) % a.dim(), int(axes[1]) % b.dim()
        if self.normalize:
            a = a * torch.rsqrt(torch.clamp(a.square().sum(dim=ax, keepdim=True), min=1e-12))
            b = b * torch.rsqrt(torch.clamp(b.square().sum(dim=bx, keepdim=True), min=1e-12))
        if a.dim() == 2:
            return (a * b).sum(dim=1, keepdim=True)
        a = a if ax == 2 else a.transpose(1, 2)  # (batch, kept, contracted)
        b = b if bx == 1 else b.transpose(1, 2)  # (batch, contracted, kept)
        return torch.bmm(a, b)


@converter("Dot")
def convert_dot(config, weights, ctx):
    axes = config.get("axes", -1)
    if isinstance(axes, (list, tuple)) and len(axes) != 2:
        raise ConversionError(f"layer {config.get('name')!r}: Dot axes={axes!r}")
    return DotLayer(axes, bool(config.get("normalize", False)))


@converter("Concatenate")
def convert_concatenate(config, weights, ctx):
    return Merge("concat", int(config.get("axis", -1)))


# --------------------------------------------------------------------------- layers with weights

def _trainable(config) -> bool:
    return bool(config.get("trainable", True))


class Dense(KerasLayer):
    """x @ kernel + bias on the last Keras axis; kernel stays (in, out) as Keras stores it."""

    def linear(self, x):
        y = to_keras(x) @ self.kernel
        if hasattr(self, "bias"):
            y = y + self.bias
        return to_internal(y)


@converter("Dense")
def convert_dense(config, weights, ctx):
    layer = Dense(activation_name(config.get("activation")), ctx)
    layer.add_weight(weights, "kernel", _trainable(config), config, "kernel_regularizer")
    if config.get("use_bias", True):
        layer.add_weight(weights, "bias", _trainable(config), config, "bias_regularizer")
    return layer


def transposed_window(size: int, kernel: int, stride: int, dilation: int, padding: str,
                      output_padding: int | None) -> tuple[int, int]:
    """(start, length) of a Keras ConvNDTranspose output inside torch's full transposed convolution
    along one axis: Keras' output length (tf_keras `deconv_output_length`, Keras 3 alike), and TF's
    'same' offset (the padding its forward convolution of that length would put before)."""
    k = (kernel - 1) * dilation + 1
    if output_padding is None:
        length = size * stride + max(k - stride, 0) if padding == "valid" else size * stride
    else:
        length = (size - 1) * stride + k - 2 * (k // 2 if padding == "same" else 0) + output_padding
    full = (size - 1) * stride + k
    return (max(full - length, 0) // 2 if padding == "same" else 0), length


class Conv(KerasLayer):
    """Conv1D/2D (grouped too), DepthwiseConv1D/2D, SeparableConv1D/2D, Conv1D/2DTranspose with TF
    'same' and 'causal' padding.

    Kernels stay in Keras' (kh, kw, …) or (k, …) layout and are rearranged for torch at each call;
    the copy is small next to the convolution and keeps the round trip a plain copy. 1-D layers run
    as 2-D ones over a (1, steps) image: one code path for TF's padding and transposed geometry.
    """

    def __init__(self, kind, strides, padding, dilation, activation, ctx, rank: int = 2, groups: int = 1,
                 output_padding=None):
        super().__init__(activation, ctx)
        self.kind, self.strides, self.padding, self.dilation = kind, strides, padding, dilation
        self.rank, self.groups, self.output_padding = rank, groups, output_padding

    def _kernel(self, var: str) -> torch.Tensor:
        k = getattr(self, var)
        return k.unsqueeze(0) if self.rank == 1 else k  # (k, …) → (1, k, …)

    def _conv(self, x, weight, groups=1, bias=None):
        kernel = weight.shape[2:]
        strides = self.strides
        if tuple(kernel) == (1, 1) and strides != (1, 1):
            # Same result, never padded; and torch 2.14's CPU backward of a strided 1×1
            # convolution on channels_last input crashes the process.
            x, strides = x[:, :, ::strides[0], ::strides[1]], (1, 1)
        if self.padding == "same":
            x = pad_same(x, kernel, strides, self.dilation)
        elif self.padding == "causal":  # 1-D only: every pad before the first step
            x = F.pad(x, ((kernel[1] - 1) * self.dilation[1], 0))
        elif self.padding != "valid":
            raise ConversionError(f"padding={self.padding!r} is not supported")
        return F.conv2d(x, weight, bias, strides, 0, self.dilation, groups)

    def _transposed(self, x, weight):
        y = F.conv_transpose2d(x, weight, None, self.strides, 0, 0, 1, self.dilation)
        output_padding = self.output_padding or (None, None)
        (sh, th), (sw, tw) = (transposed_window(x.shape[2 + i], weight.shape[2 + i], self.strides[i],
                                                self.dilation[i], self.padding, output_padding[i])
                              for i in (0, 1))
        y = y[:, :, sh:sh + th, sw:sw + tw]
        if y.shape[2] < th or y.shape[3] < tw:  # TF's output reaches past the full one: zeros there
            y = F.pad(y, (0, tw - y.shape[3], 0, th - y.shape[2]))
        return y

    def _depthwise(self, x, bias=None):
        k = self._kernel("depthwise_kernel")  # (kh, kw, in, mult)
        w = k.permute(2, 3, 0, 1).reshape(k.shape[2] * k.shape[3], 1, k.shape[0], k.shape[1])
        return self._conv(x, w, groups=k.shape[2], bias=bias)

    def _linear_2d(self, x):
        bias = getattr(self, "bias", None)  # added inside the convolution: one full pass less
        if self.kind == "conv":
            return self._conv(x, self._kernel("kernel").permute(3, 2, 0, 1), groups=self.groups, bias=bias)
        if self.kind == "depthwise":
            return self._depthwise(x, bias)
        if self.kind == "separable":
            return F.conv2d(self._depthwise(x), self._kernel("pointwise_kernel").permute(3, 2, 0, 1), bias)
        # transpose: Keras (kh, kw, out, in) → torch (in, out, kh, kw)
        y = self._transposed(x, self._kernel("kernel").permute(3, 2, 0, 1))
        return y if bias is None else y + bias.view(1, -1, 1, 1)

    def linear(self, x):
        if self.rank == 1:  # (batch, steps, channels) → (batch, channels, 1, steps) and back
            return self._linear_2d(x.transpose(1, 2).unsqueeze(2)).squeeze(2).transpose(1, 2)
        return self._linear_2d(x)


# class name → (kind, rank, kernel variables)
_CONV_KINDS = {
    "Conv2D": ("conv", 2, ["kernel"]),
    "Convolution2D": ("conv", 2, ["kernel"]),
    "Conv2DTranspose": ("transpose", 2, ["kernel"]),
    "Convolution2DTranspose": ("transpose", 2, ["kernel"]),
    "DepthwiseConv2D": ("depthwise", 2, ["depthwise_kernel"]),
    "SeparableConv2D": ("separable", 2, ["depthwise_kernel", "pointwise_kernel"]),
    "SeparableConvolution2D": ("separable", 2, ["depthwise_kernel", "pointwise_kernel"]),
    "Conv1D": ("conv", 1, ["kernel"]),
    "Convolution1D": ("conv", 1, ["kernel"]),
    "Conv1DTranspose": ("transpose", 1, ["kernel"]),
    "Convolution1DTranspose": ("transpose", 1, ["kernel"]),
    "DepthwiseConv1D": ("depthwise", 1, ["depthwise_kernel"]),
    "SeparableConv1D": ("separable", 1, ["depthwise_kernel", "pointwise_kernel"]),
    "SeparableConvolution1D": ("separable", 1, ["depthwise_kernel", "pointwise_kernel"]),
}

# Keras 3 saves a DepthwiseConv1D/2D kernel as `kernel`; tf_keras as `depthwise_kernel`.
_KERNEL_ALIASES = {"depthwise_kernel": ("kernel",)}


def _sizes(config, key, rank) -> tuple[int, int]:
    """A Keras size argument as the (rows, cols) pair of the 2-D convolution that computes the layer."""
    return (1, _single(config.get(key, 1))) if rank == 1 else _pair(config.get(key, 1))


def convert_conv(config, weights, ctx, class_name):
    name = config.get("name", "")
    _check_channels_last(config, name)
    kind, rank, kernels = _CONV_KINDS[class_name]
    groups = int(config.get("groups", 1) or 1)
    padding = config.get("padding", "valid")
    if padding not in (("valid", "same", "causal") if rank == 1 and kind != "transpose" else ("valid", "same")):
        raise ConversionError(f"layer {name!r}: padding={padding!r} is not supported")
    output_padding = config.get("output_padding")
    if output_padding is not None:
        output_padding = (0, _single(output_padding)) if rank == 1 else _pair(output_padding)
    layer = Conv(kind, _sizes(config, "strides", rank), padding, _sizes(config, "dilation_rate", rank),
                 activation_name(config.get("activation")), ctx, rank, groups, output_padding)
    regularizer_keys = {"kernel": "kernel_regularizer", "depthwise_kernel": "depthwise_regularizer",
                        "pointwise_kernel": "pointwise_regularizer"}
    for var in kernels:
        layer.add_weight(weights, var, _trainable(config), config, regularizer_keys[var],
                         aliases=_KERNEL_ALIASES.get(var, ()))
    if config.get("use_bias", True):
        layer.add_weight(weights, "bias", _trainable(config), config, "bias_regularizer")
    return layer


for _name in _CONV_KINDS:
    converter(_name)(lambda config, weights, ctx, _name=_name: convert_conv(config, weights, ctx, _name))


class BatchNorm(KerasLayer):
    """Keras BatchNormalization: batch statistics in train(), moving ones in eval().

    Moving averages follow Keras' momentum (torch's momentum is 1 − Keras'); a layer Keras froze
    (trainable=False) always runs in inference mode, as tf.keras 2 does.
    """

    def __init__(self, axis, epsilon, momentum, frozen):
        super().__init__()
        self.axis, self.epsilon, self.momentum, self.frozen = axis, epsilon, momentum, frozen

    def linear(self, x):
        axis = torch_axis(self.axis, x.dim())
        moved = axis != 1
        if moved:
            x = x.movedim(axis, 1)
        training = self.training and not self.frozen
        y = F.batch_norm(x, self.moving_mean, self.moving_variance,
                         getattr(self, "gamma", None), getattr(self, "beta", None),
                         training, 1.0 - self.momentum, self.epsilon)
        return y.movedim(1, axis) if moved else y


@converter("BatchNormalization")
def convert_batch_norm(config, weights, ctx):
    axis = config.get("axis", -1)
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            raise ConversionError(f"layer {config.get('name')!r}: BatchNormalization over several axes")
        axis = axis[0]
    if config.get("renorm"):
        raise ConversionError(f"layer {config.get('name')!r}: BatchNormalization renorm is not supported")
    trainable = _trainable(config)
    layer = BatchNorm(int(axis), float(config.get("epsilon", 1e-3)), float(config.get("momentum", 0.99)),
                      frozen=not trainable)
    if config.get("scale", True):
        layer.add_weight(weights, "gamma", trainable, config, "gamma_regularizer")
    if config.get("center", True):
        layer.add_weight(weights, "beta", trainable, config, "beta_regularizer")
    layer.add_weight(weights, "moving_mean", False, config)
    layer.add_weight(weights, "moving_variance", False, config)
    return layer


# --------------------------------------------------------------------------- activation layers

def _keras_axes(axis, rank: int) -> list[int]:
    """A Keras axis argument (int or list, negative allowed) as sorted non-negative Keras axes."""
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    return sorted({int(a) % rank for a in axes})


class SoftmaxLayer(KerasLayer):
    """Keras Softmax layer: over one axis, or several (exp(x − logsumexp over them))."""

    def __init__(self, axis):
        super().__init__()
        self.axis = axis

    def linear(self, x):
        axes = _keras_axes(self.axis, x.dim())
        if len(axes) == 1:
            return torch.softmax(x, dim=torch_axis(axes[0], x.dim()))
        xk = to_keras(x)
        return to_internal(torch.exp(xk - torch.logsumexp(xk, dim=axes, keepdim=True)))


@converter("Softmax")
def convert_softmax(config, weights, ctx):
    return SoftmaxLayer(config.get("axis", -1))


class PReLULayer(KerasLayer):
    """x where x ≥ 0, alpha · x below; alpha stays in Keras' shape (input shape without batch,
    1 along `shared_axes`) and broadcasts over the Keras-layout tensor."""

    def linear(self, x):
        xk = to_keras(x)
        return to_internal(torch.where(xk >= 0, xk, self.alpha * xk))


@converter("PReLU")
def convert_prelu(config, weights, ctx):
    layer = PReLULayer()
    layer.add_weight(weights, "alpha", _trainable(config), config, "alpha_regularizer")
    return layer


class ELULayer(KerasLayer):
    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def linear(self, x):
        return F.elu(x, self.alpha)


@converter("ELU")
def convert_elu(config, weights, ctx):
    return ELULayer(float(config.get("alpha", 1.0)))


class ThresholdedReLULayer(KerasLayer):
    """x where x > theta, else 0."""

    def __init__(self, theta: float):
        super().__init__()
        self.theta = theta

    def linear(self, x):
        return torch.where(x > self.theta, x, torch.zeros_like(x))


@converter("ThresholdedReLU")
def convert_thresholded_relu(config, weights, ctx):
    return ThresholdedReLULayer(float(config.get("theta", 1.0)))


# --------------------------------------------------------------------------- reshaping and normalization

class PermuteLayer(KerasLayer):
    """Keras Permute: `dims` numbers the non-batch axes from 1, in Keras' layout."""

    def __init__(self, dims):
        super().__init__()
        self.dims = tuple(int(d) for d in dims)

    def linear(self, x):
        return to_internal(to_keras(x).permute(0, *self.dims))


@converter("Permute")
def convert_permute(config, weights, ctx):
    dims = config["dims"]
    if sorted(int(d) for d in dims) != list(range(1, len(dims) + 1)):
        raise ConversionError(f"layer {config.get('name')!r}: Permute dims {dims} "
                              f"is not a permutation of 1..{len(dims)}")
    return PermuteLayer(dims)


class RepeatVectorLayer(KerasLayer):
    """(batch, features) → (batch, n, features)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def linear(self, x):
        return x.unsqueeze(1).expand(x.shape[0], self.n, x.shape[1])


@converter("RepeatVector")
def convert_repeat_vector(config, weights, ctx):
    return RepeatVectorLayer(int(config["n"]))


class LayerNorm(KerasLayer):
    """Keras LayerNormalization over `axis` (one or several Keras axes), with Keras' epsilon; gamma and
    beta have the shape of those axes and broadcast over the rest.

    `rms_scaling` (Keras 3) is what Keras computes, not an RMS norm: x · rsqrt(var(x) + ε) · gamma,
    the input scaled by its variance but not centred, and no beta.
    """

    def __init__(self, axis, epsilon: float, rms_scaling: bool = False):
        super().__init__()
        self.axis, self.epsilon, self.rms_scaling = axis, epsilon, rms_scaling

    def linear(self, x):
        xk = to_keras(x)
        axes = _keras_axes(self.axis, xk.dim())
        mean = xk.mean(dim=axes, keepdim=True)
        variance = (xk - mean).square().mean(dim=axes, keepdim=True)
        y = (xk if self.rms_scaling else xk - mean) * torch.rsqrt(variance + self.epsilon)
        shape = [xk.shape[d] if d in axes else 1 for d in range(xk.dim())]
        if hasattr(self, "gamma"):
            y = y * self.gamma.reshape(shape)
        if hasattr(self, "beta"):
            y = y + self.beta.reshape(shape)
        return to_internal(y)


@converter("LayerNormalization")
def convert_layer_norm(config, weights, ctx):
    rms_scaling = bool(config.get("rms_scaling", False))
    layer = LayerNorm(config.get("axis", -1), float(config.get("epsilon", 1e-3)), rms_scaling)
    if config.get("scale", True) or rms_scaling:  # Keras 3 makes gamma for rms_scaling whatever `scale` says
        layer.add_weight(weights, "gamma", _trainable(config), config, "gamma_regularizer")
    if config.get("center", True) and not rms_scaling:
        layer.add_weight(weights, "beta", _trainable(config), config, "beta_regularizer")
    return layer


class UnitNorm(KerasLayer):
    """Keras UnitNormalization: x / ‖x‖₂ over `axis`, the squared norm floored at 1e-12 as
    tf.math.l2_normalize (tf_keras) and keras.ops.normalize (Keras 3) do."""

    def __init__(self, axis):
        super().__init__()
        self.axis = axis

    def linear(self, x):
        xk = to_keras(x)
        squares = xk.square().sum(dim=_keras_axes(self.axis, xk.dim()), keepdim=True)
        return to_internal(xk * torch.rsqrt(torch.clamp(squares, min=1e-12)))


@converter("UnitNormalization")
def convert_unit_normalization(config, weights, ctx):
    return UnitNorm(config.get("axis", -1))


class RescalingLayer(KerasLayer):
    """x · scale + offset (scalars, or per-channel lists broadcast over the last Keras axis)."""

    def __init__(self, scale, offset):
        super().__init__()
        self.scale, self.offset = scale, offset  # config values, not weights: no buffer Keras would not count

    def linear(self, x):
        scale = torch.as_tensor(self.scale, dtype=x.dtype, device=x.device)
        offset = torch.as_tensor(self.offset, dtype=x.dtype, device=x.device)
        return to_internal(to_keras(x) * scale + offset)


@converter("Rescaling")
def convert_rescaling(config, weights, ctx):
    return RescalingLayer(config.get("scale", 1.0), config.get("offset", 0.0))


class NormalizationLayer(KerasLayer):
    """Keras Normalization (preprocessing): (x − mean) / max(√variance, 1e-7), or its inverse. mean and
    variance (non-trainable) have the shape of the kept `axis` and broadcast over the other Keras axes."""

    def __init__(self, axis, invert: bool, configured=None):
        super().__init__()
        self.axis, self.invert = axis, invert
        self.configured = configured  # (mean, variance) from the config: not weights, so no buffers

    def _statistics(self, x):
        if self.configured is None:
            return self.mean, self.variance
        return tuple(torch.as_tensor(v, dtype=x.dtype, device=x.device) for v in self.configured)

    def _broadcast(self, value: torch.Tensor, xk: torch.Tensor) -> torch.Tensor:
        if value.numel() == 1:
            return value.reshape(())
        kept = [] if self.axis is None else _keras_axes(self.axis, xk.dim())
        return value.reshape([xk.shape[d] if d in kept else 1 for d in range(1, xk.dim())])

    def linear(self, x):
        xk = to_keras(x)
        mean, variance = (self._broadcast(v, xk) for v in self._statistics(xk))
        spread = torch.clamp(torch.sqrt(variance), min=1e-7)
        return to_internal(mean + xk * spread if self.invert else (xk - mean) / spread)


@converter("Normalization")
def convert_normalization(config, weights, ctx):
    """Adapted statistics come from the file's `mean`/`variance` weights. Its int64 `count` becomes a
    buffer of its own dtype, never written back (the template keeps it bit for bit; the model never
    reads it); statistics given to the constructor sit in the config."""
    axis, invert = config.get("axis", -1), bool(config.get("invert", False))
    if "mean" in {w.var for w in weights.saved}:
        layer = NormalizationLayer(axis, invert)
        layer.add_weight(weights, "mean", False, config)
        layer.add_weight(weights, "variance", False, config)
        if "count" in {w.var for w in weights.saved}:
            layer.register_buffer("count", torch.from_numpy(np.array(weights.take("count"))))
        return layer
    if config.get("mean") is None or config.get("variance") is None:
        raise ConversionError(f"layer {config.get('name')!r}: Normalization without saved or configured "
                              "mean and variance")
    return NormalizationLayer(axis, invert, (config["mean"], config["variance"]))


# --------------------------------------------------------------------------- 1-D layers
# Rank-3 tensors keep Keras' (batch, steps, channels) layout inside the bridge.

def _single(value) -> int:
    """A Keras 1-D size argument (`3`, `[3]`, `(3,)`) as an int."""
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


def _pair_1d(value) -> tuple[int, int]:
    """ZeroPadding1D / Cropping1D amounts: `n` or `(before, after)`."""
    if isinstance(value, (list, tuple)):
        return (int(value[0]), int(value[1])) if len(value) == 2 else (int(value[0]), int(value[0]))
    return (int(value), int(value))


class Pool1D(Pool2D):
    """1-D pooling as 2-D pooling over a (1, steps) image: the same TF padding rules."""

    def linear(self, x):
        y = super().linear(x.transpose(1, 2).unsqueeze(2))
        return y.squeeze(2).transpose(1, 2)


def _convert_pool1d(mode):
    def convert(config, weights, ctx):
        _check_channels_last(config, config.get("name", ""))
        pool = _single(config.get("pool_size", 2))
        strides = _single(config.get("strides") or pool)
        padding = config.get("padding", "valid")
        if padding not in ("valid", "same"):
            raise ConversionError(f"layer {config.get('name')!r}: padding={padding!r} is not supported")
        return Pool1D(mode, (1, pool), (1, strides), padding)

    return convert


converter("MaxPooling1D", "MaxPool1D")(_convert_pool1d("max"))
converter("AveragePooling1D", "AvgPool1D")(_convert_pool1d("avg"))


@converter("GlobalAveragePooling1D", "GlobalAvgPool1D")
def convert_global_avg_1d(config, weights, ctx):
    _check_channels_last(config, config.get("name", ""))
    return GlobalPool("avg", bool(config.get("keepdims", False)), dims=(1,))


@converter("GlobalMaxPooling1D", "GlobalMaxPool1D")
def convert_global_max_1d(config, weights, ctx):
    _check_channels_last(config, config.get("name", ""))
    return GlobalPool("max", bool(config.get("keepdims", False)), dims=(1,))


class ZeroPad1D(KerasLayer):
    def __init__(self, before: int, after: int):
        super().__init__()
        self.before, self.after = before, after

    def linear(self, x):
        return F.pad(x, (0, 0, self.before, self.after))


@converter("ZeroPadding1D")
def convert_zero_padding_1d(config, weights, ctx):
    return ZeroPad1D(*_pair_1d(config.get("padding", 1)))


class Crop1D(KerasLayer):
    def __init__(self, before: int, after: int):
        super().__init__()
        self.before, self.after = before, after

    def linear(self, x):
        return x[:, self.before:x.shape[1] - self.after]


@converter("Cropping1D")
def convert_cropping_1d(config, weights, ctx):
    return Crop1D(*_pair_1d(config.get("cropping", (1, 1))))


class UpSample1D(KerasLayer):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def linear(self, x):
        return x.repeat_interleave(self.size, dim=1)


@converter("UpSampling1D")
def convert_upsampling_1d(config, weights, ctx):
    return UpSample1D(_single(config.get("size", 2)))
