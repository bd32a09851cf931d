"""The node's HTTP API: a Quart app that turns requests into calls on the Node.

It holds no state of its own: every route asks the Node (and through it the actors)
and maps the answer, or the NodeError, to a response. Errors are always
`{"error": message, "code": status, "name": StableName}`. The OpenAPI document of these
routes is served at /openapi.json.

Who may call it (`vssnode.api_guard`): with an API token, whoever presents it; without
one (loopback only), a request must name this server as its Host and must not come from
another site's page, so neither a cross-site form post nor DNS rebinding reaches the
node. Routes that take a JSON body want `Content-Type: application/json` (415), which a
browser cannot send across sites without asking first.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict
from importlib import resources
from typing import Any

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from actors.node import Durability, Node
from node import errors
from node.config import ConfigError, NodeConfig
from vss.errors import one_line
from vssnode.api_guard import check_caller

log = logging.getLogger(__name__)

_HTTP_NAMES = {404: "NotFound", 405: "MethodNotAllowed", 413: "ValueTooLarge"}


def error_response(status: int, name: str, message: str) -> Response:
    body = json.dumps({"error": message, "code": status, "name": name})
    return Response(body, status=status, content_type="application/json")


def json_response(value: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(value), status=status, content_type="application/json")


class _WalletPath(PathConverter):
    """Any text after /wallet/files/, even empty or starting with '/': every spelling of a
    path reaches the node's own check and gets its 400, rather than a 404 or a redirect."""

    regex = ".*"
    part_isolating = False  # werkzeug infers True from a regex without "/"


class _NodeApp(Quart):
    def log_exception(self, exc_info: Any) -> None:
        """A node that cannot open its data dir is a configuration error: one line (the
        command line exits 2 with it); anything else is logged with its traceback."""
        if isinstance(exc_info[1], ConfigError):
            log.debug("the node did not open", exc_info=exc_info)
            return
        super().log_exception(exc_info)


def create_app(config: NodeConfig, **node_kwargs: Any) -> Quart:
    """The ASGI app of one node; the Node runs for as long as the app is served."""
    app = _NodeApp(__name__, static_folder=None)
    app.url_map.converters["wallet_path"] = _WalletPath
    # Bodies larger than a value can be are refused before they are read (413).
    app.config["MAX_CONTENT_LENGTH"] = config.max_value_bytes
    app.config["BODY_TIMEOUT"] = 600
    started = asyncio.Event()
    holder: dict[str, Any] = {}

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
        if task.done():  # the node failed to open (bad data dir, network mismatch, in use)
            waiter.cancel()
            holder["failed"] = task.exception()
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
        found: Node = holder["node"]
        return found

    app.extensions["vssnode"] = holder

    @app.before_request
    async def guard_caller() -> None:
        check_caller(request, config.api_token)

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

    async def json_body(*, optional: bool = False) -> dict[str, Any]:
        data = await request.get_data(cache=False)
        if optional and not data:
            return {}
        if request.mimetype != "application/json":
            raise errors.UnsupportedMediaType("send the JSON body with Content-Type: application/json")
        # Parsed by hand: Quart's get_json(silent=True) still raises on bytes that are
        # not UTF-8, which would surface as a 500. A body nested deeper than the parser
        # recurses (a few hundred kilobytes of "[") raises RecursionError, no ValueError.
        try:
            body = json.loads(data)
        except (ValueError, RecursionError):  # ValueError includes UnicodeDecodeError
            body = None
        if not isinstance(body, dict):
            raise errors.InvalidRequest("the body must be a JSON object")
        return body

    async def raw_body() -> bytes:
        data = await request.get_data(cache=False)
        assert isinstance(data, bytes)  # not asked as text
        return data

    def namespace() -> tuple[str, str]:
        return request.args.get("primary", ""), request.args.get("secondary", "")

    def durability() -> Durability:
        value = request.args.get("durability", "local")
        if value not in ("local", "remote"):
            raise errors.InvalidRequest(f"durability must be 'local' or 'remote', not {value!r}")
        return "remote" if value == "remote" else "local"

    # -- lifecycle -------------------------------------------------------------------

    @app.post("/init")
    async def init() -> Response:
        body = await json_body()
        mnemonic = body.get("mnemonic")
        if mnemonic is not None and not isinstance(mnemonic, str):
            raise errors.InvalidRequest("mnemonic must be a string of words")
        generated = await node().init(body.get("password"), mnemonic)  # type: ignore[arg-type]
        return json_response({"mnemonic": generated} if generated else {})

    @app.post("/unlock")
    async def unlock() -> Response:
        try:
            body = await json_body()
        except errors.NodeError as exc:  # the node logs each refusal of its own; this one is the route's
            log.warning("unlock failed: %s", one_line(exc))
            raise
        await node().unlock(body.get("password"))  # type: ignore[arg-type]
        return json_response(node().info())

    @app.post("/lock")
    async def lock() -> Response:
        await node().lock()
        return json_response(node().info())

    @app.get("/nodeinfo")
    async def nodeinfo() -> Response:
        return json_response(node().info())

    # -- key-value state ---------------------------------------------------------------

    @app.put("/kv/<key>")
    async def put_value(key: str) -> Response:
        how = durability()
        value = await raw_body()
        await node().put(*namespace(), key, value, durability=how)
        return Response(status=204)

    @app.get("/kv/<key>")
    async def get_value(key: str) -> Response:
        value = await node().get(*namespace(), key)
        return Response(value, content_type="application/octet-stream")

    @app.delete("/kv/<key>")
    async def delete_value(key: str) -> Response:
        await node().delete(*namespace(), key, durability=durability())
        return Response(status=204)

    @app.get("/kv")
    async def list_values() -> Response:
        return json_response({"keys": await node().list_keys(*namespace())})

    # -- the wallet directory -------------------------------------------------------------
    # PUT and DELETE change the wallet (running only) and are backed up; GETs also work
    # while fenced. DELETE of an absent file is 204, like /kv: the outcome is the same.

    @app.put("/wallet/files/<wallet_path:path>", merge_slashes=False)
    async def put_wallet_file(path: str) -> Response:
        data = await raw_body()
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
        return json_response({"files": [asdict(f) for f in await node().wallet_list()]})

    # -- VSS -------------------------------------------------------------------------

    @app.post("/vssbackup")
    async def vssbackup() -> Response:
        body = await json_body(optional=True)
        replace_unreadable = body.get("replace_unreadable", False)
        if not isinstance(replace_unreadable, bool):
            raise errors.InvalidRequest("replace_unreadable must be true or false")
        return json_response({"version": await node().backup_now(replace_unreadable=replace_unreadable)})

    @app.get("/vssbackupinfo")
    async def vssbackupinfo() -> Response:
        return json_response(await node().backup_info())

    @app.post("/vssverify")
    async def vssverify() -> Response:
        return json_response(asdict(await node().verify()))

    @app.post("/vssclearfence")
    async def vssclearfence() -> Response:
        body = await json_body()
        cleared = await node().clear_fence(body.get("password"))  # type: ignore[arg-type]
        return json_response({"cleared": cleared})

    @app.get("/metrics")
    async def metrics() -> Response:
        text = await anyio.to_thread.run_sync(generate_latest, node().metrics.registry)
        return Response(text, content_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json")
    async def openapi() -> Response:
        text = resources.files("vssnode").joinpath("openapi.json").read_text()
        return Response(text, content_type="application/json")

    return app
