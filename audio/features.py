"""Mono mix, magnitude mel spectrogram and PCEN as librosa 0.6.3 computed them in 2020, in torch.

librosa.core.load(..., mono=True) averaged the channels in float32 (`np.mean(y, axis=0)`);
librosa.feature.melspectrogram(y, sr=22050, power=1) is |STFT| (n_fft 2048, hop 512, periodic Hann
window, frames centred by reflect padding of 1024 samples) times 128 Slaney mel filters (librosa's
`filters.mel(22050, 2048)`: `htk=False`, area normalisation `norm=1`); librosa.core.pcen(S) smooths S
along time with `scipy.signal.lfilter([b], [1, b - 1], S)` started from zero (librosa >= 0.7 starts it at
its steady state instead) and returns (S / (eps + M)^gain + bias)^power - bias^power.

All of it after the float32 mono signal runs in float64 here (librosa kept the STFT in complex64): the
spectrogram cells are robust to that, not to the resampled samples' rounding (docs/audio.md).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

__all__ = ["SAMPLE_RATE", "N_FFT", "HOP", "N_MELS", "PCEN", "mono", "reflect_pad", "hann_window",
           "stft_magnitude", "mel_filterbank", "mel_spectrogram", "pcen", "frames_for"]

SAMPLE_RATE = 22050
N_FFT = 2048
HOP = 512
N_MELS = 128
# librosa.core.pcen's defaults (0.6.3 and later): gain, bias, power, time constant (s), eps.
PCEN = {"gain": 0.98, "bias": 2.0, "power": 0.5, "time_constant": 0.4, "eps": 1e-6}


def frames_for(n_samples: int) -> int:
    """STFT frames of a centred transform of n_samples: 1 + n // hop (130 for 3 s at 22,050 Hz)."""
    return 1 + n_samples // HOP


def mono(samples: torch.Tensor) -> torch.Tensor:
    """(B, C, n) float32 -> (B, n) float32: numpy's float32 mean over channels (a running float32 sum
    from the first channel, divided by C in float32), bit for bit."""
    if samples.dim() != 3:
        raise ValueError(f"mono wants (clips, channels, samples), got {tuple(samples.shape)}")
    if samples.dtype != torch.float32:
        raise ValueError(f"mono wants float32 samples, got {samples.dtype}")
    if samples.shape[1] == 1:
        return samples[:, 0]
    total = samples[:, 0].clone()
    for c in range(1, samples.shape[1]):
        total = total + samples[:, c]
    return total / samples.shape[1]


def reflect_pad(y: torch.Tensor, pad: int) -> torch.Tensor:
    """numpy's np.pad(y, pad, mode="reflect") along the last axis, also when pad >= len(y)."""
    n = y.shape[-1]
    if 0 < pad < n:  # torch's own reflect padding: the same samples, without an index
        shape = y.shape
        return torch.nn.functional.pad(y.reshape(-1, 1, n), (pad, pad), mode="reflect").reshape(*shape[:-1], n + 2 * pad)
    index = torch.arange(-pad, n + pad, device=y.device)
    if n == 1:
        index = torch.zeros_like(index)
    else:
        period = 2 * (n - 1)
        index = torch.remainder(index, period)
        index = torch.where(index >= n, period - index, index)
    return torch.index_select(y, -1, index)


@lru_cache(maxsize=1)
def hann_window() -> np.ndarray:
    """scipy.signal.get_window("hann", 2048) (periodic), as librosa 0.6.3 asked for it: scipy's
    general_cosine 0.5 - 0.5 cos over linspace(-pi, pi, 2049), last point dropped."""
    fac = np.linspace(-np.pi, np.pi, N_FFT + 1)
    w = np.zeros(N_FFT + 1)
    for k, a in enumerate((0.5, 0.5)):
        w += a * np.cos(k * fac)
    w = w[:-1]
    w.flags.writeable = False
    return w


