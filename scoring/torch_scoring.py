"""Scoring with torch: the CUDA path of /predict (a `scoring.scorers.Scorer`), and `predict()`.

On CUDA the batch is pinned and copied asynchronously, activations are channels_last (the model
takes Keras' NHWC batch and views it as NCHW, which *is* the channels_last layout, so cuDNN gets
NHWC without a copy), PNGs are decoded by torchvision (`scoring.torch_decode`, bit-identical to
PIL), and `precision="bf16"` runs the forward under bf16 autocast: predicted values then differ
from fp32 by up to ~1e-2 (on the CPU at 67x83, see tests/test_perf_precision.py; 1.1e-4 on an H200
at 607x617 on the sample spectrograms, see bench/README.md), so fp32 is the default and the only
setting held to the 1e-4 parity with the original Keras pipeline.
"""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np
import torch

from conversion.formats import load_trainable

from .clips import ClipDecoder, decoder_for
from .device import pick_device, resolve_precision
from .errors import ScoringError
from .pixel_cache import TORCHVISION_DECODER
from .tensors import autocast, check_input_size, to_batch

# Scoring batch on CUDA at least this large: score-only rate on an H200 at 607x617 was 5,049 images/s at
# batch 32 and 7,767 at 64 (bench/README.md, `bench.pipeline`); training keeps ORCA_BATCH_SIZE.
CUDA_SCORING_BATCH = 64


def probability_of_class_1(outputs) -> torch.Tensor:
    """P(class 1) from a model's outputs: its one sigmoid unit, or the last of its two softmax units."""
    if isinstance(outputs, tuple) or outputs.dim() != 2 or outputs.shape[1] not in (1, 2):
        shape = [tuple(t.shape) for t in outputs] if isinstance(outputs, tuple) else tuple(outputs.shape)
        raise ScoringError(f"model output has shape {shape}; expected (N, 1) sigmoid or (N, 2) softmax")
    return outputs[:, -1]


def score_pixels(model, pixels: np.ndarray, device: torch.device, precision: str = "fp32") -> list[float]:
    """P(class 1) of uint8 images (n, rows, cols, 3) with an eval-mode torch module on `device`."""
    x = to_batch(pixels, device)  # numpy (pinned, copied asynchronously) or a tensor the pixel cache holds
    if device.type == "cuda":  # NHWC in memory = channels_last once the model permutes it to NCHW
        x = x.contiguous()
    with torch.inference_mode(), autocast(device, precision):
        probabilities = probability_of_class_1(model(x))
    return probabilities.float().cpu().tolist()


def _decode_png(source, rows: int, cols: int) -> np.ndarray:
    from .torch_decode import decode_png_torch

    return decode_png_torch(source, rows, cols)


_decode_png.pixel_decoder = TORCHVISION_DECODER  # decode_png_torch's entries in the pixel cache


def clip_decoder(device) -> ClipDecoder:
    """How torch scoring decodes clips on `device`: PNGs with torchvision (PIL's pixels, less CPU: on CUDA
    the GPU waits on it), audio clips' spectrograms a batch at a time on CUDA, one clip at a time on
    the CPU (scoring.clips)."""
    return decoder_for(_decode_png, device)


def scoring_batch(device, batch_size: int) -> int:
    """The batch a TorchScorer on `device` scores in: at least CUDA_SCORING_BATCH on CUDA."""
    return max(batch_size, CUDA_SCORING_BATCH) if device.type == "cuda" else batch_size


class TorchScorer:
    """P(class 1) of images with an eval-mode torch module on one device (a `Scorer`)."""

    def __init__(self, model, device=None, precision: str | None = None, batch_size: int = 32):
        self.device = pick_device(device)
        self.precision = resolve_precision(precision)
        self.model = load_trainable(model) if isinstance(model, (str, os.PathLike)) else model
        self.model.to(self.device).eval()
        self.batch_size = scoring_batch(self.device, batch_size)
        self.decode = clip_decoder(self.device)

    def check_size(self, rows: int, cols: int) -> None:
        check_input_size(self.model, rows, cols)

    def score_pixels(self, pixels: np.ndarray) -> list[float]:
        return score_pixels(self.model, pixels, self.device, self.precision)

    def score(self, paths: Iterable, rows: int, cols: int, batch_size: int | None = None,
              workers: int = 4) -> list[float]:
        from .scorer import score_files

        return score_files(self, paths, rows, cols, batch_size, workers)


def predict(model_h5_or_module, image_paths: Iterable, rows: int, cols: int, *,
            device: str | torch.device | None = None, batch_size: int = 32,
            precision: str | None = None) -> list[float]:
    """The model's P(class 1) ("nocalls" for srkw_cnn) for each image, in `image_paths` order.

    `model_h5_or_module`: a model file (.h5, .onnx, .pt) or a module from conversion.formats.load_trainable (taking NHWC
    input). Images are decoded exactly like `images.load_image`, a few batches ahead on threads
    (`scoring.stream`), so memory stays at a few batches whatever the number of files.
    `precision`: "fp32" (default) | "bf16". A module given is left in the training mode it had.
    """
    was_training = getattr(model_h5_or_module, "training", None)
    scorer = TorchScorer(model_h5_or_module, device, precision, batch_size)
    try:
        return scorer.score(image_paths, rows, cols)
    finally:
        if was_training is not None:
            scorer.model.train(was_training)
