"""Local caches that make a warm /predict (and the next /train) cheap: model files by URL + ETag, and
a mirror of each S3 unlabeled or labeled prefix that follows the bucket (new and changed objects
downloaded, vanished ones removed).

Everything lives under the app's `CacheDir` (ORCA_CACHE_DIR, default `<system temp>/orca-cache`):

- `models/<sha256(url)[:32]>/<etag><ext>`: one file per model version seen, the newest
  KEEP_MODEL_VERSIONS kept per URL. An unchanged model (same URL, same ETag) is not downloaded
  again; its ONNX export is cached by content hash (scoring.scorers, `onnx/` below the root).
- `mirrors/<sha256(prefix url)[:32]>/`: the spectrograms of one unlabeled prefix (/predict), or the
  `train/` and `validation/` images of one labeled prefix (/train, file names flattened by
  `service.train.mirror_name`), plus `index.json` (name → [etag, size]). Its size is that of the
  prefix's current images (deletions are followed); there is one mirror per prefix ever used and
  nothing evicts whole mirrors: delete the folder (or the whole cache root) while the service is
  idle to reclaim the space. /train hard-links the mirrored files into its private folder (a copy
  across file systems); the mirror replaces files by rename, so a running training keeps its own.

Local-storage URLs are read in place (no copy), so they need no mirror. A mirror is used under a
per-prefix lock (a thread lock plus `flock` on `mirrors/<id>.lock`, so several worker processes
sharing the cache are safe): concurrent /predict calls on the same prefix run one after the other,
on different prefixes concurrently.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import threading
from pathlib import Path

from conversion.atomic import write_bytes_atomically

from .errors import NotFound
from .storage import LocalStorage, Location, ObjectInfo

KEEP_MODEL_VERSIONS = 3


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:80] or "none"


class CacheDir:
    """The cache folder of one app (ORCA_CACHE_DIR): model files by URL + ETag, and prefix mirrors.

    Locks are per path: a thread lock (kept here, so two apps never share one) plus `flock` on
    the lock file, so several worker processes sharing the folder are safe too.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def locked(self, lock_path: Path):
        with self._guard:
            lock = self._locks.setdefault(str(lock_path), threading.Lock())
        with lock:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            with open(lock_path, "a+") as handle:
                try:
                    import fcntl

                    fcntl.flock(handle, fcntl.LOCK_EX)
                except (ImportError, OSError):  # not POSIX: the thread lock still holds
                    pass
                yield

    def model(self, model: Location, info: ObjectInfo | None = None) -> str:
        """A local path of the model file at `model`: in place for local storage, else the cached
        copy for the object's current ETag (downloaded once per URL + ETag). `info`: the object's
        `stat()`, when the caller has it already (saves a HeadObject)."""
        if not model.key or model.key.endswith("/"):
            raise NotFound(f"model_url is a folder, not a model file: {model.url}")
        if isinstance(model.storage, LocalStorage):
            try:
                return model.storage.readable(model.key)
            except NotFound:
                raise NotFound(f"model_url not found: {model.url}") from None
        info = info or model.storage.stat(model.key)
        if info is None:
            raise NotFound(f"model_url not found: {model.url}")
        folder = self.root / "models" / _digest(model.storage.url(model.key))
        ext = posixpath.splitext(model.key)[1] or ".h5"
        path = folder / f"{_safe(info.etag or 'size' + str(info.size))}-{info.size}{ext}"
        if path.is_file() and path.stat().st_size == info.size:
            return str(path)
        with self.locked(folder.with_suffix(".lock")):
            if not (path.is_file() and path.stat().st_size == info.size):
                try:
                    model.storage.download(model.key, str(path), expected_size=info.size)
                except NotFound:
                    raise NotFound(f"model_url not found: {model.url}") from None
            versions = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")),
                              key=lambda p: p.stat().st_mtime, reverse=True)
            for old in versions[KEEP_MODEL_VERSIONS:]:
                if old != path:
                    with contextlib.suppress(OSError):
                        old.unlink()
        return str(path)

    def mirror(self, location: Location, folder_key: str) -> "PrefixMirror":
        return PrefixMirror(self, location, folder_key)


