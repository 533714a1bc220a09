"""One interface for the engines that score spectrograms.

A `Scorer` (ONNX Runtime: `scoring.onnx_scoring.OnnxScorer`; torch: `scoring.torch_scoring.TorchScorer`):

    scorer.batch_size                  the batch its engine prefers
    scorer.check_size(rows, cols)      ScoringError when the model takes another image size
    scorer.decode(source, rows, cols)  uint8 pixels bit-identical to `images.decode_image` (a
                                       `clips.ClipDecoder`: audio files give their PNG's pixels)
    scorer.score_pixels(pixels)        P(class 1) of uint8 images (n, rows, cols, 3)
    scorer.score(paths, rows, cols)    the same for image files, streamed (`score_files`)
"""

from __future__ import annotations

from typing import Iterable, Protocol

import numpy as np

from .stream import stream_batches


class Scorer(Protocol):
    batch_size: int

    def check_size(self, rows: int, cols: int) -> None: ...

    def decode(self, source, rows: int, cols: int) -> np.ndarray: ...

    def score_pixels(self, pixels: np.ndarray) -> list[float]: ...

    def score(self, paths: Iterable, rows: int, cols: int) -> list[float]: ...


def score_files(scorer: Scorer, paths: Iterable, rows: int, cols: int, batch_size: int | None = None,
                workers: int = 4) -> list[float]:
    """Any scorer over local image files, streamed: P(class 1) in `paths` order, ImageError naming
    the first unreadable file."""
    scorer.check_size(rows, cols)
    scores: list[float] = []
    for batch in stream_batches(list(paths), None, rows, cols, batch_size or scorer.batch_size,
                                workers=workers, decode=scorer.decode):
        scores.extend(scorer.score_pixels(batch.pixels))
    return scores
