"""Checks every converter test makes of a converted Keras file: the written copy keeps the original's
weights byte for byte, and backward reaches every trainable weight. (Shared by the bridge tests.)"""

from __future__ import annotations

import h5py
import torch


def weight_datasets(path) -> list[str]:
    """The names of every weight dataset under the file's `model_weights` group."""
    found: list[str] = []
    with h5py.File(path) as f:
        f["model_weights"].visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
    return found


def assert_weights_bit_exact(original, written, *, same_config: bool = True) -> list[str]:
    """`written` holds every weight dataset of `original` with the same bytes (and, by default, the same
    model_config); returns the datasets' names for the caller's own checks."""
    found = weight_datasets(original)
    with h5py.File(original) as a, h5py.File(written) as b:
        if same_config:
            assert a.attrs["model_config"] == b.attrs["model_config"]
        for name in found:
            assert a["model_weights"][name][()].tobytes() == b["model_weights"][name][()].tobytes(), name
    return found


def assert_backward_reaches_every_weight(module, inputs, trainable: int | None = None) -> dict:
    """One backward pass of the mean square of every output: each parameter gets a non-zero gradient
    (and there are `trainable` of them, when given). Returns the parameters by name."""
    params = dict(module.named_parameters())
    if trainable is not None:
        assert len(params) == trainable
    outputs = module.forward_logits(*inputs)
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    sum(o.square().mean() for o in outputs).backward()
    missing = [n for n, p in params.items() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"weights backward does not reach: {missing}"
    return params


def onnx_runtime_outputs(module, onnx_path, example, inputs) -> list:
    """Export `module` with conversion.torch_to_onnx (traced on the numpy arrays `example`) and run the
    file in ONNX Runtime on the numpy arrays `inputs`: its outputs."""
    import onnxruntime as ort

    from conversion import torch_to_onnx

    written = torch_to_onnx(module, onnx_path, example_inputs=tuple(torch.from_numpy(a) for a in example))
    session = ort.InferenceSession(str(written), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: a for i, a in zip(session.get_inputs(), inputs)})


def torch_outputs(module, arrays) -> list:
    """The module's outputs (numpy) on the numpy input arrays, without gradients."""
    with torch.no_grad():
        return [o.numpy() for o in module(*[torch.from_numpy(a) for a in arrays])]
