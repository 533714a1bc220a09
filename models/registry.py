"""Registry of PyTorch models the service can train and serve.

A researcher's model is an ordinary `nn.Module` on NCHW input that returns logits (one unit:
sigmoid → P(class 1); several: softmax), registered with a small spec:

    from models.registry import ModelSpec, register

    @register("tiny_cnn", ModelSpec(rows=128, cols=128))
    class TinyCNN(nn.Module):
        def __init__(self, rows=128, cols=128): ...

`.pt` checkpoints store the registry name, the spec and the `state_dict`; a class outside
`models/` is named `package.module:Class` and imported on demand.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field

from torch import nn


class RegistryError(LookupError):
    """An unknown model name, or a `package.module:Class` that cannot be imported."""


@dataclass(frozen=True)
class ModelSpec:
    """What the service needs to feed a model: input rows, cols, channels; number of classes."""

    rows: int
    cols: int
    channels: int = 3
    classes: int = 2
    learning_rate: float = 1e-4  # Adam's, when the model file carries no training config
    kwargs: dict = field(default_factory=dict)  # constructor arguments beyond rows/cols

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        known = {k: data[k] for k in ("rows", "cols", "channels", "classes", "learning_rate", "kwargs") if k in data}
        return cls(**known)


@dataclass(frozen=True)
class Entry:
    name: str
    factory: type
    spec: ModelSpec


_REGISTRY: dict[str, Entry] = {}


def register(name: str, spec: ModelSpec):
    """Class decorator: make `name` build this module (called as `cls(rows=, cols=, **kwargs)`)."""

    def decorate(cls):
        _REGISTRY[name] = Entry(name, cls, spec)
        return cls

    return decorate


def _import_class(path: str) -> type:
    module_name, _, class_name = path.partition(":")
    if not module_name or not class_name:
        raise RegistryError(f"unknown model {path!r}: not registered, and not a 'package.module:Class' path")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise RegistryError(f"cannot import model class {path!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise RegistryError(f"{path!r} is not an nn.Module class")
    return cls


def lookup(name: str) -> Entry:
    """The registered entry, or an ad-hoc one for a `package.module:Class` path."""
    _load_builtin_models()
    if name in _REGISTRY:
        return _REGISTRY[name]
    cls = _import_class(name)
    for entry in _REGISTRY.values():  # importing it may have registered it
        if entry.factory is cls:
            return entry
    raise RegistryError(f"{name!r} is importable but not registered: decorate it with @register(name, spec)")


def build(name: str, spec: ModelSpec | None = None) -> nn.Module:
    entry = lookup(name)
    spec = spec or entry.spec
    return entry.factory(rows=spec.rows, cols=spec.cols, **spec.kwargs)


def registered() -> dict[str, ModelSpec]:
    _load_builtin_models()
    return {name: entry.spec for name, entry in sorted(_REGISTRY.items())}


def _load_builtin_models():
    importlib.import_module("models.srkw_cnn")
    importlib.import_module("models.small_cnn")
