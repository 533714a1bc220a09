"""training.augment reproduces Keras ImageDataGenerator(shear_range=0.2, zoom_range=0.2).

Measured against tf_keras apply_affine_transform (scipy) on a real 607×617 spectrogram:
mean |Δ| ≈ 2e-7, max |Δ| ≈ 4e-5 (float32 sampling grid); on 67×83, max |Δ| ≈ 3e-6.
"""

from __future__ import annotations

import os

import torch

import numpy as np
import pytest

os.environ["TF_USE_LEGACY_KERAS"] = "1"

from training.augment import (apply_shear_zoom, keras_affine_matrices, random_shear_zoom,
                              random_shear_zoom_params)
from scoring.images import load_image

from repo_data import SAMPLE_DIR as ORCASOUND  # sample_data/orcasound, in the repository

TRANSFORMS = [(0.2, 0.8, 1.2), (-0.15, 1.1, 0.85), (0.0, 1.2, 1.2), (0.1, 1.0, 1.0), (-0.2, 0.93, 1.17)]


def real_image(rows, cols) -> np.ndarray:
    return load_image(sorted(ORCASOUND.glob("train/calls/*.png"))[0], rows, cols)


def keras_transform(x: np.ndarray, shear, zx, zy) -> np.ndarray:
    """What ImageDataGenerator.apply_transform does: on 0..255 values, rescaled afterwards."""
    from tf_keras.src.preprocessing.image import apply_affine_transform

    out = apply_affine_transform(x * 255, shear=shear, zx=zx, zy=zy, row_axis=0, col_axis=1,
                                 channel_axis=2, fill_mode="nearest", order=1)
    return out * np.float32(1 / 255)


@pytest.mark.slow
@pytest.mark.parametrize("rows,cols", [(607, 617), (67, 83)])
def test_shear_zoom_matches_keras_apply_affine_transform(rows, cols):
    import scipy.ndimage  # noqa: F401  (tf_keras' apply_affine_transform needs it; pinned: missing, the test fails)
    x = real_image(rows, cols)
    batch = torch.from_numpy(np.stack([x] * len(TRANSFORMS)))
    shear, zx, zy = (torch.tensor(v, dtype=torch.float64) for v in zip(*TRANSFORMS))
    ours = apply_shear_zoom(batch, shear, zx, zy).numpy()
    for i, (s, a, b) in enumerate(TRANSFORMS):
        expected = keras_transform(x, s, a, b)
        diff = np.abs(ours[i] - expected)
        assert diff.mean() < 1e-5, (s, a, b, diff.mean())
        assert diff.max() < 1e-3, (s, a, b, diff.max())


def test_affine_matrices_are_the_ones_keras_hands_to_scipy(monkeypatch):
    """Without scipy: capture the matrix and offset tf_keras passes to ndimage.affine_transform."""
    from tf_keras.src.preprocessing import image as keras_image

    captured = []

    class FakeInterpolation:
        @staticmethod
        def affine_transform(channel, matrix, offset, **kwargs):
            captured.append((np.array(matrix), np.array(offset), kwargs))
            return channel

    class FakeNdimage:
        interpolation = FakeInterpolation

    monkeypatch.setattr(keras_image, "scipy", object())
    monkeypatch.setattr(keras_image, "ndimage", FakeNdimage)
    rows, cols = 67, 83
    for shear, zx, zy in TRANSFORMS[:3]:
        captured.clear()
        keras_image.apply_affine_transform(np.zeros((rows, cols, 3), np.float32), shear=shear, zx=zx, zy=zy,
                                           row_axis=0, col_axis=1, channel_axis=2)
        matrix, offset, kwargs = captured[0]
        assert kwargs["order"] == 1 and kwargs["mode"] == "nearest"
        ours = keras_affine_matrices(torch.tensor([shear], dtype=torch.float64), torch.tensor([zx], dtype=torch.float64),
                                     torch.tensor([zy], dtype=torch.float64), rows, cols)[0]
        np.testing.assert_allclose(ours[:, :2].numpy(), matrix, rtol=0, atol=1e-12)
        np.testing.assert_allclose(ours[:, 2].numpy(), offset, rtol=0, atol=1e-12)


def test_identity_parameters_return_the_image_unchanged():
    x = torch.rand(3, 67, 83, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(apply_shear_zoom(x, 0.0, 1.0, 1.0), x)
    mixed = apply_shear_zoom(x, torch.tensor([0.0, 0.2, 0.0]), torch.tensor([1.0, 1.1, 1.0]),
                             torch.tensor([1.0, 0.9, 1.0]))
    assert torch.equal(mixed[0], x[0]) and torch.equal(mixed[2], x[2])
    assert not torch.equal(mixed[1], x[1])


def test_random_parameters_follow_keras_ranges_and_the_generator():
    shear, zx, zy = random_shear_zoom_params(20000, torch.Generator().manual_seed(1))
    assert shear.abs().max() <= 0.2 and shear.min() < -0.19 and shear.max() > 0.19  # degrees
    for zoom in (zx, zy):
        assert zoom.min() >= 0.8 and zoom.max() <= 1.2 and zoom.min() < 0.81 and zoom.max() > 1.19
    assert abs(float(torch.corrcoef(torch.stack([zx, zy]))[0, 1])) < 0.05  # drawn independently
    x = torch.rand(4, 20, 30, 3, generator=torch.Generator().manual_seed(0))
    a = random_shear_zoom(x, torch.Generator().manual_seed(7))
    b = random_shear_zoom(x, torch.Generator().manual_seed(7))
    c = random_shear_zoom(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == x.dtype
