"""Decoded pixels kept between requests, so an active-learning round decodes only clips it has not seen.

A round re-scores nearly the same unlabeled pool with a new model and trains on nearly the same
labeled set: the PNGs do not change, only the weights. `PixelCache` keeps each clip's decoded
uint8 pixels at the model's input size, exactly what `images.decode_image` gives (the cache stores
the decoder's output, so hits are bit-identical to decoding), keyed by

    (the object's identity, rows, cols, the decoder)

where the identity says the bytes are unchanged: `("etag", etag, size)` on S3 (so a clip the client
copies from `unlabeled/` to `labeled/` keeps its entry), `("file", real path, size, mtime_ns)` for a
local file, and the decoder is the name of the function that decoded the pixels (`decoder_name`: "pil"
for `images.decode_image`, "torchvision" for `torch_decode.decode_png_torch` and the torch scorer).
The decoders are meant to give the same pixels, bit for bit, yet each reads only what it decoded
itself: a cache filled by one never stands in for the other (the CUDA path's torchvision decoding
runs even where the CPU path has decoded the same clips), and a decoder that drifted from PIL shows
in its own answers instead of hiding behind PIL's entries. /predict and /query's probe decode with the
scorer's decoder (`scoring.scorers.Scorers.decode`), so /query reads what /predict cached on either
device; training decodes with PIL, so on CUDA a clip labeled after /predict scored it is decoded once
more by the /train that first learns from it. Two tiers:

- **disk** (`<cache>/pixels/<xx>/<sha256>.px`): one file per entry, a 32-byte header (magic, rows,
  cols, the source image's pixel count) then rows*cols*3 bytes; read through `numpy.memmap`, so a
  hit costs a page-cache copy and never sits in the process's heap. Written to a temporary name and
  renamed (atomic: a reader sees a whole entry or none, in any thread or process). Bounded by
  `max_bytes` (ORCA_PIXEL_CACHE_BYTES): when this process's estimate passes it, the folder is
  scanned under a `flock` and the least recently used files (a hit refreshes the file's mtime) are
  deleted down to 90 %; other processes' writes are counted at the next scan, so the folder may
  exceed the bound by what the other workers wrote since. It also leaves `min_free` bytes free on its
  file system (ORCA_PIXEL_CACHE_MIN_FREE): a write that would take the free space below that first
  evicts the cache's own oldest entries, and is skipped when they are not enough, so a default bound
  larger than the disk cannot starve the models, jobs and scratch folders beside it. A file that is
  short or whose header is wrong counts as a miss and is removed.
- **device** (`DevicePixels`, ORCA_GPU_PIXEL_CACHE on CUDA): uint8 tensors on the GPU, least recently
  used out past its byte bound, so a round's batches are gathered on the GPU without touching the
  CPU. The class works on any torch device (the tests run it on the CPU); the service turns it on
  only where it trains and scores on CUDA (`cuda_tier`).

The source's pixel count is kept so that an entry is not served to a `/predict` whose
ORCA_MAX_PIXELS refuses that source (it then takes the normal path and is skipped as before).
Corrupt files are never stored: they are decoded (and skipped, with the same reason) every time.

Events go to `record(event, tier, amount)` (the app's `Metrics.record_pixels`): "hit" (tier),
"miss", "decode" (an image decoded and stored), "bytes" (tier: bytes held now), "evict" (tier),
"unwritten" (an image not written to disk: no room above `min_free`, or the write failed); and, from
the callers that draw spectrograms (`scoring.stream`, `training.data`), "render" (spectrograms drawn).

Audio clips are cached like images, by `scoring.clips.clip_identity`: the object's identity plus the
spectrogram renderer's key (`audio.spectrogram.renderer_key()`, a digest of all its settings).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np

LOG = logging.getLogger("training")

MAGIC = b"ORCAPX01"
HEADER = struct.Struct("<8sIIQQ")  # magic, rows, cols, source pixels, reserved: 32 bytes
EVICT_TO = 0.9  # an eviction deletes down to this fraction of the bound

Record = Callable[[str, "str | None", float], None]


def _no_record(event: str, tier: str | None, amount: float) -> None:
    return None


def file_identity(path: str | os.PathLike) -> tuple | None:
    """The identity of a local file's bytes: (real path, size, mtime_ns); None when it cannot be stat'ed."""
    try:
        real = os.path.realpath(path)
        stat = os.stat(real)
    except OSError:
        return None
    return ("file", real, stat.st_size, stat.st_mtime_ns)


def object_identity(key: str, size: int, etag: str | None) -> tuple | None:
    """The identity of a stored object's bytes: its ETag and size on S3, the file's stat for a local path."""
    if etag:
        return ("etag", etag, int(size))
    return file_identity(key)


PIL_DECODER = "pil"  # images.decode_image
TORCHVISION_DECODER = "torchvision"  # torch_decode.decode_png_torch and torch_scoring.TorchScorer.decode


def decoder_name(decode: Callable) -> str:
    """The decoder in an entry's key: the name a decode function declares (its `pixel_decoder`
    attribute: PIL_DECODER, TORCHVISION_DECODER), else its module and qualified name, so any other
    decoder (a wrapper, a new one) gets entries of its own."""
    declared = getattr(decode, "pixel_decoder", None)
    return declared if declared else f"{decode.__module__}.{decode.__qualname__}"


def is_tensor(value) -> bool:
    return type(value).__module__.startswith("torch")


class DevicePixels:
    """uint8 (rows, cols, 3) tensors on one torch device, least recently used out past `max_bytes`."""

    def __init__(self, device, max_bytes: int, record: Record = _no_record):
        import torch

        self.device = torch.device(device)
        self.max_bytes = int(max_bytes)
        self.record = record
        self._entries: OrderedDict[str, tuple] = OrderedDict()  # name → (tensor, source pixels)
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str):
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None:
                self._entries.move_to_end(name)
        return entry

    def put(self, name: str, pixels, source_pixels: int):
        """The tensor on the device for `pixels` (numpy or tensor); kept unless it alone exceeds the bound."""
        tensor = self.to_device(pixels)
        size = tensor.nbytes
        if size > self.max_bytes:
            return tensor
        evicted = 0
        with self._lock:
            old = self._entries.pop(name, None)
            if old is not None:
                self._bytes -= old[0].nbytes
            self._entries[name] = (tensor, int(source_pixels))
            self._bytes += size
            while self._bytes > self.max_bytes and self._entries:
                _, (dropped, _) = self._entries.popitem(last=False)
                self._bytes -= dropped.nbytes
                evicted += 1
            held = self._bytes
        if evicted:
            self.record("evict", "device", evicted)
        self.record("bytes", "device", held)
        return tensor

    def to_device(self, pixels):
        """numpy or tensor pixels as a tensor on the device. On CUDA through pinned memory, copied
        asynchronously on the current stream: kernels queued after it see the pixels, and torch's pinned
        allocator keeps the host buffer until the copy is done (about 40 us per 607x617 image)."""
        import torch

        if is_tensor(pixels):
            tensor = pixels
        else:  # a read-only memmap is copied into memory of the process first (torch writes nothing back)
            array = np.ascontiguousarray(pixels)
            tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
        if tensor.device == self.device:
            return tensor
        if self.device.type != "cuda":
            return tensor.to(self.device)
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
        self.record("bytes", "device", 0)


def cuda_tier(requested_device: str | None, fraction: float, record: Record = _no_record) -> DevicePixels | None:
    """The device tier where this service computes on CUDA: `fraction` of the GPU's memory; None on the
    CPU (there the page cache holds the disk tier and RAM stays free), or when `fraction` <= 0."""
    from .device import scoring_backend

    if fraction <= 0 or scoring_backend(requested_device) != "torch":
        return None
    from .device import pick_device

    device = pick_device(requested_device)
    if device.type != "cuda":
        return None
    import torch

    total = torch.cuda.get_device_properties(device).total_memory
    return DevicePixels(device, int(total * min(fraction, 0.9)), record)


class PixelCache:
    """Decoded pixels on disk (and on the device, where a tier is given); see the module docstring.

    `device_tier`: a `DevicePixels`, None, or a callable that makes one (or None) on first use, so an
    app can be built without importing torch.
    """

    def __init__(self, root: str | os.PathLike, max_bytes: int, *, device_tier=None, record: Record | None = None,
                 min_free: int = 0, free_bytes: Callable[[Path], int] | None = None):
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.min_free = max(0, int(min_free))
        self.free_bytes = free_bytes or _free_bytes  # of the root's file system (a test may stand in a disk)
        self._starved = False  # a write was skipped for want of free space; logged once until there is room
        self.record = record or _no_record
        self._tier_source = device_tier
        self._tier: DevicePixels | None = device_tier if isinstance(device_tier, DevicePixels) else None
        self._tier_ready = not callable(device_tier) or isinstance(device_tier, DevicePixels)
        self._lock = threading.Lock()
        self._estimate: int | None = None  # bytes on disk as this process believes; None = not scanned yet
        self._written_since_scan = 0

    # ------------------------------------------------------------------ naming
    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 or self.device_tier is not None

    @property
    def device_tier(self) -> DevicePixels | None:
        if not self._tier_ready:
            with self._lock:
                if not self._tier_ready:
                    try:
                        self._tier = self._tier_source()
                    except Exception as error:  # noqa: BLE001 - no device tier: the disk tier still works
                        LOG.warning("no device tier for the pixel cache: %s", error)
                        self._tier = None
                    self._tier_ready = True
        return self._tier

    @staticmethod
    def entry_name(identity: tuple, rows: int, cols: int, decoder: str = PIL_DECODER) -> str:
        """The entry's file name: a digest of (identity, rows, cols, decoder), see the module docstring."""
        return hashlib.sha256(repr((tuple(identity), int(rows), int(cols), str(decoder))).encode()).hexdigest()

    def path(self, name: str) -> Path:
        return self.root / name[:2] / f"{name}.px"

    # ------------------------------------------------------------------ reads
    # `decoder` (every read and write): the `decoder_name` of the function that decodes the clip on a
    # miss; `images.decode_image`'s unless told.
    def contains(self, identity: tuple | None, rows: int, cols: int, *, decoder: str = PIL_DECODER) -> bool:
        """Whether an entry exists (no read, no counting): /predict skips downloading those clips."""
        if identity is None:
            return False
        name = self.entry_name(identity, rows, cols, decoder)
        tier = self.device_tier
        if tier is not None and tier.get(name) is not None:
            return True
        return self.max_bytes > 0 and self.path(name).is_file()

    def get(self, identity: tuple | None, rows: int, cols: int, max_pixels: int | None = None, *,
            decoder: str = PIL_DECODER):
        """The cached pixels (a device tensor when the device tier holds or takes them, else a read-only
        (rows, cols, 3) uint8 memmap), or None: not cached, or its source exceeds `max_pixels`."""
        if identity is None:
            return None
        name = self.entry_name(identity, rows, cols, decoder)
        tier = self.device_tier
        if tier is not None:
            entry = tier.get(name)
            if entry is not None and not _too_large(entry[1], max_pixels):
                self.record("hit", "device", 1)
                return entry[0]
        found = self._read(name, rows, cols) if self.max_bytes > 0 else None
        if found is None or _too_large(found[1], max_pixels):
            self.record("miss", None, 1)
            return None
        self.record("hit", "disk", 1)
        pixels, source_pixels = found
        if tier is not None:
            return tier.put(name, pixels, source_pixels)
        return pixels

    def _read(self, name: str, rows: int, cols: int) -> tuple[np.ndarray, int] | None:
        path = self.path(name)
        try:
            with open(path, "rb") as handle:
                header = handle.read(HEADER.size)
            magic, h_rows, h_cols, source_pixels, _ = HEADER.unpack(header)
            if magic != MAGIC or (h_rows, h_cols) != (rows, cols):
                raise ValueError("header")
            if os.path.getsize(path) != HEADER.size + rows * cols * 3:
                raise ValueError("size")
            pixels = np.memmap(path, dtype=np.uint8, mode="r", offset=HEADER.size, shape=(rows, cols, 3))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, struct.error):  # truncated or foreign: a miss, and gone
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # least recently used = oldest mtime
        return pixels, int(source_pixels)

    # ------------------------------------------------------------------ writes
    def put(self, identity: tuple | None, rows: int, cols: int, pixels: np.ndarray, source_pixels: int, *,
            decoder: str = PIL_DECODER):
        """Store pixels freshly decoded by `decoder`; returns what the caller should use (the device tensor
        when the device tier took them, else `pixels`)."""
        self.record("decode", None, 1)
        if identity is None:
            return pixels
        name = self.entry_name(identity, rows, cols, decoder)
        if self.max_bytes > 0:
            self._write(name, rows, cols, pixels, source_pixels)
        tier = self.device_tier
        if tier is not None:
            return tier.put(name, pixels, source_pixels)
        return pixels

    def _write(self, name: str, rows: int, cols: int, pixels: np.ndarray, source_pixels: int) -> None:
        data = np.ascontiguousarray(pixels, dtype=np.uint8)
        if data.shape != (rows, cols, 3):
            raise ValueError(f"pixels of shape {data.shape} stored as {(rows, cols, 3)}")
        path = self.path(name)
        size = HEADER.size + data.nbytes
        if not self._room_for(size):
            self.record("unwritten", "disk", 1)
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(prefix=".px-", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(HEADER.pack(MAGIC, rows, cols, int(source_pixels), 0))
                    handle.write(memoryview(data).cast("B"))
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        except OSError as error:  # a full or read-only disk costs speed, never an answer
            LOG.warning("pixel cache: could not write %s: %s", path, error)
            self.record("unwritten", "disk", 1)
            return
        with self._lock:
            if self._estimate is not None:
                self._estimate += size
            self._written_since_scan += size
            estimate = self._estimate
            due = (estimate is None or estimate > self.max_bytes
                   or self._written_since_scan > self.max_bytes * (1 - EVICT_TO))
        if due:
            self.evict()
        else:
            self.record("bytes", "disk", estimate)  # this process's estimate between scans

    def _room_for(self, size: int) -> bool:
        """Whether writing `size` bytes leaves `min_free` free on the disk, after evicting this cache's
        own oldest entries if needed."""
        if self.min_free <= 0:
            return True
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if self.free_bytes(self.root) - size >= self.min_free:
                self._starved = False
                return True
            if not (self._starved and self._estimate == 0):  # an empty cache has nothing to give back
                self.evict(make_room=size)
            room = self.free_bytes(self.root) - size >= self.min_free
        except OSError as error:
            LOG.warning("pixel cache: cannot tell the free space under %s: %s", self.root, error)
            return False
        if not room and not self._starved:
            LOG.warning("pixel cache: not writing decoded pixels: the disk under %s would have less than "
                        "ORCA_PIXEL_CACHE_MIN_FREE = %d bytes free", self.root, self.min_free)
        self._starved = not room
        return room

    def evict(self, make_room: int = 0) -> int:
        """Scan the folder under its lock and delete the least recently used entries down to 90 % of
        the bound (only when over it) or, with `make_room`, until that many bytes more can be written
        leaving `min_free` free on the disk; returns the bytes on disk afterwards."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as lock:
            with contextlib.suppress(ImportError, OSError):
                import fcntl

                fcntl.flock(lock, fcntl.LOCK_EX)
            entries, total, now = [], 0, time.time()
            for sub in os.scandir(self.root):
                if not sub.is_dir(follow_symlinks=False):
                    continue
                for entry in os.scandir(sub.path):
                    try:
                        stat = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if entry.name.startswith(".px-"):  # a writer's temporary file; stale after an hour
                        if now - stat.st_mtime > 3600:
                            with contextlib.suppress(OSError):
                                os.unlink(entry.path)
                        continue
                    entries.append((stat.st_mtime_ns, stat.st_size, entry.path))
                    total += stat.st_size
            evicted = 0
            target = self.max_bytes * EVICT_TO if total > self.max_bytes else total
            if make_room and self.min_free > 0:  # what the cache may hold and still leave room for the write
                target = min(target, total + self.free_bytes(self.root) - self.min_free - make_room)
            if total > target:
                entries.sort()
                for _, size, path in entries:
                    if total <= target:
                        break
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                        total -= size
                        evicted += 1
        with self._lock:
            self._estimate, self._written_since_scan = total, 0
        if evicted:
            self.record("evict", "disk", evicted)
        self.record("bytes", "disk", total)
        return total

    # ------------------------------------------------------------------ batches
    def stack(self, arrays: list):
        """One batch from entries of either tier: a device tensor when any is one, else a numpy array."""
        if not any(is_tensor(a) for a in arrays):
            return np.stack(arrays)
        import torch

        tier = self.device_tier
        return torch.stack([a if is_tensor(a) else tier.to_device(a) for a in arrays])


def _free_bytes(folder: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system of `folder`."""
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize


def _too_large(source_pixels: int, max_pixels: int | None) -> bool:
    return bool(max_pixels and max_pixels > 0 and source_pixels > max_pixels)
