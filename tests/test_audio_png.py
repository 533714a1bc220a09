"""audio.png.encode_png: PNGs that PIL and torchvision (the service's two PNG decoders) read back to the
same pixels, for random pictures of odd sizes and for a real spectrogram."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import decode_png

from audio import spectrogram
from audio.png import encode_png
from repo_data import AUDIO_DIR


def _pictures():
    rng = np.random.default_rng(7)
    yield rng.integers(0, 256, (37, 53, 4), dtype=np.uint8)  # noise: every filter difference wraps somewhere
    yield np.repeat(rng.integers(0, 256, (5, 1, 4), dtype=np.uint8), 9, axis=1).repeat(3, axis=0)  # blocks
    yield rng.integers(0, 256, (1, 1, 4), dtype=np.uint8)
    yield spectrogram.pixels_from_file(sorted(AUDIO_DIR.glob("mp3/*/*.mp3"))[0])


@pytest.mark.parametrize("index", range(4))
def test_pil_and_torchvision_read_back_the_same_pixels(index):
    pixels = list(_pictures())[index]
    data = encode_png(pixels)
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.mode == "RGBA" and image.size == (pixels.shape[1], pixels.shape[0])
    assert np.array_equal(np.asarray(image), pixels)
    decoded = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8)).permute(1, 2, 0).numpy()
    assert np.array_equal(decoded, pixels)


def test_a_spectrogram_png_is_small_and_bad_arrays_are_refused():
    pixels = list(_pictures())[3]
    assert len(encode_png(pixels)) < 100_000  # the repeated rows filter to zeros (raw: 1.5 MB)
    for bad in (pixels[..., :3], pixels.astype(np.int16), pixels[0], np.zeros((0, 4, 4), np.uint8)):
        with pytest.raises(ValueError, match="encode_png wants"):
            encode_png(bad)
