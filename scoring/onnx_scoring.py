"""ONNX Runtime CPU scoring of a model file: what /predict uses on the CPU (a `scoring.scorers.Scorer`).

The model file is exported once into a cache folder, keyed by the SHA-256 of the file's bytes, so
a model is exported once whatever its name or path and a changed file is re-exported. A Sequential
Keras .h5 of the layers `conversion.keras_onnx` writes (srkw_cnn's among them) is written straight
to ONNX with h5py and onnx, in this process, without torch. Anything else is bridged to PyTorch
(`conversion.formats.load_trainable`) and exported with `conversion.torch_to_onnx` (dynamic batch);
when torch is not imported yet in this process that export runs in a child process (`python -m
scoring.onnx_scoring export MODEL.h5 OUT.onnx`), so a service that only scores never loads torch
(≈630 MiB of resident memory for the CUDA build). ONNX Runtime's CPU provider runs one image per
run, each run on one thread, as many runs at once as there are cores (`threads`): on 2 cores 18 % faster
than one run of 16 images on two intra-op threads, which wait for each other at every operator, and the
arena keeps only the peak of one image per thread (docs/design.md, "Scoring: one image per run").

    scorer = OnnxScorer("srkw_cnn_0.h5", cache_dir="cache/onnx")
    values = scorer.score(paths, rows=607, cols=617)   # P(class 1) per image

Numbers on the 2-core CPU machines of this project: see bench/README.md.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

import numpy as np

from conversion.atomic import write_bytes_atomically

from .errors import ScoringError
from .clips import ClipDecoder
from .images import decode_image, to_float

LOG = logging.getLogger("training")
MAX_ORT_BATCH = 16   # images /predict streams to score_pixels at a time (scored one per run, `threads` at once)
ROOT = Path(__file__).resolve().parent.parent


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of the file's bytes (`scoring.scorers.Scorers.digest` memoizes it per app)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_cached(model_h5: str | os.PathLike, cache_dir: str | os.PathLike, isolate: bool | None = None,
                  digest: str | None = None) -> Path:
    """The ONNX file for `model_h5` in `cache_dir`, exported on first use (`<sha256>.onnx`; `digest`,
    if known, is that SHA-256). Writes are atomic, so concurrent exports of one model are safe
    (`scoring.scorers.Scorers` also runs them once).

    `isolate` (default: when torch is not imported in this process yet): export in a child process.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{digest or file_sha256(model_h5)}.onnx"
    if not target.exists() and not _export_directly(model_h5, target):
        if isolate is None:
            isolate = "torch" not in sys.modules
        if isolate:
            _export_in_child(model_h5, target)
        else:
            _export(model_h5, target)
    return target


def _export_directly(model_h5, target) -> bool:
    """Write a Sequential Keras .h5 as ONNX without torch (conversion.keras_onnx): no torch import,
    and a graph ONNX Runtime runs faster (srkw_cnn at 607x617, 2 cores: ≈ 18 ms/image against ≈ 22
    through the bridge). False where that module does not write the model: the bridge exports it."""
    if Path(model_h5).suffix.lower() != ".h5":
        return False
    from conversion.keras_onnx import NotEmittable, keras_h5_to_onnx_bytes

    try:
        data = keras_h5_to_onnx_bytes(model_h5)
    except NotEmittable as reason:
        LOG.info("ONNX export of %s through the torch bridge: %s", os.fspath(model_h5), reason)
        return False
    except Exception as error:  # noqa: BLE001 - the bridge's export names what is wrong with the file
        LOG.info("direct ONNX export of %s failed (%s); trying the torch bridge", os.fspath(model_h5), error)
        return False
    write_bytes_atomically(target, data)
    return True


def _export(model_h5, target) -> None:
    from conversion import torch_to_onnx
    from conversion.formats import load_trainable

    module = load_trainable(model_h5)  # .h5, .onnx or .pt, seen with NHWC input
    torch_to_onnx(module, target)  # atomic: written beside the target, then renamed


