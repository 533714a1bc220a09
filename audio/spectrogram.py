"""Audio to the original tool's spectrogram picture (orcaal 2020, `preprocess/util.py`), bit for bit.

The 2020 recipe (docs/audio.md is the specification), stage by stage:

  decode (audio.decode: FFmpeg's fixed-point mp3 decoder, 16-bit samples / 32768)
  -> mono (float32 mean of the channels)                               audio.features.mono
  -> 22,050 Hz (resampy 0.2.2 kaiser_best, float32 running sums)        audio.resample.resample
  -> |STFT| x 128 Slaney mel bands (n_fft 2048, hop 512, centred)       audio.features.mel_spectrogram
  -> PCEN (librosa's defaults, filter started from zero)                audio.features.pcen
  -> BayesShrink soft wavelet denoising (scikit-image's defaults)       audio.wavelet.denoise
  -> viridis picture, 607 x 617 RGBA (matplotlib 3.2.2's layout)        audio.picture.picture

Everything runs in torch, batched (clips of equal length), on the CPU or a CUDA device; float64 after
the float32 resampled signal. One clip on the CPU (`pixels_from_samples`, `pixels_from_file`) runs its
torch operations on the calling thread alone (`one_thread`): callers draw several clips at once on
threads of their own, and torch's OpenMP team per thread made that slower, not faster (docs/design.md,
"One OpenMP thread per drawing thread"). Public API: `render_batch`, `pixels_from_samples`, `pixels_from_file`,
`write_png`, `spectrogram_png`, `RENDERER` / `renderer_key()` (for caches), `stages` (intermediates),
`warm_up` (first-use costs paid ahead).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from threadpoolctl import ThreadpoolController

from audio import features, picture as picture_mod, resample as resample_mod, wavelet
from audio.decode import AudioError, decode
from audio.png import encode_png
from conversion.atomic import published_mode

__all__ = ["RENDERER", "renderer_key", "SpectrogramError", "render_batch", "pixels_from_samples",
           "pixels_from_file", "pixels_from_files", "render_decoded", "write_png", "spectrogram_png", "stages",
           "one_thread", "HEIGHT", "WIDTH"]

HEIGHT, WIDTH = picture_mod.HEIGHT, picture_mod.WIDTH

# What the pixels depend on. Bump "version" whenever any stage's output can change.
RENDERER = {
    "name": "orcaal-2020-spectrogram",
    "version": 1,
    "decoder": "FFmpeg mp3 (fixed point) -> int16 / 32768; other codecs: their FFmpeg decoder",
    "mono": "float32 mean of channels",
    "resample": {"to": features.SAMPLE_RATE, "filter": "resampy 0.2.2 kaiser_best", **resample_mod.KAISER_BEST,
                 "accumulate": "float32"},
    "mel": {"n_fft": features.N_FFT, "hop": features.HOP, "n_mels": features.N_MELS, "window": "hann",
            "center": True, "pad_mode": "reflect", "norm": "slaney", "htk": False, "power": 1},
    "pcen": {**features.PCEN, "zi": "zero"},
    "denoise": {"method": "BayesShrink", "mode": "soft", "wavelet": wavelet.WAVELET, "levels": "max - 3",
                "sigma": "estimated"},
    "picture": {"cmap": "viridis", "lut": "truncated bytes", "size": [HEIGHT, WIDTH], "layout": "matplotlib 3.2.2"},
}


def renderer_key() -> str:
    """A short stable digest of RENDERER: equal keys, equal pixels for equal audio."""
    return hashlib.sha256(json.dumps(RENDERER, sort_keys=True).encode()).hexdigest()[:16]


class SpectrogramError(ValueError):
    """Samples the 2020 picture is not defined for: the wrong length (not 128 x 130 cells), or silence."""


def _as_clips(samples, rate: int) -> torch.Tensor:
    """(n,), (C, n) or (B, C, n) (float32, or int16 scaled by 1/32768) -> (B, C, n) float32 tensor."""
    t = torch.as_tensor(samples) if not isinstance(samples, torch.Tensor) else samples
    if t.dtype == torch.int16:
        t = t.to(torch.float64) / 32768.0
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    while t.dim() < 3:
        t = t.unsqueeze(0)
    if t.dim() != 3:
        raise ValueError(f"samples must be (n,), (channels, n) or (clips, channels, n), got {tuple(t.shape)}")
    return t


def _check_length(n: int, rate: int) -> int:
    n22 = n if rate == features.SAMPLE_RATE else resample_mod.plan(n, rate, features.SAMPLE_RATE).n_fixed
    frames = features.frames_for(n22)
    if frames != picture_mod.COLS:
        lo = (picture_mod.COLS - 1) * features.HOP
        raise SpectrogramError(
            f"{n} samples at {rate} Hz give {frames} spectrogram frames; the 2020 picture has {picture_mod.COLS} "
            f"(3-second clips: {lo}..{lo + features.HOP - 1} samples at {features.SAMPLE_RATE} Hz, "
            f"{n / rate:.3f} s here)")
    return n22


def stages(samples, rate: int, device=None) -> dict[str, torch.Tensor]:
    """Every intermediate of the recipe for (B, C, n) / (C, n) / (n,) samples at `rate`:
    mono, resampled (float32), mel, pcen, denoised (float64), index (colour indices), pixels.
    (`render_batch` computes the same pixels without keeping the intermediates.)"""
    x = _as_clips(samples, rate)
    if device is not None:
        x = x.to(device)
    _check_length(int(x.shape[-1]), int(rate))
    out = {"mono": features.mono(x)}
    out["resampled"] = resample_mod.resample(out["mono"], int(rate), features.SAMPLE_RATE)
    out["mel"] = features.mel_spectrogram(out["resampled"])
    out["pcen"] = features.pcen(out["mel"])
    out["denoised"] = wavelet.denoise(out["pcen"])
    D = out["denoised"]
    _check_finite(D)
    out["index"] = picture_mod.colour_index(D)
    out["pixels"] = picture_mod.picture(D)
    return out


def _check_finite(D: torch.Tensor) -> None:
    finite = torch.isfinite(D).flatten(1).all(1)
    if not bool(finite.all()):
        bad = [int(i) for i in torch.nonzero(~finite).flatten()]
        raise SpectrogramError(f"clip(s) {bad}: the denoised spectrogram is not finite (silence: every "
                               f"finest wavelet detail is 0, so the noise estimate is undefined)")


def _pixels(samples, rate: int, device=None) -> torch.Tensor:
    """`stages(...)["pixels"]` without keeping the intermediates."""
    x = _as_clips(samples, rate)
    if device is not None:
        x = x.to(device)
    _check_length(int(x.shape[-1]), int(rate))
    y = resample_mod.resample(features.mono(x), int(rate), features.SAMPLE_RATE)
    D = wavelet.denoise(features.pcen(features.mel_spectrogram(y)))
    _check_finite(D)
    return picture_mod.picture(D)


def render_batch(samples: torch.Tensor, rate: int, device=None) -> torch.Tensor:
    """(B, n) mono or (B, C, n) clips of equal length at `rate` (float32, or int16 = k / 32768) ->
    (B, 607, 617, 4) uint8 on `device` (default: the samples' device)."""
    x = samples if isinstance(samples, torch.Tensor) else torch.as_tensor(samples)
    if x.dim() == 2:
        x = x.unsqueeze(1)
    return _pixels(x, rate, device=device)


@functools.cache
def _openmp():
    """threadpoolctl's handle on the OpenMP runtimes loaded with torch (its libgomp)."""
    return ThreadpoolController().select(user_api="openmp")


@contextlib.contextmanager
def one_thread():
    """torch's CPU operations of the calling thread on one OpenMP thread for the block; other threads
    keep theirs. OpenMP's thread count is a per-thread setting: threadpoolctl sets it for this thread,
    after torch's own lazy set-up of the thread (`torch.get_num_threads()`), which would undo it."""
    if torch.get_num_threads() == 1:
        yield
        return
    with _openmp().limit(limits=1):
        yield


def pixels_from_samples(samples, rate: int) -> np.ndarray:
    """(C, n) or (n,) samples of one clip at `rate` -> (607, 617, 4) uint8, on the CPU, on the calling
    thread alone (`one_thread`)."""
    with one_thread():
        x = _as_clips(samples, rate)
        if x.shape[0] != 1:
            raise ValueError(f"pixels_from_samples takes one clip, got {x.shape[0]}: use render_batch")
        return _pixels(x, rate)[0].cpu().numpy()


def pixels_from_file(path, *, strict: bool = True) -> np.ndarray:
    """Decode one audio file (audio.decode) and draw its picture: (607, 617, 4) uint8. Any problem,
    decoding or a clip the picture is not defined for, raises AudioError naming the file."""
    d = decode(path, strict=strict)
    try:
        return pixels_from_samples(d.samples, d.rate)
    except SpectrogramError as e:
        raise AudioError(d.path, str(e)) from None


FILES_BATCH = 16  # clips `pixels_from_files` draws together on one thread


def render_decoded(decoded: list, device=None) -> list:
    """Pictures of decoded clips (`audio.decode.Decoded`), those of one rate, channel count and length drawn
    together (`render_batch`): per clip a (607, 617, 4) uint8 tensor on `device` (a view of its batch's), or
    the AudioError naming its file where the picture is not defined (a batch that fails is drawn clip by
    clip, so one silent clip costs only itself)."""
    out: list = [None] * len(decoded)
    groups: dict[tuple, list[int]] = {}
    for i, d in enumerate(decoded):
        groups.setdefault((d.rate, d.channels, d.frames), []).append(i)
    for (rate, _, _), members in groups.items():
        runs = [members]
        while runs:
            run = runs.pop(0)
            try:
                pixels = render_batch(torch.from_numpy(np.stack([decoded[i].samples for i in run])), rate,
                                      device=device)
            except SpectrogramError as e:
                if len(run) > 1:
                    runs.extend([i] for i in run)
                else:
                    out[run[0]] = AudioError(decoded[run[0]].path, str(e))
                continue
            for slot, i in enumerate(run):
                out[i] = pixels[slot]
    return out


# The clips of Orcasound's hydrophones: 3 s at 48 kHz (HLS segments and the mp3s cut from them).
HYDROPHONE_CLIP = (3 * 48000, 48000)


def warm_up(clip: tuple[int, int] | None = HYDROPHONE_CLIP) -> None:
    """Load, once per process, what the first clip drawn would otherwise wait for: numba's compiled
    resampling kernels (from its disk cache, or compiled), matplotlib's viridis, torch's first CPU
    operations, and the resampling weights of `clip` = (samples, rate) (150 MB for 3 s at 48 kHz, kept
    as the first such clip would keep them; None: none). Draws 8 short noise clips resampled from
    48 kHz (the kernels) and one 3-second noise clip at 22,050 Hz through the rest of the recipe, on
    one thread. ≈ 1 s on 2 cores; the service runs it in its start-up thread (service.preload), so the
    first /predict on audio does not."""
    noise = torch.from_numpy(np.random.default_rng(0).standard_normal((resample_mod.BATCH_KERNEL_FROM, 4801))
                             .astype(np.float32) * 0.1)
    with one_thread():
        resample_mod.resample(noise, 48000, features.SAMPLE_RATE)  # `clips`
        resample_mod.resample(noise[:1], 48000, features.SAMPLE_RATE)  # `one_clip`
        n = (picture_mod.COLS - 1) * features.HOP
        one = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 1, n)).astype(np.float32) * 0.1)
        _pixels(one, features.SAMPLE_RATE)
        if clip is not None:
            resample_mod.prepare(*clip, features.SAMPLE_RATE)


