"""The 2020 picture: what matplotlib 3.2.2 drew for `imshow(D)` in a 10 x 9.8 in figure, axes hidden,
saved at dpi 80 with bbox_inches="tight", pad_inches=0: a 607 x 617 RGBA image.

* colour index: matplotlib's float64 chain for imshow of a float image (scale to 0.1..0.9 with the data's
  own min and max, nearest-neighbour resampling, scale back, Normalize(min, max), x 256, truncate; 1.0
  gives 255); a constant image gives index 0 everywhere, as matplotlib's Normalize does;
* colours: viridis' 256 colours from the installed matplotlib, (lut * 255).astype(uint8), truncated;
* layout: the 128 x 130 cells as blocks of 4 or 5 px (the boundaries `ROW_EDGES` / `COL_EDGES`, measured
  from the real 2020 PNGs, the same as matplotlib 3.2.2 draws for synthetic arrays); mel band 0 at the
  top; white columns 0-3 and rows 604-606; the left spine in column 4, black blended over the colour of
  frame 0 by Agg's plain-RGBA blender at coverage 228 (c -> c * 255 * 28 // 65508 per channel); the bottom
  spine in row 603: (27, 27, 27), (6, 6, 6) where the spines meet; alpha 255.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

__all__ = ["HEIGHT", "WIDTH", "ROWS", "COLS", "ROW_EDGES", "COL_EDGES", "viridis_bytes", "spine_over",
           "colour_index", "picture"]

HEIGHT, WIDTH = 607, 617
ROWS, COLS = 128, 130  # mel bands x frames of a 3-second clip
# Mel band i covers rows ROW_EDGES[i] .. ROW_EDGES[i + 1] - 1; frame j covers columns COL_EDGES[j] .. - 1.
ROW_EDGES = (0, 4, 8, 13, 18, 23, 27, 32, 37, 41, 46, 51, 56, 60, 65, 70, 74, 79, 84, 89, 93, 98, 103, 108, 112,
             117, 122, 126, 131, 136, 141, 145, 150, 155, 159, 164, 169, 174, 178, 183, 188, 192, 197, 202, 207,
             211, 216, 221, 225, 230, 235, 240, 244, 249, 254, 259, 263, 268, 273, 277, 282, 287, 292, 296, 301,
             306, 310, 315, 320, 325, 329, 334, 339, 343, 348, 353, 358, 362, 367, 372, 376, 381, 386, 391, 395,
             400, 405, 410, 414, 419, 424, 428, 433, 438, 443, 447, 452, 457, 461, 466, 471, 476, 480, 485, 490,
             494, 499, 504, 509, 513, 518, 523, 527, 532, 537, 542, 546, 551, 556, 561, 565, 570, 575, 579, 584,
             589, 594, 598, 603)
COL_EDGES = (5, 9, 13, 18, 23, 28, 32, 37, 42, 47, 51, 56, 61, 65, 70, 75, 80, 84, 89, 94, 98, 103, 108, 113, 117,
             122, 127, 132, 136, 141, 146, 150, 155, 160, 165, 169, 174, 179, 183, 188, 193, 198, 202, 207, 212,
             217, 221, 226, 231, 235, 240, 245, 250, 254, 259, 264, 268, 273, 278, 283, 287, 292, 297, 302, 306,
             311, 316, 320, 325, 330, 335, 339, 344, 349, 354, 358, 363, 368, 372, 377, 382, 387, 391, 396, 401,
             405, 410, 415, 420, 424, 429, 434, 439, 443, 448, 453, 457, 462, 467, 472, 476, 481, 486, 490, 495,
             500, 505, 509, 514, 519, 524, 528, 533, 538, 542, 547, 552, 557, 561, 566, 571, 575, 580, 585, 590,
             594, 599, 604, 609, 613, 617)
SPINE_ROW = 603
SPINE_COL = 4
SPINE_GREY = 27  # the bottom spine over white
CORNER_GREY = 6  # where the two spines meet
SPINE_COVERAGE = 228  # Agg's coverage of column 4 by the 0.8 pt black spine at dpi 80


@lru_cache(maxsize=1)
def viridis_bytes() -> np.ndarray:
    """(256, 3) uint8: matplotlib's viridis, (colours * 255).astype(uint8) as Colormap(bytes=True)."""
    from matplotlib import colormaps

    colours = np.asarray(colormaps["viridis"].colors, dtype=np.float64)
    if colours.shape != (256, 3):
        raise ValueError(f"viridis has {colours.shape[0]} colours, not 256")
    lut = (colours * 255).astype(np.uint8)
    lut.flags.writeable = False
    return lut


