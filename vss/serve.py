"""Serving an ASGI app with hypercorn: listen addresses, and serving until signalled.

(Placeholder on main until the server branch lands its version.)
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT or [IPv6]:PORT as (host, port); ValueError with a one-line reason."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"want HOST:PORT (e.g. 127.0.0.1:3001), got {listen!r}")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ValueError(f"write an IPv6 address in brackets, e.g. [::1]:3001, got {listen!r}")
    return host.strip("[]"), int(port)


async def serve_until_signalled(app: Any, config: Config, *, on_bound: Callable[[list[str]], None] | None = None) -> None:
    """Serve `app` until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if on_bound is not None:
        on_bound([f"http://{bind}" for bind in config.bind])
    await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
