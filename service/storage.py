"""Where models and datasets live: S3 (boto3) or local folders, behind one small interface.

A URL given by a client becomes a `Location` (a storage backend plus a key) with
`StorageLocator.locate()` (the app's runtime holds one). The backend is chosen by the URL's scheme,
from the backends' own declarations (`Storage.schemes`, `BACKENDS`): adding a store is one class.

- `s3://bucket/prefix/...` → `S3Storage`. boto3's standard configuration applies: credentials from
  the environment / `~/.aws`, `AWS_DEFAULT_REGION`, and `AWS_ENDPOINT_URL` (or
  `AWS_ENDPOINT_URL_S3`) for S3-compatible servers such as MinIO or moto, which botocore honours
  itself. One `S3Connector` per app holds the (thread-safe) client and boto3's transfer manager.
- a plain path (`local/models/srkw_cnn_0.h5`, `/data/labeled/`) or a `file://` URL → `LocalStorage`,
  the embedded default. Keys are absolute POSIX paths. Paths must resolve inside the configured
  local root (`ORCA_LOCAL_ROOT`), else 403; an empty root disables local URLs.

Each backend declares `public_url(key)` (what /predict answers as `audio_url`: for S3 the original's
`https://BUCKET.s3.amazonaws.com/KEY`, or `<ORCA_PUBLIC_BASE_URL>/KEY`; for a local file under the
served root, `<service URL>/clips/<path relative to it>`, which the service serves itself
(`service.clips`), else `file://…`) and `conditional_writes` (whether `upload` can refuse to replace
an object atomically, on the server's side).

Operations: `list(prefix)` (recursive, paginated, keys with size and etag; more than `max_listing`
objects is a 422), `download(key, path)` (checked by size: a short or broken download raises
`StorageError` and leaves no file), `upload(path, key)` (never overwrites: raises
`AlreadyExists`), `exists(key)`, `stat(key)`, `read_bytes(key)`. Storage failures are mapped to the
typed errors of `service.errors` (404, 403, 502, 503).

Faults: S3 calls are retried by botocore (standard mode: throttling such as SlowDown, 5xx,
dropped connections; `attempts` attempts with exponential backoff). Models and other large or
unsized objects download through boto3's transfer manager (s3transfer: ranged GETs, its retries of
bodies that break off, a temporary name renamed into place); spectrograms, whose size the listing
gives, are one GetObject each with the same guarantees (see `S3Storage._get_small` for why). Uploads stay one conditional
`PutObject` (`If-None-Match: *`): the transfer manager does not pass that condition on (s3transfer
0.19's `ALLOWED_UPLOAD_ARGS`), and the condition is what keeps two writers from replacing each
other's version; S3 stores all of the body or nothing. A server that answers the condition with
`NotImplemented` gets no write at all (`ConditionalWritesUnsupported`, 501) unless
`ORCA_ALLOW_UNCONDITIONAL_WRITES=1` accepts the weaker guarantee (an existence check, then a plain
`PutObject`). Local writes go through `conversion.atomic.atomic_output` (a hard link: exclusive).
"""

from __future__ import annotations

import copy
import logging
import os
import posixpath
import random
import shutil
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import MappingProxyType

from conversion.atomic import atomic_output

from .errors import (AlreadyExists, BadRequest, ConditionalWritesUnsupported, Forbidden, NotFound, StorageError,
                     StorageUnavailable, Unprocessable)

CHUNK = 1 << 20
SMALL_OBJECT = 8 << 20  # boto3's multipart threshold: below it the transfer manager makes one GetObject anyway
DEFAULT_MAX_LISTING = 100_000
ALLOW_UNCONDITIONAL = "ORCA_ALLOW_UNCONDITIONAL_WRITES"  # the setting named by the refusal
PUBLIC_BASE = "ORCA_PUBLIC_BASE_URL"
PUBLIC_URL = "ORCA_PUBLIC_URL"
CLIPS_PATH = "/clips"  # <service URL>/clips/<path>: the local root's audio, served by service.clips
log = logging.getLogger(__name__)


