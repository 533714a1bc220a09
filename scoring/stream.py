"""Streaming image batches for scoring, without torch: fetch (download) → decode → batches, overlapped.

`stream_batches(items, fetch, rows, cols, batch_size)` runs `fetch(item)` (e.g. a download into a
local mirror; returns a path or the encoded bytes) and the decode of each item on a thread pool,
a bounded number of items ahead of the consumer, and yields `Batch(items, pixels, skipped)` in
input order. So while the caller scores batch k (ONNX Runtime and torch release the GIL), batch k+1
is stacked (and its audio drawn) and the pool downloads and decodes batches k+2…k+1+prefetch: on a
cold call I/O and compute overlap, and memory stays at a few batches whatever the number of files.
Each batch is handed out as soon as it is stacked (the first one does not wait for the second's
decoding), and the stacking thread stays at most one batch ahead of the one the caller holds.

Decoding is `images.decode_image` (bit-identical to the original Keras preprocessing), or for an
audio file (.mp3/.wav/.flac) its 2020 spectrogram straight to the same pixels (`scoring.clips`); at most
`decode_workers` decodes run at once (PIL releases the GIL while it inflates a PNG), while up to
`workers` threads may wait on downloads. With `skip_unreadable=True` a file that is not a
readable image (corrupt PNG, not an image at all) or has more than `max_pixels` pixels (a
decompression bomb) is reported in `Batch.skipped` as `(item, reason)` instead of raising
`ImageError`; errors of `fetch` (storage) always propagate. When `decode` is a batched
`clips.ClipDecoder` (the default), audio is decoded to samples on the threads (where it is drawn on the
CPU, at most half of `decode_workers` at once) and each batch's spectrograms
are rendered together on its device (CUDA) or the CPU, on one more thread, `orca-render`, which draws
and stacks batch k+1 while the caller scores batch k. With a `cache`, each spectrogram drawn is counted
as `cache.record("render", None, n)` (the app's `orca_spectrograms_rendered_total`).
"""

from __future__ import annotations

import io
import os
import queue
import threading
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from . import clips
from .errors import ImageError
from .images import decode_image, read_source
from .pixel_cache import decoder_name

DEFAULT_MAX_PIXELS = 50_000_000  # 50 Mpixel (ORCA_MAX_PIXELS); the spectrograms are 0.3 Mpixel
PREFETCH_BATCHES = 2


def decode_checked(source, rows: int, cols: int, max_pixels: int | None = None,
                   decode: Callable = decode_image) -> np.ndarray:
    """`decode(source, rows, cols)` (`images.decode_image` or a bit-identical faster one), refusing
    (ImageError) images of more than `max_pixels` pixels before decoding."""
    return decode_sized(source, rows, cols, max_pixels, decode, need_size=False)[0]


def decode_sized(source, rows: int, cols: int, max_pixels: int | None = None, decode: Callable = decode_image,
                 need_size: bool = True) -> tuple[np.ndarray, int]:
    """(`decode_checked`'s pixels, the source image's width x height); the size is read from the
    image's header (0 when not needed and no limit asks for it). The pixel cache keeps the size, so
    an entry is never served to a request whose ORCA_MAX_PIXELS would refuse its source.
    An audio file (`clips.is_audio`) is drawn as its spectrogram (`clips.ClipDecoder`, around `decode`);
    its size is the picture's."""
    if clips.is_audio(source):
        return clips.decoder_for(decode).audio(source, rows, cols), clips.spectrogram_pixels()
    if (max_pixels and max_pixels > 0) or need_size:
        data = source if isinstance(source, (bytes, bytearray, memoryview)) else read_source(source)
        name = "<bytes>" if data is source else os.fspath(source)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as img:  # reads the header only
                    width, height = img.size
        except Image.DecompressionBombError as e:
            raise ImageError(f"{name} is too large to decode safely: {e}") from e
        except Exception:  # noqa: BLE001 - not an image: decode_image names the problem precisely
            return _decode(data, name, rows, cols, decode), 0
        if max_pixels and max_pixels > 0 and width * height > max_pixels:
            raise ImageError(f"{name} has {width}x{height} = {width * height} pixels, more than the "
                             f"limit of {max_pixels} (ORCA_MAX_PIXELS)")
        return _decode(data, name, rows, cols, decode), width * height
    return decode(source, rows, cols), 0


