"""The work behind /train and /predict: fetch model and data from storage into a private temporary
folder, call `training`, publish the new model version. Knows storage and jobs, not layer layouts.

Training runs on the job queue's worker (service.jobqueue: one training at a time on the device);
`TRAIN_LOCK` also serializes direct callers such as the CLI, so each gets its own version. Scoring runs concurrently (one at a time per unlabeled prefix).
/predict reuses models and spectrograms cached by URL + ETag (service.cache); the mirror of a
prefix follows deletions, so a clip deleted from the unlabeled set is never scored again. /train
mirrors an S3 labeled prefix the same way, so a training round downloads only the new labels.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from training.images import IMAGE_EXTENSIONS, decode_image  # what `training` reads
from training.onnx_scoring import file_sha256  # memoized; neither module imports torch

from .errors import NotFound, Unprocessable
from .nodes import describe_clip
from .params import PredictParams, TrainParams
from .storage import Location, ObjectInfo, locate
from .versions import publish_new_version

log = logging.getLogger(__name__)

TRAIN_LOCK = threading.Lock()
SPLITS = ("train", "validation")


@dataclass(frozen=True)
class Settings:
    local_root: str | None = None
    work_dir: str | None = None
    device: str | None = None
    batch_size: int = 32
    download_threads: int = 8
    max_listing: int = 100_000


def _is_image(key: str) -> bool:
    return key.lower().endswith(IMAGE_EXTENSIONS)


def _safe_parts(relative: str) -> list[str] | None:
    parts = relative.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return parts


def _fetch_model(model: Location, folder: str) -> str:
    if not model.key or model.key.endswith("/"):
        raise NotFound(f"model_url is a folder, not a model file: {model.url}")
    path = os.path.join(folder, "model" + (posixpath.splitext(model.key)[1] or ".h5"))
    try:
        model.storage.download(model.key, path)
    except NotFound:
        raise NotFound(f"model_url not found: {model.url}") from None
    return path


def _list_dataset(location: Location, param: str) -> list[ObjectInfo]:
    try:
        objects = location.storage.list(location.prefix)
    except NotFound:
        raise NotFound(f"{param} not found: {location.url}") from None
    if not objects:
        raise NotFound(f"{param} not found (nothing stored under it): {location.url}")
    return objects


def _each_in_parallel(function, items: list, threads: int) -> None:
    """`function(item)` for every item on up to `threads` threads; the first failure propagates."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(items)))) as pool:
        for _ in pool.map(function, items):
            pass


def _download_all(location: Location, jobs: list[tuple[ObjectInfo, str]], threads: int) -> None:
    """Download every (object, local path); the first failure propagates (no partial dataset)."""
    _each_in_parallel(lambda job: location.storage.download(job[0].key, job[1], expected_size=job[0].size),
                      jobs, threads)


def _unprocessable(error: Exception, replacements: dict[str, str]) -> Unprocessable:
    """A 422 whose message names storage URLs, not our temporary paths."""
    message = str(error)
    for local, url in sorted(replacements.items(), key=lambda kv: -len(kv[0])):
        message = message.replace(local, url)
    return Unprocessable(message)


def _training_errors():
    import conversion
    import training

    return (conversion.ConversionError, training.TrainingError, training.ImageError)


def fetch_labeled(labeled: Location, folder: str, threads: int,
                  listing: list[ObjectInfo] | None = None) -> dict[str, int]:
    """Mirror `train/<class>/…` and `validation/<class>/…` images of `labeled` into `folder`.
    `listing`, if given, receives the objects mirrored (for the provenance sidecar)."""
    prefix = labeled.prefix
    jobs, counts = [], {split: 0 for split in SPLITS}
    for info in _list_dataset(labeled, "labeled_url"):
        parts = _safe_parts(info.key[len(prefix):])
        if not parts or len(parts) < 3 or parts[0] not in SPLITS or not _is_image(info.key):
            continue  # mp3/, stray files, unsafe names
        jobs.append((info, os.path.join(folder, *parts)))
        counts[parts[0]] += 1
    for split in SPLITS:
        os.makedirs(os.path.join(folder, split), exist_ok=True)
        if not counts[split]:
            raise Unprocessable(f"labeled_url has no {split} images "
                                f"(expected {split}/<class>/*.png): {labeled.url}")
    if listing is not None:
        listing.extend(info for info, _ in jobs)
    from .storage import LocalStorage

    if isinstance(labeled.storage, LocalStorage):
        _download_all(labeled, jobs, threads)
    else:
        _mirror_labeled(labeled, jobs, threads)
    return counts


