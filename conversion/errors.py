"""Errors raised by the Keras ⇄ PyTorch ⇄ ONNX bridge."""


class ConversionError(ValueError):
    """A model file cannot be read or converted; the message says which file, layer or op, and why."""
