"""The work behind /train and /predict: fetch model and data from storage into a private temporary
folder, call `training`, publish the new model version. Knows storage and jobs, not layer layouts.

Training is serialized by one process-wide lock (`TRAIN_LOCK`): concurrent /train requests queue
and each gets its own version. Scoring runs concurrently. Nothing is cached between requests, so
a clip deleted from the unlabeled set is never scored again.
"""

from __future__ import annotations

import logging
import os
import posixpath
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .errors import NotFound, Unprocessable
from .nodes import describe_clip
from .params import PredictParams, TrainParams
from .storage import Location, ObjectInfo, locate
from .versions import publish_new_version

log = logging.getLogger(__name__)

TRAIN_LOCK = threading.Lock()
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")  # what `training` reads (Keras' list, minus exotic ones)
SPLITS = ("train", "validation")


@dataclass(frozen=True)
class Settings:
    local_root: str | None = None
    work_dir: str | None = None
    device: str | None = None
    batch_size: int = 32
    download_threads: int = 8


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


def _download_all(location: Location, jobs: list[tuple[ObjectInfo, str]], threads: int) -> None:
    """Download every (object, local path); the first failure propagates (no partial dataset)."""
    if not jobs:
        return

    def one(job):
        info, path = job
        location.storage.download(info.key, path, expected_size=info.size)

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(jobs)))) as pool:
        for _ in pool.map(one, jobs):
            pass


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


def fetch_labeled(labeled: Location, folder: str, threads: int) -> dict[str, int]:
    """Mirror `train/<class>/…` and `validation/<class>/…` images of `labeled` into `folder`."""
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
    _download_all(labeled, jobs, threads)
    return counts


def run_train(params: TrainParams, settings: Settings) -> dict:
    model = locate(params.model_url, "model_url", local_root=settings.local_root)
    labeled = locate(params.labeled_url, "labeled_url", local_root=settings.local_root)
    import training

    errors = _training_errors()
    with TRAIN_LOCK, tempfile.TemporaryDirectory(prefix="orca-train-", dir=settings.work_dir) as tmp:
        started = time.monotonic()
        model_path = _fetch_model(model, tmp)
        data = os.path.join(tmp, "labeled")
        counts = fetch_labeled(labeled, data, settings.download_threads)
        log.info("train: %s on %s (%s), %d epochs", model.url, labeled.url, counts, params.epochs)
        out_path = os.path.join(tmp, "trained.h5")
        try:
            result = training.train(model_path, data, params.rows, params.cols, params.epochs, out_path,
                                    device=settings.device, seed=params.seed,
                                    batch_size=settings.batch_size)
        except errors as error:
            raise _unprocessable(error, {model_path: model.url, data + os.sep: labeled.prefix_url}) from error
        written = publish_new_version(model, out_path)
        response = dict(result.to_response())
        response["model_url"] = written.url
        log.info("train: wrote %s in %.1f s", written.url, time.monotonic() - started)
        return response


def run_predict(params: PredictParams, settings: Settings) -> list[dict]:
    model = locate(params.model_url, "model_url", local_root=settings.local_root)
    unlabeled = locate(params.unlabeled_url, "unlabeled_url", local_root=settings.local_root)
    import training

    errors = _training_errors()
    with tempfile.TemporaryDirectory(prefix="orca-predict-", dir=settings.work_dir) as tmp:
        model_path = _fetch_model(model, tmp)
        spectrograms = unlabeled.prefix + "spectrograms/"
        clips = []
        for info in _list_dataset(unlabeled, "unlabeled_url"):
            relative = info.key[len(spectrograms):] if info.key.startswith(spectrograms) else None
            if relative is None or "/" in relative or not _is_image(relative) or relative.startswith("."):
                continue  # only spectrograms/<stem>.<png|jpg>; mp3/ and the rest are ignored
            clips.append((relative, info))
        clips.sort(key=lambda clip: clip[0])  # sorted by file name, as the original returned them
        folder = os.path.join(tmp, "spectrograms")
        jobs = [(info, os.path.join(folder, name)) for name, info in clips]
        _download_all(unlabeled, jobs, settings.download_threads)
        if not jobs:
            return []
        try:
            values = training.predict(model_path, [path for _, path in jobs], params.rows, params.cols,
                                      device=settings.device, batch_size=settings.batch_size)
        except errors as error:
            raise _unprocessable(error, {model_path: model.url,
                                         folder + os.sep: unlabeled.prefix_url + "spectrograms/"}) from error
        items = []
        for (name, _), value in zip(clips, values):
            stem = posixpath.splitext(name)[0]
            item = describe_clip(stem)
            item["audio_url"] = unlabeled.storage.public_url(f"{unlabeled.prefix}mp3/{stem}.mp3")
            item["predicted_value"] = float(value)
            items.append(item)
        return items
