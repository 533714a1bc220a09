"""The packages' public names stay what they are after any submodule is imported: a submodule named
like a lazily loaded function would replace it (Python binds an imported submodule on its package)."""

from __future__ import annotations

import importlib
import pkgutil
import types

import torch  # noqa: F401  (before anything that may import TensorFlow)
import pytest


@pytest.mark.parametrize("package_name", ["conversion"])
def test_public_names_are_not_shadowed_by_submodules(package_name):
    package = importlib.import_module(package_name)
    submodules = {info.name for info in pkgutil.iter_modules(package.__path__)}
    assert not submodules & set(package.__all__), "a submodule is named like a public name"
    for name in sorted(submodules - {"__main__", "keras_reference"}):  # keras_reference imports TensorFlow
        importlib.import_module(f"{package_name}.{name}")
    for name in package.__all__:
        assert not isinstance(getattr(package, name), types.ModuleType), name
