"""ONNX export: the Keras graph itself through tf2onnx, and any torch module through torch.onnx."""

from __future__ import annotations

import os
import warnings

import torch

from .atomic import atomic_output
from .errors import ConversionError


def keras_to_onnx(h5_path, out_path, opset: int = 17) -> str:
    """Export the Keras model in `h5_path` to ONNX with tf2onnx (channels_last input, as Keras).

    Loads with tf_keras; a Keras 3 file tf_keras cannot read is loaded with Keras 3 and exported
    through `tf2onnx.convert.from_function`. Imports TensorFlow (torch is already imported).
    """
    from .keras_reference import load_keras_model, model_signature  # imports TensorFlow

    import tf2onnx  # noqa: E402  (after TensorFlow on purpose)

    model, flavour = load_keras_model(h5_path)
    signature = model_signature(model)
    try:
        with atomic_output(out_path, ".onnx") as tmp:
            if flavour == "tf_keras":
                tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset, output_path=tmp)
            else:
                import tensorflow as tf

                function = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0], training=False))
                tf2onnx.convert.from_function(function, input_signature=signature, opset=opset,
                                              output_path=tmp)
    except Exception as exc:
        raise ConversionError(f"tf2onnx could not export {h5_path}: {exc}") from exc
    return os.fspath(out_path)


def torch_to_onnx(module: torch.nn.Module, out_path, example_inputs=None, opset: int = 17,
                  input_shapes=None) -> str:
    """Export `module` (in eval mode) to ONNX with a dynamic batch dimension; the spatial size is
    the example's (TF 'same' padding is computed from it and frozen into the graph).

    `example_inputs` defaults to zeros of the module's `input_shapes` (Keras shapes, None for
    the batch); a model whose spatial size Keras left open needs explicit example inputs.
    """
    if example_inputs is None:
        shapes = input_shapes or getattr(module, "input_shapes", None)
        if not shapes or any(s is None or any(d is None for d in s[1:]) for s in shapes):
            raise ConversionError("torch_to_onnx needs example_inputs: the model's input size is not fixed")
        example_inputs = tuple(torch.zeros((1,) + tuple(int(d) for d in s[1:])) for s in shapes)
    elif isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    names = [f"input_{i}" for i in range(len(example_inputs))]
    was_training = module.training
    module.eval()
    with torch.no_grad():
        produced = module(*example_inputs)
    count = len(produced) if isinstance(produced, (tuple, list)) else 1
    outputs = ["output"] if count == 1 else [f"output_{i}" for i in range(count)]
    try:
        with atomic_output(out_path, ".onnx") as tmp, warnings.catch_warnings():
            # The tracer warns that Python-level shape arithmetic (TF 'same' padding) is frozen into
            # the graph; only the batch dimension is dynamic, so that is intended.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            torch.onnx.export(module, tuple(example_inputs), tmp, input_names=names, output_names=outputs,
                              dynamic_axes={n: {0: "batch"} for n in names + outputs},
                              opset_version=opset, dynamo=False)
    finally:
        module.train(was_training)
    return os.fspath(out_path)
