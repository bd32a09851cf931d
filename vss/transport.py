"""How the client's requests reach the server: one httpx transport, picked for the event loop.

httpx is the API either way (`httpx.Request` in, `httpx.Response` out, so tests and
fault injectors plug in as transports), but the HTTP/1.1 engine under it differs:

- on asyncio, aiohttp (`AiohttpEngine`): httpx-aiohttp's `AiohttpTransport` over one
  aiohttp session, about half the CPU per request of httpcore (0.24-0.34 ms against
  0.48-0.57 ms per getObject, bench/bench_client_cpu.py, bench/RESULTS.md). The same
  session also takes bare requests (`AiohttpEngine.post`: bytes in, status and bytes
  out, no httpx objects), which VssClient uses for getObject alone: a restore sends
  one per key, and httpx's Request and Response plus their conversion to and from
  aiohttp's were a fifth of the node's CPU per restored key;
- on trio, where aiohttp cannot run, httpx's own `AsyncHTTPTransport` (httpcore), its
  connections split over small pools used in turn: httpcore matches every queued
  request against every connection of its pool, so with 64 requests in flight one
  pool of 64 cost 3.4 ms of CPU per request, eight pools of 8 0.52 ms. aiohttp keeps
  idle connections in a queue per host and gains nothing from the split (0.255 ms
  in one pool, 0.257 ms in eight), so it gets one pool.

The engine is picked at first use, from the async library that is running then: a
client may be built before any event loop exists.
"""

from __future__ import annotations

import functools
import itertools
import os
import ssl
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import httpx
import sniffio

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "CONNECTIONS_PER_POOL",
    "KEEPALIVE_S",
    "AiohttpEngine",
    "Backend",
    "BodyTooLarge",
    "Connections",
    "ShardedTransport",
    "aiohttp_transport",
    "httpcore_transport",
    "read_body",
    "trust_context",
]

Backend = Literal["auto", "aiohttp", "httpx"]
CONNECTIONS_PER_POOL = 8  # httpcore pool size past which its per-request matching shows
# An idle connection is dropped before servers drop theirs (hypercorn, the bundled
# server's, after 5 s): reusing one the server is closing at that instant fails the
# request, which then costs a retry and a warning.
KEEPALIVE_S = 4.0


def trust_context(ca_file: str | os.PathLike[str] | None) -> ssl.SSLContext:
    """The TLS settings for https: verify the server against `ca_file`'s CAs.

    Without `ca_file`, `SSL_CERT_FILE` (then `SSL_CERT_DIR`) names the CAs, as for
    OpenSSL and httpx; without either, the system's store. Built once per client:
    loading CA certificates is slow. A file that cannot be loaded is a one-line
    ValueError, so a wrong path fails when the client is built, not at every call.
    """
    if ca_file is not None:
        return _load(f"VSS CA file {os.fspath(ca_file)}", cafile=os.fspath(ca_file))
    if os.environ.get("SSL_CERT_FILE"):
        path = os.environ["SSL_CERT_FILE"]
        return _load(f"SSL_CERT_FILE={path}", cafile=path)
    if os.environ.get("SSL_CERT_DIR"):
        path = os.environ["SSL_CERT_DIR"]
        return _load(f"SSL_CERT_DIR={path}", capath=path)
    return ssl.create_default_context()


def _load(label: str, *, cafile: str | None = None, capath: str | None = None) -> ssl.SSLContext:
    source = cafile or capath or ""
    if not (os.path.isfile(source) if cafile else os.path.isdir(source)):
        raise ValueError(f"{label}: not found or not a {'file' if cafile else 'directory'}")
    try:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    except (OSError, ssl.SSLError) as exc:
        reason = " ".join(str(exc.strerror or exc).split())
        raise ValueError(f"{label}: cannot be loaded as PEM CA certificates ({reason})") from None


