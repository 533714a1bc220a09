"""What a registered model is: its `ModelSpec`, and the `@register` decorator that records it. The
lookups (`build`, `lookup`, `registered`) are `models.registry`, which also loads the built-in models;
a model module imports only this file, so no module imports the registry that imports it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


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
