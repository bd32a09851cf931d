"""api: the node's HTTP API, a Quart app that turns requests into calls on the Node.

It holds no state of its own: every route asks the Node (and through it the actors)
and maps the answer, or the NodeError, to a response. Errors are always
`{"error": message, "code": status, "name": StableName}`. The OpenAPI document of these
routes is served at /openapi.json.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from importlib import resources

import anyio
from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from vssnode.metrics import render as render_metrics
from actors.supervisor import Node
from node import errors
from node.config import NodeConfig

log = logging.getLogger(__name__)

_HTTP_NAMES = {404: "NotFound", 405: "MethodNotAllowed", 413: "ValueTooLarge"}


def error_response(status: int, name: str, message: str) -> Response:
    body = json.dumps({"error": message, "code": status, "name": name})
    return Response(body, status=status, content_type="application/json")


class _WalletPath(PathConverter):
    """Any text after /wallet/files/, even empty or starting with '/': every spelling of a
    path reaches the node's own check and gets its 400, rather than a 404 or a redirect."""

    regex = ".*"
    part_isolating = False  # werkzeug infers True from a regex without "/"


def create_app(config: NodeConfig, **node_kwargs: object) -> Quart:
    """The ASGI app of one node; the Node runs for as long as the app is served."""
    app = Quart(__name__, static_folder=None)
    app.url_map.converters["wallet_path"] = _WalletPath
    # Bodies larger than a value can be are refused before they are read (413).
    app.config["MAX_CONTENT_LENGTH"] = config.max_value_bytes
    app.config["BODY_TIMEOUT"] = 600
    started = asyncio.Event()
    holder: dict[str, object] = {}

    async def run_node() -> None:
        async with Node.open(config, **node_kwargs) as node:
            holder["node"] = node
            started.set()
            await anyio.sleep_forever()

    @app.before_serving
    async def start_node() -> None:
        task = asyncio.create_task(run_node())
        holder["task"] = task
        waiter = asyncio.create_task(started.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():  # the node failed to open (bad data dir, network mismatch)
            waiter.cancel()
            task.result()

    @app.after_serving
    async def stop_node() -> None:
        task = holder.get("task")
        if isinstance(task, asyncio.Task):
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def node() -> Node:
        return holder["node"]  # type: ignore[return-value]

    app.extensions["vssnode"] = holder

    @app.before_request
    async def check_token() -> Response | None:
        if config.api_token is None:
            return None
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {config.api_token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise errors.Unauthorized("missing or wrong API token (Authorization: Bearer ...)")
        return None

    @app.errorhandler(errors.NodeError)
    async def node_error(exc: errors.NodeError) -> Response:
        return error_response(exc.status, exc.name, str(exc))

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        name = _HTTP_NAMES.get(status, "InvalidRequest" if status < 500 else "InternalError")
        message = exc.description or name
        if status == 413:
            message = f"body is over the {config.max_value_bytes}-byte limit"
        return error_response(status, name, message)

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(500, "InternalError", "internal error; see the node's log")

    async def json_body() -> dict:
        # Parsed by hand: Quart's get_json(silent=True) still raises on bytes that are
        # not UTF-8, which would surface as a 500.
        try:
            body = json.loads(await request.get_data(cache=False))
        except ValueError:  # includes UnicodeDecodeError
            body = None
        if not isinstance(body, dict):
            raise errors.InvalidRequest("the body must be a JSON object")
        return body

    def namespace() -> tuple[str, str]:
        return request.args.get("primary", ""), request.args.get("secondary", "")

    # -- lifecycle -------------------------------------------------------------------

    @app.post("/init")
    async def init() -> Response:
        body = await json_body()
        mnemonic = body.get("mnemonic")
        if mnemonic is not None and not isinstance(mnemonic, str):
            raise errors.InvalidRequest("mnemonic must be a string of words")
        generated = await node().init(body.get("password"), mnemonic)
        return {"mnemonic": generated} if generated else {}

    @app.post("/unlock")
    async def unlock() -> Response:
        body = await json_body()
        await node().unlock(body.get("password"))
        return node().info()

    @app.post("/lock")
    async def lock() -> Response:
        await node().lock()
        return node().info()

    @app.get("/nodeinfo")
    async def nodeinfo() -> Response:
        return node().info()

    # -- key-value state ---------------------------------------------------------------

    @app.put("/kv/<key>")
    async def put_value(key: str) -> Response:
        value = await request.get_data(cache=False)
        await node().put(*namespace(), key, value)
        return Response(status=204)

    @app.get("/kv/<key>")
    async def get_value(key: str) -> Response:
        value = await node().get(*namespace(), key)
        return Response(value, content_type="application/octet-stream")

    @app.delete("/kv/<key>")
    async def delete_value(key: str) -> Response:
        await node().delete(*namespace(), key)
        return Response(status=204)

    @app.get("/kv")
    async def list_values() -> Response:
        return {"keys": await node().list_keys(*namespace())}

    # -- the wallet directory -------------------------------------------------------------
    # PUT and DELETE change the wallet (running only) and are backed up; GETs also work
    # while fenced. DELETE of an absent file is 204, like /kv: the outcome is the same.

    @app.put("/wallet/files/<wallet_path:path>", merge_slashes=False)
    async def put_wallet_file(path: str) -> Response:
        data = await request.get_data(cache=False)
        await node().wallet_write(path, data)
        return Response(status=204)

    @app.get("/wallet/files/<wallet_path:path>", merge_slashes=False)
    async def get_wallet_file(path: str) -> Response:
        data = await node().wallet_read(path)
        return Response(data, content_type="application/octet-stream")

    @app.delete("/wallet/files/<wallet_path:path>", merge_slashes=False)
    async def delete_wallet_file(path: str) -> Response:
        await node().wallet_delete(path)
        return Response(status=204)

    @app.get("/wallet/files")
    async def list_wallet_files() -> Response:
        return {"files": await node().wallet_list()}

    # -- VSS -------------------------------------------------------------------------

    @app.post("/vssbackup")
    async def vssbackup() -> Response:
        return {"version": await node().backup_now()}

    @app.get("/vssbackupinfo")
    async def vssbackupinfo() -> Response:
        return await node().backup_info()

    @app.post("/vssclearfence")
    async def vssclearfence() -> Response:
        body = await json_body()
        cleared = await node().clear_fence(body.get("password"))
        return {"cleared": cleared}

    @app.get("/metrics")
    async def metrics() -> Response:
        figures = await anyio.to_thread.run_sync(node().metrics)
        return Response(render_metrics(figures), content_type="text/plain; version=0.0.4")

    @app.get("/openapi.json")
    async def openapi() -> Response:
        text = resources.files("vssnode").joinpath("openapi.json").read_text()
        return Response(text, content_type="application/json")

    return app
