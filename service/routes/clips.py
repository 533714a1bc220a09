"""`GET /clips/<path>`: a local audio clip's bytes, what /predict's `audio_url` names for local data.

Which file, and what is refused, is `service.clips.find_clip`; the bytes go out with the framework's
conditional responses (`flask.send_file(conditional=True)`): `Accept-Ranges: bytes`, `Range` → 206
with `Content-Range`, an unsatisfiable range → 416, ETag / Last-Modified, HEAD.
"""

from __future__ import annotations

from flask import Blueprint, request, send_file
from werkzeug.exceptions import RequestedRangeNotSatisfiable

from ..clips import clip_path, find_clip
from ..errors import NotFound, RangeNotSatisfiable
from ..storage import CLIPS_PATH
from .web import current_runtime, policy

clips = Blueprint("clips", __name__)


def clip_args() -> dict:
    """The clip's local path, as the URL parameter `clip` the allow-list checks (ORCA_ALLOWED_PREFIXES)."""
    relative = (request.view_args or {}).get("relative", "")
    path = clip_path(current_runtime().config["LOCAL_ROOT"], relative) if "\x00" not in relative else None
    return {"clip": path} if path else {}


@clips.get(f"{CLIPS_PATH}/<path:relative>")
@policy(urls=("clip",), args=clip_args)
def clip(relative):
    """(a path under ORCA_LOCAL_ROOT): the bytes of that .mp3, .wav or .flac (HTTP Range): local audio_url"""
    found = find_clip(current_runtime(), relative)
    try:
        return send_file(found.path, mimetype=found.mimetype, conditional=True, etag=True)
    except RequestedRangeNotSatisfiable:
        raise RangeNotSatisfiable(f"Range {request.headers.get('Range')!r} is not satisfiable: "
                                  f"{CLIPS_PATH}/{relative} holds {found.size} bytes", found.size) from None
    except FileNotFoundError:  # removed since find_clip looked
        raise NotFound(f"not found: {CLIPS_PATH}/{relative}") from None
