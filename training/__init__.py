"""Training and scoring of Keras .h5 orca-call detectors in PyTorch, as the original /train and
/predict did it; no HTTP, no S3: the service downloads data to local folders and calls these.

- `train(model_h5, labeled_dir, rows, cols, epochs, out_h5)` → TrainResult (`to_response()` is the
  original JSON less model_url);
- `predict(model, image_paths, rows, cols)` → P(class 1) per image, with torch
  (`training.torch_scoring`; the service scores with `training.onnx_scoring` on the CPU);
- `load_image(source, rows, cols)` → the float32 image exactly as tf_keras' pipeline made it;
- `pick_device()` → the one place that picks CUDA or CPU.

Importing the package does not import torch (the names below load their module on first use), so
the service can score with ONNX Runtime (`training.onnx_scoring`) without loading torch.
"""

from importlib import import_module
from types import MappingProxyType

from .errors import ImageError, TrainingError
from .images import load_image

_LAZY = MappingProxyType({"pick_device": ".device", "TrainResult": ".loop", "train": ".loop",
                         "predict": ".torch_scoring"})


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ImageError", "TrainResult", "TrainingError", "load_image", "pick_device", "predict", "train"]