def _check_listing(count: int, limit: int, url: str) -> None:
    if count > limit:
        raise Unprocessable(f"{url} holds more than {limit} objects (ORCA_MAX_LISTING); "
                            "use a narrower prefix")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str | None = None


class Storage(ABC):
    """One bucket (S3) or the local file system. Keys use '/' separators.

    A backend declares the URL schemes it serves (`schemes`, `url_forms` for error messages) and
    builds its Location from a parsed URL (`resolve`); `BACKENDS` lists them for `StorageLocator`."""

    schemes: tuple[str, ...] = ()  # lower-case URL schemes this backend serves ('' = a plain path)
    url_forms: str = ""  # how its URLs look, for the message of an unsupported scheme
    conditional_writes: bool = True  # `upload` refuses to replace an object atomically, on the server's side

    @classmethod
    @abstractmethod
    def resolve(cls, parsed: urllib.parse.SplitResult, url: str, param: str, locator: "StorageLocator") -> "Location":
        """The Location of the client URL `url` (already split) with `locator`'s settings; BadRequest,
        Forbidden naming `param`."""

    @abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with `prefix` (recursively), sorted by key."""

    @abstractmethod
    def download(self, key: str, local_path: str, expected_size: int | None = None) -> None:
        """Copy `key` to `local_path`; raise NotFound / StorageError; never leave a partial file."""

    @abstractmethod
    def upload(self, local_path: str, key: str) -> None:
        """Store `local_path` as `key`, atomically; raise AlreadyExists if `key` exists, and
        ConditionalWritesUnsupported rather than write without the server's guarantee unless told to."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        ...

    def check_publishable(self, url: str) -> None:
        """Raise ConditionalWritesUnsupported if a write to `url` is known to be refused (the store
        cannot write conditionally and the weaker guarantee was not accepted): called before work
        whose result would then be lost (a training)."""

    def stat(self, key: str) -> ObjectInfo | None:
        """Size and ETag of `key`, or None if it does not exist."""
        raise NotImplementedError

    def read_bytes(self, key: str, max_size: int = 1 << 20) -> bytes:
        """A small object's content (sidecars); StorageError if larger than `max_size`."""
        with tempfile.TemporaryDirectory(prefix="orca-read-") as tmp:
            path = os.path.join(tmp, "object")
            self.download(key, path)
            if os.path.getsize(path) > max_size:
                raise StorageError(f"{self.url(key)} is larger than {max_size} bytes")
            with open(path, "rb") as f:
                return f.read()

    def ping(self) -> None:
        """Raise a StorageError subclass unless the backend answers (used by /ready)."""

    @abstractmethod
    def url(self, key: str) -> str:
        """The storage URL of `key` (`s3://bucket/key` or an absolute path)."""

    @abstractmethod
    def public_url(self, key: str) -> str:
        """A URL a browser can fetch (/predict's `audio_url`): `https://<bucket>.s3.amazonaws.com/<key>`,
        `<ORCA_PUBLIC_BASE_URL>/<key>`, `<service URL>/clips/<path>` or `file://...`."""


@dataclass(frozen=True)
class Location:
    """A URL as the client gave it, resolved to a storage backend and a key."""

    storage: Storage
    key: str
    url: str

    @property
    def prefix(self) -> str:
        """The key as a folder prefix: with one trailing '/', or '' for a bucket root."""
        key = self.key.rstrip("/")
        return key + "/" if key else ("/" if isinstance(self.storage, LocalStorage) else "")

    @property
    def prefix_url(self) -> str:
        """The URL as a folder, with one trailing '/'."""
        return self.url.rstrip("/") + "/"

    @property
    def name(self) -> str:
        return posixpath.basename(self.key.rstrip("/"))

    def sibling(self, name: str) -> "Location":
        """The object `name` in the same folder; its URL keeps the client's spelling."""
        folder_key = posixpath.dirname(self.key.rstrip("/"))
        key = posixpath.join(folder_key, name) if folder_key else name
        base = self.url.rstrip("/")
        cut = base.rfind("/")
        url = base[: cut + 1] + name if cut >= 0 else name
        return Location(self.storage, key, url)


