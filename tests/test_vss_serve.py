"""vss.serve: the listen-address helpers and serving until signalled, in-process.

The announcement must come after the socket listens and the app has started, and a
bind failure must raise before anything is announced.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading

import httpx
import pytest
from hypercorn.config import Config
from hypercorn.utils import LifespanFailureError

from vss.serve import CannotListen, format_listen, is_loopback_host, parse_listen, serve_until_signalled


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST", "127.0.0.1", "127.8.9.10", "::1", "[::1]", "::ffff:127.0.0.1"]
)
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "192.168.1.2", "example.com", "128.0.0.1", "localhost.example", "", "::ffff:192.0.2.2"]
)
def test_other_hosts_are_not_loopback(host: str) -> None:
    assert not is_loopback_host(host)


def test_format_listen_is_the_inverse_of_parse_listen() -> None:
    for listen in ("127.0.0.1:8081", "[::1]:9000", "example.com:1"):
        assert format_listen(*parse_listen(listen)) == listen


class App:
    """A minimal ASGI app: 200 'hello'; records when its lifespan started."""

    def __init__(self, *, fail_startup: bool = False) -> None:
        self.started = False
        self.fail_startup = fail_startup

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    if self.fail_startup:
                        await send({"type": "lifespan.startup.failed", "message": "no database"})
                        return
                    self.started = True
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"hello"})


def _config(bind: str) -> Config:
    config = Config()
    config.bind = [bind]
    config.accesslog = None
    config.graceful_timeout = 2
    return config


def test_announces_after_binding_and_startup_then_stops_on_sigterm() -> None:
    app = App()
    announced: list[list[str]] = []

    def on_bound(urls: list[str]) -> None:
        assert app.started, "announced before the app started"
        announced.append(urls)
        # The socket listens now: a request made from another thread is answered.
        def fetch() -> None:
            responses.append(httpx.get(urls[0] + "/x", timeout=10))
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=fetch).start()

    responses: list[httpx.Response] = []
    asyncio.run(serve_until_signalled(app, _config("127.0.0.1:0"), on_bound=on_bound))
    assert len(announced) == 1 and announced[0][0].startswith("http://127.0.0.1:")
    assert not announced[0][0].endswith(":0")
    assert [r.text for r in responses] == ["hello"]


def test_a_taken_port_raises_before_anything_is_announced() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        app = App()
        announced: list[list[str]] = []
        with pytest.raises(CannotListen) as raised:
            asyncio.run(serve_until_signalled(app, _config(f"127.0.0.1:{port}"), on_bound=announced.append))
        assert announced == [] and not app.started
    assert str(raised.value).startswith(f"cannot listen on 127.0.0.1:{port}: Address already in use; ")


def test_a_failed_startup_raises_announces_nothing_and_frees_the_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    announced: list[list[str]] = []
    with pytest.raises(LifespanFailureError):
        asyncio.run(serve_until_signalled(App(fail_startup=True), _config(f"127.0.0.1:{port}"), on_bound=announced.append))
    assert announced == []
    with socket.socket() as again:  # our socket was closed: the port can be bound again
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))


def test_the_callers_config_is_left_alone() -> None:
    config = _config("127.0.0.1:0")

    def on_bound(urls: list[str]) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    asyncio.run(serve_until_signalled(App(), config, on_bound=on_bound))
    assert config.bind == ["127.0.0.1:0"]
