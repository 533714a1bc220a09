"""Training and scoring of Keras .h5 orca-call detectors in PyTorch, as the original /train and
/predict did it; no HTTP, no S3: the service downloads data to local folders and calls these.

- `train(model_h5, labeled_dir, rows, cols, epochs, out_h5)` → TrainResult (`to_response()` is the
  original JSON less model_url);
- `predict(model, image_paths, rows, cols)` → P(class 1) per image;
- `load_image(source, rows, cols)` → the float32 image exactly as tf_keras' pipeline made it;
- `pick_device()` → the one place that picks CUDA or CPU.
"""

from .device import pick_device
from .errors import ImageError, TrainingError
from .images import load_image
from .loop import TrainResult, train
from .predict import predict

__all__ = ["ImageError", "TrainResult", "TrainingError", "load_image", "pick_device", "predict", "train"]