def _draw_chunk(paths: list, strict: bool, then=None) -> list:
    """Decode `paths` and draw them together (`render_decoded`) on this thread alone: per path, (607, 617, 4)
    uint8 pixels (or `then`'s result) or the AudioError naming the file."""
    out: list = [None] * len(paths)
    decoded, slots = [], []
    for i, path in enumerate(paths):
        try:
            decoded.append(decode(path, strict=strict))
            slots.append(i)
        except AudioError as e:
            out[i] = e
    with one_thread():
        drawn = render_decoded(decoded)
    for i, pixels in zip(slots, drawn):
        out[i] = pixels if isinstance(pixels, AudioError) else pixels.numpy()
    if then is not None:
        for i, result in enumerate(out):
            if not isinstance(result, AudioError):
                try:
                    out[i] = then(paths[i], result)
                except (AudioError, OSError) as e:
                    out[i] = e
    return out


def pixels_from_files(paths: Iterable, *, batch: int = FILES_BATCH, workers: int | None = None,
                      strict: bool = True, then=None) -> Iterator[tuple]:
    """(path, pixels) for each audio file, in order, pixels (607, 617, 4) uint8 or the AudioError that file
    gives (`pixels_from_file`'s): `batch` files decoded and drawn together (`render_batch`, whose CPU
    resampling vectorises across clips) on each of `workers` threads (default: one per CPU), each thread's
    torch operations on that thread alone. A few batches ahead at most: memory stays at
    2 x workers x batch pictures, whatever the number of files.

    then(path, pixels), if given, runs on the drawing thread for each picture (e.g. writing its PNG: the
    writes then share the cores too), and its result, or the AudioError or OSError it raised, is yielded
    in place of the pixels."""
    workers = max(1, workers or os.cpu_count() or 1)
    batch = max(1, batch)
    iterator = iter(paths)
    pending: deque = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="orca-spectrogram") as pool:
        def fill():
            while len(pending) < 2 * workers:
                chunk = [p for _, p in zip(range(batch), iterator)]
                if not chunk:
                    return
                pending.append((chunk, pool.submit(_draw_chunk, chunk, strict, then)))

        fill()
        while pending:
            chunk, future = pending.popleft()
            results = future.result()
            fill()
            yield from zip(chunk, results)


def write_png(pixels: np.ndarray, path, *, overwrite: bool = False, compress_level: int = 1) -> Path:
    """Write (H, W, 4) uint8 pixels as an RGBA PNG (`audio.png.encode_png`), atomically: a temporary file in
    the same folder, renamed into place. An existing file is kept (FileExistsError) unless overwrite=True."""
    path = Path(path)
    pixels = np.ascontiguousarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 4:
        raise ValueError(f"write_png wants (height, width, 4) uint8 pixels, got {pixels.shape} {pixels.dtype}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (overwrite=False)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(encode_png(pixels, compress_level))
        os.chmod(tmp, published_mode())  # an ordinary write's mode (0644 under umask 022), not mkstemp's 0600
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the file appeared meanwhile: never replaces one
            os.unlink(tmp)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def spectrogram_png(audio_path, png_path, *, overwrite: bool = False) -> Path:
    """pixels_from_file(audio_path) written to png_path (write_png)."""
    png_path = Path(png_path)
    if png_path.exists() and not overwrite:
        raise FileExistsError(f"{png_path} exists (overwrite=False)")
    return write_png(pixels_from_file(audio_path), png_path, overwrite=overwrite)
