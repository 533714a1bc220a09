"""`score_archive`: plan, join or start Ray, run the stages of `batch_scoring.workers`, write each part.

The driver (this process) fetches the model once, checks that it loads and takes the image size
(exporting it to ONNX, which it ships to the CPU actors with the model's bytes), plans or re-reads
the plan under DEST, and builds one Ray Data dataset of the clips of the parts not written yet,
one block per part, in plan order. Ray runs the stages where it has room; the driver receives
index, part, predicted_value and error per clip (never pixels), and writes a part as soon as all
its clips are in. So the driver's memory holds the plan and a few parts of small rows.

Where Ray runs: `address` (or Ray's own RAY_ADDRESS, which `ray.init` reads) joins an existing
cluster; without either, Ray's rule applies (a cluster `ray start`ed on this machine, else a new
local one, which is shut down at the end). A Ray already initialized in this process is used as is.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from . import parts as parts_module

log = logging.getLogger("batch_scoring")
LISTING_LIMIT = 10_000_000  # clips one plan may hold (≈ 6 weeks of all Orcasound nodes); the driver keeps them
CPU_BATCH = 16  # scoring.onnx_scoring.MAX_ORT_BATCH: images handed to the scorer at a time


@dataclass
class Summary:
    """What one run did; printed as JSON by `orca score`."""

    out: str
    model_url: str
    model_sha256: str
    clips: int
    parts: int
    parts_skipped: int  # written by an earlier run
    parts_written: int = 0
    scored: int = 0  # clips scored by this run
    failed: int = 0  # clips of this run recorded with an error
    engine: str = ""  # "onnxruntime" (CPU actors) or "torch" (GPU actors); "" when nothing was left to do
    workers: int = 0
    seconds: float = 0.0  # the whole command: model check, plan, Ray start-up, scoring
    scoring_seconds: float = 0.0  # from the dataset's start to its last clip (actors' start-up included)
    images_per_second: float = 0.0  # clips of this run / scoring_seconds
    warm_images_per_second: float = 0.0  # clips of this run / the time since the first actor began a batch

    def to_dict(self) -> dict:
        return asdict(self)


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Make sure this process is connected to Ray; True when this call started it (then `ray.shutdown()`
    is the caller's). A local Ray gets no dashboard and reports no usage statistics: it downloads
    and uploads nothing."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray's notice that a new local cluster has token authentication on (its secure default) would
    # be the command's first line on every run; it stays in Ray's logs, not on the terminal.
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    kept_level = notice.level
    notice.setLevel(logging.ERROR)
    try:
        ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=True,
                 configure_logging=False)
    except ValueError as error:  # e.g. --num-cpus given while joining a cluster
        raise SystemExit(f"error: cannot start Ray: {error}") from None
    except ConnectionError as error:
        raise SystemExit(f"error: cannot reach the Ray cluster at {address or 'RAY_ADDRESS'}: {error}") from None
    finally:
        notice.setLevel(kept_level)
    quiet_ray_data_console()
    return True


def quiet_ray_data_console() -> None:
    """Ray Data's INFO lines (execution plans, its own progress log when stderr is no terminal) off the
    terminal, where this command's progress bar is: its console handler shows warnings and errors only.
    The full log still goes to the Ray session's `logs/ray-data/ray-data.log`."""
    import ray.data  # noqa: F401  (configures the "ray.data" logger and its handlers)

    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(max(handler.level, logging.WARNING))


def _fetch_model(model, folder: str) -> str:
    """The model file in `folder`, under its own name (the extension says its format)."""
    from conversion.model_formats import model_format

    model_format(model.key)  # ConversionError for anything but .h5/.onnx/.pt
    path = os.path.join(folder, os.path.basename(model.key.rstrip("/")))
    model.storage.download(model.key, path)
    return path


