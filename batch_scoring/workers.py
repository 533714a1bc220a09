"""The Ray Data stages of a batch scoring: callable classes that Ray runs as actors.

A batch of the plan (columns index, part, key, size) goes through:

- `ClipReader`: fetches each clip's bytes from the source (S3 GetObject or a local read, on a few
  threads) and decodes them as /predict's scorer does (`decode="pil"`: `scoring.images`, what
  ONNX Runtime's path uses; `"torch"`: `scoring.torch_decode`, bit-identical, what the CUDA path
  uses; an audio clip, `mp3/<stem>.mp3` without its PNG, is drawn as its 2020 spectrogram straight to
  the same pixels: `scoring.clips`), adding `pixels` (uint8, rows x cols x 3) and `error` ("" when decoded);
- `GpuScorer` (an actor with one GPU): `scoring.torch_scoring.TorchScorer` on CUDA;
- `CpuScorer` (an actor on CPUs only): reads and decodes with a `ClipReader`, then scores with
  `scoring.onnx_scoring.OnnxScorer`, in one process: on a CPU node the pixels need not cross the
  object store between two processes of the same cores.

Both scorers return index, part, predicted_value (NaN where `error` is set) and error; the pixels
stay behind. A clip that cannot be fetched or decoded is a row with its error, never a failed run;
an error of the model itself (wrong output shape) fails the run, as it would fail every clip.
"""

from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class ClipReader:
    """Fetch + decode of one source's clips (see the module docstring). One per actor: it holds the
    S3 client; each batch downloads into a scratch folder of its own, removed when the batch is read."""

    def __init__(self, source_url: str, rows: int, cols: int, *, decode: str = "pil", max_pixels: int | None = None,
                 s3_attempts: int = 5, threads: int = 8):
        from service.storage import S3Connector, locate

        self.threads = max(1, threads)
        self.storage = locate(source_url, "SOURCE", local_root=None,
                              s3=S3Connector(attempts=s3_attempts, max_connections=self.threads)).storage
        self.rows, self.cols, self.max_pixels = rows, cols, max_pixels
        if decode == "torch":
            from scoring.torch_decode import decode_png_torch as decoder
        else:
            from scoring.images import decode_image as decoder
        from scoring.clips import ClipDecoder

        self.decoder = ClipDecoder(decoder)  # audio clips (mp3/, no PNG) drawn one at a time on this CPU

    def _one(self, scratch: str, slot: int, key: str, size: int) -> tuple[np.ndarray | None, str]:
        """(pixels, "") or (None, why this clip cannot be scored, naming its storage URL)."""
        from service.errors import ServiceError
        from service.storage import LocalStorage
        from scoring.errors import ImageError
        from scoring.stream import decode_checked

        url = self.storage.url(key)
        local = isinstance(self.storage, LocalStorage)
        suffix = os.path.splitext(key)[1].lower()  # the decoder tells audio from images by it
        path = key if local else os.path.join(scratch, f"clip-{slot}{suffix}")
        try:
            if not local:
                self.storage.download(key, path, expected_size=int(size))
            return decode_checked(path, self.rows, self.cols, self.max_pixels, self.decoder), ""
        except ImageError as error:
            return None, str(error).replace(path, url)
        except ServiceError as error:  # storage: not found, denied, broken transfer after botocore's retries
            return None, f"{url}: {error}".replace(path, url)
        finally:
            if not local and os.path.exists(path):
                os.unlink(path)

    def read(self, keys, sizes) -> tuple[np.ndarray, list[str]]:
        """(uint8 pixels (n, rows, cols, 3), zeros where a clip failed; error per clip, "" if none)."""
        pixels = np.zeros((len(keys), self.rows, self.cols, 3), np.uint8)
        errors = [""] * len(keys)
        with tempfile.TemporaryDirectory(prefix="orca-score-read-") as scratch, \
                ThreadPoolExecutor(min(self.threads, max(1, len(keys)))) as pool:
            results = pool.map(self._one, [scratch] * len(keys), range(len(keys)), keys, sizes)
            for i, (array, error) in enumerate(results):
                if error:
                    errors[i] = error
                else:
                    pixels[i] = array
        return pixels, errors

    def __call__(self, batch: dict) -> dict:
        started_at = time.time()
        pixels, errors = self.read(list(batch["key"]), list(batch["size"]))
        return {"index": batch["index"], "part": batch["part"], "pixels": pixels,
                "error": np.array(errors, dtype=object), "started_at": np.full(len(errors), started_at)}


def _scored(batch: dict, pixels: np.ndarray, errors, score_pixels, started_at: float) -> dict:
    """index, part, predicted_value (NaN where the clip failed), error, and when the batch began
    (wall clock: the driver's throughput figures): the stage's output."""
    errors = [str(e) for e in errors]
    good = np.array([not e for e in errors], dtype=bool)
    values = np.full(len(errors), np.nan, dtype=np.float64)
    if good.any():
        values[good] = np.asarray(score_pixels(pixels[good] if not good.all() else pixels), dtype=np.float64)
    return {"index": batch["index"], "part": batch["part"], "predicted_value": values,
            "error": np.array(errors, dtype=object), "started_at": np.full(len(errors), started_at)}


def _model_files(folder: str, model_name: str, model_bytes: bytes, sha256: str, onnx_bytes: bytes | None) -> str:
    """Write the model (and its ONNX export, cached under its SHA-256 as `OnnxScorer` looks for it)."""
    from scoring.onnx_scoring import file_sha256

    path = os.path.join(folder, os.path.basename(model_name))
    with open(path, "wb") as f:
        f.write(model_bytes)
    if file_sha256(path) != sha256:
        raise RuntimeError(f"the model {model_name} reached this worker damaged (SHA-256 differs)")
    if onnx_bytes is not None:
        with open(os.path.join(folder, f"{sha256}.onnx"), "wb") as f:
            f.write(onnx_bytes)
    return path


class CpuScorer:
    """Read, decode (PIL) and score with ONNX Runtime on `threads` cores: /predict's CPU scorer."""

    def __init__(self, model_name: str, model_bytes: bytes, sha256: str, onnx_bytes: bytes, threads: int,
                 reader: dict):
        from scoring.onnx_scoring import OnnxScorer

        with tempfile.TemporaryDirectory(prefix="orca-score-model-") as folder:  # loaded, the files go
            path = _model_files(folder, model_name, model_bytes, sha256, onnx_bytes)
            self.scorer = OnnxScorer(path, folder, threads=threads, digest=sha256)  # the export is there
        self.reader = ClipReader(**reader, decode="pil")

    def __call__(self, batch: dict) -> dict:
        started_at = time.time()
        pixels, errors = self.reader.read(list(batch["key"]), list(batch["size"]))
        return _scored(batch, pixels, errors, self.scorer.score_pixels, started_at)


class GpuScorer:
    """Score decoded batches with torch on this actor's GPU: /predict's CUDA scorer."""

    def __init__(self, model_name: str, model_bytes: bytes, sha256: str, precision: str, batch_size: int):
        import torch  # noqa: F401  (first: see docs/design.md)

        from scoring.torch_scoring import TorchScorer

        with tempfile.TemporaryDirectory(prefix="orca-score-model-") as folder:  # loaded, the file goes
            path = _model_files(folder, model_name, model_bytes, sha256, None)
            self.scorer = TorchScorer(path, "cuda", precision, batch_size)

    def __call__(self, batch: dict) -> dict:
        return _scored(batch, np.asarray(batch["pixels"]), batch["error"], self.scorer.score_pixels,
                       float(np.min(batch["started_at"])))