def check_public_base(base: str | None) -> str | None:
    """ORCA_PUBLIC_BASE_URL as given (None or '' = unset); SystemExit naming it unless it is an
    http(s) URL with a host, whose only placeholder is `{bucket}`."""
    if not base:
        return None
    parsed = urllib.parse.urlsplit(base)
    rest = base.replace("{bucket}", "")
    if parsed.scheme not in ("http", "https") or not parsed.netloc or "{" in rest or "}" in rest \
            or parsed.query or parsed.fragment:
        raise SystemExit(f"{PUBLIC_BASE} must be an http(s) URL such as http://minio:9000/{{bucket}} "
                         f"(`{{bucket}}`, the only placeholder, is replaced by the bucket's name), got {base!r}")
    return base


def check_service_url(url: str | None) -> str | None:
    """ORCA_PUBLIC_URL without its trailing '/' (None or '' = unset); SystemExit naming it unless it is
    an http(s) URL with a host (a path is allowed: a proxy's prefix), without query or fragment."""
    if not url:
        return None
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.query or parsed.fragment:
        raise SystemExit(f"{PUBLIC_URL} must be the http(s) URL clients reach this service at, such as "
                         f"https://orca.example.org or http://127.0.0.1:5001, got {url!r}")
    return url.rstrip("/")


def served_path(key: str, root: str | None) -> str | None:
    """The path of the local `key` relative to the served root `root` (both resolved), or None when it lies
    outside it (or there is no root)."""
    if not root:
        return None
    root = root.rstrip("/")
    if not key.startswith(root + "/") or key.endswith("/"):
        return None
    return key[len(root) + 1:]


class StorageLocator:
    """Turns client URLs into Locations with this app's settings: the local root, the S3 connector,
    the listing bound, the public base of S3 URLs (ORCA_PUBLIC_BASE_URL), the service's own URL
    (ORCA_PUBLIC_URL) and the folder it serves clips from, and whether uploads may go without the
    server's conditional write (ORCA_ALLOW_UNCONDITIONAL_WRITES). `local_root`: None allows any local
    path (the CLI), '' disables local paths, else paths must lie inside it. `served_root`: the folder
    whose audio the service serves under `/clips/` (default: `local_root`; the CLI passes the server's).
    `backends`: the Storage classes to choose from by scheme (default `BACKENDS`)."""

    def __init__(self, local_root: str | None, s3: "S3Connector | None" = None,
                 max_listing: int = DEFAULT_MAX_LISTING, *, public_base: str | None = None,
                 service_url: str | None = None, served_root: str | None = None,
                 allow_unconditional_writes: bool = False, backends: "tuple[type[Storage], ...] | None" = None):
        self.local_root = local_root
        self.s3 = s3 or S3Connector()
        self.max_listing = max_listing
        self.public_base = check_public_base(public_base)
        self.service_url = check_service_url(service_url)
        served = local_root if served_root is None else served_root
        self.served_root = os.path.realpath(os.path.abspath(served)).replace(os.sep, "/") if served else None
        self.allow_unconditional_writes = bool(allow_unconditional_writes)
        self.backends = tuple(BACKENDS if backends is None else backends)
        by_scheme: dict[str, type[Storage]] = {}
        for backend in self.backends:
            for scheme in backend.schemes:
                if scheme in by_scheme:
                    raise ValueError(f"URL scheme {scheme!r} is served by both {by_scheme[scheme].__name__} "
                                     f"and {backend.__name__}")
                by_scheme[scheme] = backend
        self.by_scheme = MappingProxyType(by_scheme)

    def serving(self, service_url: str | None) -> "StorageLocator":
        """This locator for a client that reached the service at `service_url` (an HTTP request's URL
        root): its local Locations answer `<service_url>/clips/…` as their public URLs. None: itself."""
        if not service_url or service_url.rstrip("/") == self.service_url:
            return self
        locator = copy.copy(self)
        locator.service_url = service_url.rstrip("/")
        return locator

    def locate(self, url: str, param: str) -> "Location":
        """Resolve a client URL with the backend its scheme names. `param` names the query parameter
        in error messages."""
        if not url or not url.strip():
            raise BadRequest(f"{param} is empty")
        url = url.strip()
        parsed = urllib.parse.urlsplit(url)
        scheme = parsed.scheme.lower()
        if len(scheme) == 1 and os.name == "nt":
            scheme = ""  # a drive letter: C:\data
        backend = self.by_scheme.get(scheme)
        if backend is None:
            forms = ", ".join(b.url_forms for b in self.backends if b.url_forms)
            raise BadRequest(f"{param}: unsupported URL scheme {parsed.scheme!r} in {url!r} (use {forms})")
        return backend.resolve(parsed, url, param, self)


