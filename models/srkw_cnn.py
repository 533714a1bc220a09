"""The original SRKW call detector (orcasound/orcaal-research) as a PyTorch module, and a writer
of a fresh `srkw_cnn_0.h5` in the legacy Keras 2 format, for the demo and the tests.

Architecture (Keras): four Conv2D(5×5, stride 3, 'same', L2 1e-3 on kernels) with ReLU and
Dropout 0.5 / – / 0.6 / 0.6, Flatten, Dense 256 + ReLU, Dense 1 + sigmoid; compiled with Adam
3e-5 and binary cross-entropy. At 607×617×3 that is 2,819,649 parameters.

The h5 is written with h5py from a Keras 2 model_config, so making the demo model needs no
TensorFlow; `tests/test_srkw_cnn.py` checks that tf_keras loads it and agrees with this module.
"""

from __future__ import annotations

import json
import math
import os

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from conversion.atomic import atomic_output
from conversion.layers import fast_dropout, same_padding

from .spec import ModelSpec, register

KERAS_FORMAT_VERSION = "2.21.0"  # the tf_keras release whose .h5 layout this writer follows
CONV_FILTERS = (64, 64, 128, 128)
DROPOUT_AFTER = (0.5, None, 0.6, 0.6)
KERNEL, STRIDE, L2 = 5, 3, 0.001


def conv_output_size(size: int, layers: int = 4) -> int:
    for _ in range(layers):
        size = math.ceil(size / STRIDE)
    return size


