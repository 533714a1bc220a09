"""Label Studio's API as the backend uses it, with the standard library's HTTP client: a project's
export and details, and the media of its tasks.

Keys (LABEL_STUDIO_API_KEY, or the `access_token` of `/labelstudio/setup`):
- a legacy token goes as `Authorization: Token <key>` (Label Studio accepts it when the organisation
  allows legacy tokens);
- a personal access token is a JWT refresh token: exchanged at `POST /api/token/refresh/`
  (`{"refresh": key}` → `{"access": …}`) for an access token sent as `Authorization: Bearer …`, kept
  until Label Studio refuses it (access tokens live 5 minutes), then exchanged again once;
- a JWT access token (what newer servers may send to /setup) goes as `Bearer` as it is.

The key is sent only to the Label Studio host itself: task media on another http(s) host are fetched
without it, `s3://` media through the service's storage (and its allow-list).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import posixpath
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from scoring.clips import AUDIO_EXTENSIONS, MAX_AUDIO_BYTES
from scoring.images import IMAGE_EXTENSIONS

from ..errors import BadRequest, ServiceError, StorageError, StorageUnavailable, Unauthorized

log = logging.getLogger(__name__)

TIMEOUT_S = 30  # per request to Label Studio or a media host
MAX_MEDIA_BYTES = MAX_AUDIO_BYTES  # a task's clip or picture; larger is refused before it is read whole
MAX_EXPORT_BYTES = 256 * 1024 * 1024


class MediaError(Exception):
    """A task's media could not be fetched (the message says why): the task gets no prediction."""


@dataclass
class LabelStudioState:
    """What one app knows of the Label Studio servers that use it: per project, what `/setup` told
    (hostname, access token, label config), and access tokens exchanged for personal access tokens."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    projects: dict = field(default_factory=dict)  # project id → {"hostname", "access_token", "label_config"}
    access: dict = field(default_factory=dict)  # (url, refresh key) → access token

    def remember(self, project: int, **facts) -> None:
        with self.lock:
            known = self.projects.setdefault(project, {})
            known.update({k: v for k, v in facts.items() if v})

    def facts(self, project: int) -> dict:
        with self.lock:
            return dict(self.projects.get(project, {}))


def key_kind(key: str) -> str:
    """"legacy", "refresh" (a personal access token) or "access": a JWT's `token_type` claim."""
    parts = key.split(".")
    if len(parts) != 3:
        return "legacy"
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return "legacy"
    return "access" if isinstance(payload, dict) and payload.get("token_type") == "access" else "refresh"


def _origin(url: str) -> tuple[str, str]:
    parsed = urllib.parse.urlsplit(url)
    return parsed.scheme.lower(), parsed.netloc.lower()