def _check_model(model_path: str, sha256: str, folder: str, rows: int | None, cols: int | None):
    """(rows, cols, ONNX bytes): the model loads in ONNX Runtime (exported as /predict's CPU path
    exports it) and takes rows x cols images; rows/cols default to its fixed input size."""
    from scoring.errors import ScoringError
    from scoring.onnx_scoring import OnnxScorer

    scorer = OnnxScorer(model_path, folder, threads=1, digest=sha256)
    shape = scorer.input_shape
    fixed = len(shape) == 4 and all(isinstance(d, int) for d in shape[1:3])
    if rows is None or cols is None:
        if not fixed:
            raise ScoringError(f"the model's input size is not fixed ({shape}): give --img_width and --img_height")
        rows, cols = rows or shape[1], cols or shape[2]
    scorer.check_size(rows, cols)
    with open(scorer.onnx_path, "rb") as f:
        return rows, cols, f.read()


@dataclass
class Prepared:
    """What a run needs before Ray: the plan under DEST, the storage locations and the model's bytes."""

    plan: "parts_module.Plan"
    source: object  # service.storage.Location
    dest: object
    model_name: str
    model_bytes: bytes
    onnx_bytes: bytes


def prepare(model_url: str, source_url: str, dest_url: str, *, rows: int | None = None, cols: int | None = None,
            part_size: int = 1000, s3_attempts: int = 5, public_base: str | None = None,
            service_url: str | None = None, served_root: str | None = None,
            allow_unconditional_writes: bool = False) -> Prepared:
    """Fetch the model and check it (`_check_model`), then read the plan under DEST, or list the source
    and write one. A plan of another model, source or size under DEST is refused (BadRequest).
    `public_base`, `allow_unconditional_writes`: ORCA_PUBLIC_BASE_URL (the rows' `audio_url`) and
    ORCA_ALLOW_UNCONDITIONAL_WRITES (writing the plan and parts), as in the service; `service_url`,
    `served_root`: ORCA_PUBLIC_URL and ORCA_LOCAL_ROOT, the `audio_url` of local clips
    (`<service_url>/clips/<path under served_root>`, else `file://…`)."""
    from service.predict import unlabeled_clips
    from service.storage import S3Connector, locate
    from scoring.onnx_scoring import file_sha256

    s3 = S3Connector(attempts=s3_attempts)
    settings = dict(public_base=public_base, service_url=service_url, served_root=served_root,
                    allow_unconditional_writes=allow_unconditional_writes)
    model = locate(model_url, "MODEL", local_root=None, s3=s3, **settings)
    source = locate(source_url, "SOURCE", local_root=None, s3=s3, max_listing=LISTING_LIMIT, **settings)
    dest = locate(dest_url, "--out", local_root=None, s3=s3, max_listing=LISTING_LIMIT, **settings)
    with tempfile.TemporaryDirectory(prefix="orca-score-") as folder:
        model_path = _fetch_model(model, folder)
        sha256 = file_sha256(model_path)
        rows, cols, onnx_bytes = _check_model(model_path, sha256, folder, rows, cols)
        with open(model_path, "rb") as f:
            model_bytes = f.read()
    wanted = dict(model_url=model.url, model_sha256=sha256, source_url=source.url, rows=rows, cols=cols)
    plan = parts_module.read_plan(dest)
    if plan is None:
        plan = parts_module.write_plan(dest, parts_module.make_plan(unlabeled_clips(source), part_size=part_size,
                                                                    **wanted))
    parts_module.check_same_plan(plan, parts_module.Plan(**wanted, part_size=plan.part_size, table=None), dest)
    return Prepared(plan, source, dest, os.path.basename(model.key), model_bytes, onnx_bytes)


