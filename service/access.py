"""Access control: an optional bearer token and an optional allow-list of storage prefixes.

Which route needs the token, which of its parameters are storage URLs and whether it writes is
declared on the route itself (`service.routes.web.policy`); this module only checks.

- `API_TOKEN` set: every endpoint except `/health` needs `Authorization: Bearer <token>`
  (compared in constant time); otherwise 401 `{"error"}` with `WWW-Authenticate: Bearer`.
- `ORCA_ALLOWED_PREFIXES` set (comma-separated, e.g. `s3://orcagsoc/,s3://other/models/`): every
  URL the service reads or writes (model_url, labeled_url, unlabeled_url, the folder a new version
  is written to, /models folders) must lie under one of them, else 403. An entry without a path
  (`s3://bucket`) allows the whole bucket; entries are folder prefixes (a trailing `/` is implied),
  so `s3://other/models` does not allow `s3://other/models_old/`. Local paths are resolved (`..`,
  symlinks) before the comparison with local entries (absolute paths or `file://` URLs); with no
  local entry in the list, local paths are governed by `ORCA_LOCAL_ROOT` alone. `http(s)://` entries
  govern the web media the Label Studio backend fetches from hosts other than Label Studio's
  (`allows_web`): with the list set and no such entry, none is fetched.
"""

from __future__ import annotations

import base64
import hmac
import os
import urllib.parse
import urllib.request

from .errors import Forbidden, Unauthorized


def check_token(expected: str | None, header: str | None, basic: bool = False) -> None:
    """Unauthorized unless `header` is `Bearer <expected>` (or, with `basic`, HTTP basic auth whose
    password is `<expected>`, any user name: what Label Studio sends to an ML backend whose connection
    has basic auth); nothing to check when no token is set."""
    if not expected:
        return
    scheme, _, token = (header or "").partition(" ")
    if basic and scheme.lower() == "basic":
        try:
            token = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            token = ""
        if hmac.compare_digest(token.encode(), expected.encode()):
            return
    elif scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected.encode()):
        return
    raise Unauthorized("missing or wrong bearer token (send Authorization: Bearer <API_TOKEN>"
                       + (", or basic auth with the password <API_TOKEN>" if basic else "") + ")")


def _normalize_s3(url: str) -> str | None:
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme != "s3" or not parsed.netloc:
        return None
    return f"s3://{parsed.netloc}/{parsed.path.lstrip('/')}"


def _normalize_web(url: str) -> str | None:
    """`http(s)://host[:port]/path` with the scheme and host in lower case, or None."""
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme.lower() not in ("http", "https") or not parsed.netloc:
        return None
    return f"{parsed.scheme.lower()}://{parsed.netloc.lower()}/{parsed.path.lstrip('/')}"


def _in_folders(normalized: str, folders: list[str]) -> bool:
    """A normalized `scheme://…` URL under one of the folder prefixes (each ending in `/`); False when it
    has `.` or `..` segments (some HTTP stacks normalize them: never guess)."""
    if any(part in (".", "..") for part in normalized.split("://", 1)[1].split("/")):
        return False
    return any((normalized + "/").startswith(e) or normalized.startswith(e) for e in folders)


def _local_path(url: str) -> str | None:
    url = url.strip()
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "file":
        path = urllib.request.url2pathname(parsed.path)
    elif parsed.scheme == "":
        path = url
    else:
        return None
    return os.path.realpath(os.path.abspath(path))


class AllowList:
    def __init__(self, spec: str | None):
        entries = [e.strip() for e in (spec or "").split(",") if e.strip()]
        self.enabled = bool(entries)
        self.s3, self.local, self.web = [], [], []
        for entry in entries:
            s3, web = _normalize_s3(entry), _normalize_web(entry)
            if s3 is not None:
                self.s3.append(s3.rstrip("/") + "/")
            elif web is not None:
                self.web.append(web.rstrip("/") + "/")
            else:
                path = _local_path(entry)
                if path is not None:
                    self.local.append(path.rstrip(os.sep) + os.sep)

    def allows(self, url: str) -> bool:
        if not self.enabled:
            return True
        s3 = _normalize_s3(url)
        if s3 is not None:
            return _in_folders(s3, self.s3)
        path = _local_path(url)
        if path is None:
            return True  # an unsupported scheme: `locate` answers 400
        if not self.local:
            return True  # local paths: ORCA_LOCAL_ROOT decides
        return any((path + os.sep).startswith(e) for e in self.local)

    def allows_web(self, url: str) -> bool:
        """An http(s) URL the service would fetch: under an `http(s)://` entry (folder prefixes, as
        for S3; no query string, no dot segments), or anything when the list is not set."""
        if not self.enabled:
            return True
        web = _normalize_web(url)
        if web is None or urllib.parse.urlsplit(url.strip()).query:
            return False
        return _in_folders(web, self.web)

    def check(self, url: str | None, param: str, action: str = "read") -> None:
        if url and url.strip() and not self.allows(url):
            raise Forbidden(f"{param}: {action} access to {url.strip()} is not allowed on this server "
                            "(outside ORCA_ALLOWED_PREFIXES)")

    def check_model_write(self, model_url: str | None) -> None:
        """The new version goes beside the model: its folder must be allowed too."""
        if not model_url or not model_url.strip():
            return
        folder = model_url.strip().rstrip("/").rsplit("/", 1)[0] + "/" if "/" in model_url else model_url
        self.check(folder, "model_url", "write")

    def check_urls(self, args, names, writes: bool = False) -> None:
        """Every URL among the parameters `names` of `args` must be allowed; with `writes`, the folder
        `model_url`'s new version goes to as well."""
        if not self.enabled:
            return
        for name in names:
            self.check(args.get(name), name)
        if writes:
            self.check_model_write(args.get("model_url"))