def _decode(data: bytes, name: str, rows: int, cols: int, decode: Callable = decode_image) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return decode(data, rows, cols)
    except ImageError as e:
        raise ImageError(str(e).replace(f"<{len(data)} bytes>", name)) from e
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name} is too large to decode safely: {e}") from e


@dataclass
class Batch:
    items: list                       # the items decoded, in input order
    pixels: Any                       # uint8 (len(items), rows, cols, 3): numpy, or a device tensor from the
                                      # pixel cache's device tier; None when every item was skipped
    skipped: list = field(default_factory=list)  # [(item, reason)] in input order


_SKIP = object()


@dataclass
class _Samples:
    """An audio clip decoded on a thread, waiting to be rendered with its batch (batched ClipDecoder)."""
    decoded: Any
    key: tuple | None


def _skipped(result) -> bool:
    return isinstance(result, tuple) and bool(result) and result[0] is _SKIP


def _stack(arrays: list):
    """One batch of pixels: numpy, or a tensor on the device of the first tensor among them."""
    if not any(clips.is_tensor(a) for a in arrays):
        return np.stack(arrays)
    import torch

    device = next(a for a in arrays if clips.is_tensor(a)).device
    return torch.stack([a if clips.is_tensor(a) else torch.from_numpy(np.array(a)).to(device) for a in arrays])


