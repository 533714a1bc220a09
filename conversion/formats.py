"""One entry point per direction for every model format the service trains and serves.

The file's extension picks the path: `.h5` → the Keras bridge; `.onnx` → the ONNX interpreter;
`.pt` → a checkpoint of a registered PyTorch model (registry name, spec, `state_dict`), read with
`torch.load(weights_only=True)` so no arbitrary object is ever unpickled. Whatever the format,
`load_trainable` returns a module with the interface the training loop uses (Keras-layout NHWC
input, `forward_logits`, `regularization_loss`, `training_config`, `input_shapes`), and
`save_trained` writes a new version in the format it came in.
"""

from __future__ import annotations

import os
import pickle

import torch
from torch import nn

from .atomic import atomic_output
from .bridge import keras_to_torch, torch_to_keras
from .errors import ConversionError
from .keras_file import TrainingConfig
from .model_formats import FORMATS, model_format  # noqa: F401  (re-exported)
from .onnx_export import torch_to_onnx
from .onnx_interpreter import OnnxModule, onnx_to_torch

CHECKPOINT_FORMAT = "orca-ml-checkpoint"


class ChannelsFirstModel(nn.Module):
    """A NCHW PyTorch model seen through the Keras-layout interface of the training loop.

    Registered models return logits; `forward` applies the sigmoid (one unit) or softmax. An ONNX
    graph may end in its own Sigmoid/Softmax: then `forward` is the graph and `forward_logits`
    stops before that node.
    """

    def __init__(self, net: nn.Module, input_shape: tuple, training_config: TrainingConfig,
                 registry_name: str | None = None, spec=None):
        super().__init__()
        self.net = net
        self.input_shapes = [input_shape]  # Keras style: (None, rows, cols, channels)
        self.training_config = training_config
        self.registry_name = registry_name
        self.spec = spec

    @staticmethod
    def _nchw(x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2) if x.dim() == 4 else x

    def forward_logits(self, x):
        x = self._nchw(x)
        return self.net.forward_logits(x) if hasattr(self.net, "forward_logits") else self.net(x)

    def forward(self, x):
        if isinstance(self.net, OnnxModule) and self.net.logit_sources:
            return self.net(self._nchw(x))  # the graph ends in its own Sigmoid/Softmax
        logits = self.forward_logits(x)
        return torch.sigmoid(logits) if logits.shape[-1] == 1 else torch.softmax(logits, dim=-1)

    def regularization_loss(self) -> torch.Tensor:
        return torch.zeros(())


class WithOutputActivation(nn.Module):
    """A logits model followed by its sigmoid (one unit) or softmax: what exchanged files hold, since
    the pipeline reads a model's output as probabilities."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        logits = self.net(x)
        return torch.sigmoid(logits) if logits.shape[-1] == 1 else torch.softmax(logits, dim=-1)


def _default_config(learning_rate: float) -> TrainingConfig:
    return TrainingConfig(optimizer="Adam", optimizer_params={"learning_rate": learning_rate},
                          loss="binary_crossentropy", metrics=["accuracy"])


# --------------------------------------------------------------------------- .pt checkpoints

def save_checkpoint(module: nn.Module, registry_name: str, spec, path) -> str:
    """Write `{format, registry_name, spec, state_dict}` with torch.save (temporary file + rename)."""
    path = os.fspath(path)
    payload = {"format": CHECKPOINT_FORMAT, "version": 1, "registry_name": registry_name,
               "spec": spec.to_dict(), "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()}}
    with atomic_output(path, ".pt") as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path) -> ChannelsFirstModel:
    """Rebuild a registered model from a `.pt` checkpoint; refuses anything but plain data."""
    from models.registry import ModelSpec, RegistryError, build

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConversionError(f"{path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError, ValueError) as exc:
        raise ConversionError(f"{path} is not a plain-data .pt checkpoint (refused to unpickle "
                              f"arbitrary objects): {str(exc).splitlines()[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ConversionError(f"{path} is not an {CHECKPOINT_FORMAT} file "
                              "(a dict with registry_name, spec and state_dict)")
    try:
        spec = ModelSpec.from_dict(payload["spec"])
        net = build(payload["registry_name"], spec)
        net.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RegistryError, RuntimeError) as exc:
        raise ConversionError(f"{path}: cannot rebuild the model: {exc}") from None
    net.eval()
    return ChannelsFirstModel(net, (None, spec.rows, spec.cols, spec.channels), _default_config(spec.learning_rate),
                              payload["registry_name"], spec)


# --------------------------------------------------------------------------- any format

def load_trainable(path) -> nn.Module:
    """The model file at `path` as a trainable module with the training loop's interface."""
    fmt = model_format(path)
    if fmt == ".h5":
        return keras_to_torch(path)
    if fmt == ".pt":
        return load_checkpoint(path)
    net = onnx_to_torch(path)
    if len(net.input_shapes) != 1 or len(net.input_shapes[0]) != 4:
        raise ConversionError(f"{os.fspath(path)}: only single-input NCHW image models can be trained")
    _, channels, rows, cols = net.input_shapes[0]
    net.eval()
    return ChannelsFirstModel(net, (None, rows, cols, channels), _default_config(1e-4))


def save_trained(model: nn.Module, source_path, out_path) -> str:
    """Write `model` (from `load_trainable(source_path)`) to `out_path` in the source's format."""
    fmt = model_format(source_path)
    if model_format(out_path) != fmt:
        raise ConversionError(f"a {fmt} model is written back as {fmt}, not {os.fspath(out_path)}")
    if fmt == ".h5":
        return torch_to_keras(model, source_path, out_path)
    if fmt == ".pt":
        return save_checkpoint(model.net, model.registry_name, model.spec, out_path)
    _, rows, cols, channels = model.input_shapes[0]
    example = torch.zeros(1, channels, rows or 64, cols or 64)
    return torch_to_onnx(model.net.to("cpu"), out_path, example_inputs=(example,))
