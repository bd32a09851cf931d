"""How the client's requests reach the server: one httpx transport, picked for the event loop.

httpx is the API either way (`httpx.Request` in, `httpx.Response` out, so tests and
fault injectors plug in as transports), but the HTTP/1.1 engine under it differs:

- on asyncio, aiohttp (`AiohttpEngine`): httpx-aiohttp's `AiohttpTransport` over one
  aiohttp session, about half the CPU per request of httpcore (0.24-0.34 ms against
  0.48-0.57 ms per getObject, bench/bench_client_cpu.py, bench/RESULTS.md). Beside it
  the engine takes bare requests (`AiohttpEngine.target(url).post`: bytes in, status
  and bytes out) on keep-alive HTTP/1.1 connections of its own (`KeepAlivePool`),
  which VssClient uses for getObject alone: a restore sends one per key, and httpx's
  and aiohttp's request and response machinery were most of the node's CPU per
  restored key (0.19 ms per key with getObject on bare aiohttp, 0.12 ms this way;
  bench/RESULTS.md);
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

import asyncio
import collections
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
    "HttpEngine",
    "BareTarget",
    "BodyTooLarge",
    "Connections",
    "HttpProtocolError",
    "KeepAlivePool",
    "ShardedTransport",
    "aiohttp_transport",
    "httpcore_transport",
    "read_body",
    "trust_context",
]

HttpEngine = Literal["auto", "aiohttp", "httpx"]
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
    """The engine on asyncio: aiohttp under httpx's API for most calls, and bare POSTs
    (`target(url).post(...)`: bytes in, status and bytes out) on keep-alive HTTP/1.1
    connections of its own (`KeepAlivePool`), for the one call whose cost per request
    sets the pace of a restore.

    The aiohttp session is made at its first request, inside the running loop, as
    aiohttp requires. It keeps no cookies: VSS sets none, and parsing every response
    for them costs CPU. Each path keeps at most `max_connections` connections.
    """

    def __init__(self, max_connections: int, tls: ssl.SSLContext) -> None:
        from httpx_aiohttp import AiohttpTransport

        self._max_connections = max_connections
        self._tls = tls
        self._session: aiohttp.ClientSession | None = None
        self._pools: dict[tuple[str, str, int], KeepAlivePool] = {}
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

    def target(self, url: httpx.URL) -> BareTarget:
        """Bare POSTs to `url`, on the pool of its origin."""
        https = url.scheme == "https"
        origin = (url.scheme, url.host, url.port or (443 if https else 80))
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = KeepAlivePool(origin[1], origin[2], self._tls if https else None,
                                                       self._max_connections)
        return BareTarget(pool, url.raw_path, url.netloc)

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
        await self._httpx.aclose()
        if self._session is not None:
            await self._session.close()


class BareTarget:
    """One URL spoken to with bare POSTs (`AiohttpEngine.target`)."""

    def __init__(self, pool: KeepAlivePool, path: bytes, host: bytes) -> None:
        self._pool = pool
        self._path = path
        self._host = host

    async def post(self, headers: Mapping[str, str], body: bytes, *, limit: int, timeout_s: float) -> tuple[int, bytes]:
        """See `KeepAlivePool.post`."""
        return await self._pool.post(self._path, self._host, headers, body, limit=limit, timeout_s=timeout_s)


class HttpProtocolError(Exception):
    """What came back is not an HTTP/1.1 answer this client can read (or nothing came)."""


class _StaleConnection(Exception):
    """The server closed a connection before any byte of its answer."""


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self) -> bool:
        return not self.writer.transport.is_closing() and not self.reader.at_eof()


_HEAD_LIMIT = 64 * 1024  # a response head (status line and headers) longer than this is refused
_PIECE = 256 * 1024  # a large body is read in pieces of this, the timeout restarting after each
_HEX = b"0123456789abcdefABCDEF"


class KeepAlivePool:
    """Keep-alive HTTP/1.1 connections to one origin, for bare POSTs, on asyncio.

    What it sends: `POST path HTTP/1.1`, Host, the caller's headers and Content-Length,
    then the body, on a connection of its own at a time (no pipelining). What it reads:
    a status line and headers, then a body framed by Content-Length, by chunked
    transfer coding, or by the end of the connection; 1xx answers are skipped. At most
    `max_connections` are open; callers beyond wait in turn, and a connection freed is
    handed to the first of them. An idle connection is kept KEEPALIVE_S, then closed.
    Requests must be idempotent (VssClient sends getObject, a read, this way): one sent
    on a reused connection that the server had closed, no byte of an answer back, is
    sent once more on a new connection, without counting as a retry.
    Errors: OSError (refused, reset, TLS, TimeoutError), HttpProtocolError (garbage,
    a connection closed mid-answer), BodyTooLarge (the connection is dropped, never
    reused); RuntimeError once closed.
    """

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, max_connections: int) -> None:
        self._host = host
        self._port = port
        self._tls = tls
        self._max = max_connections
        self._idle: collections.deque[_Connection] = collections.deque()  # oldest first
        self._open = 0  # connections open or opening, and slots handed to a waiter to open one
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    async def post(self, path: bytes, host: bytes, headers: Mapping[str, str], body: bytes, *, limit: int,
                   timeout_s: float) -> tuple[int, bytes]:
        """(status, body) of one POST; the body given up past `limit` bytes. `timeout_s`
        bounds the wait for a connection, connecting, and each wait for the server's
        bytes, as httpx's timeout does on the other path."""
        if self._closed:
            raise RuntimeError("the VssClient is closed")
        request = _request_head(path, host, headers, len(body)) + body
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s) as deadline:
            while True:
                connection, reused = await self._acquire(loop)
                try:
                    connection.writer.write(request)
                    if connection.writer.transport.get_write_buffer_size():
                        await connection.writer.drain()
                    status, content, keep = await _read_response(connection.reader, limit, deadline, loop, timeout_s)
                except _StaleConnection:
                    self._discard(connection)
                    if reused:
                        continue
                    raise HttpProtocolError("the server closed the connection without answering") from None
                except BaseException:
                    self._discard(connection)
                    raise
                self._release(connection, keep, loop)
                return status, content

    async def _acquire(self, loop: asyncio.AbstractEventLoop) -> tuple[_Connection, bool]:
        """A connection and whether it was used before: an idle one, a new one, or,
        at the limit, the next one released."""
        now = loop.time()
        while self._idle:
            connection = self._idle.pop()  # the newest: the likeliest to be alive
            if now - connection.idle_since < KEEPALIVE_S and connection.usable():
                return connection, True
            self._discard(connection)
        if self._open < self._max:
            self._open += 1
            return await self._connect(), False
        waiter: asyncio.Future[_Connection | None] = loop.create_future()
        self._waiters.append(waiter)
        try:
            handed = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():  # handed over just as we were cancelled
                self._hand_over(waiter.result())
            elif waiter in self._waiters:  # else a hand-over already passed it by
                self._waiters.remove(waiter)
            raise
        if handed is None:  # a slot, not a connection: open one in it
            return await self._connect(), False
        return handed, True

    async def _connect(self) -> _Connection:
        """Open a connection in a slot already counted in `_open`."""
        try:
            reader, writer = await asyncio.open_connection(
                self._host, self._port, ssl=self._tls, server_hostname=self._host if self._tls else None,
                limit=_HEAD_LIMIT,
            )
        except BaseException:
            self._hand_over(None)
            raise
        return _Connection(reader, writer)

    def _hand_over(self, connection: _Connection | None) -> None:
        """A connection (or, None, the slot of one closed) to the first waiter; else the
        connection goes idle, or the slot is given back."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        if connection is None:
            self._open -= 1
        else:
            self._idle.append(connection)
            if self._sweep is None:
                self._sweep = asyncio.get_running_loop().call_later(KEEPALIVE_S, self._close_expired)

    def _release(self, connection: _Connection, keep: bool, loop: asyncio.AbstractEventLoop) -> None:
        if not keep or self._closed:
            connection.writer.close()
            self._hand_over(None)
            return
        connection.idle_since = loop.time()
        self._hand_over(connection)

    def _discard(self, connection: _Connection) -> None:
        connection.writer.transport.abort()
        self._hand_over(None)

    def _close_expired(self) -> None:
        """Close the connections idle for KEEPALIVE_S (or closed by the server) while no
        request comes to take them; runs again while some are left."""
        self._sweep = None
        now = asyncio.get_running_loop().time()
        while self._idle and (now - self._idle[0].idle_since >= KEEPALIVE_S or not self._idle[0].usable()):
            connection = self._idle.popleft()
            connection.writer.close()
            self._open -= 1
        if self._idle:
            delay = self._idle[0].idle_since + KEEPALIVE_S - now
            self._sweep = asyncio.get_running_loop().call_later(max(delay, 0.05), self._close_expired)

    def close(self) -> None:
        """Close every idle connection; those in use close when their request ends."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self._idle:
            self._idle.popleft().writer.close()
            self._open -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(RuntimeError("the VssClient is closed"))


