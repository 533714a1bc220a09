"""Orcasound HLS streams: the order of segments, media playlists, and the defaults an Orcasound URL gives.

Orcasound's hydrophones stream HLS: `s3://streaming-orcasound-net/<node>/hls/<unix time>/live.m3u8` and the
segments beside it, `live000.ts`, `live001.ts`, ... (AAC in MPEG-TS, about 10 s each). The folder's unix time
is when that streaming session started; the node names the hydrophone (`rpi_orcasound_lab`, ...).

- `segment_order(names)`: the playing order of segment names: numbers compared as numbers (`live9.ts` before
  `live10.ts`, `live999.ts` before `live1000.ts`), so a session past its thousandth segment stays in order.
- `parse_playlist(text)`: the segment URIs of an HLS media playlist (`#EXTM3U`), in playlist order;
  `media_sequence(text)`: the number of its first segment (a live playlist lists only the latest few).
- `resolve(base, uri)`: a playlist entry relative to the playlist's own URL or path.
- `orcasound_defaults(url)`: (location, starting timestamp) from `.../<node>/hls/<unix time>/...`, the
  defaults of `orca preprocess --location` and `--starting-timestamp`.

Pure functions on names and text: no I/O, no storage.
"""

from __future__ import annotations

import posixpath
import re
import urllib.parse

# Orcasound's streaming node names → the location part of a clip name. The dataset the original tool wrote
# (and /predict's table of places) names the Orcasound Lab hydrophone `orcasoundlab`; the other nodes keep
# their name without the `rpi_` prefix of the streaming bucket (`rpi_bush_point` → `bush_point`).
NODE_LOCATIONS = {"orcasound_lab": "orcasoundlab"}



class PlaylistError(ValueError):
    """A playlist that cannot be read: the message names it and says why."""


_NUMBER = re.compile(r"(\d+)")
_HLS_FOLDER = re.compile(r"(?:^|/)(?P<node>[A-Za-z0-9][A-Za-z0-9_\-.]*)/hls/(?P<seconds>\d{9,11})(?:/|$)")


def natural_key(name: str) -> tuple:
    """Sort key that compares digit runs as numbers: 'live9.ts' < 'live10.ts'. Ties (live01 vs live1) fall
    back to the plain name, so the order is total."""
    parts = _NUMBER.split(name)
    key = tuple((0, int(p), "") if i % 2 else (1, 0, p) for i, p in enumerate(parts) if p != "")
    return key + ((2, 0, name),)


def segment_order(names):
    """`names` (file names, paths or keys) in playing order: by folder, then by natural order of the name."""
    return sorted(names, key=lambda n: (posixpath.dirname(str(n).replace("\\", "/")),
                                        natural_key(posixpath.basename(str(n).replace("\\", "/")))))


def parse_playlist(text: str, name: str = "playlist") -> list[str]:
    """The media segment URIs of an HLS playlist, in order. A master playlist (one that lists variant
    streams, `#EXT-X-STREAM-INF`) or a text that is not a playlist raises PlaylistError naming `name`."""
    lines = [line.strip() for line in text.lstrip("\ufeff").splitlines()]
    if not lines or lines[0] != "#EXTM3U":
        raise PlaylistError(f"{name}: not an HLS playlist (the first line is not #EXTM3U)")
    uris, variant = [], False
    for line in lines[1:]:
        if not line:
            continue
        if line.startswith("#"):
            variant = variant or line.startswith("#EXT-X-STREAM-INF")
            continue
        uris.append(line)
    if variant:
        raise PlaylistError(f"{name}: a master playlist (it lists variant streams); give one of its media "
                            f"playlists: {', '.join(uris[:3])}")
    return uris


def media_sequence(text: str) -> int:
    """The playlist's `#EXT-X-MEDIA-SEQUENCE` (the number of its first segment; 0 when absent). A live
    playlist is a sliding window: a sequence above 0 means it does not start where the session started."""
    for line in text.splitlines():
        if line.strip().startswith("#EXT-X-MEDIA-SEQUENCE:"):
            try:
                return int(line.split(":", 1)[1].strip())
            except ValueError:
                return 0
    return 0


def resolve(base: str, uri: str) -> str:
    """`uri` of a playlist entry, relative to the playlist at `base` (a local path, or an s3:// or other URL).
    Absolute entries (a URL with a scheme, or an absolute path) are returned as they are."""
    if urllib.parse.urlsplit(uri).scheme:
        return uri
    parts = urllib.parse.urlsplit(base)
    if parts.scheme:  # s3://bucket/key/live.m3u8 + live001.ts (urljoin knows only http-like schemes)
        path = uri if uri.startswith("/") else posixpath.join(posixpath.dirname(parts.path), uri)
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, posixpath.normpath(path), "", ""))
    if uri.startswith("/"):
        return uri
    return posixpath.normpath(posixpath.join(posixpath.dirname(base.replace("\\", "/")), uri))


def location_of_node(node: str) -> str:
    """The clip-name location of a streaming node: `rpi_orcasound_lab` → `orcasoundlab`,
    `rpi_bush_point` → `bush_point`; another name is kept."""
    bare = node[4:] if node.startswith("rpi_") else node
    return NODE_LOCATIONS.get(bare, bare)


def orcasound_defaults(url: str) -> tuple[str | None, int | None]:
    """(location, unix time) from an Orcasound HLS URL, prefix, playlist or local copy of one
    (`.../<node>/hls/<unix time>/...`); (None, None) when `url` has no such part."""
    path = urllib.parse.urlsplit(url).path if "://" in url else url.replace("\\", "/")
    if "://" in url:
        path = urllib.parse.urlsplit(url).netloc + "/" + path.lstrip("/")
    matches = list(_HLS_FOLDER.finditer(path))
    if not matches:
        return None, None
    match = matches[-1]
    return location_of_node(match["node"]), int(match["seconds"])
