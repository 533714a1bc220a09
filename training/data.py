"""The labeled folder: which files are which class, decoded once and kept as uint8.

Layout (what the service downloads from `labeled_url`): `train/<class>/*.png` and
`validation/<class>/*.png`; other top-level folders (`mp3/`) are ignored. Class index = position
of the folder name in sorted order (calls = 0, nocalls = 1), as Keras' flow_from_directory.
.png/.jpg/.jpeg files count, and audio clips (.mp3/.wav/.flac), which train on their 2020
spectrogram drawn straight to the same pixels as its PNG (`scoring.clips`).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scoring.clips import is_audio, list_clips
from scoring.errors import ImageError
from scoring.images import decode_image
from scoring.pixel_cache import decoder_name, is_tensor

from .errors import TrainingError


@dataclass
class Split:
    """One split (train or validation): paths, labels and, once `decode`d, uint8 pixels (N, rows, cols, 3):
    numpy, or a tensor on the training device (`decode_split` with a device tier)."""

    name: str
    paths: list[Path]
    labels: np.ndarray  # int64, class index per path
    pixels: object = None  # np.ndarray | torch.Tensor | None
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason) dropped by decode_split

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self, n_classes: int) -> list[int]:
        return np.bincount(self.labels, minlength=n_classes).tolist()


def _class_folders(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        return []
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_classes(labeled_dir: str | os.PathLike) -> list[str]:
    """Sorted names of the class folders under train/ and validation/ that hold at least one image or clip."""
    root = Path(labeled_dir)
    names = set()
    for split in ("train", "validation"):
        for name in _class_folders(root / split):
            if list_clips(root / split / name):
                names.add(name)
    return sorted(names)


def list_split(labeled_dir: str | os.PathLike, split: str, classes: list[str]) -> Split:
    root = Path(labeled_dir) / split
    paths, labels = [], []
    for index, name in enumerate(classes):
        files = list_clips(root / name)
        paths.extend(files)
        labels.extend([index] * len(files))
    return Split(split, paths, np.asarray(labels, dtype=np.int64))


def load_labeled(labeled_dir: str | os.PathLike) -> tuple[list[str], Split, Split]:
    """(class names, train split, validation split), checked: TrainingError when training cannot work."""
    root = Path(labeled_dir)
    if not (root / "train").is_dir():
        raise TrainingError(f"labeled data has no train/ folder (looked in {root})")
    if not (root / "validation").is_dir():
        raise TrainingError(f"labeled data has no validation/ folder (looked in {root})")
    classes = find_classes(root)
    train, validation = list_split(root, "train", classes), list_split(root, "validation", classes)
    if len(train) == 0:
        raise TrainingError(f"the training set is empty: no .png/.jpg/.jpeg/.mp3/.wav/.flac files under "
                            f"{root / 'train'}/<class>/")
    if len(validation) == 0:
        raise TrainingError(f"the validation set is empty: no .png/.jpg/.jpeg/.mp3/.wav/.flac files under "
                            f"{root / 'validation'}/<class>/")
    if len(classes) != 2:
        raise TrainingError(f"a binary model needs images of exactly 2 classes, found {len(classes)}: {classes}")
    missing = [name for name, count in zip(classes, train.class_counts(2)) if count == 0]
    if missing:
        raise TrainingError(f"only one class present in the training set: no images of {missing[0]!r} "
                            f"under {root / 'train' / missing[0]}")
    return classes, train, validation


def decode_split(split: Split, rows: int, cols: int, workers: int | None = None,
                 skip_corrupt: bool = False, cache=None, identity=None) -> Split:
    """Decode every file of the split once (threads: PIL releases the GIL) into `split.pixels`; an
    audio clip is drawn as its spectrogram (one at a time on the CPU threads; counted as the cache's
    "render" event).

    A file that is not a readable image (or audio that gives no spectrogram) raises TrainingError naming it, or, with `skip_corrupt`,
    is dropped from the split (paths, labels) and recorded in `split.skipped` as (path, reason).
    `cache` (a `scoring.pixel_cache.PixelCache`) with `identity(path)` (the identity of the file's
    bytes, or None): files found there are not decoded, files decoded are stored. `split.pixels` is a
    numpy array (N, rows, cols, 3), or, where the cache keeps a device tier, a uint8 tensor on that
    device (the training set then never leaves the GPU).
    """
    from scoring.stream import decode_checked, decode_sized

    workers = workers or min(8, os.cpu_count() or 1)
    tier = cache.device_tier if cache is not None else None
    pixels = [None] * len(split) if tier is not None else np.empty((len(split), rows, cols, 3), dtype=np.uint8)
    failures: dict[int, str] = {}
    decoder = decoder_name(decode_image)  # decode_sized's default decode: the pixel cache's PIL entries

    def decode(i: int) -> None:
        key = identity(split.paths[i]) if cache is not None and identity is not None else None
        found = cache.get(key, rows, cols, decoder=decoder) if key is not None else None
        if found is None:
            try:
                if key is None:
                    found = decode_checked(split.paths[i], rows, cols)  # an image, or audio's spectrogram
                else:
                    array, source_pixels = decode_sized(split.paths[i], rows, cols)
                    found = cache.put(key, rows, cols, array, source_pixels, decoder=decoder)
            except ImageError as e:
                if not skip_corrupt:
                    raise TrainingError(f"{split.name} image {split.paths[i]}: {e}") from e
                failures[i] = str(e)
                return
            if cache is not None and is_audio(split.paths[i]):
                cache.record("render", None, 1)
        pixels[i] = tier.to_device(found) if tier is not None and not is_tensor(found) else found

    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(decode, range(len(split))):
            pass
    keep = [i for i in range(len(split)) if i not in failures]
    if failures:
        split.skipped = [(split.paths[i], failures[i]) for i in sorted(failures)]
        split.paths = [split.paths[i] for i in keep]
        split.labels = split.labels[keep]
    if tier is not None:
        import torch

        split.pixels = (torch.stack([pixels[i] for i in keep]) if keep
                        else torch.empty((0, rows, cols, 3), dtype=torch.uint8, device=tier.device))
    else:
        split.pixels = pixels[keep] if failures else pixels
    return split


def check_decoded(classes: list[str], train: Split, validation: Split, root: str | os.PathLike) -> None:
    """After corrupt files were skipped: the sets must still be trainable (TrainingError, else)."""
    root = Path(root)
    if len(train) == 0:
        raise TrainingError(f"the training set is empty: no readable images under {root / 'train'}/<class>/")
    if len(validation) == 0:
        raise TrainingError(f"the validation set is empty: no readable images under {root / 'validation'}/<class>/")
    missing = [name for name, count in zip(classes, train.class_counts(len(classes))) if count == 0]
    if missing:
        raise TrainingError(f"only one class present in the training set: no readable images of {missing[0]!r} "
                            f"under {root / 'train' / missing[0]}")