def score_archive(model_url: str, source_url: str, dest_url: str, *, rows: int | None = None,
                  cols: int | None = None, part_size: int = 1000, workers: int | None = None,
                  device: str = "auto", batch_size: int | None = None, precision: str = "fp32",
                  max_pixels: int | None = None, s3_attempts: int = 5, address: str | None = None,
                  num_cpus: int | None = None, progress: bool = True, public_base: str | None = None,
                  service_url: str | None = None, served_root: str | None = None,
                  allow_unconditional_writes: bool = False) -> Summary:
    """Score every clip under `source_url` (/predict's `unlabeled_url`: `spectrograms/<stem>.png`, else `mp3/<stem>.mp3`)
    with the model at `model_url` into Parquet parts under `dest_url`; see the module docstring.

    `device`: "auto" (GPU actors where Ray has GPUs, else ONNX Runtime CPU actors), "cpu" or "cuda".
    `workers`: scoring actors (default: one per GPU, or one per CPU). Re-running with the same
    arguments writes only the parts missing (`batch_scoring.parts`). `public_base`, `service_url`,
    `served_root`, `allow_unconditional_writes`: see `prepare`."""
    from service.errors import BadRequest

    if device not in ("auto", "cpu", "cuda"):
        raise BadRequest(f"--device must be auto, cpu or cuda, got {device!r}")
    if workers is not None and workers < 1:
        raise BadRequest(f"--workers must be at least 1, got {workers}")
    if batch_size is not None and batch_size < 1:
        raise BadRequest(f"--batch-size must be at least 1, got {batch_size}")
    started = time.monotonic()
    ready = prepare(model_url, source_url, dest_url, rows=rows, cols=cols, part_size=part_size,
                    s3_attempts=s3_attempts, public_base=public_base, service_url=service_url, served_root=served_root,
                    allow_unconditional_writes=allow_unconditional_writes)
    plan, dest = ready.plan, ready.dest
    done = parts_module.written_parts(dest)
    pending = [p for p in range(plan.parts) if p not in done]
    summary = Summary(out=dest.url, model_url=plan.model_url, model_sha256=plan.model_sha256,
                      clips=plan.table.num_rows, parts=plan.parts, parts_skipped=plan.parts - len(pending))
    if pending:
        started_ray = connect(address, num_cpus)
        try:
            _run(ready, pending, summary, device=device, workers=workers, batch_size=batch_size, precision=precision,
                 max_pixels=max_pixels, s3_attempts=s3_attempts, progress=progress)
        finally:
            if started_ray:
                import ray

                ray.shutdown()
    summary.seconds = round(time.monotonic() - started, 3)
    return summary


