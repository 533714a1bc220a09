"""The CPU loop of `scoring.clips.input_pixels`, compiled with numba (cached on disk where a folder is
writable): the RGB bytes of an RGBA picture at PIL's NEAREST rows and columns, written straight into the
model input. torch's strided copy of `rgba[..., :3]` took 1.37 ms per 607 x 617 picture on one thread of
the 2-core Intel Xeon VM, this loop 0.10 ms (docs/design.md, "Scoring: one image per run")."""

from __future__ import annotations

import numba


def _compiled(function):
    try:
        return numba.njit(cache=True, nogil=True, boundscheck=False)(function)
    except RuntimeError:  # numba found no writable folder to cache in
        return numba.njit(cache=False, nogil=True, boundscheck=False)(function)


@_compiled
def rgb_nearest(rgba, down, across, out):
    """out[r, c, :] = rgba[down[r], across[c], :3]: rgba (H, W, 4) uint8, down (rows,) and across (cols,)
    int64 within H and W, out (rows, cols, 3) uint8, written."""
    for r in range(out.shape[0]):
        row = down[r]
        for c in range(out.shape[1]):
            column = across[c]
            out[r, c, 0] = rgba[row, column, 0]
            out[r, c, 1] = rgba[row, column, 1]
            out[r, c, 2] = rgba[row, column, 2]
