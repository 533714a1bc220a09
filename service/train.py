"""The work behind /train: fetch the model and the labeled set into a private temporary folder, call
`training.loop.train`, publish the new version, then its provenance. Knows storage and jobs, not layer
layouts.

Runs on the job queue's worker (`service.jobqueue`: one training at a time on the device); the
runtime's `train_lock` also serializes direct callers such as the CLI, so each gets its own
version. The model comes from the runtime's model cache (URL + ETag; read in place for local
files); an S3 labeled prefix is mirrored (`service.cache.PrefixMirror`), so a training round
downloads only the new labels, and labels deleted from the bucket are not trained on. A labeled set
may hold audio clips (.mp3/.wav/.flac) beside or instead of images: they train on their 2020
spectrogram, drawn straight to the model's input (`scoring.clips`). Images (and spectrograms) decoded
before (by an earlier round's /train or /predict: same bytes, same size) come from the runtime's
pixel cache; the training precision is ORCA_PRECISION (`training.precision.training_precision`).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import posixpath
import shutil
import sys
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

from scoring.clips import clip_identity

from .datasets import each_in_parallel, is_clip, list_dataset, model_errors, name_urls, safe_parts, unprocessable
from .errors import Unprocessable
from .params import TrainParams
from .storage import LocalStorage, Location, ObjectInfo
from .versions import publish_new_version

log = logging.getLogger(__name__)

SPLITS = ("train", "validation")


def fetch_labeled(runtime, labeled: Location, folder: str, listing: list[ObjectInfo] | None = None,
                  identities: dict | None = None) -> dict[str, int]:
    """Put the `train/<class>/…` and `validation/<class>/…` images and audio clips (.mp3/.wav/.flac) of
    `labeled` into `folder`.
    `listing`, if given, receives the objects used (for the provenance sidecar); `identities`, if
    given, local path → the identity of the stored object's bytes (for the pixel cache)."""
    prefix = labeled.prefix
    jobs, counts = [], {split: 0 for split in SPLITS}
    for info in list_dataset(labeled, "labeled_url"):
        parts = safe_parts(info.key[len(prefix):])
        if not parts or len(parts) < 3 or parts[0] not in SPLITS or not is_clip(info.key):
            continue  # mp3/, stray files, unsafe names
        jobs.append((info, os.path.join(folder, *parts)))
        counts[parts[0]] += 1
    for split in SPLITS:
        os.makedirs(os.path.join(folder, split), exist_ok=True)
        if not counts[split]:
            raise Unprocessable(f"labeled_url has no {split} images or audio "
                                f"(expected {split}/<class>/*.png or *.mp3): {labeled.url}")
    if listing is not None:
        listing.extend(info for info, _ in jobs)
    if identities is not None:
        identities.update((os.path.normpath(path), clip_identity(info.key, info.size, info.etag))
                          for info, path in jobs)
    threads = runtime.config["DOWNLOAD_THREADS"]
    if isinstance(labeled.storage, LocalStorage):
        each_in_parallel(lambda job: labeled.storage.download(job[0].key, job[1], expected_size=job[0].size),
                         jobs, threads)
    else:
        _mirror_labeled(runtime, labeled, jobs, threads)
    return counts


def mirror_name(relative: str) -> str:
    """A flat file name for `train/<class>/<file>` in the labeled mirror (one folder, as PrefixMirror keeps)."""
    name = urllib.parse.quote(relative, safe="")
    if len(name.encode()) > 200:  # file systems allow 255 bytes per name
        name = hashlib.sha256(relative.encode()).hexdigest()[:40] + posixpath.splitext(relative)[1].lower()
    return name