class PrefixMirror:
    """The local copy of the objects `name → ObjectInfo` of one storage prefix (see the module doc).

    with mirror.synced(wanted) as fetch:   # removes what is no longer wanted, under the prefix lock
        path = fetch(name)                 # downloads `name` unless the mirror has its ETag already
    """

    def __init__(self, cache: CacheDir, location: Location, folder_key: str):
        self.cache = cache
        self.location = location
        ident = _digest(location.storage.url(folder_key))
        self.folder = cache.root / "mirrors" / ident
        self.lock_path = cache.root / "mirrors" / f"{ident}.lock"
        self.index_path = self.folder / "index.json"
        self.downloaded = 0
        self.reused = 0
        self.removed = 0

    def _load_index(self) -> dict:
        try:
            return {k: tuple(v) for k, v in json.loads(self.index_path.read_text()).items()}
        except (OSError, ValueError, AttributeError, TypeError):
            return {}

    def _save_index(self, index: dict) -> None:
        write_bytes_atomically(self.index_path, json.dumps(index).encode())

    @contextlib.contextmanager
    def synced(self, wanted: dict[str, ObjectInfo]):
        with self.cache.locked(self.lock_path):
            self.folder.mkdir(parents=True, exist_ok=True)
            index = self._load_index()
            for entry in os.scandir(self.folder):  # vanished keys, stale temp files
                if entry.name != "index.json" and entry.name not in wanted:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                        self.removed += entry.name in index
                    index.pop(entry.name, None)
            for name in list(index):
                if name not in wanted:
                    del index[name]
            guard = threading.Lock()

            def fetch(name: str) -> str:
                info = wanted[name]
                path = os.path.join(self.folder, name)
                stamp = (info.etag, info.size)
                with guard:
                    fresh = index.get(name) == stamp
                if fresh and os.path.isfile(path):
                    self.reused += 1
                    return path
                self.location.storage.download(info.key, path, expected_size=info.size)
                with guard:
                    index[name] = stamp
                    self.downloaded += 1
                return path

            try:
                yield fetch
            finally:
                with guard:
                    self._save_index({k: list(v) for k, v in index.items()})


class ScoreCache:
    """Scores already computed for a model, by clip identity: a clip's score is a pure function of
    the model file's bytes, the image's bytes and the requested size, so an unchanged clip under an
    unchanged model is not decoded or scored again (a repeated /predict between two trainings).

    A clip's identity is (key, size, ETag) on S3 and (path, size, mtime) for local files. Scores of
    the `max_models` most recently used (model, size) pairs are kept, at most `max_entries` each;
    `max_entries=0` disables the cache (env ORCA_SCORE_CACHE).
    """

    def __init__(self, max_entries: int = 500_000, max_models: int = 2):
        self.max_entries, self.max_models = max_entries, max_models
        self._tables: dict[tuple, dict] = {}
        self._lock = threading.Lock()

    @staticmethod
    def identity(info: ObjectInfo) -> tuple:
        if info.etag:
            return (info.key, info.size, info.etag)
        try:
            return (info.key, info.size, os.stat(info.key).st_mtime_ns)
        except OSError:
            return (info.key, info.size, None)

    def table(self, model_digest: str, rows: int, cols: int) -> dict | None:
        """The scores of one (model, size), most recently used first; None when disabled."""
        if self.max_entries <= 0:
            return None
        key = (model_digest, rows, cols)
        with self._lock:
            table = self._tables.pop(key, None)
            table = {} if table is None else table
            self._tables[key] = table  # most recent last
            while len(self._tables) > self.max_models:
                self._tables.pop(next(iter(self._tables)))
        return table

    def store(self, table: dict | None, identity: tuple, score: float) -> None:
        if table is None:
            return
        with self._lock:
            if len(table) >= self.max_entries:
                table.pop(next(iter(table)))
            table[identity] = score