def mirror_name(relative: str) -> str:
    """A flat file name for `train/<class>/<file>` in the labeled mirror (one folder, as PrefixMirror keeps)."""
    name = urllib.parse.quote(relative, safe="")
    if len(name.encode()) > 200:  # file systems allow 255 bytes per name
        name = hashlib.sha256(relative.encode()).hexdigest()[:40] + posixpath.splitext(relative)[1].lower()
    return name


def _mirror_labeled(labeled: Location, jobs: list[tuple[ObjectInfo, str]], threads: int) -> None:
    """Bring the mirror of the S3 labeled prefix up to date (only new or changed images are downloaded;
    images gone from the bucket are removed) and hard-link its files into the training folder."""
    from .cache import PrefixMirror

    wanted = {mirror_name(info.key[len(labeled.prefix):]): (info, path) for info, path in jobs}
    mirror = PrefixMirror(labeled, labeled.prefix)
    with mirror.synced({name: info for name, (info, _) in wanted.items()}) as fetch:
        def one(item):
            name, (_, path) = item
            source = fetch(name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                os.link(source, path)  # the mirror replaces files by rename: a link keeps this copy intact
            except OSError:  # another file system
                shutil.copyfile(source, path)

        _each_in_parallel(one, list(wanted.items()), threads)
    log.info("train: labeled mirror of %s: %d downloaded, %d reused, %d removed", labeled.prefix_url,
             mirror.downloaded, mirror.reused, mirror.removed)


def run_train(params: TrainParams, settings: Settings, on_epoch=None) -> dict:
    """Train, publish `NAME_{N+1}` (.h5, .onnx or .pt, as the model came), then its provenance
    sidecar `.json` and curves `.png`.
    `on_epoch(epoch, epochs, metrics)` is passed to `training.train` (job progress)."""
    from training.device import preload_torch_in_background

    from . import __version__, metrics, provenance
    from .storage import MAX_LISTING

    # torch (first /train of a CPU service) loads while the model and the images download
    preload = None if "torch._dynamo" in sys.modules else preload_torch_in_background()
    MAX_LISTING.set(settings.max_listing)  # this thread may be a job worker, not a request
    model = locate(params.model_url, "model_url", local_root=settings.local_root)
    labeled = locate(params.labeled_url, "labeled_url", local_root=settings.local_root)
    import training

    with TRAIN_LOCK, tempfile.TemporaryDirectory(prefix="orca-train-", dir=settings.work_dir) as tmp:
        started = time.monotonic()
        if "training.onnx_scoring" in sys.modules:  # idle scoring sessions slow CPU training
            sys.modules["training.onnx_scoring"].release_sessions()
        model_path = _fetch_model(model, tmp)
        parent_info = model.storage.stat(model.key)
        data = os.path.join(tmp, "labeled")
        listing: list[ObjectInfo] = []
        counts = fetch_labeled(labeled, data, settings.download_threads, listing)
        if preload is not None:
            preload.join()
        errors = _training_errors()  # imports conversion, hence torch: after the preload
        log.info("train: %s on %s (%s), %d epochs", model.url, labeled.url, counts, params.epochs)
        out_path = os.path.join(tmp, "trained" + posixpath.splitext(model_path)[1])  # same format
        replacements = {model_path: model.url, data + os.sep: labeled.prefix_url}
        try:
            result = training.train(model_path, data, params.rows, params.cols, params.epochs, out_path,
                                    device=settings.device, seed=params.seed,
                                    batch_size=settings.batch_size, on_epoch=on_epoch)
        except errors as error:
            raise _unprocessable(error, replacements) from error
        skipped = [{"url": _unprocessable(Exception(item["path"]), replacements).message, "split": item["split"],
                    "reason": _unprocessable(Exception(item["reason"]), replacements).message}
                   for item in result.skipped_files]
        metrics.count_skipped(len(skipped), stage="train")
        written = publish_new_version(model, out_path)
        metrics.MODELS_WRITTEN.inc()
        response = dict(result.to_response())
        response["model_url"] = written.url
        try:
            sidecar = provenance.build_sidecar(
                written=written, parent=model, parent_info=parent_info, labeled=labeled, labeled_objects=listing,
                result=result, skipped_urls=skipped, duration_s=time.monotonic() - started, version=__version__)
            sidecar["parent"]["sha256"] = file_sha256(model_path)
            sidecar["model_sha256"] = file_sha256(out_path)
            png = provenance.curves_png(result, title=f"{written.name} (from {model.name})")
            provenance.write_beside(written, sidecar, png, tmp)
        except Exception:  # noqa: BLE001 - the model is written; a missing sidecar must not fail /train
            log.exception("train: could not write the provenance sidecar of %s", written.url)
        log.info("train: wrote %s in %.1f s", written.url, time.monotonic() - started)
        return response


LAST_PREDICT_SKIPPED = 0  # files skipped by the latest /predict of this process (the answer carries its own)


class PredictItems(list):
    """The /predict answer: a plain list of items (JSON as is), plus `skipped`, the files not scored:
    [{"url": storage URL, "reason": why}] (corrupt or not an image, or over ORCA_MAX_PIXELS)."""

    def __init__(self, items=(), skipped=()):
        super().__init__(items)
        self.skipped = list(skipped)


def _unlabeled_clips(unlabeled: Location) -> list[tuple[str, ObjectInfo]]:
    """(file name, object) of `spectrograms/<stem>.<png|jpg>` under `unlabeled`, sorted by name."""
    spectrograms = unlabeled.prefix + "spectrograms/"
    clips = []
    for info in _list_dataset(unlabeled, "unlabeled_url"):
        relative = info.key[len(spectrograms):] if info.key.startswith(spectrograms) else None
        if relative is None or "/" in relative or not _is_image(relative) or relative.startswith("."):
            continue  # only spectrograms/<stem>.<png|jpg>; mp3/ and the rest are ignored
        clips.append((relative, info))
    clips.sort(key=lambda clip: clip[0])  # sorted by file name, as the original returned them
    return clips


_TORCH_MODELS: dict = {}  # (path, size, mtime_ns, device) → eval-mode module: the CUDA path's model cache


def _torch_scorer(model_path: str, rows: int, cols: int, device_name: str | None):
    from training.device import pick_device, resolve_precision
    from training.loop import check_input_size
    from training.torch_scoring import score_pixels

    device = pick_device(device_name)
    precision = resolve_precision()
    stat = os.stat(model_path)
    key = (model_path, stat.st_size, stat.st_mtime_ns, str(device))
    module = _TORCH_MODELS.get(key)
    if module is None:
        from conversion.formats import load_trainable

        module = load_trainable(model_path).to(device).eval()
        _TORCH_MODELS.clear()  # one model on the device at a time
        _TORCH_MODELS[key] = module
    check_input_size(module, rows, cols)
    return lambda pixels: score_pixels(module, pixels, device, precision)


def _prefetch(clips, fetch_name, threads: int, until) -> None:
    """Download clips into the mirror while the future `until` runs; stop starting new ones when it is
    done (the scoring stream fetches the rest). Download errors surface there, in order."""
    def one(clip):
        if not until.done():
            with contextlib.suppress(Exception):
                fetch_name(clip[0])

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(one, clips))