def _export_in_child(model_h5, target) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    completed = subprocess.run([sys.executable, "-m", "scoring.onnx_scoring", "export", os.fspath(model_h5),
                                os.fspath(target)], cwd=ROOT, env=env, capture_output=True, text=True)
    if completed.returncode != 0 or not Path(target).exists():
        lines = [l for l in (completed.stderr or "").strip().splitlines() if l.strip()]
        reason = lines[-1] if lines else f"exit code {completed.returncode}"
        if reason.startswith("ERROR: "):
            reason = reason[len("ERROR: "):]
        raise ScoringError(f"cannot convert {os.fspath(model_h5)} to ONNX: {reason}")


PIXEL_INPUT = "pixels"  # the uint8 input `with_pixel_input` puts in front of a model


def with_pixel_input(onnx_path: str | os.PathLike):
    """The model with a uint8 input in front of its float32 image input, rescaled inside the graph by
    one DequantizeLinear (scale RESCALE, zero point 0: float(x) * RESCALE, one rounding, the same IEEE
    operations as `images.to_float`, so the same bits; Cast + Mul before opset 10), run on ONNX
    Runtime's threads instead of the caller's, on a quarter of the bytes. None where the model does
    not have exactly one float32 input. Measured on the 2-core AMD EPYC, srkw_cnn at 607x617, batches
    of 16: float input → Cast + Mul 16.7 → 15.9 ms and 20.7 → 19.3 ms per image in two runs; Cast + Mul
    → DequantizeLinear 15.8 → 14.9 ms per image (medians of 8 alternating runs; the rescale and the
    transpose ONNX Runtime then moves in front of it, onto the uint8 bytes: 2.5 → 1.4-1.6 ms)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from .images import RESCALE

    model = onnx.load(os.fspath(onnx_path))
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in constants]
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type != TensorProto.FLOAT:
        return None
    image = inputs[0]
    if model.ByteSize() > 1 << 30:  # protobuf's 2 GiB limit on the in-memory copy: ORT reads the file
        return None
    scale, zero, cast = (f"{PIXEL_INPUT}_{suffix}" for suffix in ("rescale", "zero_point", "float"))
    taken = {n for node in graph.node for n in (*node.input, *node.output)} | constants
    if taken & {PIXEL_INPUT, scale, zero, cast}:
        return None  # a name is taken: leave the model as it is
    pixels = helper.make_tensor_value_info(PIXEL_INPUT, TensorProto.UINT8, None)
    pixels.type.tensor_type.shape.CopyFrom(image.type.tensor_type.shape)
    graph.initializer.append(numpy_helper.from_array(np.asarray(RESCALE, dtype=np.float32), scale))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= 10:
        graph.initializer.append(numpy_helper.from_array(np.zeros((), dtype=np.uint8), zero))
        prefix = [helper.make_node("DequantizeLinear", [PIXEL_INPUT, scale, zero], [image.name])]
    else:
        prefix = [helper.make_node("Cast", [PIXEL_INPUT], [cast], to=TensorProto.FLOAT),
                  helper.make_node("Mul", [cast, scale], [image.name])]
    nodes = prefix + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [i for i in graph.input if i.name != image.name]
    del graph.input[:]
    graph.input.extend([pixels] + kept)
    return model


def lower_priority(nice: int) -> None:
    """Add `nice` (0-19) to the calling thread's niceness: on Linux a thread's own (setpriority on its thread
    id); elsewhere, where that would renice the whole process, nothing."""
    if nice > 0 and sys.platform.startswith("linux"):
        tid = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
        except OSError as error:  # a sandbox that forbids it: the runs keep the usual priority
            LOG.warning("scoring: could not lower the priority of ONNX Runtime's threads: %s", error)


class OnnxScorer:
    """P(class 1) of images with ONNX Runtime on the CPU, for one model file (a `Scorer`)."""

    decode = ClipDecoder(decode_image)  # PIL: the CPU path; audio drawn one clip at a time (scoring.clips)

    def __init__(self, model_path: str | os.PathLike, cache_dir: str | os.PathLike, threads: int | None = None,
                 isolate: bool | None = None, digest: str | None = None, nice: int = 0):
        import onnxruntime as ort

        self.onnx_path = export_cached(model_path, cache_dir, isolate=isolate, digest=digest)
        self.threads = threads or os.cpu_count() or 1
        self.batch_size = MAX_ORT_BATCH
        options = ort.SessionOptions()
        # one thread per run, `threads` runs at once (the module docstring): no intra-op pool, nothing spins
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # the CPU arena stays on: without it every run maps and faults in fresh pages (2-3x slower
        # on the 2-core machines); its peak is one image per concurrent run
        # nice: the runs' threads yield the cores to the ones that download, decode and draw the next batch
        # (docs/design.md, "Scoring: one image per run")
        self._runs = (ThreadPoolExecutor(self.threads, thread_name_prefix="orca-ort", initializer=lower_priority,
                                         initargs=(nice,)) if self.threads > 1 else None)
        graph = with_pixel_input(self.onnx_path)
        self.takes_pixels = graph is not None  # uint8 in, rescaled inside the graph
        self.session = ort.InferenceSession(graph.SerializeToString() if graph is not None else str(self.onnx_path),
                                            options, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ScoringError(f"model has {len(inputs)} inputs; only single-input image models are supported")
        self.input_name = inputs[0].name
        self.input_shape = inputs[0].shape  # ['batch', rows, cols, channels]

    def check_size(self, rows: int, cols: int) -> None:
        shape = self.input_shape
        if len(shape) != 4:
            raise ScoringError(f"model input shape {shape} is not an image batch (None, rows, cols, channels)")
        m_rows, m_cols = shape[1], shape[2]
        if (isinstance(m_rows, int) and m_rows != rows) or (isinstance(m_cols, int) and m_cols != cols):
            raise ScoringError(f"the model expects {m_rows}x{m_cols} images (img_width x img_height), "
                                f"got {rows}x{cols}")

    def score_pixels(self, pixels: np.ndarray) -> list[float]:
        """P(class 1) of uint8 images (n, rows, cols, 3), in order: one run per image, `threads` at once (with
        one thread, on the calling thread)."""
        if self._runs is None or len(pixels) == 1:
            return [value for i in range(len(pixels)) for value in self._run(pixels[i:i + 1])]
        return [value for values in self._runs.map(self._run, [pixels[i:i + 1] for i in range(len(pixels))])
                for value in values]

    def _run(self, chunk: np.ndarray) -> list[float]:
        feed = np.ascontiguousarray(chunk, dtype=np.uint8) if self.takes_pixels else to_float(chunk)
        (out,) = self.session.run(None, {self.input_name: feed})
        if out.ndim != 2 or out.shape[1] not in (1, 2):
            raise ScoringError(f"model output has shape {out.shape}; expected (N, 1) sigmoid or (N, 2) softmax")
        return [float(v) for v in out[:, -1]]

    def score(self, paths: Iterable, rows: int, cols: int, batch_size: int | None = None,
              workers: int = 4) -> list[float]:
        """P(class 1) for each image in `paths` order; ImageError if one is unreadable."""
        from .scorer import score_files

        return score_files(self, paths, rows, cols, batch_size, workers)


def _main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "export":
        print("usage: python -m scoring.onnx_scoring export MODEL.h5 OUT.onnx", file=sys.stderr)
        return 2
    import torch  # noqa: F401  (the bridge needs it; imported before anything else, see docs/design.md)

    try:
        _export(argv[1], argv[2])
    except Exception as error:  # noqa: BLE001 - reported to the parent on the last stderr line
        print(f"ERROR: {type(error).__name__}: {error}".replace("\n", " "), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