def _request_head(path: bytes, host: bytes, headers: Mapping[str, str], length: int) -> bytes:
    parts = [b"POST ", path, b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
    for name, value in headers.items():
        line = f"{name}: {value}\r\n"
        if line.count("\n") != 1 or line.count("\r") != 1:
            raise ValueError("an HTTP header may not hold a line break")  # providers check; this is the last guard
        parts.append(line.encode("ascii"))
    parts.append(b"Content-Length: %d\r\n\r\n" % length)
    return b"".join(parts)


async def _read_response(reader: asyncio.StreamReader, limit: int, deadline: asyncio.Timeout,
                         loop: asyncio.AbstractEventLoop, timeout_s: float) -> tuple[int, bytes, bool]:
    """(status, body, whether the connection may be used again) of the next answer."""
    first = True
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if first and not exc.partial:
                raise _StaleConnection from None
            raise HttpProtocolError("the server closed the connection in the middle of its answer") from None
        except asyncio.LimitOverrunError:
            raise HttpProtocolError(f"the answer's head is over {_HEAD_LIMIT} bytes") from None
        except (ConnectionResetError, BrokenPipeError):
            if first:
                raise _StaleConnection from None
            raise
        first = False
        status, keep, length, chunked = _parse_head(head)
        if not 100 <= status < 200:
            break
        if status == 101:
            raise HttpProtocolError("the server switched protocols")
    try:
        if status in (204, 304):
            return status, b"", keep
        if chunked:
            return status, await _read_chunked(reader, limit, deadline, loop, timeout_s), keep
        if length is not None:
            if length > limit:
                raise BodyTooLarge(limit)
            if length <= _PIECE:
                return status, await reader.readexactly(length), keep
            pieces = []
            while length:
                piece = await reader.readexactly(min(length, _PIECE))
                pieces.append(piece)
                length -= len(piece)
                deadline.reschedule(loop.time() + timeout_s)
            return status, b"".join(pieces), keep
        return status, await _read_to_end(reader, limit, deadline, loop, timeout_s), False
    except asyncio.IncompleteReadError:
        raise HttpProtocolError("the server closed the connection in the middle of its answer") from None
    except asyncio.LimitOverrunError:
        raise HttpProtocolError("a chunk's size line is too long") from None


def _parse_head(head: bytes) -> tuple[int, bool, int | None, bool]:
    """(status, keep-alive, Content-Length, chunked) of a response head."""
    lines = head.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code = rest[:3]
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit() or rest[3:4] not in (b"", b" "):
        raise HttpProtocolError("the answer does not start with an HTTP/1.x status line")
    keep = version == b"HTTP/1.1"
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(b":")
        if not colon:
            raise HttpProtocolError("a header line of the answer has no ':'")
        name = name.strip().lower()
        if name == b"content-length":
            value = value.strip()
            if not value.isdigit() or (length is not None and int(value) != length):
                raise HttpProtocolError("the answer's Content-Length is not a number, or not one")
            length = int(value)
        elif name == b"transfer-encoding":
            if value.split(b",")[-1].strip().lower() != b"chunked":
                raise HttpProtocolError("the answer's Transfer-Encoding is not chunked")
            chunked = True
        elif name == b"connection":
            tokens = {token.strip().lower() for token in value.split(b",")}
            if b"close" in tokens:
                keep = False
            elif b"keep-alive" in tokens:
                keep = True
    if chunked and length is not None:
        keep = False  # both framings at once: read it as chunked, and trust the connection no further
    return int(code), keep, None if chunked else length, chunked


async def _read_chunked(reader: asyncio.StreamReader, limit: int, deadline: asyncio.Timeout,
                        loop: asyncio.AbstractEventLoop, timeout_s: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        text = line[:-2].split(b";", 1)[0].strip()
        if not text or text.strip(_HEX):
            raise HttpProtocolError("a chunk of the answer has no hexadecimal size")
        count = int(text, 16)
        if count == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, ignored
                pass
            return b"".join(chunks)
        size += count
        if size > limit:
            raise BodyTooLarge(limit)
        data = await reader.readexactly(count + 2)
        if data[-2:] != b"\r\n":
            raise HttpProtocolError("a chunk of the answer does not end where its size says")
        chunks.append(data[:-2])
        deadline.reschedule(loop.time() + timeout_s)


async def _read_to_end(reader: asyncio.StreamReader, limit: int, deadline: asyncio.Timeout,
                       loop: asyncio.AbstractEventLoop, timeout_s: float) -> bytes:
    pieces: list[bytes] = []
    size = 0
    while piece := await reader.read(_PIECE):
        size += len(piece)
        if size > limit:
            raise BodyTooLarge(limit)
        pieces.append(piece)
        deadline.reschedule(loop.time() + timeout_s)
    return b"".join(pieces)


_BASE_FAILURES: tuple[type[BaseException], ...] = (httpx.RequestError, OSError, HttpProtocolError)


@functools.cache
def _aiohttp_failures() -> tuple[type[BaseException], ...]:
    # httpx-aiohttp maps most aiohttp errors to httpx's, not all: a malformed response
    # surfaces as aiohttp's HttpProcessingError, which is no ClientError.
    import aiohttp
    from aiohttp.http_exceptions import HttpProcessingError

    return (aiohttp.ClientError, HttpProcessingError)


class Connections:
    """The client's one transport: the caller's, or one made at first use for the loop;
    and, on its own asyncio engine, the targets of bare requests (`bare`).

    `failures` are the exceptions that mean "no answer from the server" (the client
    retries them): httpx's transport errors, OSError, HttpProtocolError of the bare
    path, and aiohttp's own errors.
    """

    def __init__(
        self,
        *,
        transport: httpx.AsyncBaseTransport | None,
        backend: HttpEngine,
        max_connections: int,
        tls: ssl.SSLContext,
    ) -> None:
        if backend not in ("auto", "aiohttp", "httpx"):
            raise ValueError(f"VSS http_backend must be 'auto', 'aiohttp' or 'httpx', got {backend!r}")
        if max_connections < 1:
            raise ValueError("VSS max_connections must be at least 1")
        self._transport = transport
        self._owned = transport is None  # made here, not given: then bare requests may bypass httpx
        self._targets: dict[str, BareTarget] = {}
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

    def bare(self, name: str, url: httpx.URL) -> BareTarget | None:
        """Bare POSTs to `url` (known to the caller as `name`) on the client's own asyncio
        engine; None under a caller's transport (whatever it wraps: then every request
        goes through httpx, as the caller expects to see them) or httpcore's."""
        transport = self.get()
        target = self._targets.get(name)
        if target is None and self._owned and isinstance(transport, AiohttpEngine):
            target = self._targets[name] = transport.target(url)
        return target

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