def run_predict(params: PredictParams, settings: Settings, on_progress=None) -> PredictItems:
    """Score every unlabeled spectrogram: ONNX Runtime on the CPU, torch on CUDA (training.device).

    The model comes from the model cache (URL + ETag), S3 spectrograms from the prefix's local
    mirror (service.cache), streamed: downloads and decoding run on threads a few batches ahead of
    the scorer. Unreadable images and images over ORCA_MAX_PIXELS are skipped, logged and listed
    in the answer's `skipped`. Clips scored before by the same model file are answered from the
    score cache (service.cache.ScoreCache) without being read again. `on_progress(done, total)`
    (optional) follows the scoring, batch by batch.
    """
    global LAST_PREDICT_SKIPPED

    from training.device import scoring_backend
    from training.errors import ImageError, TrainingError
    from training.stream import apply_pil_pixel_limit, max_pixels_from_env, stream_batches

    from .cache import SCORES, PrefixMirror, ScoreCache, cached_model, onnx_cache_dir
    from .storage import LocalStorage

    model = locate(params.model_url, "model_url", local_root=settings.local_root)
    unlabeled = locate(params.unlabeled_url, "unlabeled_url", local_root=settings.local_root)
    started = time.monotonic()
    model_path = cached_model(model)
    clips = _unlabeled_clips(unlabeled)
    if not clips:
        return PredictItems()
    max_pixels = max_pixels_from_env()
    apply_pil_pixel_limit(max_pixels)
    backend = scoring_backend(settings.device)
    replacements = {model_path: model.url}
    errors = (TrainingError, ImageError) + ((sys.modules["conversion"].ConversionError,)
                                            if "conversion" in sys.modules else ())
    model_scores = SCORES.table(file_sha256(model_path), params.rows, params.cols)
    values: dict[str, float] = {}  # file name → score: cached ones first, then the rest as scored
    if model_scores is not None:
        for name, info in clips:
            hit = model_scores.get(ScoreCache.identity(info))
            if hit is not None:
                values[name] = hit
    pending = [clip for clip in clips if clip[0] not in values]
    skipped = []
    decode = decode_image  # PIL; the torch (CUDA) path swaps in torchvision's bit-identical decoder
    try:
        if isinstance(unlabeled.storage, LocalStorage):
            mirror, synced = None, contextlib.nullcontext(None)
        else:
            mirror = PrefixMirror(unlabeled, unlabeled.prefix + "spectrograms/")
            synced = mirror.synced({name: info for name, info in clips})
            replacements[str(mirror.folder) + os.sep] = unlabeled.prefix_url + "spectrograms/"
        with synced as fetch_name, ThreadPoolExecutor(1) as starter:
            if pending and backend == "onnxruntime":
                from training.onnx_scoring import MAX_ORT_BATCH, OnnxScorer

                # A model seen for the first time is exported to ONNX (seconds, in a child process):
                # meanwhile the S3 mirror is brought up to date.
                started_scorer = starter.submit(OnnxScorer, model_path, cache_dir=onnx_cache_dir())
                if fetch_name is not None:
                    _prefetch(pending, fetch_name, settings.download_threads, until=started_scorer)
                scorer = started_scorer.result()
                scorer.check_size(params.rows, params.cols)
                score, batch_size = scorer.score_pixels, min(settings.batch_size, MAX_ORT_BATCH)
            elif pending:
                from training.torch_decode import decode_png_torch

                score = _torch_scorer(model_path, params.rows, params.cols, settings.device)
                batch_size, decode = settings.batch_size, decode_png_torch  # same pixels, less CPU
            fetch = (lambda clip: clip[1].key) if fetch_name is None else (lambda clip: fetch_name(clip[0]))
            batches = stream_batches(pending, fetch, params.rows, params.cols, batch_size,
                                     workers=settings.download_threads, skip_unreadable=True,
                                     max_pixels=max_pixels, decode=decode) if pending else ()
            for batch in batches:
                for (name, info), reason in batch.skipped:
                    url = unlabeled.storage.url(info.key)
                    reason = _unprocessable(Exception(reason), replacements).message
                    log.warning("predict: skipped %s: %s", url, reason)
                    skipped.append({"url": url, "reason": reason})
                if batch.items:
                    for (name, info), value in zip(batch.items, score(batch.pixels)):
                        values[name] = float(value)
                        SCORES.store(model_scores, ScoreCache.identity(info), float(value))
                if on_progress is not None:
                    on_progress(len(values) + len(skipped), len(clips))
    except errors as error:
        raise _unprocessable(error, replacements) from error
    items = []
    for name, _ in clips:  # sorted by file name, as the original returned them
        if name in values:
            stem = posixpath.splitext(name)[0]
            item = describe_clip(stem)
            item["audio_url"] = unlabeled.storage.public_url(f"{unlabeled.prefix}mp3/{stem}.mp3")
            item["predicted_value"] = values[name]
            items.append(item)
    if on_progress is not None and not pending:
        on_progress(len(clips), len(clips))
    LAST_PREDICT_SKIPPED = len(skipped)
    log.info("predict: %d scored (%d from the score cache), %d skipped with %s in %.1f s%s", len(items),
             len(clips) - len(pending), len(skipped), backend, time.monotonic() - started,
             f" (mirror: {mirror.downloaded} downloaded, {mirror.reused} reused, {mirror.removed} removed)"
             if mirror is not None else "")
    return PredictItems(items, skipped)
