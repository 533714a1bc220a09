"""scikit-image's `denoise_wavelet(image, method="BayesShrink", mode="soft")` for 2-D float images, in torch.

With scikit-image's defaults (0.17-0.26): wavelet `db1`, `wavelet_levels = max(dwtn_max_level - 3, 1)`
levels of PyWavelets' `wavedecn` (mode "symmetric"), sigma estimated from the finest diagonal details
(median of the non-zero |coefficients| / Phi^-1(0.75)), one BayesShrink threshold per level and
orientation (sigma^2 / sqrt(max(mean(d^2) - sigma^2, eps))), PyWavelets' soft thresholding
(d * max(0, 1 - t / |d|)), `waverecn`, cropped to the input; a float input is not clipped.

The filter is PyWavelets' `db1` (Haar): each output of a Haar analysis or synthesis step is a sum of two
products, so this gives PyWavelets' coefficients bit for bit; the per-image means and medians are
computed with torch's reductions (ulp-level differences in the thresholds).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["WAVELET", "SIGMA_DENOMINATOR", "levels_for", "wavedec2", "waverec2", "denoise"]

WAVELET = "db1"
# scipy.stats.norm.ppf(0.75): the median of |N(0, 1)| (skimage's _sigma_est_dwt); tested against scipy.
SIGMA_DENOMINATOR = 0.6744897501960817


def _filters():
    """db1's analysis and synthesis filters, from PyWavelets."""
    import pywt

    w = pywt.Wavelet(WAVELET)
    if w.dec_len != 2:
        raise ValueError(f"{WAVELET} is not a two-tap wavelet")
    return tuple(w.dec_lo), tuple(w.dec_hi), tuple(w.rec_lo), tuple(w.rec_hi)


def levels_for(shape: tuple[int, ...]) -> int:
    """scikit-image's default: max(pywt.dwtn_max_level(shape, db1) - 3, 1); for db1 dwt_max_level(n) is
    floor(log2(n))."""
    return max(min(int(n).bit_length() - 1 for n in shape) - 3, 1)


def _dwt(x: torch.Tensor, dim: int, lo, hi):
    """One Haar analysis step along dim, PyWavelets' "symmetric" mode: (approximation, detail)."""
    dim = dim % x.dim()
    n = x.shape[dim]
    if n % 2:
        x = torch.cat([x, x.narrow(dim, n - 1, 1)], dim=dim)  # symmetric extension by one sample
    pairs = x.unflatten(dim, (-1, 2))
    even, odd = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
    # pywt's downsampling convolution: out[o] = f[0] * x[2o + 1] + f[1] * x[2o]
    return lo[0] * odd + lo[1] * even, hi[0] * odd + hi[1] * even


def _idwt(a: torch.Tensor, d: torch.Tensor, dim: int, lo, hi) -> torch.Tensor:
    """One Haar synthesis step along dim (pywt's idwt): length 2n, x[2o + k] = lo[k] a[o] + hi[k] d[o]."""
    dim = dim % a.dim()
    first = a * lo[0] + d * hi[0]
    second = a * lo[1] + d * hi[1]
    return torch.stack([first, second], dim=dim + 1).flatten(dim, dim + 1)


def wavedec2(image: torch.Tensor, levels: int):
    """pywt.wavedecn(image, "db1", level=levels) over the last two axes: [approximation,
    {"ad", "da", "dd"} of the coarsest level, ..., of the finest]. Keys: first letter = rows axis."""
    lo, hi, _, _ = _filters()
    details = []
    a = image
    for _ in range(levels):
        r_a, r_d = _dwt(a, -2, lo, hi)  # dwtn: the first axis first
        aa, ad = _dwt(r_a, -1, lo, hi)
        da, dd = _dwt(r_d, -1, lo, hi)
        details.append({"ad": ad, "da": da, "dd": dd})
        a = aa
    return [a] + details[::-1]


def waverec2(coeffs) -> torch.Tensor:
    """pywt.waverecn(coeffs, "db1"): the approximation is cropped to each level's detail shape
    (idwtn: the last axis first)."""
    _, _, lo, hi = _filters()
    a = coeffs[0]
    for d in coeffs[1:]:
        rows, cols = d["dd"].shape[-2:]
        a = a[..., :rows, :cols]
        low = _idwt(a, d["ad"], -1, lo, hi)
        high = _idwt(d["da"], d["dd"], -1, lo, hi)
        a = _idwt(low, high, -2, lo, hi)
    return a


def _median(values: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """numpy's median of the last `count` entries of each sorted row (the mean of the two middle
    values when count is even)."""
    n = values.shape[-1]
    start = n - count
    low = torch.gather(values, -1, (start + (count - 1) // 2).clamp(0, n - 1).unsqueeze(-1)).squeeze(-1)
    high = torch.gather(values, -1, (start + count // 2).clamp(0, n - 1).unsqueeze(-1)).squeeze(-1)
    med = (low + high) / 2
    return torch.where(count > 0, med, torch.full_like(med, float("nan")))


def estimate_sigma(finest_dd: torch.Tensor) -> torch.Tensor:
    """skimage's _sigma_est_dwt: median(|d|) over the non-zero d, / Phi^-1(0.75); NaN when all are zero."""
    flat = finest_dd.abs().flatten(-2)
    nonzero = (flat != 0).sum(-1)
    ordered, _ = torch.sort(flat, dim=-1)  # the zeros come first
    return _median(ordered, nonzero) / SIGMA_DENOMINATOR


def _soft(d: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """pywt.threshold(d, value, "soft"): d * clip(1 - value / |d|, 0)."""
    value = value[..., None, None]
    return d * torch.clamp(1 - value / d.abs(), min=0)


def denoise(image: torch.Tensor) -> torch.Tensor:
    """denoise_wavelet(image, method="BayesShrink", mode="soft", channel_axis=None) of each (rows, cols)
    float64 image of a (..., rows, cols) batch."""
    if image.dtype != torch.float64:
        raise ValueError(f"denoise wants float64 images, got {image.dtype}")
    rows, cols = image.shape[-2:]
    coeffs = wavedec2(image, levels_for((rows, cols)))
    sigma = estimate_sigma(coeffs[-1]["dd"])
    var = sigma * sigma
    eps = float(np.finfo(np.float64).eps)
    out = [coeffs[0]]
    for level in coeffs[1:]:
        shrunk = {}
        for key, d in level.items():
            dvar = (d * d).mean(dim=(-2, -1))
            threshold = var / torch.sqrt(torch.clamp(dvar - var, min=eps))
            shrunk[key] = _soft(d, threshold)
        out.append(shrunk)
    return waverec2(out)[..., :rows, :cols]
