"""An async client for a VSS server, on httpx, usable from asyncio and trio.

What it owns: one httpx transport (vss/transport.py picks its engine at first use:
aiohttp on asyncio, httpx's own on trio; or the caller's), pointed at a base URL
ending in `/vss`.
What it receives: the four VSS calls as Python method calls with protobuf messages.
What it sends: `POST {base}/<call>` with a protobuf body, plus whatever headers the
`AuthProvider` returns for that request (vss/client_auth.py).
What it guarantees:
- a call either returns the decoded response or raises a `vss.errors.VssError`
  subclass; the caller never sees an httpx, aiohttp or protobuf exception;
- transient failures (5xx, transport errors, garbage from a broken proxy, a body over
  `max_response_bytes`) are retried with exponential backoff within `RetryPolicy`;
  CONFLICT, NO_SUCH_KEY, AUTH, INVALID_REQUEST and 413 are final and raised at once,
  because retrying cannot help. The one exception: after an AUTH error, a provider
  whose credentials can be refreshed (`RefreshableAuth`, e.g. a `HeaderFile` holding a
  token that expired) is asked to refresh, and the call is tried once more if the
  headers changed;
- no response body is read past `max_response_bytes`, whatever the server sends;
- header values and private keys are never logged or put in a repr or an error.

A retried `putObjects` whose first response was lost may come back as CONFLICT for a
conditional write that in fact committed: the client cannot tell, so it raises the
CONFLICT and the caller, which knows what it wrote, decides.

Requests go straight to the transport as `httpx.Request`s, not through
`httpx.AsyncClient`: its cookie jar, auth flow, redirects and URL merging cost about a
third of the client's CPU per call and do nothing for VSS. getObject, the call a
restore makes once per key, goes further on the client's own asyncio engine: it is
sent as bare bytes on keep-alive HTTP/1.1 connections of the engine's own
(`vss.transport.KeepAlivePool`), without httpx's or aiohttp's request and response
objects, with the same headers, limits, errors and retries as every other call.
Under a caller's transport every call goes through httpx, so what the caller wraps
sees all of them. Tests drive the client with `httpx.MockTransport` passed as
`transport=`.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import TypeVar

import anyio
import httpx
from google.protobuf.message import DecodeError, Message

from vss.client_auth import (
    SIGNATURE_REUSE_S,
    AuthProvider,
    CombinedAuth,
    FixedHeaders,
    HeaderFile,
    RefreshableAuth,
    SignatureAuth,
    headers_auth,
)
from vss.client_errors import describe_failure, error_from_response
from vss.client_retry import RetryPolicy
from vss.errors import AuthError, VssError, VssUnavailableError
from vss.proto import vss_pb2
from vss.transport import BodyTooLarge, Connections, HttpEngine, read_body, trust_context, unused_tls_context
from vss.wording import counted

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "SIGNATURE_REUSE_S",
    "AuthProvider",
    "CombinedAuth",
    "FixedHeaders",
    "HeaderFile",
    "RefreshableAuth",
    "RetryPolicy",
    "SignatureAuth",
    "VssClient",
    "headers_auth",
]

logger = logging.getLogger(__name__)

CONTENT_TYPE = "application/octet-stream"
USER_AGENT = "vssnode-vss-client/0.1"
# The bundled server's largest request body, with room for the response's framing: a
# getObject answer carries one value that a putObjects could store.
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024 + 1024 * 1024
DEFAULT_RETRY = RetryPolicy()  # frozen: one shared default is safe
_CALLS = ("getObject", "putObjects", "deleteObject", "listKeyVersions")

_ResponseT = TypeVar("_ResponseT", bound=Message)

# Indirection so tests can record backoff delays instead of sleeping.
_sleep = anyio.sleep


class VssClient:
    """One VSS server, spoken to over pooled keep-alive connections.

    Use it as an async context manager, or call `aclose()` when done, so pooled
    connections are released. Safe to share between the tasks of one event loop.

    - `transport`: an httpx transport to send every request on (tests, fault
      injection); then `max_connections`, `ca_file` and `http_backend` do not apply.
    - `max_connections`: connections kept to the server at most (on asyncio, by
      getObject and by the other calls each: they keep connections of their own).
    - `max_response_bytes`: the most of a response body ever read; a longer one is
      abandoned and raised as a retryable VssUnavailableError. Give it the largest
      value the caller stores, plus headroom.
    - `ca_file`: a PEM file of the CAs trusted for https, instead of `SSL_CERT_FILE`
      or the system's. A missing or unloadable file is a ValueError here.
    - `http_backend`: "auto" (aiohttp on asyncio, httpx's own transport elsewhere),
      "aiohttp" or "httpx" to force one.
    """

    def __init__(
        self,
        base_url: str,
        auth: AuthProvider | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 10.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        max_connections: int = 16,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        ca_file: str | os.PathLike[str] | None = None,
        http_backend: HttpEngine = "auto",
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https"):
            # Fail at construction: otherwise every call would "retry" a config error.
            raise ValueError(f"VSS base URL must be http(s)://..., got scheme {url.scheme!r}")
        if max_response_bytes < 1:
            raise ValueError("VSS max_response_bytes must be at least 1")
        plain = url.copy_with(userinfo=b"")
        base = str(plain).rstrip("/")
        # For messages and logs: a URL may carry user:password, which must not leak.
        self._display_url = base
        self._urls = {call: httpx.URL(f"{base}/{call}") for call in _CALLS}
        self._headers = {"Content-Type": CONTENT_TYPE, "User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        # Credentials in the URL are HTTP Basic and win over the provider's, as they did
        # when this client went through httpx.AsyncClient; the URL sent carries none.
        self._url_authorization = _basic_authorization(url)
        self._auth = auth
        self._retry = retry
        self._max_response_bytes = max_response_bytes
        self._timeout_s = timeout_s
        self._extensions = {"timeout": httpx.Timeout(timeout_s).as_dict()}
        # The CAs are loaded now, once, so a bad ca_file fails here and not per call.
        needs_tls = ca_file is not None or (url.scheme == "https" and transport is None)
        tls = trust_context(ca_file) if needs_tls else unused_tls_context()
        self._connections = Connections(
            transport=transport, backend=http_backend, max_connections=max_connections, tls=tls
        )

    @property
    def http_engine(self) -> str:
        """What carries the requests: "aiohttp", "httpx", the caller's transport, or
        "not chosen yet" before the first call."""
        return self._connections.engine

    async def aclose(self) -> None:
        await self._connections.aclose()

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
        refreshed = False
        while True:
            try:
                return await self._attempt(method, body, response_type, required_field)
            except AuthError:
                # 401 means the server did nothing, so one more try is always safe.
                if refreshed or not self._refresh_auth():
                    raise
                refreshed = True
                logger.info("VSS %s: credentials refused; trying once more with refreshed headers", method)
            except VssError as error:
                if not error.retryable:
                    raise
                delay = next(delays, None)
                if delay is None:
                    error.add_note(f"VSS {method}: gave up after {counted(attempt, 'attempt')}")
                    raise
                # The callers say what an outage means (one line when it starts, one when it
                # is over); a line per quick retry is noise.
                logger.debug(
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

    def _refresh_auth(self) -> bool:
        """Ask a refreshable provider for new credentials; True if they changed."""
        return isinstance(self._auth, RefreshableAuth) and self._auth.refresh()

    async def _attempt(
        self,
        method: str,
        body: bytes,
        response_type: type[_ResponseT],
        required_field: str | None,
    ) -> _ResponseT:
        """One HTTP exchange, turned into a response message or a typed VssError."""
        headers = dict(self._headers)
        if self._auth is not None:
            headers.update(self._auth.headers())
        if self._url_authorization is not None:
            headers["Authorization"] = self._url_authorization
        connections = self._connections
        try:
            bare = connections.bare(method, self._urls[method]) if method == "getObject" else None
            if bare is not None:
                status, content = await bare.post(headers, body, limit=self._max_response_bytes, timeout_s=self._timeout_s)
            else:
                request = httpx.Request("POST", self._urls[method], headers=headers, content=body,
                                        extensions=self._extensions)
                response = await connections.get().handle_async_request(request)
                try:
                    content = await read_body(response, self._max_response_bytes)
                finally:
                    await response.aclose()
                status = response.status_code
        except BodyTooLarge as exc:
            raise VssUnavailableError(
                f"VSS {method}: {exc} (the client's max_response_bytes); is a proxy in the way?"
            ) from None
        except connections.failures as exc:
            # No exception of httpx, aiohttp or the OS includes request headers, so the
            # Authorization stays out; the URL is given without its userinfo.
            raise VssUnavailableError(
                f"VSS {method}: could not reach {self._display_url} ({describe_failure(exc)})"
            ) from exc
        if status == 200:
            parsed: _ResponseT = response_type()
            try:
                parsed.ParseFromString(content)
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
        raise error_from_response(method, status, content, self._display_url)


def _basic_authorization(url: httpx.URL) -> str | None:
    """The Basic Authorization header for credentials given in the URL, if any."""
    if not url.userinfo:
        return None
    token = base64.b64encode(f"{url.username}:{url.password}".encode()).decode("ascii")
    return f"Basic {token}"
