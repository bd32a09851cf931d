"""What the client makes of a failed exchange: a typed VssError for an answer that is
not a success, and a one-line description of a transport failure.

The mapping is the protocol's (docs/PROTOCOL.md): an ErrorResponse's code decides; an
answer without one was not written by a VSS server, so it is never taken for
NO_SUCH_KEY or CONFLICT, however its status reads.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from vss.errors import (
    ERRORS_BY_CODE,
    AuthError,
    InternalServerError,
    InvalidRequestError,
    RequestTooLargeError,
    VssError,
    VssUnavailableError,
)
from vss.proto import vss_pb2

__all__ = ["describe_failure", "error_from_response"]


def describe_failure(exc: BaseException) -> str:
    """`Type: message` on one line, for an operator. The type it was mapped from is
    named too (httpx-aiohttp calls some refused connections ConnectTimeout), and an
    empty message is taken from the causes (httpcore on trio says nothing about a
    certificate that failed to verify; the ssl error under it does)."""
    name = type(exc).__name__
    cause = exc.__cause__
    if cause is not None and type(cause).__name__ != name:
        name = f"{name} from {type(cause).__name__}"
    detail = ""
    inner: BaseException | None = exc
    for _ in range(4):  # a mapped error is a few causes deep at most
        if inner is None or detail:
            break
        detail = " ".join(str(inner).split())
        inner = inner.__cause__ or inner.__context__
    return f"{name}: {detail or 'no detail'}"


def error_from_response(method: str, status: int, content: bytes, display_url: str) -> VssError:
    """Map a non-200 answer to the typed error the caller can act on."""
    if status == 413:
        return RequestTooLargeError(
            f"VSS {method}: request body is over the server's size limit; "
            "send fewer or smaller items"
        )
    try:
        parsed = vss_pb2.ErrorResponse.FromString(content)
    except DecodeError:
        parsed = None
    if parsed is not None and parsed.error_code in ERRORS_BY_CODE:
        error_type = ERRORS_BY_CODE[parsed.error_code]
        message = parsed.message or (
            f"VSS {method}: server answered {vss_pb2.ErrorCode.Name(parsed.error_code)} "
            f"(HTTP {status}) without a message"
        )
        error = error_type(message)
        error.add_note(f"VSS {method}: HTTP {status}")
        return error
    # Not a VSS error body: a proxy, a load balancer or a wrong URL answered. Never map
    # this to NO_SUCH_KEY or CONFLICT: a misrouted 404 must not look like an empty store.
    summary = f"VSS {method}: HTTP {status} without a VSS error body"
    if status >= 500:
        return InternalServerError(f"{summary}; the server or a proxy in front of it failed")
    if status in (401, 403):
        return AuthError(f"{summary}; the server or a proxy refused our credentials")
    if status == 400:
        return InvalidRequestError(f"{summary}; the request was rejected as malformed")
    return VssUnavailableError(f"{summary}; is {display_url!r} a VSS base URL?")