def _mirror_labeled(runtime, labeled: Location, jobs: list[tuple[ObjectInfo, str]], threads: int) -> None:
    """Bring the mirror of the S3 labeled prefix up to date (only new or changed images are downloaded;
    images gone from the bucket are removed) and hard-link its files into the training folder."""
    wanted = {mirror_name(info.key[len(labeled.prefix):]): (info, path) for info, path in jobs}
    mirror = runtime.cache.mirror(labeled, labeled.prefix)
    with mirror.synced({name: info for name, (info, _) in wanted.items()}) as fetch:
        def one(item):
            name, (_, path) = item
            source = fetch(name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                os.link(source, path)  # the mirror replaces files by rename: a link keeps this copy intact
            except OSError:  # another file system
                shutil.copyfile(source, path)

        each_in_parallel(one, list(wanted.items()), threads)
    log.info("train: labeled mirror of %s: %d downloaded, %d reused, %d removed", labeled.prefix_url,
             mirror.downloaded, mirror.reused, mirror.removed)


def tensorboard_dir(setting: str | None, model_name: str, tmp: str) -> str | None:
    """Where a training writes its TensorBoard event files (ORCA_TENSORBOARD_DIR): unset → the
    request's scratch folder (uploaded beside the new version afterwards), `off` → nowhere, else a
    folder of its own under the setting, named after the parent model and the UTC time."""
    if setting is None:
        return os.path.join(tmp, "tensorboard")
    if setting.strip().lower() == "off":
        return None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    return os.path.join(setting, f"{posixpath.splitext(model_name)[0]}-{stamp}")


def run_train(runtime, params: TrainParams, on_epoch=None) -> dict:
    """Train, publish `NAME_{N+1}` (.h5, .onnx or .pt, as the model came), then its provenance
    sidecar `.json` and curves `.png`; return the /train JSON.
    `on_epoch(epoch, epochs, metrics)` is passed to `training.loop.train` (job progress)."""
    from service.allocator import release_freed_blocks
    from .preload import preload_torch_in_background

    from . import provenance

    # torch, where it was not preloaded at start-up (ORCA_PRELOAD_TORCH=auto or 0 on a CPU), loads
    # while the model and the images download
    preload = None if "torch._dynamo" in sys.modules else preload_torch_in_background()
    model = runtime.locate(params.model_url, "model_url")
    labeled = runtime.locate(params.labeled_url, "labeled_url")
    # a store already known to refuse the new version (no conditional writes): refused before training
    model.storage.check_publishable(model.url)
    config = runtime.config
    with runtime.train_lock, tempfile.TemporaryDirectory(prefix="orca-train-", dir=config["WORK_DIR"]) as tmp:
        started = time.monotonic()
        runtime.scorers.release()  # idle scoring sessions slow CPU training
        parent_info = model.storage.stat(model.key)  # for the sidecar, and the cache's ETag check
        model_path = runtime.cache.model(model, parent_info)
        data = os.path.join(tmp, "labeled")
        listing: list[ObjectInfo] = []
        identities: dict = {}
        counts = fetch_labeled(runtime, labeled, data, listing, identities)
        if preload is not None:
            preload.join()
        from training.loop import train  # imports conversion, hence torch: after the preload

        log.info("train: %s on %s (%s), %d epochs", model.url, labeled.url, counts, params.epochs)
        out_path = os.path.join(tmp, "trained" + posixpath.splitext(model_path)[1])  # same format
        board = tensorboard_dir(config["TENSORBOARD_DIR"], model.name, tmp)
        replacements = {model_path: model.url, data + os.sep: labeled.prefix_url}
        try:
            result = train(model_path, data, params.rows, params.cols, params.epochs, out_path,
                                    device=config["DEVICE"], seed=params.seed,
                                    batch_size=config["BATCH_SIZE"], on_epoch=on_epoch,
                                    precision=config["PRECISION"], pixel_cache=runtime.pixels,
                                    identity=lambda path: identities.get(os.path.normpath(path)),
                                    tensorboard_dir=board)
        except model_errors() as error:
            raise unprocessable(error, replacements) from error
        finally:
            release_freed_blocks()  # the training's tensors are freed: their pages go back (service.allocator)
        skipped = [{"url": name_urls(item["path"], replacements), "split": item["split"],
                    "reason": name_urls(item["reason"], replacements)} for item in result.skipped_files]
        runtime.metrics.count_skipped(len(skipped), stage="train")
        with ThreadPoolExecutor(1) as drawing:  # the curves (≈ 0.3 s of matplotlib) while the model uploads
            png = drawing.submit(provenance.curves_png, result, title=f"trained from {model.name}")
            written = publish_new_version(model, out_path)
            runtime.metrics.models_written.inc()
            response = dict(result.to_response())
            response["model_url"] = written.url
            try:
                sidecar = provenance.build_sidecar(
                    written=written, parent=model, parent_info=parent_info, labeled=labeled, labeled_objects=listing,
                    result=result, skipped_urls=skipped, duration_s=time.monotonic() - started,
                    version=runtime.version)
                sidecar.update(params.provenance or {})  # e.g. "labelstudio": its project and annotations
                sidecar["parent"]["sha256"] = runtime.scorers.digest(model_path)
                sidecar["model_sha256"] = runtime.scorers.digest(out_path)
                if board is not None:
                    sidecar["tensorboard"] = (board if config["TENSORBOARD_DIR"] is not None  # written in place
                                              else provenance.upload_tensorboard(written, board))
                provenance.write_beside(written, sidecar, png.result(), tmp)
            except Exception:  # noqa: BLE001 - the model is written; a missing sidecar must not fail /train
                log.exception("train: could not write the provenance sidecar of %s", written.url)
        log.info("train: wrote %s in %.1f s", written.url, time.monotonic() - started)
        return response