def locate(url: str, param: str, *, local_root: str | None, s3: "S3Connector | None" = None,
           max_listing: int = DEFAULT_MAX_LISTING, **settings) -> Location:
    """Resolve a client URL with a one-off `StorageLocator(local_root, s3, max_listing, **settings)`.

    `local_root`: None allows any local path, '' disables local paths, else paths must lie inside it.
    """
    return StorageLocator(local_root, s3, max_listing, **settings).locate(url, param)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


# ------------------------------------------------------------------------------------------ local

class LocalStorage(Storage):
    """Local folders; keys are absolute POSIX paths. With a `root`, a file or folder that resolves
    outside it (a symlink pointing out) is neither listed nor read nor written. Writes are
    conditional: a complete temporary file hard-linked under its name, which fails if it exists.
    `served_root`, `service_url`: the folder the service serves under `/clips/` and the URL clients
    reach the service at (ORCA_PUBLIC_URL or the request's), for `public_url`."""

    schemes = ("", "file")
    url_forms = "a local path or a file:// URL"
    conditional_writes = True

    def __init__(self, root: str | None = None, max_listing: int = DEFAULT_MAX_LISTING, *,
                 served_root: str | None = None, service_url: str | None = None):
        self.root = root
        self.max_listing = max_listing
        self.served_root = served_root
        self.service_url = service_url

    @classmethod
    def resolve(cls, parsed, url, param, locator):
        if parsed.scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise BadRequest(f"{param}: file URL with a remote host is not supported: {url!r}")
            path = urllib.request.url2pathname(parsed.path)
        else:
            path = url
        if locator.local_root == "":
            raise BadRequest(f"{param}: local paths are disabled on this server; use an s3:// URL")
        if "\x00" in path:
            raise BadRequest(f"{param}: NUL character in {url!r}")
        absolute = os.path.realpath(os.path.abspath(path))  # `..` and symlinks resolved before the check
        root = None
        if locator.local_root is not None:
            root = os.path.realpath(os.path.abspath(locator.local_root))
            if not _inside(absolute, root):
                raise Forbidden(f"{param}: {url} is outside the local data root of this server")
        key = absolute.replace(os.sep, "/")
        if path.endswith(("/", os.sep)) and not key.endswith("/"):
            key += "/"
        storage = cls(root, locator.max_listing, served_root=locator.served_root, service_url=locator.service_url)
        return Location(storage, key, url)

    def _confined(self, path: str) -> bool:
        return self.root is None or _inside(os.path.realpath(path), self.root)

    def _check(self, key: str, writing: bool = False) -> None:
        target = os.path.dirname(key) if writing else key
        if not self._confined(target):
            raise Forbidden(f"{self.url(key)} resolves outside the local data root of this server")

    def stat(self, key: str) -> ObjectInfo | None:
        self._check(key)
        try:
            size = os.path.getsize(key)
        except PermissionError:  # a folder on the way this process may not search
            raise Forbidden(f"access denied: {self.url(key)}") from None
        except OSError:
            return None
        return ObjectInfo(key, size, None) if os.path.isfile(key) else None

    def readable(self, key: str) -> str:
        """`key` as a local path, once it opened for reading: NotFound when it is no file, Forbidden
        when this process may not read it (a model used in place, never copied)."""
        self._check(key)
        try:
            with open(key, "rb"):
                pass
        except PermissionError:
            raise Forbidden(f"access denied: {self.url(key)} (not readable by uid {os.geteuid()})") from None
        except OSError:
            raise NotFound(f"not found: {self.url(key)}") from None
        if not os.path.isfile(key):
            raise NotFound(f"not found: {self.url(key)}")
        return key

    def ping(self) -> None:
        if self.root is not None and not os.path.isdir(self.root):
            raise StorageUnavailable(f"the local data root {self.root} does not exist")

    def list(self, prefix: str) -> list[ObjectInfo]:
        out = []
        if prefix.endswith("/"):
            roots = [prefix.rstrip("/") or "/"]
        else:  # a prefix that is not a folder: list its folder and filter
            roots = [posixpath.dirname(prefix) or "/"]
        for root in roots:
            if not os.path.isdir(root):
                continue
            for folder, dirs, files in os.walk(root, onerror=self._unlistable):
                dirs.sort()
                for name in files:
                    path = os.path.join(folder, name)
                    key = path.replace(os.sep, "/")
                    if not key.startswith(prefix) or not os.path.isfile(path):
                        continue
                    if os.path.islink(path) and not self._confined(path):
                        continue  # a symlink pointing out of the data root
                    out.append(ObjectInfo(key, os.path.getsize(path), None))
                    _check_listing(len(out), self.max_listing, prefix)
        out.sort(key=lambda o: o.key)
        return out

    def _unlistable(self, error: OSError) -> None:
        """os.walk's onerror: a folder this process may not read is a 403 naming it (a dataset listed
        without it would train on part of itself); one that vanished meanwhile is skipped."""
        if isinstance(error, PermissionError):
            folder = (error.filename or "").replace(os.sep, "/")
            raise Forbidden(f"access denied listing {self.url(folder)} (not readable by uid {os.geteuid()})")

    def download(self, key: str, local_path: str, expected_size: int | None = None) -> None:
        self._check(key)
        try:
            with atomic_output(local_path, prefix=".download-") as tmp:
                shutil.copyfile(key, tmp)
                _check_size(self.url(key), os.path.getsize(tmp), expected_size)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"not found: {self.url(key)}") from None
        except PermissionError as error:
            unreadable = error.filename is not None and os.path.abspath(error.filename) == os.path.abspath(key)
            raise Forbidden(f"access denied: {self.url(key)}"
                            + (f" (not readable by uid {os.geteuid()})" if unreadable else "")) from None

    def upload(self, local_path: str, key: str) -> None:
        self._check(key, writing=True)
        try:
            os.makedirs(os.path.dirname(key), exist_ok=True)  # as on S3, a key's folders need not exist
            with atomic_output(key, overwrite=False, prefix=".upload-") as tmp:
                with open(tmp, "wb") as dst, open(local_path, "rb") as src:
                    shutil.copyfileobj(src, dst, CHUNK)
                    dst.flush()
                    os.fsync(dst.fileno())
        except FileExistsError:
            raise AlreadyExists(key) from None
        except PermissionError:
            raise Forbidden(f"access denied writing {self.url(key)}") from None

    def exists(self, key: str) -> bool:
        return os.path.lexists(key)

    def url(self, key: str) -> str:
        return key

    def public_url(self, key: str) -> str:
        """`<service URL>/clips/<path under the served root>` (what `service.clips` serves); the `file://`
        URL of `key` without a service URL, or for a file outside the served root."""
        relative = served_path(key, self.served_root)
        if self.service_url and relative is not None:
            return f"{self.service_url}{CLIPS_PATH}/{urllib.parse.quote(relative)}"
        return "file://" + urllib.parse.quote(key)


