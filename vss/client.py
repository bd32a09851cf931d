"""An async client for a VSS server, on httpx, usable from asyncio and trio.

What it owns: a few small pools of `httpx.AsyncClient` connections, used in turn,
pointed at a base URL ending in `/vss`.
What it receives: the four VSS calls as Python method calls with protobuf messages.
What it sends: `POST {base}/<call>` with a protobuf body, plus whatever headers the
`AuthProvider` returns for that request (a signature is reused for a few seconds).
What it guarantees:
- a call either returns the decoded response or raises a `vss.errors.VssError`
  subclass; the caller never sees an httpx or protobuf exception;
- transient failures (5xx, transport errors, garbage from a broken proxy) are retried
  with exponential backoff within `RetryPolicy`; CONFLICT, NO_SUCH_KEY, AUTH,
  INVALID_REQUEST and 413 are final and raised at once, because retrying cannot help;
- the Authorization header and private keys are never logged or put in a repr.

A retried `putObjects` whose first response was lost may come back as CONFLICT for a
conditional write that in fact committed: the client cannot tell, so it raises the
CONFLICT and the caller, which knows what it wrote, decides.

The transport is a parameter, so tests drive the client with `httpx.MockTransport`.
"""

from __future__ import annotations

import itertools
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, TypeVar

import anyio
import coincurve
import httpx
from google.protobuf.message import DecodeError, Message

from vss.auth import sign_header
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

__all__ = [
    "AuthProvider",
    "FixedHeaders",
    "RetryPolicy",
    "SignatureAuth",
    "VssClient",
]

logger = logging.getLogger(__name__)

CONTENT_TYPE = "application/octet-stream"
USER_AGENT = "vssnode-vss-client/0.1"
SIGNATURE_REUSE_S = 10.0  # how long one Authorization signature is sent again
_CONNECTIONS_PER_POOL = 8

_ResponseT = TypeVar("_ResponseT", bound=Message)

# Indirection so tests can record backoff delays instead of sleeping.
_sleep = anyio.sleep


# --------------------------------------------------------------------------- auth


class AuthProvider(Protocol):
    """Supplies the headers that authorize one request.

    Called once per HTTP request, retries included, so a provider can sign with the
    current time (the server rejects signatures more than 24 h from its clock).
    """

    def headers(self) -> Mapping[str, str]: ...


class SignatureAuth:
    """The reference server's default authorizer: a secp256k1 signature over the time.

    `user_id` is the lower-case compressed-pubkey hex, the name the server gives this
    user's data; the reference server keys users by the hex exactly as sent, which is
    why `sign_header` always sends lower case.
    """

    def __init__(self, private_key: bytes) -> None:
        if len(private_key) != 32:
            raise ValueError("VSS signing key must be 32 bytes")
        try:
            public_key = coincurve.PrivateKey(bytes(private_key)).public_key
        except ValueError as exc:
            raise ValueError("VSS signing key is not a valid secp256k1 private key") from exc
        self._private_key = bytes(private_key)
        self.user_id: str = public_key.format(compressed=True).hex()
        self._signed_at = -SIGNATURE_REUSE_S
        self._header = ""

    def headers(self) -> Mapping[str, str]:
        # A signature proves the key for a time the server accepts within 24 hours, so
        # reusing one for a few seconds gives nothing away and saves an ECDSA signing
        # per request on the restore's hot path.
        now = time.monotonic()
        if now - self._signed_at >= SIGNATURE_REUSE_S:
            self._header = sign_header(self._private_key)
            self._signed_at = now
        return {"Authorization": self._header}

    def __repr__(self) -> str:
        # Never show the key: reprs end up in logs and tracebacks.
        return f"SignatureAuth(user_id={self.user_id!r})"


