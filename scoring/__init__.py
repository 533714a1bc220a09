"""Scoring spectrograms with a model: image decoding bit-identical to the original Keras pipeline
(`scoring.images`), audio clips drawn straight to the same pixels (`scoring.clips`), batches streamed
from files (`scoring.stream`), the pixel cache
(`scoring.pixel_cache`), the engines (`scoring.onnx_scoring` on the CPU, `scoring.torch_scoring` on
CUDA, one interface in `scoring.scorer`), the app's cache of ready scorers (`scoring.scorers`), and
the one place that picks the device (`scoring.device`). No HTTP, no storage.

Importing the package imports nothing; `scoring.device`, `scoring.images` and `scoring.scorers` do
not import torch, so a CPU service scores with ONNX Runtime without loading it.
"""