def _run(ready: Prepared, pending: list[int], summary: Summary, *, device, workers, batch_size, precision,
         max_pixels, s3_attempts, progress) -> None:
    import numpy as np
    import pyarrow as pa
    import ray
    import ray.data
    from tqdm import tqdm

    from .workers import ClipReader, CpuScorer, GpuScorer

    plan, source, dest = ready.plan, ready.source, ready.dest
    model = dict(model_name=ready.model_name, model_bytes=ready.model_bytes, sha256=plan.model_sha256)
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    use_gpu = device == "cuda" or (device == "auto" and gpus > 0)
    if use_gpu and gpus < 1:
        raise SystemExit("error: --device cuda, but the Ray cluster has no GPU")
    reader = dict(source_url=source.url, rows=plan.rows, cols=plan.cols, max_pixels=max_pixels,
                  s3_attempts=s3_attempts)
    batch_rows = batch_size or (64 if use_gpu else CPU_BATCH)
    if use_gpu:
        workers = workers or gpus
    else:
        workers = workers or max(1, cpus)
        if cpus and workers > cpus:
            raise SystemExit(f"error: --workers {workers} is more than the {cpus} CPUs of the Ray cluster")
    clips = sum(plan.part_rows(index).num_rows for index in pending)
    # One block per part, or smaller ones when there are fewer parts than workers (each block goes to one
    # actor); and never more actors than blocks, which would sit idle.
    block_rows = min(plan.part_size, max(batch_rows, math.ceil(clips / workers)))
    tables = []
    offset = 0
    for index in pending:  # blocks in plan order; `index` numbers the clips across the plan
        rows = plan.part_rows(index)
        start = index * plan.part_size
        part = pa.table({"index": pa.array(range(start, start + rows.num_rows), pa.int64()),
                         "part": rows["part"], "key": rows["key"], "size": rows["size"]})
        tables += [part.slice(first, block_rows) for first in range(0, part.num_rows, block_rows)]
        offset += rows.num_rows
    workers = min(workers, len(tables))
    context = ray.data.DataContext.get_current()
    kept_order, context.execution_options.preserve_order = context.execution_options.preserve_order, True
    try:
        dataset = ray.data.from_arrow(tables)
        if use_gpu:
            summary.engine = "torch"
            readers = ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, min(cpus - workers, len(tables))))
            decoded = dataset.map_batches(ClipReader, fn_constructor_kwargs={**reader, "decode": "torch"},
                                          batch_size=batch_rows, num_cpus=1, compute=readers)  # the CPUs left read
            scored = decoded.map_batches(GpuScorer, fn_constructor_kwargs=dict(
                **model, precision=precision,
                batch_size=batch_rows), batch_size=batch_rows, num_gpus=1, num_cpus=1,
                compute=ray.data.ActorPoolStrategy(size=workers))
        else:
            summary.engine = "onnxruntime"
            scored = dataset.map_batches(CpuScorer, fn_constructor_kwargs=dict(
                **model, onnx_bytes=ready.onnx_bytes,
                threads=1, reader=reader), batch_size=batch_rows, num_cpus=1,
                compute=ray.data.ActorPoolStrategy(size=workers))
        summary.workers = workers
        names = plan.table["name"].to_pylist()
        keys = plan.table["key"].to_pylist()
        waiting: dict[int, dict[int, tuple[float, str]]] = {}
        began, first_batch = time.monotonic(), None  # wall-clock time (time.time) the first actor began a batch
        # The bar is drawn from the first scored batch on (tqdm's `delay`), its rate counted from here: what
        # Ray prints while it starts the actors (e.g. its core worker's notice of ray-project/ray#57733, once
        # per actor) comes before the bar, not inside it.
        bar = tqdm(total=offset, desc="scored", unit="img", file=sys.stderr, dynamic_ncols=True, delay=1e-3,
                   disable=not progress)
        try:
            for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
                for index, part, value, error in zip(batch["index"], batch["part"], batch["predicted_value"],
                                                     batch["error"]):
                    waiting.setdefault(int(part), {})[int(index)] = (float(value), str(error))
                    if error:
                        summary.failed += 1
                    else:
                        summary.scored += 1
                bar.update(len(batch["index"]))
                if len(batch["started_at"]):
                    first_batch = min(first_batch or math.inf, float(np.min(batch["started_at"])))
                for part in [p for p, got in waiting.items() if len(got) == plan.part_rows(p).num_rows]:
                    columns = _part_columns(waiting.pop(part), names, keys, source, plan)
                    if parts_module.write_part(dest, part, columns):
                        summary.parts_written += 1

        finally:
            bar.close()
            summary.scoring_seconds = round(time.monotonic() - began, 3)
            if summary.scoring_seconds:
                summary.images_per_second = round((summary.scored + summary.failed) / summary.scoring_seconds, 2)
            if first_batch is not None and time.time() > first_batch:
                clips = summary.scored + summary.failed
                summary.warm_images_per_second = round(clips / (time.time() - first_batch), 2)
        if waiting:  # cannot happen unless Ray lost rows: say so rather than leave a silent gap
            raise RuntimeError(f"parts {sorted(waiting)} did not receive all their clips; run again to finish them")
    finally:
        context.execution_options.preserve_order = kept_order


def _part_columns(results: dict, names, keys, source, plan) -> dict:
    """OUTPUT_SCHEMA's columns of one part, from {plan index: (value, error)}, in plan order."""
    from service.predict import clip_item

    columns = {name: [] for name in parts_module.output_schema().names}
    for index in sorted(results):
        value, error = results[index]
        clip = clip_item(source, names[index])
        columns["spectrogram_url"].append(source.storage.url(keys[index]))
        columns["audio_url"].append(clip["audio_url"])
        columns["timestamp"].append(clip["timestamp"])
        columns["location"].append(clip["location"])
        columns["duration"].append(clip["duration"])
        columns["predicted_value"].append(None if error else value)
        columns["error"].append(error or None)
        columns["model_url"].append(plan.model_url)
        columns["model_sha256"].append(plan.model_sha256)
    return columns