class FixedHeaders:
    """Sends the same headers on every request (e.g. a bearer token from a JWT proxy)."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._headers = dict(headers)

    def headers(self) -> Mapping[str, str]:
        return dict(self._headers)

    def __repr__(self) -> str:
        # Header values are usually credentials; show only the names.
        return f"FixedHeaders(names={sorted(self._headers)!r})"


# -------------------------------------------------------------------------- retry


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a transient failure.

    `attempts` counts every try, the first included. Between tries the client sleeps
    `base_delay_s`, then twice that, and so on (times a little jitter, so many nodes
    that lost the same server do not come back in lock step); the sleeps of one call
    add up to at most `max_total_s`. The defaults match rgb-lightning-node's clients.
    """

    attempts: int = 3
    base_delay_s: float = 0.1
    max_total_s: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if self.base_delay_s < 0 or self.max_total_s < 0:
            raise ValueError("RetryPolicy delays must not be negative")

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Yield the sleep before each retry: at most `attempts - 1` values.

        Stops early once the sleep budget `max_total_s` is spent; the last delay is
        cut short so the total never exceeds the budget.
        """
        uniform = (rng or random).uniform
        slept = 0.0
        for retry in range(self.attempts - 1):
            wanted = self.base_delay_s * (2**retry) * uniform(1.0, 1.25)
            budget = self.max_total_s - slept
            if wanted > 0 and budget <= 0:
                return
            delay = min(wanted, max(budget, 0.0))
            slept += delay
            yield delay


# ------------------------------------------------------------------------- client


class VssClient:
    """One VSS server, spoken to over a pooled HTTP connection.

    Use it as an async context manager, or call `aclose()` when done, so pooled
    connections are released. Safe to share between tasks.
    """

    def __init__(
        self,
        base_url: str,
        auth: AuthProvider | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        max_connections: int = 16,
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https"):
            # Fail at construction: otherwise every call would "retry" a config error.
            raise ValueError(f"VSS base URL must be http(s)://..., got scheme {url.scheme!r}")
        self._base_url = base_url.rstrip("/")
        # For messages and logs: a URL may carry user:password, which must not leak.
        self._display_url = str(url.copy_with(userinfo=b"")).rstrip("/")
        self._auth = auth
        self._retry = retry
        # httpcore matches every waiting request against every pooled connection, so
        # one pool of many connections costs O(connections) CPU per request; several
        # small pools used in turn keep that cost flat. A caller-given transport is
        # one pool of its own making, shared by a single client.
        pools = 1 if transport is not None else max(1, -(-max_connections // _CONNECTIONS_PER_POOL))
        per_pool = -(-max_connections // pools)
        tls = ssl.create_default_context()  # built once: loading CA certificates is slow
        self._pools = [
            httpx.AsyncClient(
                transport=transport,
                verify=tls,
                timeout=httpx.Timeout(timeout_s),
                limits=httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool),
                headers={"User-Agent": USER_AGENT},
            )
            for _ in range(pools)
        ]
        self._next_pool = itertools.cycle(self._pools)

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()

    async def __aenter__(self) -> VssClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ---------------------------------------------------------------- the calls

    async def get_object(self, store_id: str, key: str) -> vss_pb2.KeyValue:
        """Return key, value and version of `key`; NoSuchKeyError if it does not exist."""
        request = vss_pb2.GetObjectRequest(store_id=store_id, key=key)
        # A VSS server always fills `value`; its absence means we did not talk to one.
        response = await self._call(
            "getObject", request, vss_pb2.GetObjectResponse, required_field="value"
        )
        return response.value

    async def put_objects(
        self,
        store_id: str,
        transaction_items: Sequence[vss_pb2.KeyValue] = (),
        delete_items: Sequence[vss_pb2.KeyValue] = (),
        global_version: int | None = None,
    ) -> None:
        """Write and delete items all-or-nothing; ConflictError if a version does not match.

        `global_version=None` leaves the store's global version unchecked and
        unchanged; an int (0 for a store never written) makes it a condition.
        """
        request = vss_pb2.PutObjectRequest(
            store_id=store_id,
            transaction_items=transaction_items,
            delete_items=delete_items,
        )
        if global_version is not None:
            request.global_version = global_version
        await self._call("putObjects", request, vss_pb2.PutObjectResponse)

    async def delete_object(self, store_id: str, key_value: vss_pb2.KeyValue) -> None:
        """Delete `key_value.key` (only at `key_value.version` unless it is -1).

        Idempotent on the server: a missing key or other version is a silent no-op.
        """
        request = vss_pb2.DeleteObjectRequest(store_id=store_id, key_value=key_value)
        await self._call("deleteObject", request, vss_pb2.DeleteObjectResponse)

    async def list_key_versions(
        self,
        store_id: str,
        key_prefix: str | None = None,
        page_size: int | None = None,
        page_token: str | None = None,
    ) -> vss_pb2.ListKeyVersionsResponse:
        """Return one page of keys and versions, newest first.

        Pass `page_token=None` for the first page (the only one that carries
        `global_version`), then each `next_page_token` until it comes back empty.
        An empty token is refused here: it means "no more pages", and the reference
        server rejects it, so sending it is always a caller bug.
        """
        if page_token == "":
            raise ValueError(
                "page_token '' means the listing is finished; use None for the first page"
            )
        request = vss_pb2.ListKeyVersionsRequest(store_id=store_id)
        # Unset and empty differ on the wire for proto3 optionals: set only what was given.
        if key_prefix is not None:
            request.key_prefix = key_prefix
        if page_size is not None:
            request.page_size = page_size
        if page_token is not None:
            request.page_token = page_token
        return await self._call("listKeyVersions", request, vss_pb2.ListKeyVersionsResponse)

    async def iter_key_versions(
        self, store_id: str, key_prefix: str | None = None, page_size: int | None = None
    ) -> AsyncIterator[vss_pb2.KeyValue]:
        """Yield every key (with version, no value) under `key_prefix`, page by page."""
        page_token: str | None = None
        while True:
            page = await self.list_key_versions(store_id, key_prefix, page_size, page_token)
            for key_value in page.key_versions:
                yield key_value
            if not page.next_page_token:
                return
            if page.next_page_token == page_token:
                # A server that hands back the token it was given would loop forever.
                raise VssUnavailableError("listKeyVersions returned the same page token twice")
            page_token = page.next_page_token

    async def get_global_version(self, store_id: str) -> int:
        """Return the store's global version (0 if never written), without listing keys."""
        page = await self.list_key_versions(store_id, page_size=0)
        return page.global_version if page.HasField("global_version") else 0

    # ----------------------------------------------------------------- plumbing

    async def _call(
        self,
        method: str,
        request: Message,
        response_type: type[_ResponseT],
        required_field: str | None = None,
    ) -> _ResponseT:
        """Send one call, retrying transient failures as the RetryPolicy allows.

        `required_field`: a field every genuine response sets; a 200 without it is
        treated like any other garbage answer (retryable VssUnavailableError).
        """
        body = request.SerializeToString()
        delays = self._retry.delays()
        attempt = 1
        while True:
            try:
                return await self._attempt(method, body, response_type, required_field)
            except VssError as error:
                if not error.retryable:
                    raise
                delay = next(delays, None)
                if delay is None:
                    error.add_note(f"VSS {method}: gave up after {attempt} attempt(s)")
                    raise
                logger.warning(
                    "VSS %s failed (%s: %s); retry %d of %d in %.3f s",
                    method,
                    type(error).__name__,
                    error,
                    attempt,
                    self._retry.attempts - 1,
                    delay,
                )
                await _sleep(delay)
                attempt += 1

    async def _attempt(
        self,
        method: str,
        body: bytes,
        response_type: type[_ResponseT],
        required_field: str | None,
    ) -> _ResponseT:
        """One HTTP exchange, turned into a response message or a typed VssError."""
        headers = {"Content-Type": CONTENT_TYPE}
        if self._auth is not None:
            headers.update(self._auth.headers())
        url = f"{self._base_url}/{method}"
        try:
            response = await next(self._next_pool).post(url, content=body, headers=headers)
        except httpx.RequestError as exc:
            # str(exc) never includes request headers, so the Authorization stays out.
            raise VssUnavailableError(
                f"VSS {method}: could not reach {self._display_url} ({type(exc).__name__}: {exc})"
            ) from exc
        if response.status_code == 200:
            try:
                parsed = response_type.FromString(response.content)
            except DecodeError as exc:
                raise VssUnavailableError(
                    f"VSS {method}: HTTP 200 body is not a {response_type.__name__}; "
                    "is a proxy in the way?"
                ) from exc
            if required_field is not None and not parsed.HasField(required_field):
                raise VssUnavailableError(
                    f"VSS {method}: HTTP 200 {response_type.__name__} lacks {required_field!r}; "
                    "is a proxy in the way?"
                )
            return parsed
        raise _error_from_response(method, response, self._display_url)


def _error_from_response(method: str, response: httpx.Response, display_url: str) -> VssError:
    """Map a non-200 answer to the typed error the caller can act on."""
    status = response.status_code
    if status == 413:
        return RequestTooLargeError(
            f"VSS {method}: request body is over the server's size limit; "
            "send fewer or smaller items"
        )
    try:
        parsed = vss_pb2.ErrorResponse.FromString(response.content)
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
