"""The local clips the service serves itself (`GET /clips/<path>`): the `audio_url` of local datasets.

A browser's audio player cannot fetch a `file://` URL, and the client's column for `audio_url` holds
100 characters; so for a local dataset /predict answers `<service URL>/clips/<path under
ORCA_LOCAL_ROOT>` (`service.storage.LocalStorage.public_url`), and this module says which file such
a path names. Only audio files are served (`AUDIO_TYPES`), only inside the local data root (after
`..` and symlinks), never a hidden file; the token and ORCA_ALLOWED_PREFIXES apply as to every URL
parameter (the route declares the clip's path as one: `service.routes.clips`). The bytes, with HTTP
Range, are sent by the HTTP layer.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from types import MappingProxyType

from .errors import Forbidden, NotFound

AUDIO_TYPES = MappingProxyType({".mp3": "audio/mpeg", ".wav": "audio/wav", ".flac": "audio/flac"})  # → Content-Type


@dataclass(frozen=True)
class Clip:
    path: str  # the file, resolved
    mimetype: str
    size: int


def clip_path(local_root: str | None, relative: str) -> str | None:
    """The local path `/clips/<relative>` names (not yet checked), or None where local data is disabled."""
    if not local_root:
        return None
    return os.path.join(os.path.abspath(local_root), *relative.split("/"))


def find_clip(runtime, relative: str) -> Clip:
    """The audio file `/clips/<relative>` names: Forbidden for a path that is not a visible audio file inside
    the local root, NotFound for one that does not exist (or local data is disabled)."""
    shown = f"/clips/{relative}"
    path = clip_path(runtime.config["LOCAL_ROOT"], relative)
    if path is None:
        raise NotFound(f"{shown}: this server reads no local data (ORCA_LOCAL_ROOT is empty)")
    if "\x00" in relative or relative.startswith("/") or "\\" in relative:
        raise Forbidden(f"{shown}: not a path under the local data root")
    parts = relative.split("/")
    if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
        raise Forbidden(f"{shown}: empty, dot or hidden path segments are not served")
    if _mimetype(relative) is None:
        raise Forbidden(f"{shown}: only audio clips ({', '.join(AUDIO_TYPES)}) are served")
    location = runtime.locate(path, "clip")  # Forbidden if it resolves (a symlink) outside the root
    mimetype = _mimetype(location.key)
    if mimetype is None:  # a link named .mp3 to something else
        raise Forbidden(f"{shown}: only audio clips ({', '.join(AUDIO_TYPES)}) are served")
    info = location.storage.stat(location.key)
    if info is None:
        raise NotFound(f"not found: {shown}")
    return Clip(location.key, mimetype, info.size)


def _mimetype(path: str) -> str | None:
    return AUDIO_TYPES.get(posixpath.splitext(path)[1].lower())
