"""Domain errors raised by the core library, each with the HTTP status a face should answer.

The core never imports tornado; the REST handlers map these to responses in one place
(``api/base.py``), the CLI prints their message, the client re-raises them from a reply.
"""

from __future__ import annotations

from typing import Any


class StagingError(Exception):
    """Base of every error the core raises on purpose. ``status`` is the HTTP answer."""

    status: int = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        return {"error": type(self).__name__, "message": self.message, **self.details}


class InvalidRequest(StagingError):
    """The request is malformed: wrong type, missing field, bad name, bad value."""

    status = 400


class PayloadTooLarge(InvalidRequest):
    status = 413


class SearchError(InvalidRequest):
    """The search is not valid: unknown clause, wrong payload, too deep, too large."""


class Unauthorized(StagingError):
    """Credentials are missing or wrong (Librarian authenticator, peer secret)."""

    status = 401


class Forbidden(StagingError):
    """The caller is known but may not do this (ingest disabled, path outside its roots)."""

    status = 403


class NotFound(StagingError):
    status = 404


class Conflict(StagingError):
    """The request contradicts what is stored (same name, other content; a busy directory)."""

    status = 409


class InsufficientSpace(StagingError):
    """The destination's file system has less free space than the job needs."""

    status = 507


class Unavailable(StagingError):
    """A store or peer that the request needs cannot be reached now."""

    status = 503


class QueryTimeout(StagingError):
    """A search ran past the time limit (``c.StagingApp.search_timeout_seconds``) and was
    cancelled: the server is fine, the search is too costly as asked."""

    status = 503

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"the search took longer than {timeout_s:g} s and was cancelled; "
                         "narrow it (fewer matches, a name prefix, no count)",
                         timeout_seconds=timeout_s)


class CopyFailed(StagingError):
    """A copy made to repair or offload a file does not match the file's checksums (nothing
    at its destination was changed)."""

    status = 500


class QuotaExceeded(Forbidden):
    """A staging launch would take the user past their staging quota
    (``c.StagingApp.staging_quota_bytes``): the message names the quota, the use and the
    request's size."""


class ContentsError(StagingError):
    """Jupyter's contents manager refused or failed an operation (the ``contents`` method)."""

    status = 502


class PeerRejected(StagingError):
    """The peer refused this site (wrong secret, not a hera_stage_ext server, ...)."""

    status = 502


class ServiceError(StagingError):
    """The site service refused a call from a user's worker (its status and message) or could
    not be reached (503)."""

    def __init__(self, message: str, status: int = 503) -> None:
        super().__init__(message)
        self.status = status


class UnknownKind(StagingError):
    """A job's kind is not one this process runs (none registered under that name)."""

    status = 500


class RcloneFailed(StagingError):
    """rclone reached the remote and failed (its message, secrets blanked)."""

    status = 502


class ChecksumMismatch(StagingError):
    """Bytes received from a peer are not the size or checksums it announced (the receiver
    discards them and pulls again)."""

    status = 422
