"""What /train and /predict share about datasets in storage: listing them, downloading many objects
at once, recognising images and audio clips, and error messages that name storage URLs instead of
scratch paths."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from scoring.clips import AUDIO_EXTENSIONS, CLIP_EXTENSIONS  # what `training` and `scoring` read
from scoring.images import IMAGE_EXTENSIONS

from .errors import NotFound, Unprocessable
from .storage import Location, ObjectInfo


def is_image(key: str) -> bool:
    return key.lower().endswith(IMAGE_EXTENSIONS)


def is_audio(key: str) -> bool:
    return key.lower().endswith(AUDIO_EXTENSIONS)


def is_clip(key: str) -> bool:
    """An image or an audio clip: what a labeled set's `train/<class>/` and `validation/<class>/` may hold."""
    return key.lower().endswith(CLIP_EXTENSIONS)


def safe_parts(relative: str) -> list[str] | None:
    """The '/'-separated parts of a key below a prefix, or None if one is empty, '.' or '..'."""
    parts = relative.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return parts


def list_dataset(location: Location, param: str) -> list[ObjectInfo]:
    """Every object under a dataset URL; 404 naming `param` when nothing is there."""
    try:
        objects = location.storage.list(location.prefix)
    except NotFound:
        raise NotFound(f"{param} not found: {location.url}") from None
    if not objects:
        raise NotFound(f"{param} not found (nothing stored under it): {location.url}")
    return objects


def each_in_parallel(function, items: list, threads: int) -> None:
    """`function(item)` for every item on up to `threads` threads; the first failure propagates."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(items)))) as pool:
        for _ in pool.map(function, items):
            pass


def name_urls(message: str, replacements: dict[str, str]) -> str:
    """`message` with local scratch paths replaced by the storage URLs they came from."""
    for local, url in sorted(replacements.items(), key=lambda kv: -len(kv[0])):
        message = message.replace(local, url)
    return message


def unprocessable(error: Exception, replacements: dict[str, str]) -> Unprocessable:
    """A 422 whose message names storage URLs, not our temporary paths."""
    return Unprocessable(name_urls(str(error), replacements))


def model_errors() -> tuple[type[Exception], ...]:
    """The errors of `training` and `conversion` that mean "this model or data cannot be used" (422)."""
    from conversion.errors import ConversionError
    from scoring.errors import ImageError, ScoringError

    return (ScoringError, ImageError, ConversionError)
