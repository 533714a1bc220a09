"""scoring.images.load_image is the original tf_keras pipeline, bit for bit, and fails clearly."""

from __future__ import annotations

import os
from pathlib import Path

import torch  # noqa: F401  (before TensorFlow)

import numpy as np
import pytest

os.environ["TF_USE_LEGACY_KERAS"] = "1"

from scoring.errors import ImageError
from scoring.images import load_image
from scoring.images import decode_image, list_images

from repo_data import SAMPLE_DIR as ORCASOUND  # sample_data/orcasound, in the repository


def keras_flow(folder: Path, rows: int, cols: int):
    """(images, file paths) as the original's ImageDataGenerator(rescale=1/255).flow_from_directory."""
    from tf_keras.preprocessing.image import ImageDataGenerator

    flow = ImageDataGenerator(rescale=1.0 / 255).flow_from_directory(
        str(folder), target_size=(rows, cols), batch_size=1000, shuffle=False, class_mode="binary")
    images, _ = next(flow)
    return images, [Path(p) for p in flow.filepaths]


@pytest.mark.parametrize("rows,cols", [(607, 617), (67, 83), (480, 640)])
def test_load_image_is_bit_identical_to_keras_flow_from_directory(rows, cols):
    for split in ("train", "validation", "test"):
        expected, paths = keras_flow(ORCASOUND / split, rows, cols)
        assert len(paths) > 0
        ours = np.stack([load_image(p, rows, cols) for p in paths])
        assert ours.dtype == np.float32 and ours.shape == (len(paths), rows, cols, 3)
        np.testing.assert_array_equal(ours, expected)


def test_load_image_accepts_bytes_like_a_path():
    path = next(ORCASOUND.glob("train/calls/*.png"))
    np.testing.assert_array_equal(load_image(path.read_bytes(), 67, 83), load_image(path, 67, 83))
    np.testing.assert_array_equal(load_image(str(path), 67, 83), load_image(path, 67, 83))


def test_rescale_multiplies_by_float32_one_over_255_like_keras():
    """Keras' `x *= 1/255` on float32 differs from x / 255 in the last bit for 126 byte values."""
    from PIL import Image
    import io

    values = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    ours = load_image(buffer.getvalue(), 16, 16)
    keras = values.astype(np.float32)
    keras *= 1.0 / 255
    np.testing.assert_array_equal(ours, keras)


def test_corrupt_file_raises_image_error_naming_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ImageError, match="broken.png"):
        load_image(bad, 67, 83)
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(ImageError, match="notes.png"):
        load_image(text, 67, 83)
    with pytest.raises(ImageError, match="missing.png"):
        load_image(tmp_path / "missing.png", 67, 83)
    with pytest.raises(ImageError):
        load_image(b"garbage", 67, 83)
    assert issubclass(ImageError, ValueError)


def test_truncated_png_raises_image_error(tmp_path):
    path = next(ORCASOUND.glob("train/calls/*.png"))
    cut = tmp_path / "cut.png"
    cut.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ImageError, match="cut.png"):
        decode_image(cut, 67, 83)


def test_png_declaring_a_huge_size_raises_image_error_not_a_crash(tmp_path):
    """A few bytes that claim 20000x20000 pixels (over twice PIL's bomb limit): refused by PIL's header
    check, reported as an ImageError naming the file, so /train skips it instead of failing."""
    import struct
    import zlib

    from PIL import Image

    path = tmp_path / "bomb.png"
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", 20000, 20000)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # the chunk's CRC over type + data
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="bomb.png"):
        decode_image(path, 10, 12)


def test_list_images_counts_only_png_jpg_jpeg_sorted(tmp_path):
    for name in ("b.png", "a.PNG", "c.jpg", "d.jpeg", "e.mp3", "f.txt", ".hidden.png", "sub/g.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == [
        "a.PNG", "b.png", "c.jpg", "d.jpeg", "sub/g.png"]
    assert list_images(tmp_path / "nowhere") == []


def test_cached_uint8_pixels_become_the_same_floats_on_the_device():
    """Training caches decode_image's uint8 and rescales per batch (scoring.tensors.to_batch): same bits."""
    import torch

    from scoring.tensors import to_batch

    paths = sorted(ORCASOUND.glob("train/*/*.png"))[:4]
    pixels = np.stack([decode_image(p, 67, 83) for p in paths])
    batch = to_batch(pixels, torch.device("cpu"))
    assert batch.dtype == torch.float32
    np.testing.assert_array_equal(batch.numpy(), np.stack([load_image(p, 67, 83) for p in paths]))
