"""PNG decoding with torchvision for the CUDA scoring path: the pixels of `images.decode_image`, bit for
bit, with less CPU per image and no Python lock held while libpng inflates.

On a GPU machine /predict is bound by decoding (bench/README.md: ≈ 900 images/s on 16 cores with PIL,
while the GPU scores ≈ 9,500/s). `decode_png_torch(source, rows, cols)`:
- takes 8-bit RGB and RGBA PNGs (what Orcasound's spectrograms are); anything else (palette, grey,
  16-bit, JPEG, not an image) and any PNG libpng refuses go to `images.decode_image`, so pixels,
  skips and their reasons never differ from the PIL path;
- decodes with `torchvision.io.decode_png(mode=RGB)`: PNG is lossless, and dropping alpha is what
  PIL's convert("RGB") does for RGBA;
- resizes with PIL's own NEAREST mapping (`images.nearest_indices`): the source row and column of every output pixel are read
  off PIL by resizing an image of indices once per (source size, target size), then gathered.
Imports torch: the CPU service does not use it (it scores with ONNX Runtime and decodes with PIL).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_png

from .images import decode_image, nearest_indices, read_source

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_plain_png(data: bytes) -> bool:
    """An 8-bit RGB (colour type 2) or RGBA (6) PNG, judged from its IHDR chunk."""
    return (len(data) > 29 and data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
            and data[24] == 8 and data[25] in (2, 6))


@functools.lru_cache(maxsize=64)
def nearest_index_maps(width: int, height: int, cols: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`images.nearest_indices` as tensors: PIL's NEAREST mapping from width x height to cols x rows."""
    down, across = nearest_indices(width, height, cols, rows)
    return torch.from_numpy(down.copy()), torch.from_numpy(across.copy())


def decode_png_torch(source, rows: int, cols: int) -> np.ndarray:
    """uint8 (rows, cols, 3), identical to `images.decode_image(source, rows, cols)`, and its ImageError
    (naming the file) when the image cannot be decoded."""
    data = read_source(source)
    if not is_plain_png(data):
        return decode_image(source, rows, cols)
    try:
        chw = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:  # corrupt or truncated: PIL decides, so both paths skip alike, for the same reason
        return decode_image(source, rows, cols)
    if chw.dtype != torch.uint8 or chw.dim() != 3 or chw.shape[0] != 3:
        return decode_image(source, rows, cols)
    hwc = chw.permute(1, 2, 0)
    height, width = hwc.shape[0], hwc.shape[1]
    if (height, width) != (rows, cols):
        down, across = nearest_index_maps(width, height, cols, rows)
        hwc = hwc.index_select(0, down).index_select(1, across)
    return np.ascontiguousarray(hwc.numpy())


decode_png_torch.pixel_decoder = "torchvision"  # its name in the pixel cache's keys (pixel_cache.TORCHVISION_DECODER)