def stream_batches(items: Iterable, fetch: Callable[[Any], Any] | None, rows: int, cols: int,
                   batch_size: int, *, workers: int = 8, decode_workers: int | None = None,
                   prefetch: int = PREFETCH_BATCHES, skip_unreadable: bool = False,
                   max_pixels: int | None = None, decode: Callable = decode_image,
                   cache=None, identity: Callable[[Any], tuple | None] | None = None) -> Iterator[Batch]:
    """Batches of decoded images in `items` order; see the module docstring. `decode(source, rows,
    cols)` must give `images.decode_image`'s pixels (e.g. torch_decode.decode_png_torch on CUDA).

    `cache` (a `scoring.pixel_cache.PixelCache`) with `identity(item)` (the bytes' identity, or
    None): an item that `decode` decoded before is found there, neither fetched nor decoded again;
    one decoded is stored under `decode`'s name (`pixel_cache.decoder_name`). A batch is then a
    device tensor where the cache has a device tier (`Batch.pixels`)."""
    fetch = fetch or (lambda item: item)
    decode_workers = decode_workers or os.cpu_count() or 1
    workers = max(1, workers)
    fetching = threading.BoundedSemaphore(workers)  # downloads at once (≤ the S3 client's connections)
    decoding = threading.BoundedSemaphore(decode_workers)
    iterator = iter(items)
    stack = cache.stack if cache is not None and cache.device_tier is not None else _stack
    ahead = max(1, prefetch) * batch_size  # items decoding: `prefetch` batches, besides the one being drawn
    decoder = decoder_name(decode)

    batched = isinstance(decode, clips.ClipDecoder) and decode.batched
    # drawn on the CPU, audio needs the cores for drawing and scoring more than for decoding: half of the
    # decoding threads decode audio at once (docs/design.md, "Drawing while scoring")
    audio_decoding = (threading.BoundedSemaphore(max(1, decode_workers // 2))
                      if batched and decode.draws_on_cpu else decoding)

    def rendered(n: int) -> None:
        if cache is not None and n:
            cache.record("render", None, n)

    def work(item):
        key = identity(item) if cache is not None and identity is not None else None
        if key is not None:
            hit = cache.get(key, rows, cols, max_pixels, decoder=decoder)
            if hit is not None:
                return hit
        with fetching:
            source = fetch(item)
        audio = clips.is_audio(source)
        with audio_decoding if audio else decoding:
            try:
                if audio and batched:
                    return _Samples(decode.samples(source), key)  # rendered with its batch
                if key is None:
                    pixels = decode_checked(source, rows, cols, max_pixels, decode)
                    rendered(int(audio))
                    return pixels
                pixels, source_pixels = decode_sized(source, rows, cols, max_pixels, decode)
            except ImageError as error:
                if not skip_unreadable:
                    raise
                return (_SKIP, str(error))
        rendered(int(audio))
        return cache.put(key, rows, cols, pixels, source_pixels, decoder=decoder)

    def render(results: list) -> None:
        """The batch's decoded audio (`_Samples`) drawn together on the decoder's device, in place."""
        slots = [i for i, result in enumerate(results) if isinstance(result, _Samples)]
        if not slots:
            return
        drawn = decode.render([results[i].decoded for i in slots], rows, cols)
        for i, pixels in zip(slots, drawn):
            if isinstance(pixels, ImageError):
                if not skip_unreadable:
                    raise pixels
                results[i] = (_SKIP, str(pixels))
                continue
            rendered(1)
            key = results[i].key
            if key is not None:
                host = pixels.cpu().numpy() if clips.is_tensor(pixels) else pixels
                kept = cache.put(key, rows, cols, host, clips.spectrogram_pixels(), decoder=decoder)
                pixels = kept if clips.is_tensor(kept) else pixels
            results[i] = pixels

    def assemble(taken: list, results: list) -> Batch:
        render(results)
        batch_items, arrays, skipped = [], [], []
        for item, result in zip(taken, results):
            if _skipped(result):
                skipped.append((item, result[1]))
            else:
                batch_items.append(item)
                arrays.append(result)
        return Batch(batch_items, stack(arrays) if arrays else None, skipped)

    # threads waiting on downloads must not hold back decoding: room for both at once
    pool = ThreadPoolExecutor(workers + decode_workers, thread_name_prefix="orca-fetch")
    # Batches are assembled on a thread of their own (`orca-render`), each handed over as soon as it is
    # drawn and stacked, and at most one ahead of the one the caller holds (module docstring): `ahead_slots`
    # holds the producer back before it assembles a second batch the caller has not asked for yet.
    done: queue.Queue = queue.Queue()
    ahead_slots = threading.Semaphore(2)
    stop = threading.Event()

    def wait_for_slot() -> bool:
        while not stop.is_set():
            if ahead_slots.acquire(timeout=0.1):
                return True
        return False

    def produce() -> None:
        try:
            pending: deque = deque()

            def fill() -> None:
                while len(pending) < ahead:
                    item = next(iterator, _SKIP)
                    if item is _SKIP:
                        return
                    pending.append((item, pool.submit(work, item)))

            fill()
            while pending and wait_for_slot():
                taken, results = [], []
                while pending and sum(not _skipped(r) for r in results) < batch_size:
                    item, future = pending.popleft()
                    taken.append(item)
                    results.append(future.result())
                    fill()
                done.put((True, assemble(taken, results)))
            done.put((True, None))
        except BaseException as error:  # noqa: BLE001 - handed to the caller, raised there
            done.put((False, error))

    producer = threading.Thread(target=produce, name="orca-render", daemon=True)
    producer.start()
    try:
        while True:
            ok, value = done.get()
            if not ok:
                raise value
            if value is None:
                return
            yield value
            ahead_slots.release()  # the caller is done with that batch: the producer may assemble one more
    finally:
        stop.set()
        producer.join()
        pool.shutdown(wait=True, cancel_futures=True)
