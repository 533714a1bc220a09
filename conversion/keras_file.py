"""Read a Keras HDF5 model file with h5py alone (no TensorFlow).

A legacy Keras `.h5` holds the architecture as JSON in the root attribute `model_config`, the
compile arguments in `training_config`, and one HDF5 group per top-level layer under
`model_weights`, whose attribute `weight_names` lists that layer's datasets in Keras' order.
Attributes are bytes in files written by older h5py versions and str in newer ones.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from .errors import ConversionError


def attr_text(value) -> str:
    """An HDF5 string attribute as str, whether h5py stored it as bytes or str."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return attr_text(value.item())
    return str(value)


def attr_list(value) -> list[str]:
    return [attr_text(v) for v in value]


@dataclass
class TrainingConfig:
    """What `model.compile` stored in the file, in Keras' own words."""

    optimizer: str | None = None
    optimizer_params: dict = field(default_factory=dict)
    loss: object = None
    metrics: list = field(default_factory=list)
    raw: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str | None) -> "TrainingConfig":
        if not text:
            return cls()
        raw = json.loads(text)
        opt = raw.get("optimizer_config") or {}
        params = dict(opt.get("config") or {})
        if "lr" in params and "learning_rate" not in params:  # Keras < 2.3 spelling
            params["learning_rate"] = params.pop("lr")
        metrics = raw.get("metrics") or []
        flat = []
        for m in metrics:  # Keras 2.4+ nests metrics per output
            flat.extend(m if isinstance(m, list) else [m])
        name = opt.get("class_name")
        if name and ">" in name:  # tf_keras 2.11+ writes "Custom>Adam"
            name = name.split(">")[-1]
        return cls(optimizer=name, optimizer_params=params,
                   loss=raw.get("loss"), metrics=flat, raw=raw)


@dataclass
class KerasFile:
    path: str
    model_config: dict
    training_config: TrainingConfig
    keras_version: str
    backend: str

    @property
    def keras_major(self) -> int:
        try:
            return int(self.keras_version.split(".")[0])
        except ValueError:
            return 2


def open_h5(path: str | os.PathLike, mode: str = "r") -> h5py.File:
    """Open an HDF5 file or raise a ConversionError that names it."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConversionError(f"{path}: no such file")
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        raise ConversionError(f"{path} is not an HDF5 file ({exc})") from None


def read_keras_file(path: str | os.PathLike) -> KerasFile:
    """The model description of a Keras .h5 file; raises ConversionError for anything else."""
    with open_h5(path) as f:
        if "model_config" not in f.attrs:
            hint = " (it holds weights only: saved with save_weights?)" if "layer_names" in f.attrs else ""
            raise ConversionError(f"{os.fspath(path)} has no Keras model_config attribute{hint}")
        try:
            model_config = json.loads(attr_text(f.attrs["model_config"]))
        except json.JSONDecodeError as exc:
            raise ConversionError(f"{os.fspath(path)}: model_config is not valid JSON ({exc})") from None
        training = attr_text(f.attrs["training_config"]) if "training_config" in f.attrs else None
        keras_version = attr_text(f.attrs.get("keras_version", b"2"))
        backend = attr_text(f.attrs.get("backend", b"tensorflow"))
        if "model_weights" not in f:
            raise ConversionError(f"{os.fspath(path)} has a model_config but no model_weights group")
    return KerasFile(os.fspath(path), model_config, TrainingConfig.from_json(training), keras_version, backend)


def read_training_config(path: str | os.PathLike) -> TrainingConfig:
    """The optimizer, loss and metrics the model was compiled with (empty if it never was)."""
    return read_keras_file(path).training_config


def layer_weight_paths(f: h5py.File, layer_name: str) -> list[str]:
    """HDF5 dataset paths of one top-level layer's weights, in the order Keras saved them."""
    root = f["model_weights"]
    if layer_name not in root:
        return []
    group = root[layer_name]
    names = attr_list(group.attrs.get("weight_names", []))
    return [f"model_weights/{layer_name}/{n}" for n in names]
