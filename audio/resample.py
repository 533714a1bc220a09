"""Resampling as librosa 0.6.3 did it in 2020: resampy 0.2.2's `kaiser_best` band-limited interpolation.

`librosa.core.load(path, res_type="kaiser_best")` called `resampy.resample(y, sr, 22050,
filter="kaiser_best")` on the float32 mono signal and zero-padded the result to ceil(n * ratio)
samples (`librosa.util.fix_length`). resampy 0.2.2 computes each output sample in a numba loop:

* the read position `time_register` grows by 1/ratio per output sample (a running float64 sum, so it
  drifts from t / ratio; resampy >= 0.3 multiplies instead);
* the filter value at a fractional table position is `win[o] + eta * delta[o]` (linear interpolation
  in a table of `num_table` = 512 entries per zero crossing, scaled by the ratio when downsampling);
* the output sample is a float32 that each tap is added to in turn (left wing from the centre outward,
  then the right wing): every partial sum is rounded to float32.

This module does exactly that, bit for bit: reordered across output samples (and clips), never across
the taps of one output sample. On the CPU, the loops of `audio._resample_kernels` (several output samples'
chains of adds in flight, and from BATCH_KERNEL_FROM clips on the clips side by side in vector registers);
on CUDA, torch operations vectorised over output samples, sequential over taps. Accumulating in float64
instead changes about 90 % of the samples by an ulp and, over 20 real clips, 2 spectrogram cells.

The table: resampy >= 0.3 ships a different `kaiser_best` (50 zero crossings, 8192 per crossing), so it
cannot be borrowed from the installed resampy. The 2020 table is resampy's `sinc_window(num_zeros=64,
precision=9, window=kaiser(beta=14.769656459379492), rolloff=0.9475937167399596)`, rebuilt here with
numpy (np.kaiser, np.sinc): 49 of its 32,769 entries differ from the file resampy 0.2.2 shipped by one
ulp (2.2e-16), which changes none of the resampled samples of the sample clips (docs/audio.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

__all__ = ["KAISER_BEST", "kaiser_best_table", "ResamplePlan", "plan", "prepare", "resample"]

# resampy 0.2.2's kaiser_best (its filters.py docstring and data/kaiser_best.npz: 'rolloff', 'precision').
KAISER_BEST = {"num_zeros": 64, "precision": 9, "beta": 14.769656459379492, "rolloff": 0.9475937167399596}


@lru_cache(maxsize=1)
def kaiser_best_table() -> np.ndarray:
    """The right half of the 2020 `kaiser_best` interpolation filter: 64 * 512 + 1 float64 values."""
    num_zeros, num_table = KAISER_BEST["num_zeros"], 2 ** KAISER_BEST["precision"]
    rolloff, n = KAISER_BEST["rolloff"], num_table * num_zeros
    sinc = rolloff * np.sinc(rolloff * np.linspace(0, num_zeros, num=n + 1, endpoint=True))
    taper = np.kaiser(2 * n + 1, KAISER_BEST["beta"])[n:]
    table = taper * sinc
    table.flags.writeable = False
    return table


@dataclass(frozen=True)
class ResamplePlan:
    """Where each output sample reads and how its filter taps are interpolated, for one
    (input length, input rate, output rate). All arrays have one entry per output sample."""

    n_in: int
    rate_in: int
    rate_out: int
    n_out: int  # resampy's int(n_in * ratio)
    n_fixed: int  # librosa's ceil(n_in * ratio): the output is zero-padded to this length
    step: int  # table entries between taps
    window: np.ndarray  # the table, scaled by the ratio when downsampling
    delta: np.ndarray  # window[i + 1] - window[i], 0 at the end
    centre: np.ndarray  # int64: the input sample at or before the read position
    left_offset: np.ndarray  # int64 table offset of the left wing's first tap
    left_eta: np.ndarray  # float64 interpolation factor of the left wing
    left_taps: np.ndarray  # int64: how many left taps
    right_offset: np.ndarray
    right_eta: np.ndarray
    right_taps: np.ndarray


@lru_cache(maxsize=16)
def plan(n_in: int, rate_in: int, rate_out: int) -> ResamplePlan:
    """resampy 0.2.2 `resample_f`'s per-output-sample quantities, computed with its float64 arithmetic."""
    if rate_in <= 0 or rate_out <= 0:
        raise ValueError(f"invalid sample rates {rate_in} -> {rate_out}")
    ratio = float(rate_out) / rate_in
    n_out = int(n_in * ratio)
    if n_out < 1:
        raise ValueError(f"input signal length={n_in} is too small to resample from {rate_in}->{rate_out}")
    num_table = 2 ** KAISER_BEST["precision"]
    window = kaiser_best_table().copy()
    if ratio < 1:
        window *= ratio
    delta = np.zeros_like(window)
    delta[:-1] = np.diff(window)
    scale = min(1.0, ratio)
    step = int(scale * num_table)
    increments = np.full(n_out, 1.0 / ratio)
    increments[0] = 0.0
    time_register = np.add.accumulate(increments)  # sequential: the loop's `time_register += 1/ratio`
    centre = time_register.astype(np.int64)
    frac = scale * (time_register - centre)
    index_frac = frac * num_table
    left_offset = index_frac.astype(np.int64)
    left_eta = index_frac - left_offset
    nwin = window.shape[0]
    left_taps = np.minimum(centre + 1, (nwin - left_offset) // step)
    frac = scale - frac
    index_frac = frac * num_table
    right_offset = index_frac.astype(np.int64)
    right_eta = index_frac - right_offset
    right_taps = np.minimum(n_in - centre - 1, (nwin - right_offset) // step)
    for a in (window, delta):
        a.flags.writeable = False
    return ResamplePlan(n_in=n_in, rate_in=rate_in, rate_out=rate_out, n_out=n_out,
                        n_fixed=int(np.ceil(n_in * ratio)), step=step, window=window, delta=delta, centre=centre,
                        left_offset=left_offset, left_eta=left_eta, left_taps=np.maximum(left_taps, 0),
                        right_offset=right_offset, right_eta=right_eta, right_taps=np.maximum(right_taps, 0))


@lru_cache(maxsize=2)
def _taps(n_in: int, rate_in: int, rate_out: int, device: str):
    """The plan's taps in the order resampy adds them (left wing from the centre outward, then the right
    wing), as (weights (taps, n_out) float64 with 0 where an output sample has no such tap, the offset of
    each tap's source sample from `centre` in the padded input, centre (n_out,) int64, padding).

    About 150 MB for 3 s at 48 kHz (280 taps x 66,150 samples): cached for the last two plans."""
    weights, shifts, pad_left, pad_right = _dense(n_in, rate_in, rate_out)
    dev = torch.device(device)
    return (torch.from_numpy(weights).to(dev), [pad_left + s for s in shifts],
            torch.from_numpy(plan(n_in, rate_in, rate_out).centre).to(dev), pad_left, pad_right)


def _layout(p: ResamplePlan):
    """What `_dense` and `_weights` share: (window, delta) each with a 0 appended (the entry a missing tap
    reads), the widest left and right wings, each tap's source sample relative to the centre (left wing from
    the centre outward, then the right), and the zero padding those shifts need on each side."""
    window = np.concatenate([p.window, [0.0]])
    delta = np.concatenate([p.delta, [0.0]])
    left = int(p.left_taps.max()) if p.left_taps.size else 0
    right = int(p.right_taps.max()) if p.right_taps.size else 0
    shifts = [-k for k in range(left)] + [k + 1 for k in range(right)]
    return window, delta, left, right, shifts, max(0, left - 1), right


def _dense(n_in: int, rate_in: int, rate_out: int):
    """(weights (taps, n_out) float64, shifts (source sample of each tap relative to the centre), pad_left,
    pad_right): every output sample's tap weights, computed as resampy does (0 for a tap it does not have)."""
    p = plan(n_in, rate_in, rate_out)
    window, delta, left, right, shifts, pad_left, pad_right = _layout(p)
    last = p.window.shape[0]
    rows = []
    for offset, eta, taps, count in ((p.left_offset, p.left_eta, p.left_taps, left),
                                     (p.right_offset, p.right_eta, p.right_taps, right)):
        i = np.arange(count)[:, None]
        index = np.where(taps[None, :] > i, offset[None, :] + i * p.step, last)
        index = np.minimum(index, last)
        rows.append(window[index] + eta[None, :] * delta[index])  # two roundings, as resampy: no fused multiply-add
    return np.concatenate(rows, axis=0), shifts, pad_left, pad_right


@lru_cache(maxsize=2)
def _weights(n_in: int, rate_in: int, rate_out: int):
    """`_dense` laid out for `_resample_kernels`: weights (blocks, taps, LANES) (LANES output samples' weights
    side by side), output samples padded to whole blocks with zero weights; base = centre + padding;
    shifts; padding. About 150 MB for 3 s at 48 kHz, cached for the last two plans.

    Written in place by the numba loop `tap_weights` (the same float64 arithmetic as `_dense`, tested bit
    for bit): numpy's gather, transpose and copy took ≈ 1 s and a 450 MB transient on a cold call."""
    from audio._resample_kernels import LANES, tap_weights

    p = plan(n_in, rate_in, rate_out)
    window, delta, left, right, shifts, pad_left, pad_right = _layout(p)
    blocks = -(-p.n_out // LANES)
    blocked = np.zeros((blocks, left + right, LANES))
    tap_weights(window, delta, p.left_offset, p.left_eta, p.left_taps, p.step, 0, left, blocked)
    tap_weights(window, delta, p.right_offset, p.right_eta, p.right_taps, p.step, left, right, blocked)
    base = np.full(blocks * LANES, pad_left, np.int64)
    base[: p.n_out] += p.centre
    for a in (blocked, base):
        a.flags.writeable = False
    return blocked, base, np.asarray(shifts, np.int64), pad_left, pad_right


def prepare(n_in: int, rate_in: int, rate_out: int) -> None:
    """Compute (and keep, as the first clip of this length and rate would) the CPU kernels' weight table."""
    if rate_in != rate_out:
        _weights(n_in, rate_in, rate_out)


# From this many clips on, `_resample_kernels.clips` (clips side by side in vector registers, filled up to
# whole groups of 8) is faster per clip than `one_clip` on each (docs/design.md, "The resampling kernels").
BATCH_KERNEL_FROM = 2


def _resample_cpu(x: np.ndarray, p: ResamplePlan) -> np.ndarray:
    from audio import _resample_kernels as kernels

    batch, n = x.shape
    y = np.zeros((batch, p.n_fixed), np.float32)
    weights, base, shifts, pad_left, pad_right = _weights(p.n_in, p.rate_in, p.rate_out)
    if batch >= BATCH_KERNEL_FROM:
        width = -(-batch // kernels.CLIPS_GROUP) * kernels.CLIPS_GROUP  # whole vectors: silent clips fill up
        columns = np.zeros((n + pad_left + pad_right, width), np.float32)
        columns[pad_left: pad_left + n, :batch] = x.T
        out = np.empty((p.n_out, width), np.float32)
        kernels.clips(columns, base, weights, shifts, out)
        y[:, : p.n_out] = out[:, :batch].T
        return y
    padded = np.zeros(n + pad_left + pad_right, np.float32)
    out = np.empty(base.shape[0], np.float32)
    for b in range(batch):
        padded[pad_left: pad_left + n] = x[b]
        kernels.one_clip(padded, base, weights, shifts, out)
        y[b, : p.n_out] = out[: p.n_out]
    return y


def _resample_torch(x: torch.Tensor, p: ResamplePlan) -> torch.Tensor:
    weights, shifts, centre, pad_left, pad_right = _taps(p.n_in, p.rate_in, p.rate_out, str(x.device))
    padded = torch.nn.functional.pad(x, (pad_left, pad_right))  # zeros: they meet only zero weights
    y = torch.zeros((x.shape[0], p.n_fixed), dtype=torch.float32, device=x.device)
    body = y[:, : p.n_out]
    fused = x.device.type == "cpu"  # the CPU kernel multiplies and adds separately; CUDA's could fuse (FMA)
    for j, shift in enumerate(shifts):
        source = torch.index_select(padded[:, shift:], 1, centre)  # float32 samples this tap reads
        if fused:
            torch.addcmul(body, weights[j], source, out=body)  # float64 product and sum, stored as float32
        else:
            torch.add(body, weights[j] * source, out=body)
    return y


def resample(x: torch.Tensor, rate_in: int, rate_out: int, *, kernel: str | None = None) -> torch.Tensor:
    """x: (B, n) float32 mono clips at rate_in -> (B, ceil(n * rate_out / rate_in)) float32, resampy 0.2.2
    `kaiser_best` bit for bit (librosa 0.6.3's `resample`, fix=True). Same rate: returned unchanged.

    On the CPU the loops of `audio._resample_kernels` run (on the calling thread; `one_clip` per clip
    below BATCH_KERNEL_FROM clips, `clips` from there on); on a CUDA device, torch operations, one per tap
    over all output samples. kernel="torch" runs the torch version on the CPU too (tests)."""
    if x.dtype != torch.float32 or x.dim() != 2:
        raise ValueError(f"resample wants (clips, samples) float32, got {tuple(x.shape)} {x.dtype}")
    if kernel not in (None, "torch"):
        raise ValueError(f"unknown resampling kernel {kernel!r} (None or 'torch')")
    if rate_in == rate_out:
        return x
    p = plan(int(x.shape[1]), int(rate_in), int(rate_out))
    if x.device.type == "cpu" and kernel is None:
        return torch.from_numpy(_resample_cpu(np.ascontiguousarray(x.numpy()), p))
    return _resample_torch(x, p)
