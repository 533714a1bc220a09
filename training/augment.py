"""Keras `ImageDataGenerator(shear_range=0.2, zoom_range=0.2)` on batches of torch tensors.

What tf_keras does per image (`get_random_transform` + `apply_affine_transform`):
- shear = uniform(-0.2, 0.2) *degrees* (converted with deg2rad), zx, zy = uniform(0.8, 1.2, 2);
- T = S @ Z with S = [[1, -sin s, 0], [0, cos s, 0], [0, 0, 1]], Z = diag(zx, zy, 1);
- T is centred with `transform_matrix_offset_center(T, h, w)` (offset h/2 - 0.5 on T's first
  coordinate, w/2 - 0.5 on its second), then its two coordinates are swapped (M' = P T P) and the
  result is handed to `scipy.ndimage.affine_transform(order=1, mode="nearest")`, which reads
  output pixel o from input position M'[:2, :2] @ o + M'[:2, 2] in (row, col) index space.
  Keras' centring uses the row count for the coordinate that ends up as the column after the swap
  (harmless for square images); it is reproduced here as it is, because that is what trained the
  existing models.

Here the same matrices are built in float64 and applied with `grid_sample` (bilinear,
`align_corners=True`, `padding_mode="border"`): bilinear on clamped coordinates is exactly what
scipy's order=1 with mode="nearest" computes, so the only difference is float32 rounding of the
sampling grid (its per-row and per-column terms are float64; only their sum is float32) (measured on a real 607×617 spectrogram: max abs diff ≈ 1e-5, see
tests/test_training_augment.py). Keras transforms 0..255 values and rescales afterwards; this
module works on the rescaled images (linear, so the same up to float rounding).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

SHEAR_RANGE = 0.2  # degrees, as Keras interprets shear_range
ZOOM_RANGE = 0.2   # zoom factors in [1 - 0.2, 1 + 0.2]


def random_shear_zoom_params(n: int, generator: torch.Generator | None = None,
                             shear_range: float = SHEAR_RANGE, zoom_range: float = ZOOM_RANGE):
    """(shear degrees, zx, zy), each a float64 CPU tensor of shape (n,), drawn like Keras does."""
    shear = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * shear_range
    low, high = 1 - zoom_range, 1 + zoom_range
    zoom = torch.rand(n, 2, generator=generator, dtype=torch.float64) * (high - low) + low
    return shear, zoom[:, 0], zoom[:, 1]


def keras_affine_matrices(shear, zx, zy, rows: int, cols: int) -> torch.Tensor:
    """(n, 2, 3) float64: the `final_affine_matrix | final_offset` Keras gives scipy, per image.

    Input position (row, col) of output pixel (i, j) = M[:, :2] @ (i, j) + M[:, 2].
    """
    shear = torch.as_tensor(shear, dtype=torch.float64).reshape(-1)
    zx = torch.as_tensor(zx, dtype=torch.float64).reshape(-1)
    zy = torch.as_tensor(zy, dtype=torch.float64).reshape(-1)
    n = shear.shape[0]
    s = torch.deg2rad(shear)
    shear_m = torch.zeros(n, 3, 3, dtype=torch.float64)
    shear_m[:, 0, 0] = 1
    shear_m[:, 0, 1] = -torch.sin(s)
    shear_m[:, 1, 1] = torch.cos(s)
    shear_m[:, 2, 2] = 1
    zoom_m = torch.zeros(n, 3, 3, dtype=torch.float64)
    zoom_m[:, 0, 0] = zx
    zoom_m[:, 1, 1] = zy
    zoom_m[:, 2, 2] = 1
    transform = shear_m @ zoom_m
    # transform_matrix_offset_center(transform, h=rows, w=cols)
    o_x, o_y = rows / 2 - 0.5, cols / 2 - 0.5
    offset = torch.tensor([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]], dtype=torch.float64)
    reset = torch.tensor([[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]], dtype=torch.float64)
    transform = offset @ transform @ reset
    # col_axis > row_axis: swap the x and y coordinates (M' = P M P)
    transform = transform[:, [1, 0, 2]][:, :, [1, 0, 2]]
    return transform[:, :2, :]


def affine_transform(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """scipy.ndimage.affine_transform(order=1, mode="nearest") per channel, on NHWC float images.

    `matrices` (n, 2, 3) as from `keras_affine_matrices`, in (row, col) index space.
    """
    n, rows, cols, _ = images.shape
    # A sampling position is a(row) + b(col): the per-row and per-column terms are computed in
    # float64 and already normalized (align_corners=True: -1 and +1 are the centres of the first and
    # last pixel), so the one full-size pass adds two numbers in [-1.2, 1.2] in the images' dtype
    # (float32: < 1e-4 pixel off at 617 columns) and writes them straight into the grid.
    m = matrices.to(dtype=torch.float64, device="cpu")
    i = torch.arange(rows, dtype=torch.float64).view(1, rows)
    j = torch.arange(cols, dtype=torch.float64).view(1, cols)
    row_scale, col_scale = 2 / max(rows - 1, 1), 2 / max(cols - 1, 1)
    x_of_row = (m[:, 1, 0:1] * i + m[:, 1, 2:3]) * col_scale - 1  # grid x = input column
    x_of_col = m[:, 1, 1:2] * j * col_scale
    y_of_row = (m[:, 0, 0:1] * i + m[:, 0, 2:3]) * row_scale - 1  # grid y = input row
    y_of_col = m[:, 0, 1:2] * j * row_scale
    as_images = dict(dtype=images.dtype, device=images.device)
    grid = torch.empty(n, rows, cols, 2, **as_images)
    torch.add(x_of_row.to(**as_images).view(n, rows, 1), x_of_col.to(**as_images).view(n, 1, cols),
              out=grid[..., 0])
    torch.add(y_of_row.to(**as_images).view(n, rows, 1), y_of_col.to(**as_images).view(n, 1, cols),
              out=grid[..., 1])
    out = F.grid_sample(images.permute(0, 3, 1, 2), grid, mode="bilinear",
                        padding_mode="border", align_corners=True)
    return out.permute(0, 2, 3, 1).contiguous()  # NHWC memory: the model then sees channels_last


def apply_shear_zoom(images: torch.Tensor, shear, zx, zy) -> torch.Tensor:
    """Keras' apply_affine_transform(shear=shear, zx=zx, zy=zy) on each NHWC image of the batch.

    Images whose parameters are the identity come back unchanged, bit for bit (Keras skips them too).
    """
    n, rows, cols, _ = images.shape
    shear = torch.as_tensor(shear, dtype=torch.float64).reshape(-1).expand(n)
    zx = torch.as_tensor(zx, dtype=torch.float64).reshape(-1).expand(n)
    zy = torch.as_tensor(zy, dtype=torch.float64).reshape(-1).expand(n)
    identity = (shear == 0) & (zx == 1) & (zy == 1)
    if bool(identity.all()):
        return images
    out = affine_transform(images, keras_affine_matrices(shear, zx, zy, rows, cols))
    if bool(identity.any()):
        keep = identity.to(images.device).view(n, 1, 1, 1)
        out = torch.where(keep, images, out)
    return out


def random_shear_zoom(images: torch.Tensor, generator: torch.Generator | None = None,
                      shear_range: float = SHEAR_RANGE, zoom_range: float = ZOOM_RANGE) -> torch.Tensor:
    """A fresh random shear and zoom per image, as ImageDataGenerator(shear_range, zoom_range)."""
    if shear_range == 0 and zoom_range == 0:
        return images
    shear, zx, zy = random_shear_zoom_params(images.shape[0], generator, shear_range, zoom_range)
    return apply_shear_zoom(images, shear, zx, zy)


__all__ = ["apply_shear_zoom", "affine_transform", "keras_affine_matrices", "random_shear_zoom",
           "random_shear_zoom_params"]
