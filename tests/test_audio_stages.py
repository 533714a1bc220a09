"""Each stage of audio/ against the library the 2020 recipe used (librosa, resampy, scikit-image,
PyWavelets, scipy, matplotlib: dev dependencies only), on random non-zero inputs of odd sizes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from audio import features, picture, resample, wavelet

import librosa
import resampy
from scipy import signal as scipy_signal
import pywt
from skimage import restoration as skimage_restoration

DATA = Path(__file__).resolve().parent / "data"
RATES = [(48000, 31), (44100, 4001), (16000, 1234), (96000, 30011), (22050 * 2, 7777), (8000, 5003), (32000, 9001)]


def _resampy_022_loop(x: np.ndarray, sr_orig: int, sr_new: int) -> np.ndarray:
    """resampy 0.2.2's resample_f, written out as its scalar loop (float32 output, running time
    register), on librosa 0.6.3's zero-padded length: the reference the vectorised version must equal."""
    ratio = float(sr_new) / sr_orig
    n_out = int(x.shape[0] * ratio)
    win = resample.kaiser_best_table().copy()
    if ratio < 1:
        win *= ratio
    delta = np.zeros_like(win)
    delta[:-1] = np.diff(win)
    num_table = 2 ** resample.KAISER_BEST["precision"]
    scale = min(1.0, ratio)
    step = int(scale * num_table)
    y = np.zeros(int(np.ceil(x.shape[0] * ratio)), np.float32)
    t_reg = 0.0
    for t in range(n_out):
        n = int(t_reg)
        frac = scale * (t_reg - n)
        index_frac = frac * num_table
        offset = int(index_frac)
        eta = index_frac - offset
        acc = np.float32(0.0)
        for i in range(min(n + 1, (win.shape[0] - offset) // step)):
            acc = np.float32(float(acc) + (win[offset + i * step] + eta * delta[offset + i * step]) * float(x[n - i]))
        frac = scale - frac
        index_frac = frac * num_table
        offset = int(index_frac)
        eta = index_frac - offset
        for k in range(min(x.shape[0] - n - 1, (win.shape[0] - offset) // step)):
            acc = np.float32(float(acc) + (win[offset + k * step] + eta * delta[offset + k * step]) * float(x[n + k + 1]))
        y[t] = acc
        t_reg += 1.0 / ratio
    return y


@pytest.mark.parametrize("kernel", [None, "torch"])
@pytest.mark.parametrize("rate,n", RATES)
def test_resample_equals_resampy_022s_loop_bit_for_bit(rate, n, kernel):
    """One clip: numba's `one_clip` (kernel None) and the torch version CUDA runs."""
    x = (np.random.default_rng(n).standard_normal(n) * 0.1).astype(np.float32)
    got = resample.resample(torch.from_numpy(x)[None], rate, 22050, kernel=kernel)[0].numpy()
    want = _resampy_022_loop(x, rate, 22050)
    assert got.dtype == np.float32 and got.shape == want.shape == (math.ceil(n * 22050 / rate),)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("batch", [resample.BATCH_KERNEL_FROM, 8, 11, 17])
@pytest.mark.parametrize("rate,n", [(48000, 4001), (44100, 2999), (16000, 1234), (96000, 6007)])
def test_batches_of_clips_resample_as_resampy_022s_loop_each(rate, n, batch):
    """From BATCH_KERNEL_FROM clips on, the `clips` kernel (groups of 8 clips side by side, 8 output samples
    at a time, the clips filled up to whole groups, output counts not a multiple of 8): each clip bit for bit
    the scalar loop's."""
    x = (np.random.default_rng(n).standard_normal((batch, n)) * 0.1).astype(np.float32)
    x[batch // 2] *= 50  # loud and quiet clips side by side
    got = resample.resample(torch.from_numpy(x), rate, 22050).numpy()
    for b in range(batch):
        assert np.array_equal(got[b], _resampy_022_loop(x[b], rate, 22050)), b


def test_the_clips_kernel_refuses_arrays_it_would_read_past():
    from audio import _resample_kernels as kernels

    weights, base, shifts, pad_left, pad_right = resample._weights(4001, 48000, 22050)
    n_out = resample.plan(4001, 48000, 22050).n_out
    rows = 4001 + pad_left + pad_right
    good = dict(x=np.zeros((rows, 16), np.float32), base=base, weights=weights, shifts=shifts,
                y=np.zeros((n_out, 16), np.float32))
    kernels.clips(**good)
    for bad in (dict(x=np.zeros((rows, 12), np.float32), y=np.zeros((n_out, 12), np.float32)),  # not whole groups
                dict(x=np.zeros((rows, 16), np.float64)),
                dict(y=np.zeros((weights.shape[0] * kernels.LANES + 1, 16), np.float32)),  # more samples than weights
                dict(shifts=shifts[:-1])):
        with pytest.raises(ValueError):
            kernels.clips(**dict(good, **bad))


@pytest.mark.parametrize("rate,n", [(48000, 4001), (44100, 2999), (16000, 1234), (8000, 333), (96000, 6007)])
def test_the_kernels_weight_table_is_the_dense_tap_weights_bit_for_bit(rate, n):
    """`_weights` (numba's `tap_weights`, written in place) holds `_dense`'s numpy weights, bit for bit, in
    the kernels' (blocks, taps, LANES) layout, zeros past the last output sample; same shifts and padding."""
    from audio._resample_kernels import LANES

    resample._weights.cache_clear()
    blocked, base, shifts, pad_left, pad_right = resample._weights(n, rate, 22050)
    dense, dense_shifts, dense_left, dense_right = resample._dense(n, rate, 22050)
    p = resample.plan(n, rate, 22050)
    assert (pad_left, pad_right) == (dense_left, dense_right) and list(shifts) == dense_shifts
    flat = blocked.transpose(1, 0, 2).reshape(blocked.shape[1], -1)
    assert flat.shape[1] == -(-p.n_out // LANES) * LANES and np.count_nonzero(dense) > 0
    assert flat[:, : p.n_out].tobytes() == dense.tobytes()
    assert not flat[:, p.n_out:].any()
    assert np.array_equal(base[: p.n_out], p.centre + pad_left)


@pytest.mark.parametrize("rate,n", [(48000, 20011), (44100, 9999), (16000, 3001)])
def test_resample_matches_current_resampy_given_the_2020_filter(rate, n):
    """resampy >= 0.3 reads at t / ratio exactly (0.2.2: a running sum, whose drift moves some read
    positions across an input sample): with the same 2020 table most samples agree exactly, the rest
    within 1e-3 of the signal's peak."""
    x = (np.random.default_rng(rate).standard_normal(n) * 0.1).astype(np.float32)
    table = resample.kaiser_best_table()
    ref = resampy.resample(x, rate, 22050, filter=lambda: (table.copy(), 2 ** 9, resample.KAISER_BEST["rolloff"]))
    got = resample.resample(torch.from_numpy(x)[None], rate, 22050)[0].numpy()[: ref.shape[0]]
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()
    assert (got == ref).mean() > 0.9


def test_kaiser_best_table_is_resampys_sinc_window_with_the_2020_parameters():
    kb = resample.KAISER_BEST
    want, precision, rolloff = resampy.filters.sinc_window(
        num_zeros=kb["num_zeros"], precision=kb["precision"], rolloff=kb["rolloff"],
        window=lambda n: scipy_signal.get_window(("kaiser", kb["beta"]), n, fftbins=False))
    got = resample.kaiser_best_table()
    assert (precision, rolloff) == (512, kb["rolloff"]) and got.shape == want.shape == (32769,)
    assert np.abs(got - want).max() <= 2 * np.finfo(np.float64).eps
    assert got[0] == pytest.approx(kb["rolloff"]) and abs(got[-1]) < 1e-6


def test_resampling_to_the_same_rate_keeps_the_samples_and_batches_resample_alike():
    x = torch.from_numpy((np.random.default_rng(3).standard_normal((3, 4001)) * 0.1).astype(np.float32))
    assert resample.resample(x, 22050, 22050) is x
    batch = resample.resample(x, 44100, 22050)
    for i in range(3):
        assert torch.equal(batch[i], resample.resample(x[i:i + 1], 44100, 22050)[0])


@pytest.mark.parametrize("channels", [1, 2, 3, 6])
def test_mono_is_numpys_float32_mean(channels):
    x = (np.random.default_rng(channels).standard_normal((channels, 1001)) * 0.3).astype(np.float32)
    got = features.mono(torch.from_numpy(x)[None])[0].numpy()
    assert got.dtype == np.float32 and np.array_equal(got, np.mean(x, axis=0))


@pytest.mark.parametrize("n,pad", [(1, 5), (2, 7), (3, 10), (7, 3), (1025, 1024), (5000, 1024)])
def test_reflect_pad_is_numpys(n, pad):
    y = np.random.default_rng(n).standard_normal(n)
    assert np.array_equal(features.reflect_pad(torch.from_numpy(y)[None], pad)[0].numpy(), np.pad(y, pad, mode="reflect"))


def test_hann_window_and_mel_filterbank_are_scipys_and_librosas():
    assert np.array_equal(features.hann_window(), scipy_signal.get_window("hann", 2048))
    want = librosa.filters.mel(sr=22050, n_fft=2048, n_mels=128, htk=False, norm="slaney", dtype=np.float64)
    assert np.array_equal(features.mel_filterbank(), want)
    other = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=40, dtype=np.float64)
    assert np.array_equal(features.mel_filterbank(16000, 1024, 40), other)


@pytest.mark.parametrize("n", [66150, 22051, 5003])
def test_stft_and_mel_spectrogram_match_librosa_in_float64(n):
    y = (np.random.default_rng(n).standard_normal(n) * 0.05).astype(np.float32)
    t = torch.from_numpy(y)[None]
    ref_stft = np.abs(librosa.stft(y.astype(np.float64), n_fft=2048, hop_length=512, center=True,
                                   pad_mode="reflect", dtype=np.complex128))
    got_stft = features.stft_magnitude(t)[0].numpy()
    assert got_stft.shape == ref_stft.shape == (1025, 1 + n // 512)
    assert np.abs(got_stft - ref_stft).max() <= 1e-12 * ref_stft.max()
    ref = librosa.feature.melspectrogram(y=y.astype(np.float64), sr=22050, n_fft=2048, hop_length=512,
                                         power=1, pad_mode="reflect", dtype=np.float64)
    got = features.mel_spectrogram(t)[0].numpy()
    assert got.shape == ref.shape == (128, 1 + n // 512)
    assert np.abs(got - ref).max() <= 1e-12 * ref.max()


@pytest.mark.parametrize("shape", [(128, 130), (7, 33), (40, 1)])
def test_pcen_is_librosas_with_the_filter_started_from_zero(shape):
    S = np.random.default_rng(shape[1]).random(shape) * 3 + 1e-3
    ref = librosa.pcen(S, sr=22050, hop_length=512, zi=np.zeros(shape[:-1] + (1,)))
    got = features.pcen(torch.from_numpy(S)[None])[0].numpy()
    assert np.abs(got - ref).max() <= 1e-13 * np.abs(ref).max()
    steady = librosa.pcen(S, sr=22050, hop_length=512)  # librosa >= 0.7's default start: not the 2020 one
    if shape[1] > 1:
        assert np.abs(steady - ref).max() > 1e-3 * np.abs(ref).max()
    assert features.pcen_coefficient() == pytest.approx(0.05638, abs=1e-5)


def test_pcen_smoothing_is_scipys_lfilter_bit_for_bit():
    """The recurrence in lfilter's order of operations: with exp/log replaced by identities the two
    agree exactly (only exp and log1p may differ by an ulp between libraries)."""
    S = np.random.default_rng(11).random((5, 97)) + 0.1
    b = features.pcen_coefficient()
    want = scipy_signal.lfilter([b], [1, b - 1], S, axis=-1)
    a1 = b - 1
    bx = torch.from_numpy(S) * b
    prev, got = bx[:, 0], [bx[:, 0]]
    for t in range(1, S.shape[1]):
        prev = bx[:, t] - prev * a1
        got.append(prev)
    assert np.array_equal(torch.stack(got, -1).numpy(), want)


@pytest.mark.parametrize("shape", [(128, 130), (37, 53), (9, 17), (128, 129), (64, 64)])
def test_haar_transforms_are_pywavelets_bit_for_bit(shape):
    x = np.random.default_rng(shape[0] * shape[1]).random(shape) + 0.01
    levels = wavelet.levels_for(shape)
    assert levels == max(pywt.dwtn_max_level(shape, "db1") - 3, 1)
    want = pywt.wavedecn(x, "db1", level=levels)
    got = wavelet.wavedec2(torch.from_numpy(x)[None], levels)
    assert np.array_equal(got[0][0].numpy(), want[0])
    for g, w in zip(got[1:], want[1:]):
        for key in ("ad", "da", "dd"):
            assert np.array_equal(g[key][0].numpy(), w[key])
    rebuilt = wavelet.waverec2(got)[0].numpy()[: shape[0], : shape[1]]
    assert np.array_equal(rebuilt, pywt.waverecn(want, "db1")[: shape[0], : shape[1]])


@pytest.mark.parametrize("shape", [(128, 130), (37, 53), (9, 17), (128, 129)])
def test_denoise_is_scikit_images_bayes_shrink(shape):
    x = np.random.default_rng(shape[1]).random(shape) * 2 + 0.5
    ref = skimage_restoration.denoise_wavelet(x, channel_axis=None, convert2ycbcr=False, method="BayesShrink",
                                              mode="soft")
    got = wavelet.denoise(torch.from_numpy(x)[None])[0].numpy()
    assert np.abs(got - ref).max() <= 1e-13 * np.abs(ref).max()
    assert np.abs(got - x).max() > 1e-3  # it did shrink something


def test_sigma_denominator_and_soft_threshold_are_scipys_and_pywavelets():
    from scipy import stats

    assert wavelet.SIGMA_DENOMINATOR == stats.norm.ppf(0.75)
    d = np.random.default_rng(5).standard_normal((9, 11))
    d[0, 0] = 0.0
    got = wavelet._soft(torch.from_numpy(d)[None], torch.tensor([0.7], dtype=torch.float64))[0].numpy()
    assert np.array_equal(got, pywt.threshold(d, 0.7, mode="soft"))


def test_the_colour_table_is_matplotlibs_viridis_as_bytes():
    import matplotlib

    lut = matplotlib.colormaps["viridis"](np.arange(256), bytes=True)
    assert np.array_equal(picture.viridis_bytes(), lut[:, :3]) and (lut[:, 3] == 255).all()


def test_colour_indices_match_matplotlibs_normalize_and_colormap_on_random_data():
    import matplotlib
    from matplotlib.colors import Normalize

    D = np.random.default_rng(8).random((3, 128, 130)) * 5 - 1
    got = picture.colour_index(torch.from_numpy(D)).numpy()
    cmap = matplotlib.colormaps["viridis"]
    for i in range(3):
        want = cmap(Normalize()(D[i]), bytes=True)[..., :3]
        assert np.array_equal(picture.viridis_bytes()[got[i]], want)
    assert got.min() == 0 and got.max() == 255


def test_the_picture_is_matplotlib_322s_for_synthetic_arrays():
    """tests/data/mpl322_*.png: drawn by matplotlib 3.2.2 with the 2020 figure calls from the arrays
    make_mpl322_pictures.pictures() rebuilds; every colour meets the left spine in one of them."""
    from PIL import Image

    import importlib.util

    spec = importlib.util.spec_from_file_location("make_mpl322_pictures", DATA / "make_mpl322_pictures.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    arrays = maker.pictures()
    assert set(arrays) == {"even", "odd", "edges"}
    got = picture.picture(torch.from_numpy(np.stack(list(arrays.values())))).numpy()
    for k, name in enumerate(arrays):
        want = np.asarray(Image.open(DATA / f"mpl322_{name}.png").convert("RGBA"))
        assert want.shape == (607, 617, 4)
        assert np.array_equal(got[k], want), f"{name}: {(got[k] != want).any(-1).sum()} pixels differ"


def test_a_constant_image_takes_colour_0_as_matplotlibs_normalize_does():
    D = torch.full((1, 128, 130), 0.25, dtype=torch.float64)
    assert int(picture.colour_index(D).max()) == 0
    assert picture.picture(D)[0, 10, 10, :3].tolist() == picture.viridis_bytes()[0].tolist()
