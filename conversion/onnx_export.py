"""ONNX export: the Keras graph itself through tf2onnx, and any torch module through torch.onnx."""

from __future__ import annotations

import os
import warnings

import torch

from .atomic import atomic_output
from .errors import ConversionError


def _erfc_as_one_minus_erf(ctx, node, name, args):
    """tf2onnx handler for TF's Erfc (tf.nn.gelu, Keras' exact 'gelu'), which tf2onnx 1.17 lacks: the
    node has become ONNX Erf; 1 − Erf(x) is inserted after it."""
    import numpy as np
    from tf2onnx import utils

    erf = node.output[0]
    one = ctx.make_const(utils.make_name(f"{name}_one"),
                         np.array(1, dtype=utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))))
    minus = ctx.insert_new_node_on_output("Sub", erf, name=utils.make_name(f"{name}_one_minus"))
    ctx.replace_inputs(minus, [one.output[0], erf])
    ctx.copy_shape(erf, minus.output[0])
    ctx.set_dtype(minus.output[0], ctx.get_dtype(erf))


TF2ONNX_OP_HANDLERS = {"Erfc": (_erfc_as_one_minus_erf, ["Erf"])}  # TF op → (handler, [ONNX op])


def _plain_grouped_convolutions(model) -> None:
    """tf_keras runs a grouped convolution (groups > 1) in an XLA-compiled tf.function, which tf2onnx
    leaves as an opaque PartitionedCall; on this loaded copy, trace the plain convolution op instead
    (tf2onnx maps it to ONNX Conv with `group`)."""
    for layer in model._flatten_layers(include_self=False):
        if int(getattr(layer, "groups", 1) or 1) > 1 and hasattr(layer, "convolution_op"):
            layer._jit_compiled_convolution_op = layer.convolution_op


def _check_onnx_ops(path: str) -> None:
    """Refuse a tf2onnx graph holding TensorFlow ops it could not map (it writes them as they are)."""
    import onnx
    from onnx import defs

    model = onnx.load(path, load_external_data=False)
    unknown = sorted({n.op_type for n in model.graph.node
                      if n.domain in ("", "ai.onnx") and not defs.has(n.op_type)})
    if unknown:
        raise ConversionError(f"TensorFlow ops with no ONNX mapping in tf2onnx: {', '.join(unknown)}")


def _without_stateful_layers(model):
    """A copy of a model with stateful recurrent layers (and the fixed batch size they need) made
    stateless: tf2onnx would freeze the state variables, and with them the batch size, into the graph.
    The copy starts every call from zero states, as the bridge does; other models are returned as they are."""
    if not any(getattr(layer, "stateful", False) for layer in model._flatten_layers(include_self=False)):
        return model

    def clear(value):
        if isinstance(value, dict):
            cleared = {k: clear(v) for k, v in value.items()}
            if cleared.get("stateful"):
                cleared["stateful"] = False
            for key in ("batch_input_shape", "batch_shape"):
                if isinstance(cleared.get(key), list) and cleared[key]:
                    cleared[key] = [None, *cleared[key][1:]]
            return cleared
        if isinstance(value, list):
            return [clear(v) for v in value]
        return value

    copy = type(model).from_config(clear(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy


def keras_to_onnx(h5_path, out_path, opset: int = 17) -> str:
    """Export the Keras model in `h5_path` to ONNX with tf2onnx (channels_last input, as Keras).

    Loads with tf_keras; a Keras 3 file tf_keras cannot read is loaded with Keras 3 and exported
    through `tf2onnx.convert.from_function`. Imports TensorFlow (torch is already imported).
    """
    from .keras_reference import load_keras_model, model_signature  # imports TensorFlow

    import tf2onnx  # noqa: E402  (after TensorFlow on purpose)

    model, flavour = load_keras_model(h5_path)
    model = _without_stateful_layers(model)
    signature = model_signature(model)
    try:
        with atomic_output(out_path, ".onnx") as tmp:
            if flavour == "tf_keras":
                _plain_grouped_convolutions(model)
                tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset, output_path=tmp,
                                           custom_op_handlers=TF2ONNX_OP_HANDLERS)
            else:
                import tensorflow as tf

                function = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0], training=False))
                tf2onnx.convert.from_function(function, input_signature=signature, opset=opset,
                                              output_path=tmp, custom_op_handlers=TF2ONNX_OP_HANDLERS)
            _check_onnx_ops(tmp)
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
