"""Convert a model file between formats, chosen by the file extensions (what `orca convert` does).

    .h5 → .onnx    the Keras graph through tf2onnx (needs the `bridge` extra: TensorFlow)
    .onnx → .h5    a tf_keras model of built-in layers (needs the `bridge` extra)
    .pt → .onnx    torch.onnx export of the registered model, ending in its sigmoid/softmax
    .pt → .h5      the same, then .onnx → .h5

Exported files end in the model's output activation, since the pipeline reads probabilities. A
`.pt` needs a registered class, so `.h5`/`.onnx` → `.pt` is not offered.
"""

from __future__ import annotations

import os
import tempfile

from .errors import ConversionError


def convert(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Convert `src` to `dst` by extension; return `dst`. ConversionError for a pair not offered."""
    import torch

    from .formats import WithOutputActivation, load_checkpoint, model_format
    from .keras_from_onnx import onnx_to_keras
    from .onnx_export import keras_to_onnx, torch_to_onnx

    src, dst = os.fspath(src), os.fspath(dst)
    a, b = model_format(src), model_format(dst)
    if (a, b) == (".h5", ".onnx"):
        return keras_to_onnx(src, dst)
    if (a, b) == (".onnx", ".h5"):
        return onnx_to_keras(src, dst)
    if a == ".pt" and b in (".onnx", ".h5"):
        model = load_checkpoint(src)
        _, rows, cols, channels = model.input_shapes[0]
        example = (torch.zeros(1, channels, rows, cols),)
        exported = WithOutputActivation(model.net)  # files hold probabilities, as the pipeline reads them
        if b == ".onnx":
            return torch_to_onnx(exported, dst, example_inputs=example)
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = torch_to_onnx(exported, os.path.join(tmp, "model.onnx"), example_inputs=example)
            return onnx_to_keras(onnx_path, dst)
    raise ConversionError(f"cannot convert {a} to {b}: supported are .h5 ⇄ .onnx and .pt → .onnx/.h5 "
                          "(a .pt needs a registered PyTorch class: make one with `new`)")