def spine_over(channel: np.ndarray) -> np.ndarray:
    """Agg's fixed_blender_rgba_plain, opaque black at coverage a over an opaque pixel c:
    ((0 - c*255) * a + (c*255 << 8)) // ((a + 255 << 8) - a*255) = c * 255 * (256 - a) // (65280 + a)."""
    c = np.asarray(channel, dtype=np.int64)
    a = SPINE_COVERAGE
    return ((c * 255 * (256 - a)) // (((a + 255) << 8) - a * 255)).astype(np.uint8)


def colour_index(D: torch.Tensor) -> torch.Tensor:
    """(B, rows, cols) float64 -> int64 colour indices 0..255, matplotlib 3.2.2's arithmetic for imshow of a
    float64 image with its default Normalize and a 256-colour map."""
    lo = D.amin(dim=(-2, -1), keepdim=True)
    hi = D.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    flat = span == 0
    safe = torch.where(flat, torch.ones_like(span), span)
    scale = safe / 0.8
    x = D - lo  # _make_image: to 0.1 .. 0.9, resampled (nearest: values kept), back
    x = x / scale
    x = x + 0.1
    x = x - 0.1
    x = x * scale
    x = x + lo
    x = x - lo  # Normalize(vmin=lo, vmax=hi)
    x = x / safe
    x = x * 256  # Colormap.__call__
    x = torch.where(x < 0, torch.full_like(x, -1.0), x)
    x = torch.where(x == 256, torch.full_like(x, 255.0), x)
    index = x.clamp(-1, 256).to(torch.int64)
    index = index.clamp(0, 255)  # under -> colour 0, over -> colour 255 (viridis' defaults)
    return torch.where(flat, torch.zeros_like(index), index)


def _rgba_words(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours -> (...) int32, each the 4 bytes R, G, B, 255 of one opaque RGBA pixel."""
    rgba = np.concatenate([rgb, np.full(rgb.shape[:-1] + (1,), 255, np.uint8)], axis=-1)
    return np.ascontiguousarray(rgba).view(np.int32)[..., 0]


@lru_cache(maxsize=4)
def _maps(device: str):
    """The cells' rows and columns of the picture's pixels, and the colours as RGBA words (`_rgba_words`):
    the picture is drawn one 4-byte pixel at a time."""
    dev = torch.device(device)
    rows = torch.from_numpy(np.repeat(np.arange(ROWS), np.diff(ROW_EDGES))).to(dev)
    cols = torch.from_numpy(np.repeat(np.arange(COLS), np.diff(COL_EDGES))).to(dev)
    lut = torch.from_numpy(_rgba_words(np.array(viridis_bytes()))).to(dev)
    spine = torch.from_numpy(_rgba_words(spine_over(viridis_bytes()))).to(dev)
    grey = [int(_rgba_words(np.full(3, v, np.uint8))) for v in (255, SPINE_GREY, CORNER_GREY)]
    return rows, cols, lut, spine, grey


def picture(D: torch.Tensor) -> torch.Tensor:
    """(B, 128, 130) float64 -> (B, 607, 617, 4) uint8, the 2020 PNG's pixels."""
    if tuple(D.shape[-2:]) != (ROWS, COLS):
        raise ValueError(f"the 2020 picture has {ROWS} x {COLS} cells, got {tuple(D.shape[-2:])}")
    rows, cols, lut, spine, (white, grey, corner) = _maps(str(D.device))
    index = colour_index(D)  # (B, 128, 130)
    out = torch.empty((D.shape[0], HEIGHT, WIDTH), dtype=torch.int32, device=D.device)  # RGBA words
    # cells to blocks; on the CPU clip by clip, so that a clip's 1.5 MB in between stays in the cache
    for part in ([slice(None)] if D.device.type != "cpu" else [slice(b, b + 1) for b in range(D.shape[0])]):
        out[part, :SPINE_ROW, COL_EDGES[0]:] = lut[index[part]].index_select(1, rows).index_select(2, cols)
    out[:, :SPINE_ROW, SPINE_COL] = spine[index[:, :, 0]].index_select(1, rows)
    out[:, :, :SPINE_COL] = white
    out[:, SPINE_ROW + 1:] = white
    out[:, SPINE_ROW, COL_EDGES[0]:] = grey
    out[:, SPINE_ROW, SPINE_COL] = corner
    return out.view(torch.uint8).view(D.shape[0], HEIGHT, WIDTH, 4)