def stft_magnitude(y: torch.Tensor) -> torch.Tensor:
    """(B, n) float32 at 22,050 Hz -> (B, 1025, frames) float64 |STFT| (centred, reflect-padded)."""
    y = reflect_pad(y.to(torch.float64), N_FFT // 2)
    frames = y.unfold(-1, N_FFT, HOP)  # (B, frames, 2048)
    window = torch.from_numpy(np.array(hann_window())).to(y.device)
    spectrum = torch.fft.rfft(frames * window, dim=-1)
    # |z| as sqrt(re^2 + im^2): within an ulp of hypot (numpy's abs), 5x faster here; the cells are robust to
    # far more (librosa 0.6.3 took the STFT in complex64), docs/audio.md
    return torch.sqrt(spectrum.real.square() + spectrum.imag.square()).transpose(-1, -2)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """librosa's Slaney mel scale (htk=False): linear below 1 kHz, logarithmic above."""
    f_sp = 200.0 / 3
    mels = (f - 0.0) / f_sp
    min_log_hz = 1000.0
    min_log_mel = (min_log_hz - 0.0) / f_sp
    logstep = np.log(6.4) / 27.0
    log_t = f >= min_log_hz
    mels[log_t] = min_log_mel + np.log(f[log_t] / min_log_hz) / logstep
    return mels


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    freqs = 0.0 + f_sp * m
    min_log_hz = 1000.0
    min_log_mel = (min_log_hz - 0.0) / f_sp
    logstep = np.log(6.4) / 27.0
    log_t = m >= min_log_mel
    freqs[log_t] = min_log_hz * np.exp(logstep * (m[log_t] - min_log_mel))
    return freqs


@lru_cache(maxsize=4)
def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """librosa's `filters.mel(sr, n_fft, n_mels)` (Slaney: htk=False, norm=1 / "slaney", fmin 0,
    fmax sr/2) in float64: (n_mels, 1 + n_fft // 2) triangles, each scaled to unit area."""
    fmax = float(sr) / 2
    fftfreqs = np.linspace(0, float(sr) / 2, int(1 + n_fft // 2), endpoint=True)
    min_mel = _hz_to_mel(np.array([0.0]))[0]
    max_mel = _hz_to_mel(np.array([fmax]))[0]
    mel_f = _mel_to_hz(np.linspace(min_mel, max_mel, n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((n_mels, int(1 + n_fft // 2)))
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, np.newaxis]
    weights.flags.writeable = False
    return weights


def mel_spectrogram(y: torch.Tensor) -> torch.Tensor:
    """(B, n) float32 at 22,050 Hz -> (B, 128, frames) float64: melspectrogram(y, sr=22050, power=1)."""
    basis = torch.from_numpy(np.array(mel_filterbank())).to(y.device)
    if y.device.type == "cpu" and y.shape[0] > 1:  # clip by clip: a clip's 2 MB of frames stay in the cache
        return torch.stack([torch.matmul(basis, stft_magnitude(y[i:i + 1]))[0] for i in range(y.shape[0])])
    return torch.matmul(basis, stft_magnitude(y))


def pcen_coefficient(sr: int = SAMPLE_RATE, hop: int = HOP, time_constant: float = PCEN["time_constant"]) -> float:
    """librosa's smoothing coefficient b for a time constant in seconds."""
    t_frames = time_constant * sr / float(hop)
    return float((np.sqrt(1 + 4 * t_frames ** 2) - 1) / (2 * t_frames ** 2))


def pcen(S: torch.Tensor) -> torch.Tensor:
    """(..., frames) float64 -> PCEN with librosa's defaults and the smoothing filter started from zero
    (scipy.signal.lfilter([b], [1, b - 1], S) without zi): M[t] = b S[t] - (b - 1) M[t - 1], in
    lfilter's order of operations."""
    b = pcen_coefficient()
    a1 = b - 1
    bx = S * b
    smooth = torch.empty_like(S)
    previous = bx[..., 0]
    smooth[..., 0] = previous
    for t in range(1, S.shape[-1]):
        # lfilter (direct form II transposed): y = z + b0 x, z = b1 x - a1 y_prev with b1 = 0
        previous = bx[..., t] - previous * a1
        smooth[..., t] = previous
    eps, gain = PCEN["eps"], PCEN["gain"]
    m = torch.exp((torch.log1p(smooth / eps) + math.log(eps)) * (-gain))
    return torch.pow(S * m + PCEN["bias"], PCEN["power"]) - PCEN["bias"] ** PCEN["power"]