def unused_tls_context() -> ssl.SSLContext:
    """For a client of an http:// server: transports want a context but never use it,
    and the default one would load the CA bundle for nothing. It verifies, should it
    ever be used."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class ShardedTransport(httpx.AsyncBaseTransport):
    """Several transports used in turn, one request each, as one."""

    def __init__(self, transports: list[httpx.AsyncBaseTransport]) -> None:
        if not transports:
            raise ValueError("ShardedTransport needs at least one transport")
        self.transports = transports
        self._next = itertools.cycle(transports)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await next(self._next).handle_async_request(request)

    async def aclose(self) -> None:
        for transport in self.transports:
            await transport.aclose()


def httpcore_transport(max_connections: int, tls: ssl.SSLContext) -> httpx.AsyncBaseTransport:
    """httpx's own transport, in pools of at most CONNECTIONS_PER_POOL used in turn."""
    pools = max(1, -(-max_connections // CONNECTIONS_PER_POOL))
    per_pool = -(-max_connections // pools)
    limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool, keepalive_expiry=KEEPALIVE_S)
    shards: list[httpx.AsyncBaseTransport] = [httpx.AsyncHTTPTransport(verify=tls, limits=limits) for _ in range(pools)]
    return shards[0] if pools == 1 else ShardedTransport(shards)


def aiohttp_transport(max_connections: int, tls: ssl.SSLContext) -> AiohttpEngine:
    """The aiohttp engine over one session of at most `max_connections` connections."""
    return AiohttpEngine(max_connections, tls)


class AiohttpEngine(httpx.AsyncBaseTransport):
    """One aiohttp session, spoken to two ways: as an httpx transport (httpx-aiohttp's
    `AiohttpTransport`) and with bare requests (`post`), sharing its connections.

    The session is made at the first request, inside the running loop, as aiohttp
    requires. It keeps no cookies: VSS sets none, and parsing every response for them
    costs CPU. Errors are aiohttp's own (and OSError, TimeoutError) on the bare path,
    mostly httpx's on the other: `Connections.failures` names them all.
    """

    def __init__(self, max_connections: int, tls: ssl.SSLContext) -> None:
        from httpx_aiohttp import AiohttpTransport

        self._max_connections = max_connections
        self._tls = tls
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._httpx = AiohttpTransport(verify=tls, client=self._get_session)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp

            connector = aiohttp.TCPConnector(limit=self._max_connections, ssl=self._tls, keepalive_timeout=KEEPALIVE_S)
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._httpx.handle_async_request(request)

    async def post(self, url: str, headers: Mapping[str, str], body: bytes, *, limit: int, timeout_s: float) -> tuple[int, bytes]:
        """POST `body` to `url`; (status, response body), the body read as it arrives and
        given up past `limit` bytes (BodyTooLarge; the connection is dropped, never
        reused). `timeout_s` bounds getting a connection, connecting, and each wait for
        the server's bytes, as httpx's timeout does on the other path."""
        timeout = self._timeouts.get(timeout_s)
        if timeout is None:
            import aiohttp

            timeout = aiohttp.ClientTimeout(connect=timeout_s, sock_connect=timeout_s, sock_read=timeout_s)
            self._timeouts[timeout_s] = timeout
        session = self._get_session()
        async with session.post(url, data=body, headers=headers, timeout=timeout, allow_redirects=False) as response:
            declared = response.content_length
            if declared is not None and declared > limit:
                response.close()
                raise BodyTooLarge(limit)
            if declared is not None:
                # HTTP framing stops the read at the declared length: nothing past it.
                return response.status, await response.read()
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > limit:
                    response.close()
                    raise BodyTooLarge(limit)
                chunks.append(chunk)
            return response.status, b"".join(chunks)

    async def aclose(self) -> None:
        await self._httpx.aclose()
        if self._session is not None:
            await self._session.close()


_BASE_FAILURES: tuple[type[BaseException], ...] = (httpx.RequestError, OSError)


@functools.cache
def _aiohttp_failures() -> tuple[type[BaseException], ...]:
    # httpx-aiohttp maps most aiohttp errors to httpx's, not all: a malformed response
    # surfaces as aiohttp's HttpProcessingError, which is no ClientError.
    import aiohttp
    from aiohttp.http_exceptions import HttpProcessingError

    return (aiohttp.ClientError, HttpProcessingError)


class Connections:
    """The client's one transport: the caller's, or one made at first use for the loop.

    `failures` are the exceptions that mean "no answer from the server" (the client
    retries them): httpx's transport errors, OSError, and aiohttp's own errors.
    """

    def __init__(
        self,
        *,
        transport: httpx.AsyncBaseTransport | None,
        backend: Backend,
        max_connections: int,
        tls: ssl.SSLContext,
    ) -> None:
        if backend not in ("auto", "aiohttp", "httpx"):
            raise ValueError(f"VSS http_backend must be 'auto', 'aiohttp' or 'httpx', got {backend!r}")
        if max_connections < 1:
            raise ValueError("VSS max_connections must be at least 1")
        self._transport = transport
        self._owned = transport is None  # made here, not given: then bare requests may bypass httpx
        self._backend = backend
        self._max_connections = max_connections
        self._tls = tls
        self._closed = False
        self.engine = "caller's transport" if transport is not None else "not chosen yet"

    @property
    def failures(self) -> tuple[type[BaseException], ...]:
        # aiohttp's errors count once aiohttp is loaded: it may also be under a
        # caller's transport (the benchmarks pass aiohttp transports of their own).
        if "aiohttp" in sys.modules:
            return (*_BASE_FAILURES, *_aiohttp_failures())
        return _BASE_FAILURES

    def get(self) -> httpx.AsyncBaseTransport:
        """The transport to send on; made on the first call, in the running loop."""
        if self._closed:
            raise RuntimeError("the VssClient is closed")
        if self._transport is None:
            self._transport = self._make()
        return self._transport

    def bare(self) -> AiohttpEngine | None:
        """The engine for bare requests: the client's own aiohttp engine, else None (a
        caller's transport, whatever it wraps, or httpcore) and requests go through
        httpx as a caller's transport expects to see them."""
        transport = self.get()
        return transport if self._owned and isinstance(transport, AiohttpEngine) else None

    def _make(self) -> httpx.AsyncBaseTransport:
        library = sniffio.current_async_library()
        backend = self._backend
        if backend == "auto":
            backend = "aiohttp" if library == "asyncio" else "httpx"
        if backend == "aiohttp":
            if library != "asyncio":
                raise RuntimeError(f"VSS http_backend 'aiohttp' runs only on asyncio, not {library}")
            self.engine = "aiohttp"
            return aiohttp_transport(self._max_connections, self._tls)
        self.engine = "httpx"
        return httpcore_transport(self._max_connections, self._tls)

    async def aclose(self) -> None:
        self._closed = True
        if self._transport is not None:
            await self._transport.aclose()


class BodyTooLarge(Exception):
    """A response body over the client's limit: the server, or what answers for it, is broken."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the server answered more than {limit} bytes")
        self.limit = limit


async def read_body(response: httpx.Response, limit: int) -> bytes:
    """The response's body, read as it arrives and given up past `limit` bytes.

    An endless or huge answer is cut off, never held in memory: BodyTooLarge as soon as
    the declared length or the bytes read go over. A body that the transport already
    read (httpx.MockTransport, test wrappers) is only checked. The caller closes the
    response, which drops a connection left mid-body.
    """
    try:
        body = response.content
    except httpx.ResponseNotRead:
        pass
    else:
        if len(body) > limit:
            raise BodyTooLarge(limit)
        return body
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    stream = response.stream
    if not isinstance(stream, httpx.AsyncByteStream):
        raise TypeError("VssClient's transport returned a synchronous response stream")
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)
