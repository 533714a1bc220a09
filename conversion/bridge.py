"""Keras .h5 → PyTorch module, and the module's weights back into a copy of the .h5.

Only h5py is used here: no TensorFlow is imported, so the serving process stays free of it.
"""

from __future__ import annotations

import os
import shutil

import h5py
import torch

from .atomic import atomic_output
from .errors import ConversionError
from .graph import KerasGraph, KerasModel, WeightPool, check_supported, parse_model, parse_weight_name
from .keras_file import layer_weight_paths, open_h5, read_keras_file
from .layers import ConvertContext, LayerWeights


class _FileWeights:
    """Top-level view: a leaf layer owns its whole `model_weights/<name>` group."""

    def __init__(self, f: h5py.File):
        self.f = f

    def _pool(self, name: str) -> WeightPool:
        entries = []
        for path in layer_weight_paths(self.f, name):
            if path not in self.f:
                raise ConversionError(f"weight {path!r} is listed but missing from the file")
            leaf, var = parse_weight_name(path[len(f"model_weights/{name}/"):])
            entries.append((leaf, var, path, self.f[path][()]))
        return WeightPool(entries)

    def leaf(self, name: str) -> LayerWeights:
        return self._pool(name).for_leaf(name, whole_group=True)

    def nested(self, name: str) -> "_NestedWeights":
        return _NestedWeights(self._pool(name))


class _NestedWeights:
    """Inside a nested model all weights live in the top-level group; pick them by leaf name."""

    def __init__(self, pool: WeightPool):
        self.pool = pool

    def leaf(self, name: str) -> LayerWeights:
        return self.pool.for_leaf(name, whole_group=False)

    def nested(self, name: str) -> "_NestedWeights":
        return self


def keras_to_torch(h5_path: str | os.PathLike) -> KerasModel:
    """Build a trainable torch module from a Keras .h5 model file (Keras 2.0 – 2.15 or Keras 3).

    The module takes and returns tensors in the Keras model's layout (channels_last), so the same
    array can be fed to both. Trainable Keras weights are `nn.Parameter`s, BatchNormalization
    moving statistics are buffers, Dropout is active in train() only. Raises ConversionError for
    a file that is not a Keras model or holds a layer no converter handles.
    """
    info = read_keras_file(h5_path)
    spec = parse_model(info.model_config)
    check_supported(spec, info.path)
    ctx = ConvertContext(keras_major=info.keras_major, source=info.path)
    with open_h5(h5_path) as f:
        graph = KerasGraph(spec, _FileWeights(f), ctx)
    model = KerasModel(graph, spec.input_shapes, info.path, info.training_config)
    model.eval()
    return model


def torch_to_keras(module: KerasModel, template_h5: str | os.PathLike, out_h5: str | os.PathLike) -> str:
    """Write the module's weights into a copy of `template_h5` at `out_h5`; returns out_h5.

    Only weight values change: model_config, training_config, keras_version and backend stay
    byte-identical, so whatever read the template reads the output. The optimizer state Keras
    saved (`optimizer_weights`) belongs to the template's weights and is dropped. The copy is
    written to a temporary file beside `out_h5` and renamed into place, so a reader never sees
    a half-written model.
    """
    paths = getattr(module, "keras_weight_paths", None)
    if not paths:
        raise ConversionError("module has no Keras weight map: convert it with keras_to_torch first")
    out_h5 = os.fspath(out_h5)
    state = module.state_dict()
    missing = [k for k in paths if k not in state]
    if missing:
        raise ConversionError(f"module lacks weights {missing[:5]} that the template needs")
    with atomic_output(out_h5, ".h5") as tmp:
        shutil.copyfile(os.fspath(template_h5), tmp)
        with open_h5(tmp, "r+") as f:
            for key, path in paths.items():
                if path not in f:
                    raise ConversionError(f"template {template_h5} has no weight {path!r}")
                dataset = f[path]
                value = state[key].detach().to("cpu", torch.float32).numpy()
                if tuple(dataset.shape) != value.shape:
                    raise ConversionError(f"weight {path!r}: template shape {dataset.shape}, module {value.shape}")
                dataset[...] = value.astype(dataset.dtype, copy=False)
            if "optimizer_weights" in f:
                del f["optimizer_weights"]
    return out_h5


def count_parameters(module: torch.nn.Module) -> tuple[int, int]:
    """(trainable parameters, non-trainable parameters and buffers) as Keras counts them."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    frozen += sum(b.numel() for b in module.buffers())
    return trainable, frozen
