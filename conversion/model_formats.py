"""The model file formats the service reads and writes, by extension (no torch here, so the HTTP
side can list model versions without loading it). `conversion.formats` loads and saves them."""

from __future__ import annotations

import os

from .errors import ConversionError

FORMATS = (".h5", ".onnx", ".pt")  # Keras HDF5 (the bridge), ONNX (the interpreter), a registered torch model
ALIASES = {".hdf5": ".h5"}
EXTENSIONS = FORMATS + tuple(ALIASES)  # every extension a model file may have


def model_format(path) -> str:
    """".h5", ".onnx" or ".pt" for a model file's path; ConversionError for anything else."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    ext = ALIASES.get(ext, ext)
    if ext not in FORMATS:
        raise ConversionError(f"{os.fspath(path)}: unknown model format {ext or '(no extension)'!r}; "
                              f"expected one of {', '.join(FORMATS)}")
    return ext


def is_model_file(name: str) -> bool:
    return name.lower().endswith(EXTENSIONS)