@register("srkw_cnn", ModelSpec(rows=607, cols=617, learning_rate=3e-5))
class SRKWCNN(nn.Module):
    """The SRKW CNN on NCHW input; returns logits (N, 1): apply a sigmoid for P(nocalls).

    TF 'same' padding (extra row/column at the bottom/right) and Keras' NHWC flatten order are
    kept so weights move to and from the Keras model unchanged.
    """

    def __init__(self, rows: int = 607, cols: int = 617):
        super().__init__()
        self.rows, self.cols = rows, cols
        channels = (3,) + CONV_FILTERS
        self.convs = nn.ModuleList(nn.Conv2d(channels[i], channels[i + 1], KERNEL, STRIDE) for i in range(4))
        flat = conv_output_size(rows) * conv_output_size(cols) * CONV_FILTERS[-1]
        self.fc1 = nn.Linear(flat, 256)
        self.fc2 = nn.Linear(256, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, rate in zip(self.convs, DROPOUT_AFTER):
            top, bottom = same_padding(x.shape[2], KERNEL, STRIDE)
            left, right = same_padding(x.shape[3], KERNEL, STRIDE)
            x = torch.relu(conv(F.pad(x, (left, right, top, bottom))))
            if rate:
                x = fast_dropout(x, rate) if self.training else x
        x = torch.flatten(x.permute(0, 2, 3, 1), 1)  # Keras flattens NHWC
        return self.fc2(torch.relu(self.fc1(x)))


# --------------------------------------------------------------------------- Keras 2 .h5 writer

def _base(name: str) -> dict:
    return {"name": name, "trainable": True, "dtype": "float32"}


def _initializer(class_name: str, config: dict | None = None) -> dict:
    return {"module": "keras.initializers", "class_name": class_name, "config": config or {},
            "registered_name": None}


def _conv_config(name, filters, input_shape=None) -> dict:
    config = _base(name)
    if input_shape:
        config["batch_input_shape"] = [None, *input_shape]
    config.update({
        "filters": filters, "kernel_size": [KERNEL, KERNEL], "strides": [STRIDE, STRIDE],
        "padding": "same", "data_format": "channels_last", "dilation_rate": [1, 1], "groups": 1,
        "activation": "linear", "use_bias": True,
        "kernel_initializer": _initializer("GlorotUniform", {"seed": None}),
        "bias_initializer": _initializer("Zeros"),
        "kernel_regularizer": {"module": "keras.regularizers", "class_name": "L2",
                               "config": {"l2": L2}, "registered_name": None},
        "bias_regularizer": None, "activity_regularizer": None,
        "kernel_constraint": None, "bias_constraint": None,
    })
    return {"class_name": "Conv2D", "config": config}


def _dense_config(name, units) -> dict:
    config = _base(name)
    config.update({
        "units": units, "activation": "linear", "use_bias": True,
        "kernel_initializer": _initializer("GlorotUniform", {"seed": None}),
        "bias_initializer": _initializer("Zeros"),
        "kernel_regularizer": None, "bias_regularizer": None, "activity_regularizer": None,
        "kernel_constraint": None, "bias_constraint": None,
    })
    return {"class_name": "Dense", "config": config}


def _simple(class_name, name, **extra) -> dict:
    config = _base(name)
    config.update(extra)
    return {"class_name": class_name, "config": config}


def keras_model_config(rows: int, cols: int) -> tuple[dict, list[tuple[str, list[str]]]]:
    """The Keras 2 Sequential config of srkw_cnn and, per layer, the Keras weight names."""
    layers, names = [], []
    counters: dict[str, int] = {}

    def name_for(prefix):
        n = counters.get(prefix, 0)
        counters[prefix] = n + 1
        return prefix if n == 0 else f"{prefix}_{n}"

    def add(entry, weights=()):
        layers.append(entry)
        names.append((entry["config"]["name"], [f"{entry['config']['name']}/{w}:0" for w in weights]))

    for i, (filters, rate) in enumerate(zip(CONV_FILTERS, DROPOUT_AFTER)):
        add(_conv_config(name_for("conv2d"), filters, (rows, cols, 3) if i == 0 else None), ("kernel", "bias"))
        add(_simple("Activation", name_for("activation"), activation="relu"))
        if rate:
            add(_simple("Dropout", name_for("dropout"), rate=rate, noise_shape=None, seed=None))
    add(_simple("Flatten", name_for("flatten"), data_format="channels_last"))
    add(_dense_config(name_for("dense"), 256), ("kernel", "bias"))
    add(_simple("Activation", name_for("activation"), activation="relu"))
    add(_dense_config(name_for("dense"), 1), ("kernel", "bias"))
    add(_simple("Activation", name_for("activation"), activation="sigmoid"))
    config = {"class_name": "Sequential", "config": {"name": "sequential", "layers": layers}}
    return config, names


TRAINING_CONFIG = {
    "loss": "binary_crossentropy",
    "metrics": [[{"class_name": "MeanMetricWrapper",
                  "config": {"name": "accuracy", "dtype": "float32", "fn": "binary_accuracy"}}]],
    "weighted_metrics": None, "loss_weights": None,
    "optimizer_config": {"class_name": "Custom>Adam", "config": {
        "name": "Adam", "weight_decay": None, "clipnorm": None, "global_clipnorm": None,
        "clipvalue": None, "use_ema": False, "ema_momentum": 0.99, "ema_overwrite_frequency": None,
        "jit_compile": False, "is_legacy_optimizer": False, "learning_rate": 3e-05,
        "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-07, "amsgrad": False}},
}


def keras_weights(module: SRKWCNN) -> list[list[np.ndarray]]:
    """The module's weights in Keras' layouts, one list per weighted layer, in layer order."""
    out = []
    for conv in module.convs:  # torch (out, in, kh, kw) → Keras (kh, kw, in, out)
        out.append([conv.weight.detach().permute(2, 3, 1, 0).numpy(), conv.bias.detach().numpy()])
    for fc in (module.fc1, module.fc2):  # torch (out, in) → Keras (in, out)
        out.append([fc.weight.detach().t().numpy(), fc.bias.detach().numpy()])
    return out


def write_keras_h5(module: SRKWCNN, path: str | os.PathLike) -> str:
    """Save `module` as a Keras 2 HDF5 model (what tf.keras `model.save('x.h5')` writes)."""
    path = os.fspath(path)
    config, layer_names = keras_model_config(module.rows, module.cols)
    weights = iter(keras_weights(module))
    with atomic_output(path, ".h5") as tmp, h5py.File(tmp, "w") as f:
        f.attrs["backend"] = "tensorflow"
        f.attrs["keras_version"] = KERAS_FORMAT_VERSION
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["training_config"] = json.dumps(TRAINING_CONFIG)
        group = f.create_group("model_weights")
        group.attrs["backend"] = "tensorflow"
        group.attrs["keras_version"] = KERAS_FORMAT_VERSION
        group.attrs["layer_names"] = np.array([n.encode() for n, _ in layer_names] +
                                              [b"top_level_model_weights"])
        for name, weight_names in layer_names:
            layer = group.create_group(name)
            layer.attrs["weight_names"] = np.array([w.encode() for w in weight_names])
            if weight_names:
                for weight_name, value in zip(weight_names, next(weights)):
                    layer.create_dataset(weight_name, data=np.ascontiguousarray(value, dtype=np.float32))
        group.create_group("top_level_model_weights").attrs["weight_names"] = np.array([], dtype=np.float64)
    return path


def write_fresh_h5(path: str | os.PathLike, rows: int = 607, cols: int = 617, seed: int = 0) -> str:
    """A new, untrained srkw_cnn (Keras' default initialisers: Glorot uniform kernels, zero biases)."""
    generator = torch.Generator().manual_seed(seed)
    module = SRKWCNN(rows, cols)
    with torch.no_grad():
        for layer in list(module.convs) + [module.fc1, module.fc2]:
            fan_in = layer.weight[0].numel()
            fan_out = layer.weight.shape[0] * (layer.weight[0, 0].numel() if layer.weight.dim() == 4 else 1)
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            layer.weight.uniform_(-limit, limit, generator=generator)
            layer.bias.zero_()
    return write_keras_h5(module, path)