class LabelStudio:
    """One Label Studio server and key (see the module docstring)."""

    def __init__(self, url: str, key: str | None, state: LabelStudioState):
        if not url or urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise BadRequest(f"Label Studio's URL must be http(s), got {url!r} (LABEL_STUDIO_URL, or the hostname "
                             "of /labelstudio/setup: run Label Studio with LABEL_STUDIO_HOST)")
        self.url = url.rstrip("/")
        self.key = key or None
        self.state = state

    # ------------------------------------------------------------------ authentication

    def _authorization(self, fresh: bool = False) -> str | None:
        if not self.key:
            return None
        kind = key_kind(self.key)
        if kind == "legacy":
            return f"Token {self.key}"
        if kind == "access":
            return f"Bearer {self.key}"
        with self.state.lock:
            access = None if fresh else self.state.access.get((self.url, self.key))
        if access is None:
            access = self._refresh()
            with self.state.lock:
                self.state.access[(self.url, self.key)] = access
        return f"Bearer {access}"

    def _refresh(self) -> str:
        body = json.dumps({"refresh": self.key}).encode()
        request = urllib.request.Request(f"{self.url}/api/token/refresh/", data=body, method="POST",
                                         headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                access = json.loads(response.read()).get("access")
        except urllib.error.HTTPError as error:
            raise Unauthorized(f"Label Studio at {self.url} refused the personal access token "
                               f"(POST /api/token/refresh/ answered {error.code})") from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise StorageUnavailable(f"Label Studio at {self.url} cannot be reached: {error}") from None
        if not isinstance(access, str) or not access:
            raise StorageError(f"Label Studio at {self.url} answered /api/token/refresh/ without an access token")
        return access

    def owns(self, url: str) -> bool:
        """Whether `url` is on this Label Studio server (the key may go there)."""
        return _origin(url) == _origin(self.url)

    # ------------------------------------------------------------------ requests

    def open(self, url: str, *, authorized: bool, accept: str = "*/*"):
        """The response to GET `url` (a file-like object with `.headers`); with `authorized`, the
        key's Authorization, exchanged once more when an access token was refused (401)."""
        for attempt in (0, 1):
            headers = {"Accept": accept}
            auth = self._authorization(fresh=attempt == 1) if authorized else None
            if auth:
                headers["Authorization"] = auth
            try:
                return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
            except urllib.error.HTTPError as error:
                if error.code == 401 and authorized and attempt == 0 and key_kind(self.key or "") == "refresh":
                    continue  # the access token expired: exchange the personal access token again
                raise
        raise AssertionError("unreachable")

    def get_json(self, path: str, limit: int = MAX_EXPORT_BYTES):
        url = f"{self.url}{path}"
        try:
            with self.open(url, authorized=True, accept="application/json") as response:
                raw = response.read(limit + 1)
        except urllib.error.HTTPError as error:
            hint = " (check LABEL_STUDIO_API_KEY)" if error.code in (401, 403) else ""
            raise StorageError(f"Label Studio answered {error.code} to GET {path}{hint}") from None
        except (urllib.error.URLError, OSError) as error:
            raise StorageUnavailable(f"Label Studio at {self.url} cannot be reached ({error})") from None
        if len(raw) > limit:
            raise StorageError(f"Label Studio's answer to GET {path} is larger than {limit} bytes")
        try:
            return json.loads(raw)
        except ValueError:
            raise StorageError(f"Label Studio's answer to GET {path} is not JSON") from None

    def export(self, project: int) -> list[dict]:
        """Every task of the project with its annotations (Label Studio's JSON export)."""
        tasks = self.get_json(f"/api/projects/{int(project)}/export?exportType=JSON")
        if not isinstance(tasks, list):
            raise StorageError(f"Label Studio's export of project {project} is not a list of tasks")
        return tasks

    def project(self, project: int) -> dict:
        details = self.get_json(f"/api/projects/{int(project)}/", limit=16 * 1024 * 1024)
        if not isinstance(details, dict):
            raise StorageError(f"Label Studio's answer about project {project} is not an object")
        return details

    def media_url(self, value: str) -> str:
        """A task's media reference as an absolute URL: `/data/upload/…` and `/data/local-files/?d=…` are
        on this server."""
        return value if urllib.parse.urlsplit(value).scheme else f"{self.url}/{value.lstrip('/')}"

    def download(self, url: str, path: str, limit: int = MAX_MEDIA_BYTES) -> int:
        """GET `url` into `path` (the key only on this server); its size, or MediaError."""
        try:
            with self.open(url, authorized=self.owns(url)) as response, open(path, "wb") as out:
                size = 0
                while True:
                    chunk = response.read(1 << 16)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > limit:
                        raise MediaError(f"{url}: larger than {limit} bytes")
                    out.write(chunk)
        except urllib.error.HTTPError as error:
            raise MediaError(f"{url}: HTTP {error.code}") from None
        except (urllib.error.URLError, OSError) as error:
            raise MediaError(f"{url}: {error}") from None
        except ServiceError as error:  # the key's exchange failed
            raise MediaError(f"{url}: {error.message}") from None
        return size


def media_suffix(value: str, kind: str) -> str:
    """The file suffix a task's media is decoded by (audio or image): from its path, or from the `d`
    parameter of `/data/local-files/?d=…`; the kind's default when neither says."""
    parsed = urllib.parse.urlsplit(value)
    known = AUDIO_EXTENSIONS if kind == "audio" else IMAGE_EXTENSIONS
    for candidate in (parsed.path, *urllib.parse.parse_qs(parsed.query).get("d", [])):
        suffix = posixpath.splitext(urllib.parse.unquote(candidate))[1].lower()
        if suffix in known:
            return suffix
    return known[0]


def fetch_media(runtime, studio: LabelStudio | None, value, kind: str, folder: str, name: str) -> str:
    """The task's media `value` (a URL or a path on Label Studio) as a local file in `folder`, named
    `name` + its suffix; MediaError when it cannot be fetched (or may not be: allow-list, scheme)."""
    if not isinstance(value, str) or not value.strip():
        raise MediaError(f"no media URL in the task's data ({value!r})")
    value = value.strip()
    path = os.path.join(folder, name + media_suffix(value, kind))
    scheme = urllib.parse.urlsplit(value).scheme.lower()
    if scheme == "s3":
        if not runtime.allow.allows(value):
            raise MediaError(f"{value}: outside ORCA_ALLOWED_PREFIXES")
        try:
            location = runtime.locate(value, "task media")
            info = location.storage.stat(location.key)
            if info is None:
                raise MediaError(f"{value}: not found")
            if info.size > MAX_MEDIA_BYTES:
                raise MediaError(f"{value}: larger than {MAX_MEDIA_BYTES} bytes")
            location.storage.download(location.key, path, expected_size=info.size)
        except ServiceError as error:
            raise MediaError(f"{value}: {error.message}") from None
        return path
    if scheme in ("http", "https") or (not scheme and value.startswith("/")):
        if studio is None and not scheme:
            raise MediaError(f"{value}: a Label Studio path, and Label Studio's URL is unknown (set "
                             "LABEL_STUDIO_URL, or let Label Studio call /labelstudio/setup)")
        if studio is not None and (not scheme or studio.owns(value)):
            studio.download(studio.media_url(value), path)  # with Label Studio's key
            return path
        if not runtime.allow.allows_web(value):
            raise MediaError(f"{value}: outside ORCA_ALLOWED_PREFIXES (list the http(s) prefix of the media "
                             "there)")
        return _plain_download(value, path)
    raise MediaError(f"{value}: unsupported media URL (s3://, http(s):// or a Label Studio /data/ path)")


def _plain_download(url: str, path: str) -> str:
    """GET a public http(s) URL into `path`, without any key."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(path, "wb") as out:
            data = response.read(MAX_MEDIA_BYTES + 1)
            if len(data) > MAX_MEDIA_BYTES:
                raise MediaError(f"{url}: larger than {MAX_MEDIA_BYTES} bytes")
            out.write(data)
    except urllib.error.HTTPError as error:
        raise MediaError(f"{url}: HTTP {error.code}") from None
    except (urllib.error.URLError, OSError) as error:
        raise MediaError(f"{url}: {error}") from None
    return path
