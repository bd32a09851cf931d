"""Serving an ASGI app under hypercorn the way operators expect; shared by the programs.

Both of the project's servers (the bundled VSS server, and the node's API in
`vssnode/cli.py`) use these, so `--listen` means the same everywhere and "listening on
URL" is printed only once it is true:

- `parse_listen("HOST:PORT")` / `parse_listen("[IPv6]:PORT")` -> `(host, port)`, or
  ValueError with a one-line message; `is_loopback_host(host)`.
- `await serve_until_signalled(app, config, on_bound=...)`: bind the configured
  addresses first (a taken port raises CannotListen, whose message is the one line
  both programs print, before anything is announced), run the
  app's lifespan startup, call `on_bound(urls)` once the sockets listen and the app has
  started, then serve until SIGINT or SIGTERM, finishing requests in flight.

This module imports nothing of the project: it sits below every package that serves.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import signal
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hypercorn.config import Config

__all__ = [
    "CannotListen", "bind_listening", "format_listen", "is_loopback_host", "parse_listen", "serve_until_signalled",
    "uvloop_factory",
]

_AsgiApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]


class CannotListen(Exception):
    """An address to serve on could not be bound: in use, not this machine's, no
    permission. The message is one line saying which address, why, and what to do."""

    def __init__(self, addresses: list[str], cause: OSError) -> None:
        super().__init__(
            f"cannot listen on {', '.join(addresses)}: {cause.strerror or cause}; "
            "stop what holds it or choose another --listen"
        )


def parse_listen(listen: str) -> tuple[str, int]:
    """Split `HOST:PORT` or `[IPv6]:PORT` into (host, port); the host without brackets.

    Raises ValueError with a one-line message saying what is wrong.
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address wants HOST:PORT (e.g. 127.0.0.1:8081), got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address, in {listen!r}") from None
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets, e.g. [::1]:8081, got {listen!r}")
    if not host:
        raise ValueError(f"listen address has no host, got {listen!r}")
    return host, int(port)


def format_listen(host: str, port: int) -> str:
    """The inverse of `parse_listen`: `HOST:PORT`, IPv6 hosts in brackets (hypercorn's bind form)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback_host(host: str) -> bool:
    """True for `localhost`, 127.0.0.0/8 and ::1 (brackets allowed), also as IPv4-mapped
    IPv6 (::ffff:127.0.0.1, how a dual-stack socket sees a loopback IPv4 peer): only this
    machine can connect."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return (mapped or address).is_loopback


async def serve_until_signalled(
    app: _AsgiApp,
    config: Config,
    *,
    on_bound: Callable[[list[str]], None] | None = None,
) -> None:
    """Serve `app` with hypercorn's asyncio `serve()` until SIGINT or SIGTERM.

    The addresses of `config.bind` (and `config.insecure_bind` with TLS) are bound and
    listening before the app starts, so a bind failure raises CannotListen with nothing
    announced. `on_bound(urls)` is called once, when the app has completed its lifespan
    startup (at once if the app has no lifespan support), with a URL per socket
    (`http://127.0.0.1:8081`, `https://[::1]:8443`; port 0 shows the port chosen).
    A failed startup raises hypercorn's LifespanFailureError. `config` is not modified.
    """
    from hypercorn.asyncio import serve

    config, urls, sockets = bind_listening(config)
    handed_over = False
    try:
        def started() -> None:
            nonlocal handed_over
            if not handed_over:
                # From here hypercorn wraps the descriptors in sockets of its own and
                # closes them when it stops; ours must not close them a second time.
                handed_over = True
                if on_bound is not None:
                    on_bound(urls)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            wrapped: Any = _AnnounceOnStartup(app, started)  # hypercorn's app type is a union of its own
            await serve(wrapped, config, shutdown_trigger=stop.wait, mode="asgi")
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
    finally:
        for sock in sockets:
            if handed_over:
                sock.detach()
            else:
                sock.close()


def bind_listening(config: Config) -> tuple[Config, list[str], list[socket.socket]]:
    """Bind and listen on the addresses of `config`, for hypercorn to serve later.

    Returns a copy of `config` whose binds name the new sockets by descriptor
    (`fd://N`, so hypercorn does not bind again), a URL per socket, and the sockets.
    The caller closes the sockets if it never serves, and detaches them once hypercorn
    has taken the descriptors over (hypercorn closes them when it stops). Raises
    CannotListen when an address cannot be bound (in use, not this machine's, no
    permission).
    """
    config = copy.copy(config)
    if config.quic_bind:
        raise ValueError("QUIC addresses are not supported here")
    addresses = [*config.bind, *(config.insecure_bind if config.ssl_enabled else [])]
    try:
        bound = config.create_sockets()
    except OSError as exc:
        raise CannotListen(addresses, exc) from exc
    sockets = [*bound.secure_sockets, *bound.insecure_sockets]
    try:
        for sock in sockets:
            sock.listen(config.backlog)
    except BaseException as exc:
        for sock in sockets:
            sock.close()
        if isinstance(exc, OSError):
            raise CannotListen(addresses, exc) from exc
        raise
    urls = [_url("https", sock) for sock in bound.secure_sockets]
    urls += [_url("http", sock) for sock in bound.insecure_sockets]
    secure = [f"fd://{sock.fileno()}" for sock in bound.secure_sockets]
    insecure = [f"fd://{sock.fileno()}" for sock in bound.insecure_sockets]
    if config.ssl_enabled:
        config.bind, config.insecure_bind = secure, insecure
    else:
        config.bind, config.insecure_bind = insecure, []
    return config, urls, sockets


class _AnnounceOnStartup:
    """Passes everything to `app`; calls `started()` after the app reports lifespan startup."""

    def __init__(self, app: _AsgiApp, started: Callable[[], None]) -> None:
        self._app = app
        self._started = started

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "lifespan":
            await self._app(scope, receive, send)
            return

        failed = False

        async def watched_send(message: Any) -> None:
            nonlocal failed
            if message["type"] == "lifespan.startup.failed":
                failed = True
            await send(message)
            if message["type"] == "lifespan.startup.complete":
                self._started()

        try:
            await self._app(scope, receive, watched_send)
        except Exception:
            # hypercorn takes an app whose lifespan raises for one without lifespan
            # support, and serves it: it is started as far as anyone can tell. An app
            # that reported a failed startup is not served at all.
            if not failed:
                self._started()
            raise


def _url(scheme: str, sock: socket.socket) -> str:
    address = sock.getsockname()
    if sock.family == socket.AF_INET6:
        return f"{scheme}://[{address[0]}]:{address[1]}"
    if sock.family == socket.AF_INET:
        return f"{scheme}://{address[0]}:{address[1]}"
    return f"{scheme}://unix:{address}"


def uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop factory when uvloop is installed (the `fast` extra), else None:
    asyncio's own loop. For `asyncio.Runner(loop_factory=...)`."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
