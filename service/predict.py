"""The work behind /predict: score every unlabeled spectrogram with the runtime's scorer for the model
(ONNX Runtime on the CPU, torch on CUDA: `scoring.scorers`), and describe each clip as the
original did. A clip without `spectrograms/<stem>.png` is scored from its audio, `mp3/<stem>.mp3`
(.wav, .flac): its 2020 spectrogram drawn straight to the model's input (`scoring.clips`), the same
pixels as that PNG; the answer is the same list in the same order either way.

The model comes from the model cache (URL + ETag), S3 clips from the prefix's local mirrors of
`spectrograms/` and `mp3/` (`service.cache`), streamed: downloads and decoding run on threads a few batches ahead of the
scorer (`scoring.stream`). Unreadable images, images over ORCA_MAX_PIXELS and audio that gives no
spectrogram (corrupt, not audio, silent, not 3 s) are skipped, logged and listed in the answer's `skipped`. Clips scored before by the same model file are answered from
the score cache without being read again. The mirror follows deletions, so a clip deleted from the
unlabeled set is never scored again.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import posixpath
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from scoring.clips import AUDIO_EXTENSIONS, clip_identity
from scoring.stream import stream_batches

from .cache import ScoreCache
from .datasets import is_audio, is_image, list_dataset, model_errors, name_urls, unprocessable
from .nodes import describe_clip
from .params import PredictParams
from .storage import LocalStorage, Location, ObjectInfo

log = logging.getLogger(__name__)
CLIENT_AUDIO_URL_LIMIT = 100  # the original client stores audio_url in a VARCHAR(100)


class PredictItems(list):
    """The /predict answer: a plain list of items (JSON as is), plus `skipped`, the files not scored:
    [{"url": storage URL, "reason": why}] (corrupt or not an image, or over ORCA_MAX_PIXELS); and, for
    work that follows on the same clips (/embed, /query), `clips`, the listing scored from ((file name,
    ObjectInfo), sorted by name) and `names`, the file name of each item."""

    def __init__(self, items=(), skipped=(), clips=(), names=()):
        super().__init__(items)
        self.skipped = list(skipped)
        self.clips = list(clips)
        self.names = list(names)


def clip_item(unlabeled: Location, name: str) -> dict:
    """/predict's fields of the clip `spectrograms/<name>` (or `mp3/<name>`), but its score: where its audio is
    (the storage's public URL, S3's or for local data the service's own `/clips/…`, of the audio file scored,
    `mp3/<name>`, `.wav` and `.flac` included; for a spectrogram, `mp3/<stem>.mp3`, as the original always
    answered), its node and time (`describe_clip`)."""
    stem = posixpath.splitext(name)[0]
    item = describe_clip(stem)
    audio = name if is_audio(name) else f"{stem}.mp3"
    item["audio_url"] = unlabeled.storage.public_url(f"{unlabeled.prefix}mp3/{audio}")
    return item


def _in_folder(info: ObjectInfo, folder: str) -> str | None:
    """The file name of `info` directly in `folder` (a key prefix), or None (elsewhere, nested, hidden)."""
    relative = info.key[len(folder):] if info.key.startswith(folder) else None
    if relative is None or "/" in relative or not relative or relative.startswith("."):
        return None
    return relative


def sort_name(name: str) -> str:
    """What /predict sorts a clip by: its spectrogram's file name (`<stem>.png` for a clip scored from its
    audio), so an answer is in the same order whether a clip came from its PNG or its mp3."""
    return posixpath.splitext(name)[0] + ".png" if is_audio(name) else name


def unlabeled_clips(unlabeled: Location) -> list[tuple[str, ObjectInfo]]:
    """(file name, object) of each clip under `unlabeled`, sorted by name: `spectrograms/<stem>.<png|jpg>`,
    and for a stem without a spectrogram its audio `mp3/<stem>.<mp3|wav|flac>` (the first of those
    suffixes when several are there); the rest of the prefix is ignored."""
    spectrograms, audio = unlabeled.prefix + "spectrograms/", unlabeled.prefix + "mp3/"
    pictures, sounds = [], {}
    for info in list_dataset(unlabeled, "unlabeled_url"):
        name = _in_folder(info, spectrograms)
        if name is not None and is_image(name):
            pictures.append((name, info))
            continue
        name = _in_folder(info, audio)
        if name is not None and is_audio(name):
            stem, suffix = posixpath.splitext(name)
            known = sounds.get(stem)
            if known is None or AUDIO_EXTENSIONS.index(suffix.lower()) < AUDIO_EXTENSIONS.index(
                    posixpath.splitext(known[0])[1].lower()):
                sounds[stem] = (name, info)
    drawn = {posixpath.splitext(name)[0] for name, _ in pictures}
    clips = pictures + [clip for stem, clip in sounds.items() if stem not in drawn]
    clips.sort(key=lambda clip: sort_name(clip[0]))  # sorted by file name, as the original returned them
    return clips


def pixel_identity(clip: tuple[str, ObjectInfo]) -> tuple | None:
    """The identity of a clip's bytes for the pixel cache: ETag and size on S3, the file's stat locally
    (and, for audio, the spectrogram renderer's key: `scoring.clips.clip_identity`)."""
    info = clip[1]
    return clip_identity(info.key, info.size, info.etag)


@contextlib.contextmanager
def clip_files(runtime, unlabeled: Location, listing, replacements: dict):
    """`fetch(clip) → local path` for clips of `unlabeled_clips`: the file itself for local storage, else
    the S3 mirrors of `spectrograms/` and `mp3/` (`service.cache.PrefixMirror`), each kept in step with
    `listing` (every clip listed, scored or not: a clip deleted from the bucket leaves its mirror);
    `replacements` gains each mirror's folder → its storage URL (error messages name the bucket)."""
    if isinstance(unlabeled.storage, LocalStorage):
        yield lambda clip: clip[1].key
        return
    with contextlib.ExitStack() as stack:
        fetchers = {}
        for folder, wanted in (("spectrograms/", lambda n: not is_audio(n)), ("mp3/", is_audio)):
            names = {name: info for name, info in listing if wanted(name)}
            mirror = runtime.cache.mirror(unlabeled, unlabeled.prefix + folder)
            if not names and not mirror.folder.exists():
                continue  # no audio in this set, and none mirrored before: no folder made
            replacements[str(mirror.folder) + os.sep] = unlabeled.prefix_url + folder
            fetchers[folder] = (stack.enter_context(mirror.synced(names)), mirror)

        def fetch(clip):
            return fetchers["mp3/" if is_audio(clip[0]) else "spectrograms/"][0](clip[0])

        fetch.mirrors = {folder: mirror for folder, (_, mirror) in fetchers.items()}  # for the log
        yield fetch


def run_predict(runtime, params: PredictParams, on_progress=None) -> PredictItems:
    """Score every unlabeled spectrogram (see the module docstring). `on_progress(done, total)`
    (optional) follows the scoring, batch by batch."""
    config = runtime.config
    model = runtime.locate(params.model_url, "model_url")
    unlabeled = runtime.storage.serving(params.service_url).locate(params.unlabeled_url, "unlabeled_url")
    started = time.monotonic()
    model_path = runtime.cache.model(model)
    clips = unlabeled_clips(unlabeled)
    if not clips:
        return PredictItems()
    replacements = {model_path: model.url}
    model_scores = runtime.scores.table(runtime.scorers.digest(model_path), params.rows, params.cols)
    values: dict[str, float] = {}  # file name → score: cached ones first, then the rest as scored
    if model_scores is not None:
        for name, info in clips:
            hit = model_scores.get(ScoreCache.identity(info))
            if hit is not None:
                values[name] = hit
    pending = [clip for clip in clips if clip[0] not in values]
    skipped = []
    try:
        with clip_files(runtime, unlabeled, clips, replacements) as fetch, ThreadPoolExecutor(1) as starter, \
                contextlib.ExitStack() as streaming:
            mirrors = getattr(fetch, "mirrors", None)
            batches: Iterable = ()
            if pending:
                # A model seen for the first time is exported to ONNX or loaded onto the device (seconds):
                # meanwhile the stream downloads and decodes (draws, for audio) the first batches.
                getting = starter.submit(runtime.scorers.get, model_path)
                stream = streaming.enter_context(contextlib.closing(stream_batches(
                    pending, fetch, params.rows, params.cols, runtime.scorers.stream_batch(config["BATCH_SIZE"]),
                    workers=config["DOWNLOAD_THREADS"], skip_unreadable=True, max_pixels=config["MAX_PIXELS"],
                    decode=runtime.scorers.decode, cache=runtime.pixels, identity=pixel_identity)))
                first = next(stream, None)
                scorer = getting.result()
                scorer.check_size(params.rows, params.cols)
                batches = itertools.chain([first] if first is not None else [], stream)
            for batch in batches:
                for (name, info), reason in batch.skipped:
                    url = unlabeled.storage.url(info.key)
                    reason = name_urls(reason, replacements)
                    log.warning("predict: skipped %s: %s", url, reason)
                    skipped.append({"url": url, "reason": reason})
                if batch.items:
                    for (name, info), value in zip(batch.items, scorer.score_pixels(batch.pixels)):
                        values[name] = float(value)
                        runtime.scores.store(model_scores, ScoreCache.identity(info), float(value))
                if on_progress is not None:
                    on_progress(len(values) + len(skipped), len(clips))
    except model_errors() as error:
        raise unprocessable(error, replacements) from error
    names = [name for name, _ in clips if name in values]  # sorted by file name, as the original returned them
    items = [dict(clip_item(unlabeled, name), predicted_value=values[name]) for name in names]
    too_long = sum(len(item["audio_url"]) > CLIENT_AUDIO_URL_LIMIT for item in items)
    if too_long:
        log.warning("predict: %d audio_url longer than %d characters (e.g. %s): the original client stores "
                    "them in a VARCHAR(%d)", too_long, CLIENT_AUDIO_URL_LIMIT,
                    next(i["audio_url"] for i in items if len(i["audio_url"]) > CLIENT_AUDIO_URL_LIMIT),
                    CLIENT_AUDIO_URL_LIMIT)
    if on_progress is not None and not pending:
        on_progress(len(clips), len(clips))
    log.info("predict: %d scored (%d from the score cache), %d skipped with %s in %.1f s%s", len(items),
             len(clips) - len(pending), len(skipped), runtime.scorers.backend, time.monotonic() - started,
             "".join(f" (mirror of {folder}: {m.downloaded} downloaded, {m.reused} reused, {m.removed} removed)"
                     for folder, m in (mirrors or {}).items()))
    return PredictItems(items, skipped, clips, names)