# --------------------------------------------------------------------------------------------- S3

class S3Connector:
    """How one app talks to S3: one boto3 client (thread-safe, created on first use from boto3's
    standard configuration) with botocore's standard retries, and boto3's transfer manager for
    downloads. `on_client(client)` is called once on the new client (tests register botocore
    event handlers there to inject faults)."""

    def __init__(self, attempts: int = 5, max_connections: int = 16, on_client=None):
        self.attempts = max(1, int(attempts))
        self.max_connections = max(1, int(max_connections))
        self.on_client = on_client
        self.conditional_writes: bool | None = None  # what the server answered a conditional PutObject (None: not yet)
        self._client = None
        self._transfers = None
        self._warned_unconditional = False
        self._lock = threading.Lock()

    def learn_conditional_writes(self, supported: bool) -> None:
        self.conditional_writes = supported

    def note_unconditional(self) -> bool:
        """True the first time an unconditional write goes to this connector's server (to log it once)."""
        with self._lock:
            first, self._warned_unconditional = not self._warned_unconditional, True
            return first

    @property
    def client(self):
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                config = Config(retries={"max_attempts": self.attempts, "mode": "standard"}, connect_timeout=10,
                                read_timeout=120, max_pool_connections=self.max_connections)
                client = boto3.session.Session().client("s3", config=config)
                if self.on_client is not None:
                    self.on_client(client)
                self._client = client
            return self._client

    @property
    def transfers(self):
        client = self.client
        with self._lock:
            if self._transfers is None:
                from boto3.s3.transfer import TransferConfig, create_transfer_manager

                config = TransferConfig(num_download_attempts=self.attempts, max_concurrency=self.max_connections)
                self._transfers = create_transfer_manager(client, config)
            return self._transfers


