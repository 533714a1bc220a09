"""Keras .h5 ⇄ PyTorch ⇄ ONNX bridge.

Knows Keras files, ONNX graphs and torch tensors; nothing of HTTP or storage. TensorFlow is only
imported by the functions that need it (`keras_to_onnx`, `conversion.keras_reference`), always
after torch. Importing the package imports nothing heavy: each name below loads its module on
first use, so the torch-free parts (`keras_file`, `keras_onnx`, `errors`) stay torch-free. No
module is named like one of these names: importing it would replace the name with the module.
"""

from importlib import import_module

_LAZY = {
    "count_parameters": ".bridge", "keras_to_torch": ".bridge", "torch_to_keras": ".bridge",
    "ConversionError": ".errors", "KerasModel": ".graph",
    "TrainingConfig": ".keras_file", "read_keras_file": ".keras_file", "read_training_config": ".keras_file",
    "supported_layers": ".graph", "keras_to_onnx": ".onnx_export", "torch_to_onnx": ".onnx_export",
    "onnx_to_keras": ".keras_from_onnx", "OnnxModule": ".onnx_interpreter", "onnx_to_torch": ".onnx_interpreter",
    "convert": ".converting",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
