"""`orca preprocess`'s INPUT in storage (`s3://`): the segments or audio files to read, fetched a few ahead
of the one being read. The clips themselves are `audio.preprocess`'s work, which reads local files only."""

from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from .errors import BadRequest
from .storage import locate

AHEAD = 4  # segments downloaded ahead of the one being read (an HLS segment is ~10 s, ~160 kB)


@dataclass
class StorageInputs:
    """The inputs in order (`audio.timeline.Input`, each fetched on demand), the names of the folder's files
    left out (neither segments nor audio), the playlist's media sequence (0 without a playlist), and `close`,
    which stops the downloads and removes their folder."""

    inputs: list
    left: list[str] = field(default_factory=list)
    sequence: int = 0
    close: Callable[[], None] = lambda: None


def storage_inputs(url: str) -> StorageInputs:
    """INPUT at `url`: a prefix of segments (or audio files), an .m3u8 playlist, or one file. Segments
    download to a temporary folder a few ahead of the one being read, each deleted once read. A playlist
    naming segments in another bucket is refused (BadRequest)."""
    from audio.hls import media_sequence, parse_playlist, resolve
    from audio.preprocess import PLAYLIST_SUFFIX, choose_files
    from audio.timeline import Input

    location = locate(url, "INPUT", local_root=None)
    storage = location.storage
    left: list[str] = []
    sequence = 0
    if location.key.lower().endswith(PLAYLIST_SUFFIX):
        text = storage.read_bytes(location.key).decode("utf-8", errors="replace")
        sequence = media_sequence(text)
        keys = []
        for uri in parse_playlist(text, url):
            entry = locate(resolve(url, uri), "INPUT", local_root=None)
            if getattr(entry.storage, "bucket", None) != getattr(storage, "bucket", None):
                raise BadRequest(f"{url}: the playlist names {entry.url}, in another bucket")
            keys.append((entry.key, None))
    elif location.key and not location.key.endswith("/") and storage.stat(location.key) is not None:
        keys = [(location.key, None)]
    else:
        prefix = location.prefix
        objects = {posixpath.basename(o.key): o for o in storage.list(prefix)
                   if "/" not in o.key[len(prefix):]}  # the folder's own files, as for a local folder
        chosen, left = choose_files(objects)
        keys = [(objects[name].key, objects[name].size) for name in chosen]
    folder = tempfile.mkdtemp(prefix="orca-preprocess-")
    pool = ThreadPoolExecutor(max_workers=AHEAD, thread_name_prefix="orca-s3-segments")
    futures: dict[int, object] = {}

    def download(i: int) -> str:
        key, size = keys[i]
        path = os.path.join(folder, f"{i:08d}-{posixpath.basename(key)}")
        storage.download(key, path, expected_size=size)
        return path

    @contextlib.contextmanager
    def fetch(i: int):
        for j in range(i, min(i + AHEAD + 1, len(keys))):
            if j not in futures:
                futures[j] = pool.submit(download, j)
        path = futures.pop(i).result()
        try:
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def close():
        pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(folder, ignore_errors=True)

    inputs = [Input(storage.url(key), fetch=functools.partial(fetch, i)) for i, (key, _) in enumerate(keys)]
    return StorageInputs(inputs, left, sequence, close)