class S3Storage(Storage):
    """One bucket of S3 or of an S3-compatible server. `public_base`: ORCA_PUBLIC_BASE_URL (None:
    `https://<bucket>.s3.amazonaws.com`); `allow_unconditional_writes`: ORCA_ALLOW_UNCONDITIONAL_WRITES."""

    schemes = ("s3",)
    url_forms = "s3://bucket/key"

    def __init__(self, bucket: str, connector: S3Connector | None = None, max_listing: int = DEFAULT_MAX_LISTING,
                 *, public_base: str | None = None, allow_unconditional_writes: bool = False):
        self.bucket = bucket
        self.connector = connector or S3Connector()
        self.max_listing = max_listing
        self.public_base = check_public_base(public_base)
        self.allow_unconditional_writes = allow_unconditional_writes

    @classmethod
    def resolve(cls, parsed, url, param, locator):
        if not parsed.netloc:
            raise BadRequest(f"{param}: no bucket in {url!r} (expected s3://bucket/key)")
        storage = cls(parsed.netloc, locator.s3, locator.max_listing, public_base=locator.public_base,
                      allow_unconditional_writes=locator.allow_unconditional_writes)
        return Location(storage, parsed.path.lstrip("/"), url)

    @property
    def conditional_writes(self) -> bool:
        """True unless this connector's server answered a conditional PutObject with NotImplemented."""
        return self.connector.conditional_writes is not False

    @property
    def client(self):
        return self.connector.client

    def list(self, prefix: str) -> list[ObjectInfo]:
        out = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", ()):
                    if item["Key"].endswith("/"):
                        continue  # "folder" marker objects
                    out.append(ObjectInfo(item["Key"], int(item["Size"]), item.get("ETag", "").strip('"')))
                    _check_listing(len(out), self.max_listing, self.url(prefix))
        except Unprocessable:
            raise
        except Exception as error:  # noqa: BLE001 - mapped or re-raised
            raise map_s3_error(error, self.url(prefix)) from error
        out.sort(key=lambda o: o.key)
        return out

    def download(self, key: str, local_path: str, expected_size: int | None = None) -> None:
        """Files of a known size below the multipart threshold (spectrograms) are one GetObject
        (`_get_small`); the rest (models, unknown sizes) go through boto3's transfer manager (ranged
        GETs in parallel, its own retries). Then the size check: the listing's size, or HeadObject's."""
        from s3transfer.exceptions import RetriesExceededError

        url = self.url(key)
        os.makedirs(os.path.dirname(os.path.abspath(local_path)), exist_ok=True)
        if expected_size is not None and expected_size < SMALL_OBJECT:
            self._get_small(key, local_path, expected_size, url)
            return
        try:
            future = self.connector.transfers.download(self.bucket, key, local_path)
            future.result()
        except RetriesExceededError as error:
            raise StorageError(f"S3 transfer failed for {url} after {self.connector.attempts} attempts: "
                               f"{error.last_exception}") from error
        except Exception as error:  # noqa: BLE001 - botocore and s3transfer already retried
            raise map_s3_error(error, url) from error
        expected = expected_size if expected_size is not None else future.meta.size
        written = os.path.getsize(local_path)
        if expected is not None and written != expected:  # a body that ended early without an error
            os.unlink(local_path)
            _check_size(url, written, expected)

    def _get_small(self, key: str, local_path: str, size: int, url: str) -> None:
        """One GetObject streamed to a temporary file, renamed into place when whole. Why not the
        transfer manager here: s3transfer 0.19 sends a HeadObject before every GetObject when it is
        not told the size, and its classic manager offers no way to tell it (it never calls a
        subscriber's `on_queued`): twice the requests, measured 2x slower per spectrogram against
        moto (bench figures in docs/design.md). botocore retries the call; a body that breaks off
        while streaming, which botocore does not retry, is fetched again here, up to `attempts` times."""
        from botocore import exceptions as bx

        broken_errors = (bx.ResponseStreamingError, bx.IncompleteReadError, bx.ReadTimeoutError,
                         bx.ConnectionClosedError, ConnectionError, TimeoutError)
        for attempt in range(1, self.connector.attempts + 1):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=key)
            except Exception as error:  # noqa: BLE001 - botocore already retried what it could
                raise map_s3_error(error, url) from error
            try:
                with atomic_output(local_path, prefix=".download-") as tmp, open(tmp, "wb") as out:
                    shutil.copyfileobj(response["Body"], out, CHUNK)
                    out.flush()
                    _check_size(url, out.tell(), size)
                return
            except broken_errors as error:
                if attempt == self.connector.attempts:
                    raise StorageError(f"S3 transfer failed for {url} after {attempt} attempts: {error}") from error
                log.warning("download of %s broke off (%s); fetching it again", url, error)
                time.sleep(min(5.0, 0.1 * 2 ** attempt) * random.uniform(0.5, 1.0))

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as error:  # noqa: BLE001
            if _error_code(error) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise map_s3_error(error, self.url(key)) from error
        return ObjectInfo(key, int(head.get("ContentLength", 0)), str(head.get("ETag", "")).strip('"') or None)

    def ping(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as error:  # noqa: BLE001
            raise map_s3_error(error, f"s3://{self.bucket}") from error

    def check_publishable(self, url: str) -> None:
        if not self.conditional_writes and not self.allow_unconditional_writes:
            raise ConditionalWritesUnsupported(
                f"not writing {url}: the S3 server at {self.client.meta.endpoint_url} does not support "
                "conditional writes (PutObject with If-None-Match: *, answered NotImplemented), so the write "
                "could replace an object another writer stored at the same moment. Nothing was written. Set "
                f"{ALLOW_UNCONDITIONAL}=1 to accept the weaker guarantee (an existence check, then a plain "
                "PutObject), or use a server that supports conditional writes")

    def upload(self, local_path: str, key: str) -> None:
        """One PutObject with If-None-Match: * after an existence check (which saves sending the body
        for a name that is taken). A server without conditional writes (NotImplemented, 501): refused
        (`check_publishable`) unless allowed, then the existence check alone guards the name
        (logged once per connector); either way the connector remembers the server's answer."""
        url = self.url(key)
        if self.exists(key):
            raise AlreadyExists(key)
        self.check_publishable(url)
        try:
            with open(local_path, "rb") as body:
                if self.connector.conditional_writes is False:  # known, and the weaker guarantee accepted
                    self._put_unconditionally(body, key)
                    return
                try:
                    self.client.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*")
                except Exception as error:  # noqa: BLE001
                    code = _error_code(error)
                    if code in PRECONDITION_CODES:
                        raise AlreadyExists(key) from None
                    if code not in NOT_IMPLEMENTED_CODES:
                        raise
                    self.connector.learn_conditional_writes(False)
                    self.check_publishable(url)  # nothing was written: refuse, unless allowed
                    body.seek(0)
                    self._put_unconditionally(body, key)
                else:
                    self.connector.learn_conditional_writes(True)
        except (AlreadyExists, ConditionalWritesUnsupported):
            raise
        except Exception as error:  # noqa: BLE001
            raise map_s3_error(error, url) from error

    def _put_unconditionally(self, body, key: str) -> None:
        """The weaker guarantee ORCA_ALLOW_UNCONDITIONAL_WRITES=1 accepts: `upload` checked that
        `key` did not exist; a writer storing it in between would be replaced."""
        if self.connector.note_unconditional():
            log.warning("the S3 server at %s does not support conditional writes; %s=1: new objects are "
                        "written after an existence check only, so two writers at the same moment could "
                        "replace each other's object", self.client.meta.endpoint_url, ALLOW_UNCONDITIONAL)
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body)

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except Exception as error:  # noqa: BLE001
            if _error_code(error) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise map_s3_error(error, self.url(key)) from error

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def public_url(self, key: str) -> str:
        """The original's `https://<bucket>.s3.amazonaws.com/<key>`, or `<public_base>/<key>` with
        `{bucket}` in the base replaced by the bucket's name (MinIO path style:
        `http://minio:9000/{bucket}` → `http://minio:9000/orcagsoc/<key>`)."""
        if self.public_base is None:
            return f"https://{self.bucket}.s3.amazonaws.com/{urllib.parse.quote(key)}"
        return f"{self.public_base.replace('{bucket}', self.bucket).rstrip('/')}/{urllib.parse.quote(key)}"


