"""Keras .h5 ⇄ PyTorch ⇄ ONNX bridge.

Knows Keras files, ONNX graphs and torch tensors; nothing of HTTP or storage. TensorFlow is only
imported by the functions that need it (`keras_to_onnx`, `conversion.keras_reference`), always
after torch.
"""

from .bridge import count_parameters, keras_to_torch, torch_to_keras
from .errors import ConversionError
from .graph import KerasModel
from .keras_file import TrainingConfig, read_keras_file, read_training_config
from .layers import supported_layers
from .onnx_export import keras_to_onnx, torch_to_onnx
from .onnx_to_keras import onnx_to_keras
from .onnx_to_torch import OnnxModule, onnx_to_torch

__all__ = [
    "ConversionError", "KerasModel", "OnnxModule", "TrainingConfig", "count_parameters",
    "keras_to_onnx", "keras_to_torch", "onnx_to_keras", "onnx_to_torch", "read_keras_file",
    "read_training_config", "supported_layers", "torch_to_keras", "torch_to_onnx",
]
