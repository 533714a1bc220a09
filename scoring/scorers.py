"""The cache of ready scorers an app keeps (the interface they share is `scoring.scorer.Scorer`).

`Scorers` (one per app: `service.runtime.Runtime.scorers`) chooses the engine for the device
(ONNX Runtime on the CPU, torch on CUDA; `scoring.device.scoring_backend`), keeps the last two ONNX
Runtime sessions and one torch module, builds each once even under concurrent requests, and
releases them all before a training (live sessions slow torch's CPU training in the same process
by 20–30 %: one srkw_cnn epoch on 96 images at 607×617 took 24–27 s after scoring, 18.7 s once
released). Importing this module imports neither torch nor ONNX Runtime.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

from .scorer import Scorer


class Scorers:
    """Ready scorers of one app, by model file content and device (see the module docstring)."""

    KEEP_ONNX = 2  # ORT sessions kept: the current model version and the previous one

    def __init__(self, onnx_cache: str | os.PathLike, device: str | None = None, precision: str = "fp32",
                 batch_size: int = 32, backend: str | None = None, nice: int = 0):
        self.onnx_cache = onnx_cache
        self._backend = backend  # None: chosen by the device; "torch" or "onnxruntime" to force one
        self.device = device
        self.precision = precision
        self.batch_size = batch_size
        self.nice = nice  # added to the niceness of ONNX Runtime's run threads (OnnxScorer)
        self._ready: OrderedDict[tuple, Scorer] = OrderedDict()
        self._building: dict[tuple, threading.Lock] = {}
        self._digests: dict[tuple, str] = {}
        self._lock = threading.Lock()

    @property
    def backend(self) -> str:
        from .device import scoring_backend

        return self._backend or scoring_backend(self.device)

    @property
    def decoder(self) -> str:
        """The pixel-cache name (`pixel_cache.decoder_name`) of `decode`, without importing it: what
        /predict asks the cache for while its scorer is being built."""
        from .pixel_cache import PIL_DECODER, TORCHVISION_DECODER

        return TORCHVISION_DECODER if self.backend == "torch" else PIL_DECODER

    @property
    def decode(self):
        """The decoder of the scorers built here (their `decode`, a `clips.ClipDecoder`): torchvision's PNG
        decoding for torch, PIL's for ONNX Runtime, audio's spectrogram for both. Other readers of the same
        clips (/query's probe) decode with it too, so the pixels /predict cached are theirs."""
        from .clips import ClipDecoder

        if self.backend == "torch":
            from .device import pick_device
            from .torch_scoring import clip_decoder

            return clip_decoder(pick_device(self.device))
        from .images import decode_image  # OnnxScorer.decode, without importing ONNX Runtime

        return ClipDecoder(decode_image)

    def stream_batch(self, requested: int) -> int:
        """The batch /predict streams to a scorer built here, known before one is built (so the clips are
        decoded while the model loads): torch's own batch (`torch_scoring.scoring_batch`), or for ONNX Runtime
        `requested` up to its MAX_ORT_BATCH."""
        if self.backend == "torch":
            from .device import pick_device
            from .torch_scoring import scoring_batch

            return scoring_batch(pick_device(self.device), self.batch_size)
        from .onnx_scoring import MAX_ORT_BATCH

        return min(requested, MAX_ORT_BATCH)

    def digest(self, path: str | os.PathLike) -> str:
        """SHA-256 of a file, memoized by (real path, size, mtime)."""
        from .onnx_scoring import file_sha256

        stat = os.stat(path)
        key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            digest = self._digests.get(key)
        if digest is None:
            digest = file_sha256(path)
            with self._lock:
                self._digests[key] = digest
                while len(self._digests) > 256:
                    self._digests.pop(next(iter(self._digests)))
        return digest

    def get(self, model_path: str | os.PathLike) -> Scorer:
        """The scorer of this model file on this app's device, built on first use."""
        backend = self.backend
        key = (backend, self.digest(model_path), str(self.device))
        with self._lock:
            scorer = self._ready.get(key)
            if scorer is not None:
                self._ready.move_to_end(key)
                return scorer
            building = self._building.setdefault(key, threading.Lock())
        with building:  # concurrent requests for a new model build it once
            with self._lock:
                scorer = self._ready.get(key)
            if scorer is None:
                try:
                    scorer = self._build(backend, model_path, key[1])
                except BaseException:
                    with self._lock:
                        self._building.pop(key, None)
                    raise
                with self._lock:
                    if backend == "torch":  # one model on the device at a time
                        for old in [k for k in self._ready if k[0] == "torch"]:
                            del self._ready[old]
                    self._ready[key] = scorer
                    while sum(k[0] == "onnxruntime" for k in self._ready) > self.KEEP_ONNX:
                        del self._ready[next(k for k in self._ready if k[0] == "onnxruntime")]
                    self._building.pop(key, None)
        return scorer

    def _build(self, backend: str, model_path, digest: str) -> Scorer:
        if backend == "onnxruntime":
            from .onnx_scoring import OnnxScorer

            return OnnxScorer(model_path, self.onnx_cache, digest=digest, nice=self.nice)
        from .torch_scoring import TorchScorer

        return TorchScorer(model_path, self.device, self.precision, self.batch_size)

    def release(self) -> None:
        """Drop every ready scorer (the next request builds them again in well under a second)."""
        with self._lock:
            self._ready.clear()
