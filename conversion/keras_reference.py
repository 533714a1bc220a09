"""The Keras side of parity checks: load a .h5 with tf_keras (or Keras 3) and run it.

Importing this module imports TensorFlow, after torch and torch._dynamo: TensorFlow first, then
torch's compiler stack (which `torch.optim` optimizers import on their first step) segfaults.
Never import it from the serving process.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

import torch  # noqa: F401  (must come before TensorFlow)
import torch._dynamo  # noqa: F401  (so must torch's compiler stack: optimizers import it lazily)

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}  # absl's line prefixes; TF_CPP_MIN_LOG_LEVEL counts the same way
ABSL_LINE = re.compile(r"^([IWEF])\d{4} ")
ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def startup_line_shown(line: str, min_level: int) -> bool:
    """Whether a line TensorFlow's C++ side wrote to stderr during its import is shown at TF_CPP_MIN_LOG_LEVEL
    `min_level`: absl lines below that severity are not, nor absl's preamble above them once any level is
    filtered; everything else (Python warnings, tracebacks, other libraries) is."""
    if min_level > 0 and line.startswith(ABSL_PREAMBLE):
        return False
    match = ABSL_LINE.match(line)
    return match is None or SEVERITY[match.group(1)] >= min_level


@contextlib.contextmanager
def tensorflow_startup_filtered():
    """Apply TF_CPP_MIN_LOG_LEVEL to what TensorFlow's import writes to stderr. Since TF 2.19 its C++ code
    logs through absl before absl is initialised (oneDNN's notice, `Could not find cuda drivers`), which
    ignores the variable (tensorflow/tensorflow#100442). The import's stderr (file descriptor 2) goes to a
    temporary file; the lines the level lets through are written back afterwards, also when it fails."""
    try:
        min_level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        min_level = 0
    if min_level <= 0:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if startup_line_shown(line, min_level)))
            sys.stderr.flush()


with tensorflow_startup_filtered():
    import tensorflow as tf  # noqa: E402
    import tf_keras  # noqa: E402

import numpy as np  # noqa: E402

from .errors import ConversionError  # noqa: E402


def load_keras_model(h5_path, compile: bool = False):
    """(model, 'tf_keras' | 'keras3'): tf_keras first, Keras 3 for files only it can read."""
    try:
        return tf_keras.models.load_model(os.fspath(h5_path), compile=compile), "tf_keras"
    except Exception as first:
        try:
            import keras

            return keras.models.load_model(os.fspath(h5_path), compile=compile), "keras3"
        except Exception:
            raise ConversionError(f"neither tf_keras nor Keras 3 can load {h5_path}: {first}") from first


def _input_tensors(model):
    inputs = model.inputs if isinstance(model.inputs, (list, tuple)) else [model.inputs]
    return inputs


def model_signature(model, batch: int | None = None):
    return [tf.TensorSpec((batch,) + tuple(x.shape[1:]), tf.float32, name=f"input_{i}")
            for i, x in enumerate(_input_tensors(model))]


def predict(model, inputs: list[np.ndarray], logits: bool = False) -> list[np.ndarray]:
    """Run the Keras model (inference mode); with logits=True stop before a final sigmoid/softmax.

    Logits are taken by switching the activation of the layers that produce the outputs to
    linear for one call (Keras layers read `self.activation` at call time), then restoring it.
    """
    switched = _final_activation_layers(model) if logits else []
    saved = [layer.activation for layer in switched]
    try:
        for layer in switched:
            layer.activation = _linear(model)
        return _call_from_zero_states(model, inputs)
    finally:
        for layer, activation in zip(switched, saved):
            layer.activation = activation


def _call_from_zero_states(model, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """model(inputs) in inference mode, as the bridge computes it: stateful recurrent layers start
    from zero states (reset before every call), and a model built for a fixed batch size (stateful
    ones are) runs on zero-padded chunks of that size."""
    fixed = _input_tensors(model)[0].shape[0]
    count = inputs[0].shape[0]
    size = int(fixed) if fixed else count
    chunks = []
    for start in range(0, count, size):
        part = [x[start:start + size] for x in inputs]
        if part[0].shape[0] < size:
            part = [np.concatenate([p, np.zeros((size - p.shape[0],) + p.shape[1:], p.dtype)]) for p in part]
        if hasattr(model, "reset_states") and any(getattr(layer, "stateful", False) for layer in model.submodules):
            model.reset_states()
        out = model(part if len(part) > 1 else part[0], training=False)
        chunks.append([np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])])
    return [np.concatenate([c[i] for c in chunks])[:count] for i in range(len(chunks[0]))]


def _linear(model):
    return tf_keras.activations.linear if "tf_keras" in type(model).__module__ else (lambda x: x)


def _final_activation_layers(model) -> list:
    found = []
    outputs = model.outputs if isinstance(model.outputs, (list, tuple)) else [model.outputs]
    for tensor in outputs:
        history = getattr(tensor, "_keras_history", None)
        layer = history[0] if history is not None else None
        if layer is None:
            continue
        if hasattr(layer, "layers") and hasattr(layer, "outputs"):  # a nested model ends the graph
            found.extend(_final_activation_layers(layer))
        elif getattr(getattr(layer, "activation", None), "__name__", "") in ("sigmoid", "softmax"):
            found.append(layer)
    return found
