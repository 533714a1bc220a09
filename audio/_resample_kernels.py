"""The CPU loops of `audio.resample`, compiled with numba (resampy's own tool): resampy 0.2.2's arithmetic,
reordered only across output samples and clips, never across the taps of one output sample.

Each output sample is a float32 that its taps are added to in turn, left wing from the centre outward, then
the right wing: `acc = float32(float64(acc) + weight * float64(x))`, the weight `win[o] + eta * delta[o]` in
float64, a multiply and an add, never fused (numba does not contract them without `fastmath`). What makes
these loops fast is independence: one sample's taps are a chain of dependent adds, so each kernel keeps
several chains in flight, output samples of one clip (`one_clip`) or the same output sample of several clips,
vectorised (`clips`). docs/design.md, "The resampling kernels", has the measurements.

Compiled on first use (about 2 s) and cached on disk (numba's `cache=True`: next to this file, or numba's
user cache folder where this folder is read-only, or `NUMBA_CACHE_DIR`); where no folder is writable they
are compiled in each process instead.
"""

from __future__ import annotations

import numba
import numpy as np

LANES = 16  # output samples `one_clip` computes together: 16 independent chains of adds


def _compiled(function):
    options = {"nogil": True, "error_model": "numpy", "boundscheck": False}
    try:
        return numba.njit(cache=True, **options)(function)
    except RuntimeError:  # numba found no writable folder to cache in
        return numba.njit(cache=False, **options)(function)


@_compiled
def one_clip(x, base, weights, shifts, y):
    """x: (n_pad,) float32, the clip with zeros around it; base[t]: x's index of output sample t's centre;
    weights: (blocks, taps, LANES) float64, 0 for a tap a sample does not have (adding 0 changes nothing);
    shifts[j]: tap j's source sample relative to the centre; y: (blocks * LANES,) float32, written."""
    blocks, taps, _ = weights.shape
    acc = np.zeros(LANES, np.float32)
    for b in range(blocks):
        t0 = b * LANES
        for k in range(LANES):
            acc[k] = 0.0
        for j in range(taps):
            s = shifts[j]
            for k in range(LANES):
                acc[k] = np.float32(np.float64(acc[k]) + weights[b, j, k] * np.float64(x[base[t0 + k] + s]))
        for k in range(LANES):
            y[t0 + k] = acc[k]


@_compiled
def clips(x, base, weights, shifts, y):
    """x: (n_pad, B) float32, B clips side by side with zeros above and below; base, weights, shifts as for
    `one_clip`; y: (n_out, B) float32, written (n_out <= blocks * LANES). Each weight is loaded once for the
    B clips; output samples go two at a time (two chains per clip in flight), an odd last one twice."""
    n_out = y.shape[0]
    taps = weights.shape[1]
    B = x.shape[1]
    a0 = np.zeros(B, np.float32)
    a1 = np.zeros(B, np.float32)
    for t in range(0, n_out, 2):
        u = min(t + 1, n_out - 1)
        bt, kt, bu, ku = t // LANES, t % LANES, u // LANES, u % LANES
        a0[:] = 0.0
        a1[:] = 0.0
        for j in range(taps):
            w0 = weights[bt, j, kt]
            w1 = weights[bu, j, ku]
            r0 = base[t] + shifts[j]
            r1 = base[u] + shifts[j]
            for c in range(B):
                a0[c] = np.float32(np.float64(a0[c]) + w0 * np.float64(x[r0, c]))
            for c in range(B):
                a1[c] = np.float32(np.float64(a1[c]) + w1 * np.float64(x[r1, c]))
        for c in range(B):
            y[t, c] = a0[c]
            y[u, c] = a1[c]


@_compiled
def tap_weights(window, delta, offset, eta, taps, step, first, count, out):
    """Fill out[b, first + i, k] (output sample t = b * LANES + k, its i-th tap of one wing) with resampy's
    `window[o] + eta[t] * delta[o]`, o = offset[t] + i * step, for i < min(taps[t], count): the float64
    multiply and add of resampy 0.2.2, unfused; the rest of `out` is left as it is (zeros: taps a sample
    lacks). window and delta end with an extra 0 entry, as in `audio.resample._dense`."""
    last = window.shape[0] - 1
    for t in range(offset.shape[0]):
        b = t // LANES
        k = t % LANES
        n = min(taps[t], count)
        for i in range(n):
            o = min(offset[t] + i * step, last)
            out[b, first + i, k] = window[o] + eta[t] * delta[o]
