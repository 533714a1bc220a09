"""Parity of one .h5 model across Keras, the PyTorch bridge and ONNX Runtime.

`python -m conversion verify MODEL.h5` runs the same random (non-square where the model allows)
batch through Keras (tf_keras, or Keras 3 for files only it reads), the converted torch module,
ONNX Runtime on tf2onnx's export of the Keras graph and ONNX Runtime on the torch export, and
prints the largest differences. Logits (before a final sigmoid/softmax) are compared where the
frameworks expose them; the tf2onnx graph only gives final outputs.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch

from .bridge import count_parameters, keras_to_torch
from .errors import ConversionError
from .onnx_export import keras_to_onnx, torch_to_onnx

DEFAULT_TOLERANCE = 1e-4
FREE_SIZE = (67, 83)  # used for spatial sizes a model leaves open


class LogitsView(torch.nn.Module):
    """Exports a converted model's `forward_logits` as its forward."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.input_shapes = model.input_shapes

    def forward(self, *xs):
        return self.model.forward_logits(*xs)


@dataclass
class Comparison:
    name: str
    what: str  # "logits" or "outputs"
    max_abs: float
    scale: float

    @property
    def relative(self) -> float:
        return self.max_abs / max(1.0, self.scale)


@dataclass
class Report:
    path: str
    keras_flavour: str
    keras_params: int
    torch_params: tuple[int, int]
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # comparisons that could not run, and why

    def worst(self) -> float:
        return max((c.relative for c in self.comparisons), default=0.0)

    def ok(self, tolerance: float = DEFAULT_TOLERANCE) -> bool:
        return self.worst() <= tolerance

    def table(self) -> str:
        trainable, frozen = self.torch_params
        lines = [f"model: {self.path}",
                 f"keras ({self.keras_flavour}) parameters: {self.keras_params:,}   "
                 f"torch: {trainable:,} trainable + {frozen:,} non-trainable = {trainable + frozen:,}",
                 f"{'comparison':<34} {'compared':<8} {'max |Δ|':>12} {'max |y|':>10} {'Δ/max(1,|y|)':>13}"]
        for c in self.comparisons:
            lines.append(f"{c.name:<34} {c.what:<8} {c.max_abs:>12.3e} {c.scale:>10.3g} {c.relative:>13.3e}")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


def _inputs(model, rng) -> list[np.ndarray]:
    arrays = []
    for shape in model.input_shapes:
        dims = list(shape[1:])
        free = iter(FREE_SIZE)
        dims = [d if d is not None else next(free, 5) for d in dims]
        arrays.append(rng.random((2, *dims), dtype=np.float32))
    return arrays


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[float, float]:
    diff = max(float(np.abs(x - y).max()) for x, y in zip(a, b))
    scale = max(float(np.abs(x).max()) for x in a)
    return diff, scale


def _as_list(value) -> list[np.ndarray]:
    if isinstance(value, (list, tuple)):
        return [np.asarray(v.detach().numpy() if hasattr(v, "detach") else v) for v in value]
    return [np.asarray(value.detach().numpy() if hasattr(value, "detach") else value)]


def verify(h5_path, seed: int = 0, workdir: str | None = None) -> Report:
    """Run the four implementations on one random batch and collect their differences."""
    from . import keras_reference  # imports TensorFlow, after torch
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    module = keras_to_torch(h5_path)
    keras_model, flavour = keras_reference.load_keras_model(h5_path)
    inputs = _inputs(module, rng)
    tensors = [torch.from_numpy(x) for x in inputs]
    report = Report(os.fspath(h5_path), flavour, int(keras_model.count_params()), count_parameters(module))

    keras_logits = keras_reference.predict(keras_model, inputs, logits=True)
    keras_outputs = keras_reference.predict(keras_model, inputs)
    with torch.no_grad():
        torch_logits = _as_list(module.forward_logits(*tensors))
        torch_outputs = _as_list(module(*tensors))
    report.comparisons.append(Comparison("keras vs torch", "logits", *_max_diff(keras_logits, torch_logits)))
    report.comparisons.append(Comparison("keras vs torch", "outputs", *_max_diff(keras_outputs, torch_outputs)))

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        feeds = lambda session: {i.name: x for i, x in zip(session.get_inputs(), inputs)}  # noqa: E731
        try:  # tf2onnx is a second opinion on the Keras graph, not the bridge: its gaps are noted, not fatal
            keras_onnx = keras_to_onnx(h5_path, os.path.join(tmp, "keras.onnx"))
        except ConversionError as exc:
            report.notes.append(f"keras vs onnxruntime(tf2onnx) not compared: {str(exc).splitlines()[0][:300]}")
        else:
            session = ort.InferenceSession(keras_onnx, providers=["CPUExecutionProvider"])
            report.comparisons.append(Comparison("keras vs onnxruntime(tf2onnx)", "outputs",
                                                 *_max_diff(keras_outputs, session.run(None, feeds(session)))))
        example = tuple(tensors)
        torch_onnx = torch_to_onnx(LogitsView(module), os.path.join(tmp, "torch.onnx"), example_inputs=example)
        session = ort.InferenceSession(torch_onnx, providers=["CPUExecutionProvider"])
        report.comparisons.append(Comparison("keras vs onnxruntime(torch.onnx)", "logits",
                                             *_max_diff(keras_logits, session.run(None, feeds(session)))))
    return report


def round_trip_is_exact(h5_path) -> bool:
    """Whether keras_to_torch → torch_to_keras, without training, writes every weight dataset back
    with the same dtype and bytes (and the model, training config and version attributes unchanged)."""
    import tempfile

    import h5py

    from .bridge import torch_to_keras

    with tempfile.TemporaryDirectory(prefix="orca-verify-") as tmp:
        out = torch_to_keras(keras_to_torch(h5_path), h5_path, os.path.join(tmp, "copy.h5"))
        with h5py.File(h5_path, "r") as a, h5py.File(out, "r") as b:
            for attr in ("model_config", "training_config", "keras_version", "backend"):
                if attr in a.attrs and (attr not in b.attrs or a.attrs[attr] != b.attrs[attr]):
                    return False
            names = []
            a["model_weights"].visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            for name in names:
                x, y = a["model_weights"][name][()], b["model_weights"][name][()]
                if x.dtype != y.dtype or x.tobytes() != y.tobytes():
                    return False
    return True
