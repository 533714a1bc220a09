"""Typed errors of the service. Each carries its HTTP status; `service.app` turns every one of
them into `{"error": message}` in a single handler. Nothing here knows Flask."""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: an error the client should see, with its HTTP status."""

    status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(ServiceError):
    """A missing or malformed query parameter (the message names it)."""

    status = 400


class Unauthorized(ServiceError):
    """No or a wrong bearer token (API_TOKEN is set)."""

    status = 401


class Forbidden(ServiceError):
    """Storage refused access (S3 AccessDenied, a local path outside the allowed root)."""

    status = 403


class NotFound(ServiceError):
    """A model or dataset URL that does not exist (the message names the URL)."""

    status = 404


class Conflict(ServiceError):
    """The data changed under a request that reads it twice (/embed, /query); trying again works."""

    status = 409


class Unprocessable(ServiceError):
    """The inputs exist but cannot be used: not a Keras model, unsupported layer, empty or
    single-class labeled set, image size not matching the model, corrupt image."""

    status = 422


class Busy(ServiceError):
    """The service cannot take this request now (too many GET /train waiting, shutting down); the
    client may try again after `retry_after` seconds (the `Retry-After` header)."""

    status = 503

    def __init__(self, message: str, retry_after: int = 30):
        super().__init__(message)
        self.retry_after = retry_after


class TooManyRequests(ServiceError):
    """The training queue is full (ORCA_MAX_QUEUED)."""

    status = 429


class RangeNotSatisfiable(ServiceError):
    """A `Range` header no byte of the clip satisfies (or malformed); the answer says the clip's size
    (`Content-Range: bytes */size`)."""

    status = 416

    def __init__(self, message: str, size: int):
        super().__init__(message)
        self.content_range = f"bytes */{size}"


class StorageError(ServiceError):
    """Storage answered with a server error, or a download came back short or broken."""

    status = 502


class StorageUnavailable(StorageError):
    """The storage endpoint cannot be reached (connection refused, timeout) or is not configured."""

    status = 503


class ConditionalWritesUnsupported(StorageError):
    """The store cannot refuse to replace an object (an S3-compatible server that answers
    `If-None-Match: *` with NotImplemented), and ORCA_ALLOW_UNCONDITIONAL_WRITES does not accept the
    weaker guarantee: nothing is written (the message names the setting)."""

    status = 501


class AlreadyExists(Exception):
    """Raised by `Storage.upload` when the target key exists; never reaches the client
    (the versioning code picks the next free name)."""
