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

from torch import nn

from . import small_cnn, srkw_cnn  # noqa: F401  (the built-in models register themselves)
from .spec import _REGISTRY, Entry, ModelSpec, RegistryError, register

__all__ = ["Entry", "ModelSpec", "RegistryError", "build", "lookup", "register", "registered"]


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
    return {name: entry.spec for name, entry in sorted(_REGISTRY.items())}
