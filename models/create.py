"""Write a fresh, untrained model of the registry to a file (what `orca new` does).

`.pt` checkpoints hold any registered model; `srkw_cnn` can also be written as a Keras `.h5` (the
format Orcasound's pipeline exchanges). Other formats come from `orca convert` afterwards.
"""

from __future__ import annotations

import os

from .registry import Entry, ModelSpec, lookup


class UnsupportedFormat(ValueError):
    """`write_new_model` cannot write this file type for this model."""


def write_new_model(name: str, out: str | os.PathLike, rows: int | None = None, cols: int | None = None,
                    seed: int = 0) -> tuple[Entry, ModelSpec]:
    """Write a fresh `name` model (registry name or `package.module:Class`) to `out`.

    `rows`/`cols` override the registered input size; `seed` seeds the initial weights. Returns the
    registry entry and the spec written. Raises RegistryError for an unknown model and
    UnsupportedFormat for an extension other than `.pt` (or `.h5` for srkw_cnn)."""
    import torch

    from conversion.formats import model_format, save_checkpoint

    entry = lookup(name)
    spec = entry.spec
    spec = ModelSpec(rows=rows or spec.rows, cols=cols or spec.cols, channels=spec.channels,
                     classes=spec.classes, learning_rate=spec.learning_rate, kwargs=spec.kwargs)
    torch.manual_seed(seed)
    fmt = model_format(out)
    if fmt == ".h5" and entry.name == "srkw_cnn":
        from .srkw_cnn import write_fresh_h5

        write_fresh_h5(out, spec.rows, spec.cols, seed=seed)
    elif fmt == ".pt":
        # a class outside models/ keeps its import path, so a fresh process (the service) can rebuild it
        saved_name = name if ":" in name else entry.name
        save_checkpoint(entry.factory(rows=spec.rows, cols=spec.cols, **spec.kwargs), saved_name, spec, out)
    else:
        raise UnsupportedFormat(f"`new` writes .pt checkpoints (or srkw_cnn as .h5); convert afterwards for {fmt}")
    return entry, spec
