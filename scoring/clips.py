"""Clips of a dataset as model input, whether a spectrogram picture or the audio it was drawn from.

A dataset file is an image (`.png .jpg .jpeg`: `scoring.images`) or a 3-second audio clip
(`.mp3 .wav .flac`), told apart by its suffix (`is_audio`, `is_clip`, `list_clips`). An audio clip
goes straight to the model's input, without a PNG: `audio.spectrogram` draws the 2020 picture as a
(607, 617, 4) RGBA array, and `input_pixels` does to that array what `images.decode_image` does to
the PNG `orca spectrogram` writes for the clip (convert("RGB") drops alpha; NEAREST resize to rows x
cols with PIL's own index mapping), so the pixels, hence the scores, equal the PNG path's bit for bit.

`ClipDecoder(image_decode)` is the decoder every scoring and training path calls as
`decode(source, rows, cols)`: audio paths to the spectrogram, anything else to `image_decode`
(PIL, or torchvision on CUDA). `stream_batches` decodes the audio on its threads and renders a batch's
spectrograms together (`render`, `audio.spectrogram.render_batch`) on the decoder's `device` (CUDA, where
torch scores) or on the CPU (`stream_batches`' drawing thread, on one OpenMP thread, while the batch before
is scored; the CPU resampling vectorises across the clips of a batch, docs/design.md). `batched=False` draws each clip on the thread that decodes it instead. A
file that gives no spectrogram (not audio, corrupt, silent, not 3 s) raises `AudioClipError`, an `ImageError`: skipped wherever an unreadable image is.

`clip_identity` keys the pixel cache: the object's identity, plus `renderer_key()` (every setting the
spectrogram depends on) for audio, so a change of the renderer never serves stale pixels.

Importing this module imports neither torch nor `audio.spectrogram` (they load with the first audio clip).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from .errors import AudioClipError, ImageError
from .images import IMAGE_EXTENSIONS, decode_image, list_files, nearest_indices
from .pixel_cache import decoder_name, is_tensor, object_identity

# the audio a dataset may hold instead of (or beside) a spectrogram, in order of preference for one stem
AUDIO_EXTENSIONS = (".mp3", ".wav", ".flac")
CLIP_EXTENSIONS = IMAGE_EXTENSIONS + AUDIO_EXTENSIONS
# a 3-second clip is ~50 kB of mp3 and under 5 MB in any format; a larger file is refused before decoding
MAX_AUDIO_BYTES = 64 * 1024 * 1024


def is_audio(name) -> bool:
    return isinstance(name, (str, os.PathLike)) and os.fspath(name).lower().endswith(AUDIO_EXTENSIONS)


def is_clip(name) -> bool:
    return os.fspath(name).lower().endswith(CLIP_EXTENSIONS)


def list_clips(folder: str | os.PathLike) -> list[Path]:
    """Image and audio files under `folder`, recursively, sorted by path (hidden files left out)."""
    return list_files(folder, CLIP_EXTENSIONS)


def spectrogram_key() -> str:
    """`audio.spectrogram.renderer_key()`: the digest of every setting the picture depends on."""
    from audio.spectrogram import renderer_key

    return renderer_key()


def clip_identity(key: str, size: int, etag: str | None) -> tuple | None:
    """The pixel cache's identity of a stored clip: `object_identity`, and for audio the renderer's key."""
    identity = object_identity(key, size, etag)
    if identity is None or not is_audio(key):
        return identity
    return identity + ("spectrogram", spectrogram_key())


def file_clip_identity(path: str | os.PathLike) -> tuple | None:
    """`clip_identity` of a local file."""
    return clip_identity(os.fspath(path), 0, None)


def spectrogram_pixels() -> int:
    """Pixels of the picture drawn for an audio clip (the pixel cache's "source pixels" of audio)."""
    from audio.spectrogram import HEIGHT, WIDTH

    return HEIGHT * WIDTH


def input_pixels(rgba, rows: int, cols: int):
    """What `images.decode_image` makes of the PNG of these RGBA pixels, without the PNG: uint8
    (rows, cols, 3). `rgba`: numpy (H, W, 4), or a tensor (..., H, W, 4) on any device (gathered there)."""
    height, width = int(rgba.shape[-3]), int(rgba.shape[-2])
    down, across = nearest_indices(width, height, cols, rows)
    if is_tensor(rgba) and rgba.device.type == "cpu" and rgba.dim() == 3:  # one picture: numba's loop
        import torch

        return torch.from_numpy(_rgb_nearest(rgba.numpy(), down, across, rows, cols))
    if is_tensor(rgba):
        import torch

        rgb = rgba[..., :3]
        if (height, width) != (rows, cols):
            rgb = rgb.index_select(-3, torch.from_numpy(down.copy()).to(rgba.device))
            rgb = rgb.index_select(-2, torch.from_numpy(across.copy()).to(rgba.device))
        return rgb.contiguous()
    if rgba.ndim == 3 and rgba.dtype == np.uint8:
        return _rgb_nearest(rgba, down, across, rows, cols)
    rgb = rgba[..., :3]
    if (height, width) != (rows, cols):
        rgb = rgb[..., down, :, :][..., across, :]
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def _rgb_nearest(rgba: np.ndarray, down: np.ndarray, across: np.ndarray, rows: int, cols: int) -> np.ndarray:
    from ._pixel_kernels import rgb_nearest

    out = np.empty((rows, cols, 3), np.uint8)
    rgb_nearest(rgba, down, across, out)
    return out


def _error(path, error: Exception) -> AudioClipError:
    reason = getattr(error, "reason", None) or str(error)
    return AudioClipError(f"{os.fspath(path)}: {reason}")


class ClipDecoder:
    """`decode(source, rows, cols)` for images and audio (see the module docstring).

    image: the image decoder (`images.decode_image` by default). device: where a batch's spectrograms
    render together (`stream_batches` does it when `batched`); None: the CPU. batched=False: one clip at a
    time, on the thread that decodes it."""

    def __init__(self, image=decode_image, device=None, batched: bool = True):
        self.image = image
        self.device = device
        self.batched = batched

    @property
    def pixel_decoder(self) -> str:
        """The name of its image decoder in the pixel cache's keys (`pixel_cache.decoder_name`); audio
        entries are told apart by the renderer in their identity (`clip_identity`)."""
        return decoder_name(self.image)

    @property
    def draws_on_cpu(self) -> bool:
        """Whether `render` draws on the CPU (device None or a CPU device)."""
        return self.device is None or str(getattr(self.device, "type", self.device)) == "cpu"

    def __call__(self, source, rows: int, cols: int):
        if is_audio(source):
            return self.audio(source, rows, cols)
        return self.image(source, rows, cols)

    def samples(self, path):
        """The clip's decoded samples (`audio.decode.Decoded`), or AudioClipError naming the file."""
        from audio.decode import AudioError, decode

        try:
            size = os.path.getsize(path)
        except OSError:
            size = 0
        if size > MAX_AUDIO_BYTES:
            raise AudioClipError(f"{os.fspath(path)}: {size} bytes, more than a 3-second clip can be "
                                 f"({MAX_AUDIO_BYTES} at most)")
        try:
            return decode(path)
        except AudioError as error:
            raise _error(path, error) from None

    def audio(self, path, rows: int, cols: int) -> np.ndarray:
        """One audio file's model input on the CPU: uint8 (rows, cols, 3), or AudioClipError."""
        from audio.spectrogram import SpectrogramError, pixels_from_samples

        decoded = self.samples(path)
        try:
            rgba = pixels_from_samples(decoded.samples, decoded.rate)
        except SpectrogramError as error:
            raise _error(path, error) from None
        return input_pixels(rgba, rows, cols)

    def render(self, decoded: list, rows: int, cols: int) -> list:
        """Model inputs of decoded clips, rendered together on `self.device` (`render_decoded`: clips of one
        rate, length and channel count at a time; on the CPU with one OpenMP thread, `one_thread`): per
        clip, a uint8 (rows, cols, 3) tensor on the device (a numpy array on the CPU), or the AudioClipError
        that clip gives (a batch that fails is rendered clip by clip, so one silent clip costs only itself)."""
        from audio.decode import AudioError
        from audio.spectrogram import one_thread, render_decoded

        # on the CPU on this thread alone, beside the scoring (docs/design.md, "Drawing while scoring")
        with one_thread() if self.draws_on_cpu else contextlib.nullcontext():
            drawn = render_decoded(decoded, device=self.device)
        out: list = []
        for d, pixels in zip(decoded, drawn):
            if isinstance(pixels, AudioError):
                out.append(_error(d.path, pixels))
                continue
            rgb = input_pixels(pixels, rows, cols)  # on the CPU numba's loop, no OpenMP team
            out.append(rgb.numpy() if rgb.device.type == "cpu" else rgb)
        return out


def decoder_for(image_decode, device=None) -> ClipDecoder:
    """`image_decode` as a ClipDecoder (kept when it is one), rendering batches on `device` when CUDA, else
    on the CPU."""
    if isinstance(image_decode, ClipDecoder):
        return image_decode
    cuda = device is not None and str(getattr(device, "type", device)).startswith("cuda")
    return ClipDecoder(image_decode, device=device if cuda else None)


__all__ = ["AUDIO_EXTENSIONS", "CLIP_EXTENSIONS", "AudioClipError", "ClipDecoder", "ImageError", "clip_identity",
           "decoder_for", "file_clip_identity", "input_pixels", "is_audio", "is_clip", "list_clips"]
