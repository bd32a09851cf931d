"""Typed VSS errors, one per protocol error code, shared by the client and the server.

Each error knows its wire code and HTTP status, so the server can answer with it and
the client can raise the same type from a response. Messages say what happened.
"""

from __future__ import annotations

from vss.proto import vss_pb2


class VssError(Exception):
    """Base of every VSS failure; `code` is the protocol's ErrorCode, `status` the HTTP status."""

    code: int = vss_pb2.UNKNOWN
    status: int = 500
    retryable: bool = False


class ConflictError(VssError):
    """A key or global version did not match, or a delete inside putObjects found no row."""

    code = vss_pb2.CONFLICT_EXCEPTION
    status = 409


class InvalidRequestError(VssError):
    """The request is malformed or breaks a protocol limit; retrying cannot help."""

    code = vss_pb2.INVALID_REQUEST_EXCEPTION
    status = 400


class InternalServerError(VssError):
    """The server failed; the call may succeed if retried."""

    code = vss_pb2.INTERNAL_SERVER_EXCEPTION
    status = 500
    retryable = True


class NoSuchKeyError(VssError):
    """getObject on a key that does not exist."""

    code = vss_pb2.NO_SUCH_KEY_EXCEPTION
    status = 404


class AuthError(VssError):
    """The Authorization header is missing or invalid."""

    code = vss_pb2.AUTH_EXCEPTION
    status = 401


class RequestTooLargeError(VssError):
    """The request body is over the server's limit (HTTP 413)."""

    code = vss_pb2.INVALID_REQUEST_EXCEPTION
    status = 413


class VssUnavailableError(VssError):
    """The server could not be reached, timed out, or answered something that is not VSS."""

    retryable = True


ERRORS_BY_CODE: dict[int, type[VssError]] = {
    cls.code: cls
    for cls in (ConflictError, InvalidRequestError, InternalServerError, NoSuchKeyError, AuthError)
}


def one_line(exc: BaseException) -> str:
    """An exception as `Type: message` on one line (the message's last line), for a log
    line, a status field or a command's one-line failure."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__
