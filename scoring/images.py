"""Image decoding exactly as the original Keras pipeline did it.

tf_keras `ImageDataGenerator(rescale=1/255).flow_from_directory(target_size=(rows, cols))` does:
PIL open → convert("RGB") (the spectrograms are RGBA) → resize with NEAREST to
(width=cols, height=rows) → float32 array → `x *= 1/255`. That last step multiplies by
float32(1/255); it is *not* the same as dividing by 255 (126 of the 256 byte values differ in the
last bit), so `load_image` multiplies too. The original passed `(img_width, img_height)` as
`target_size`, i.e. img_width is the number of rows.
"""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
RESCALE = np.float32(1.0 / 255.0)  # what Keras' `x *= rescale` multiplies a float32 image by

Source = str | os.PathLike | bytes | bytearray | memoryview


def _describe(source: Source) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return os.fspath(source)


def read_source(source: Source) -> bytes:
    """The encoded image: `source` itself if it is bytes, else the file's content; ImageError naming a
    file that does not exist."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    try:
        with open(source, "rb") as f:
            return f.read()
    except FileNotFoundError as e:
        raise ImageError(f"image {os.fspath(source)} does not exist") from e


def decode_image(source: Source, rows: int, cols: int) -> np.ndarray:
    """The resized RGB pixels as uint8, shape (rows, cols, 3): `load_image` before the rescale.

    Training caches this form (a quarter of the float32 size). Raises ImageError naming the file.
    """
    try:
        img = Image.open(io.BytesIO(read_source(source)))
        with img:
            if img.mode != "RGB":
                img = img.convert("RGB")
            if img.size != (cols, rows):
                img = img.resize((cols, rows), Image.Resampling.NEAREST)
            array = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(f"{_describe(source)} is not a readable image: {e}") from e
    if array.shape != (rows, cols, 3):  # cannot happen after convert("RGB") + resize; be explicit
        raise ImageError(f"{_describe(source)} decoded to shape {array.shape}, expected {(rows, cols, 3)}")
    return array


decode_image.pixel_decoder = "pil"  # its name in the pixel cache's keys (pixel_cache.PIL_DECODER)


@functools.lru_cache(maxsize=64)
def nearest_indices(width: int, height: int, cols: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(source row of each output row, source column of each output column) of PIL's NEAREST resize
    from width x height to cols x rows, read off PIL itself (32-bit index images resized once), so a
    gather with them equals `Image.resize(..., NEAREST)`. Read-only int64 arrays, memoized."""
    across = Image.fromarray(np.arange(width, dtype=np.int32)[None, :], "I").resize((cols, 1), Image.Resampling.NEAREST)
    down = Image.fromarray(np.arange(height, dtype=np.int32)[:, None], "I").resize((1, rows), Image.Resampling.NEAREST)
    maps = (np.asarray(down, dtype=np.int64)[:, 0].copy(), np.asarray(across, dtype=np.int64)[0].copy())
    for a in maps:
        a.setflags(write=False)
    return maps


def to_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels → float32 in [0, 1], bit-identical to Keras' `x *= 1/255` on float32."""
    return pixels.astype(np.float32) * RESCALE


def load_image(source: Source, rows: int, cols: int) -> np.ndarray:
    """A path or encoded bytes → float32 (rows, cols, 3) in [0, 1], as tf_keras' pipeline makes it."""
    return to_float(decode_image(source, rows, cols))


def list_files(folder: str | os.PathLike, suffixes) -> list[Path]:
    """Files under `folder` whose suffix (any case) is one of `suffixes`, recursively, sorted by path;
    hidden files left out; [] when `folder` is not a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in suffixes and p.is_file() and not p.name.startswith("."))


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (.png/.jpg/.jpeg, any case) under `folder`, recursively, sorted by path."""
    return list_files(folder, IMAGE_EXTENSIONS)
