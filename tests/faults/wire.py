"""HTTP/1.1 on trio sockets, as the fault proxy speaks it (h11 for the protocol).

Reading a request head and body with a byte cap, writing an answer (whole, or just
its bytes so the caller can cut them short), and closing a connection either in
order or with a TCP reset. Plus the loopback checks both ends of the proxy go
through: it never listens on, or forwards to, anything but this machine.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from urllib.parse import urlsplit

import h11
import trio

RECEIVE_BYTES = 64 * 1024
MAX_REQUEST_BYTES = 256 * 1024 * 1024  # above any body a VSS server accepts by default


class AbortConnection(Exception):
    """Abort the client connection with a TCP reset."""


async def next_event(conn: h11.Connection, stream: trio.SocketStream) -> object:
    # Each turn either returns an event or receives data; the byte cap bounds it.
    received = 0
    while received <= MAX_REQUEST_BYTES:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await stream.receive_some(RECEIVE_BYTES)
        received += len(data) or 1
        conn.receive_data(data)
    raise AbortConnection()


async def read_body(conn: h11.Connection, stream: trio.SocketStream) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_REQUEST_BYTES:
        event = await next_event(conn, stream)
        if isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
            size += len(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(chunks)
        else:  # ConnectionClosed in the middle of a body
            raise AbortConnection()
    raise AbortConnection()


def head_bytes(conn: h11.Connection, status: int, headers: list[tuple[bytes, bytes]], length: int, last: bool) -> bytes:
    out = [*headers, (b"content-length", str(length).encode())]
    if last:
        out.append((b"connection", b"close"))
    return conn.send(h11.Response(status_code=status, headers=out))


async def send_head(
    conn: h11.Connection,
    stream: trio.SocketStream,
    status: int,
    headers: list[tuple[bytes, bytes]],
    length: int,
    last: bool,
) -> None:
    await stream.send_all(head_bytes(conn, status, headers, length, last))


async def respond(
    conn: h11.Connection, stream: trio.SocketStream, status: int, body: bytes, content_type: bytes, last: bool
) -> None:
    await send_head(conn, stream, status, [(b"content-type", content_type)], len(body), last)
    await stream.send_all(conn.send(h11.Data(data=body)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


def reset_now(stream: trio.SocketStream) -> None:
    """Close with a TCP RST (SO_LINGER 0) rather than an orderly FIN."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    close_now(stream)


def close_now(stream: trio.SocketStream) -> None:
    try:
        stream.socket.close()
    except OSError:
        pass


# -- loopback only -----------------------------------------------------------------------


def require_loopback_host(host: str, what: str) -> None:
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"{what} must be a loopback address, got {host!r}")


def require_loopback_url(url: str, what: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{what} must be an http:// URL with a host, got {url!r}")
    require_loopback_host(parts.hostname, what)