BACKENDS: tuple[type[Storage], ...] = (S3Storage, LocalStorage)  # the stores `StorageLocator` chooses from


def _error_code(error: Exception) -> str | None:
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return None
    return str(response.get("Error", {}).get("Code", "")) or None


PRECONDITION_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
NOT_IMPLEMENTED_CODES = frozenset({"NotImplemented", "501"})
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NoSuchBucket", "NotFound"})
DENIED_CODES = frozenset({"403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                "AllAccessDisabled", "AccountProblem", "ExpiredToken", "InvalidToken"})


def map_s3_error(error: Exception, url: str) -> Exception:
    """Turn a boto3/botocore exception into a typed service error naming `url`."""
    from botocore import exceptions as bx

    if isinstance(error, bx.ClientError):
        code = _error_code(error) or ""
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = error.response.get("Error", {}).get("Message") or code
        if code in NOT_FOUND_CODES or status == 404:
            return NotFound(f"not found: {url}")
        if code in DENIED_CODES or status == 403:
            return Forbidden(f"access denied by S3: {url} ({code})")
        if code in ("SlowDown", "ServiceUnavailable") or status == 503:
            return StorageUnavailable(f"S3 is unavailable for {url}: {code}")
        return StorageError(f"S3 error for {url}: {code} {message}".strip())
    if isinstance(error, (bx.EndpointConnectionError, bx.ConnectTimeoutError)):
        return StorageUnavailable(f"cannot reach the S3 endpoint for {url}: {error}")
    if isinstance(error, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return StorageUnavailable(f"no AWS credentials configured on this server (needed for {url})")
    if isinstance(error, (bx.ReadTimeoutError, bx.IncompleteReadError, bx.ResponseStreamingError,
                          bx.ConnectionClosedError, bx.BotoCoreError, ConnectionError, TimeoutError)):
        return StorageError(f"S3 transfer failed for {url}: {error}")
    return error


# ----------------------------------------------------------------------------------------- helpers

def _check_size(url: str, written: int, expected: int | None) -> None:
    if expected is not None and written != expected:
        raise StorageError(f"incomplete download of {url}: got {written} of {expected} bytes")
