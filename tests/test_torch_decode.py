"""scoring.torch_decode: torchvision's PNG decoding gives the pixels of images.decode_image bit for bit,
hands every other kind of image to it, and names unreadable files; /predict's stream takes it."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scoring.errors import ImageError
from scoring.images import decode_image
from scoring.stream import stream_batches
from scoring.torch_decode import decode_png_torch, is_plain_png, nearest_index_maps

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data" / "orcasound"
PNGS = sorted(SAMPLE.glob("*/*/*.png"))
SIZES = [(607, 617), (67, 83), (480, 640), (1000, 300), (2, 1)]


@pytest.mark.parametrize("rows, cols", SIZES)
def test_real_spectrograms_decode_bit_identically(rows, cols):
    for path in PNGS:
        np.testing.assert_array_equal(decode_png_torch(path, rows, cols), decode_image(path, rows, cols))
    data = PNGS[0].read_bytes()
    np.testing.assert_array_equal(decode_png_torch(data, rows, cols), decode_image(data, rows, cols))


def test_index_maps_are_pils_nearest_for_odd_sizes():
    rng = np.random.default_rng(0)
    for width, height, cols, rows in [(640, 480, 617, 607), (7, 5, 3, 11), (1, 1, 4, 4), (97, 13, 96, 14)]:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        expected = np.asarray(Image.fromarray(pixels).resize((cols, rows), Image.Resampling.NEAREST))
        down, across = nearest_index_maps(width, height, cols, rows)
        np.testing.assert_array_equal(pixels[down.numpy()][:, across.numpy()], expected)


def png_16bit_rgb(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit RGB PNG written by hand (PIL cannot write one)."""
    height, width, _ = pixels.shape

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_other_kinds_of_images_go_to_pil_and_agree(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    cases = {
        "palette.png": Image.fromarray(rgb).convert("P"),
        "grey.png": Image.fromarray(rgb).convert("L"),
        "grey_alpha.png": Image.fromarray(rgb).convert("LA"),
        "photo.jpg": Image.fromarray(rgb),
    }
    for name, image in cases.items():
        image.save(tmp_path / name)
    png_16bit_rgb(tmp_path / "deep.png", rng.integers(0, 65536, (30, 40, 3)))
    Image.fromarray(rgb).save(tmp_path / "rgb.png")  # 8-bit RGB without alpha: torchvision's
    for path in sorted(tmp_path.iterdir()):
        assert is_plain_png(path.read_bytes()) == (path.name == "rgb.png"), path.name
        np.testing.assert_array_equal(decode_png_torch(path, 23, 51), decode_image(path, 23, 51))


def test_unreadable_files_raise_image_error_naming_them(tmp_path):
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(PNGS[0].read_bytes()[:5000])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(PNGS[0].read_bytes()[:33] + b"\0" * 400)
    for path in (truncated, garbage):
        with pytest.raises(ImageError, match=path.name):
            decode_png_torch(path, 10, 12)
    with pytest.raises(ImageError, match="does not exist"):
        decode_png_torch(tmp_path / "missing.png", 10, 12)


def test_stream_with_torchvision_decoding_skips_what_pil_skips(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    items = [PNGS[0], bad, PNGS[1]]
    streams = [list(stream_batches(items, None, 20, 30, 8, skip_unreadable=True, max_pixels=10**7, decode=d))
               for d in (decode_image, decode_png_torch)]
    for pil, torchvision in zip(*streams):
        assert pil.items == torchvision.items == [PNGS[0], PNGS[1]]
        assert [item for item, _ in torchvision.skipped] == [bad]
        np.testing.assert_array_equal(pil.pixels, torchvision.pixels)
