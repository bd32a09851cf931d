"""Drive an ASGI app in-process: its lifespan, then requests through httpx.

`serving(app)` sends the app `lifespan.startup` (failing the test if the app reports
`lifespan.startup.failed`), yields an httpx client whose requests go straight to the
app, and sends `lifespan.shutdown` afterwards: the same messages hypercorn sends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx

BASE_URL = "http://vss.test"


class StartupFailed(RuntimeError):
    """The app answered lifespan.startup with lifespan.startup.failed."""


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """Run the app's lifespan startup on entry and its shutdown on exit."""
    to_app_send, to_app_receive = anyio.create_memory_object_stream[dict](4)
    from_app_send, from_app_receive = anyio.create_memory_object_stream[dict](4)
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}

    async with anyio.create_task_group() as tg, to_app_send, from_app_receive:
        tg.start_soon(app, scope, to_app_receive.receive, from_app_send.send)
        await to_app_send.send({"type": "lifespan.startup"})
        reply = await from_app_receive.receive()
        if reply["type"] != "lifespan.startup.complete":
            raise StartupFailed(reply.get("message", reply["type"]))
        try:
            yield
        finally:
            await to_app_send.send({"type": "lifespan.shutdown"})
            reply = await from_app_receive.receive()
            assert reply["type"] == "lifespan.shutdown.complete", reply


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app started, and a client of it (base URL http://vss.test)."""
    async with lifespan(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as client:
        yield client
