"""The HTTP face of the bundled VSS server: four protobuf POST calls under /vss.

`create_app(backend, auth=..., max_body_bytes=...)` returns a Quart app that opens the
backend when it starts serving and closes it when it stops. Each call: refuse a body
over the limit (413), authorize (401), decode the protobuf (400), hand the message to
the backend, and answer 200 with the response message. Every failure is an
`ErrorResponse` body with the status of docs/PROTOCOL.md; any other path or
method is 400; a fault nobody anticipated is 500 without internals in the body (the
traceback goes to the log).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Literal

from google.protobuf.message import DecodeError, Message
from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from vss import auth as vss_auth
from vss.errors import InternalServerError, InvalidRequestError, RequestTooLargeError, VssError
from vss.proto import vss_pb2
from vss.server.backend import DEFAULT_MAX_BODY_BYTES, MAX_ITEMS_PER_PUT, Backend, Delete, Write
from vss.server.wire import check_put_items

log = logging.getLogger(__name__)

BASE_PATH = "/vss"
ANONYMOUS_USER = "anonymous"
"""The one user every caller is when the server runs with `auth="none"`."""
CONTENT_TYPE = "application/octet-stream"

AuthMode = Literal["sigs", "none"]
_Handler = Callable[[Backend, str, Message], Awaitable[Message]]


def create_app(backend: Backend, *, auth: AuthMode = "sigs", max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Quart:
    """A Quart app serving the VSS protocol from `backend`.

    `auth="sigs"` requires the signature Authorization header and partitions data by
    the signer's public key; `auth="none"` makes every caller one shared user (for
    local development only). Bodies over `max_body_bytes` are refused with 413.
    """
    if auth not in ("sigs", "none"):
        raise ValueError(f"auth must be 'sigs' or 'none', not {auth!r}")
    if max_body_bytes < 1:
        raise ValueError("max_body_bytes must be positive")

    app = Quart("vss.server", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    @app.before_serving
    async def open_backend() -> None:
        await backend.open()

    @app.after_serving
    async def close_backend() -> None:
        await backend.close()

    def authorize() -> str:
        if auth == "none":
            return ANONYMOUS_USER
        return vss_auth.verify_header(request.headers.get("Authorization"))

    def route(name: str, request_type: type[Message], handler: _Handler) -> None:
        async def call() -> Response:
            try:
                declared = request.content_length
                if declared is not None and declared > max_body_bytes:
                    raise _too_large(max_body_bytes)
                user = authorize()
                try:
                    body = await request.get_data(cache=False)
                except RequestEntityTooLarge:
                    raise _too_large(max_body_bytes) from None
                if request_type is vss_pb2.PutObjectRequest:
                    check_put_items(body, MAX_ITEMS_PER_PUT)  # before decoding builds an object per item
                message = _decode(request_type, body)
                reply = await handler(backend, user, message)
            except VssError as exc:
                return _error(exc)
            return _reply(reply.SerializeToString(), 200)

        call.__name__ = f"vss_{name}"
        app.add_url_rule(
            f"{BASE_PATH}/{name}", endpoint=name, view_func=call, methods=["POST"],
            provide_automatic_options=False,
        )

    route("getObject", vss_pb2.GetObjectRequest, _get_object)
    route("putObjects", vss_pb2.PutObjectRequest, _put_objects)
    route("deleteObject", vss_pb2.DeleteObjectRequest, _delete_object)
    route("listKeyVersions", vss_pb2.ListKeyVersionsRequest, _list_key_versions)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        if exc.code == 413:
            return _error(_too_large(max_body_bytes))
        # Unknown path, wrong method, and the like: the protocol answers them all with 400.
        return _error(
            InvalidRequestError(f"{request.method} {request.path} is not a VSS call; POST to {BASE_PATH}/<call>")
        )

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        log.exception("VSS server fault on %s %s", request.method, request.path)
        return _error(InternalServerError("internal server error"))

    return app


def _too_large(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(f"request body is over this server's limit of {limit} bytes")


def _decode(request_type: type[Message], body: bytes) -> Message:
    message = request_type()
    try:
        message.ParseFromString(body)
    except (DecodeError, ValueError) as exc:
        raise InvalidRequestError(f"body is not a valid {request_type.__name__}: {exc}") from None
    return message


def _reply(body: bytes, status: int) -> Response:
    return Response(body, status=status, content_type=CONTENT_TYPE)


def _error(exc: VssError) -> Response:
    if isinstance(exc, InternalServerError) and exc.__cause__ is not None:
        log.error("VSS call failed: %s (cause: %r)", exc, exc.__cause__)
    body = vss_pb2.ErrorResponse(error_code=exc.code, message=str(exc)).SerializeToString()
    return _reply(body, exc.status)


# -- the four calls: protobuf in, protobuf out -------------------------------------------


async def _get_object(backend: Backend, user: str, req: vss_pb2.GetObjectRequest) -> Message:
    found = await backend.get_object(user, req.store_id, req.key)
    return vss_pb2.GetObjectResponse(
        value=vss_pb2.KeyValue(key=found.key, version=found.version, value=found.value)
    )


async def _put_objects(backend: Backend, user: str, req: vss_pb2.PutObjectRequest) -> Message:
    await backend.put_objects(
        user,
        req.store_id,
        req.global_version if req.HasField("global_version") else None,
        [Write(item.key, item.version, item.value) for item in req.transaction_items],
        [Delete(item.key, item.version) for item in req.delete_items],
    )
    return vss_pb2.PutObjectResponse()


async def _delete_object(backend: Backend, user: str, req: vss_pb2.DeleteObjectRequest) -> Message:
    if not req.HasField("key_value"):
        raise InvalidRequestError("deleteObject needs key_value")
    await backend.delete_object(user, req.store_id, req.key_value.key, req.key_value.version)
    return vss_pb2.DeleteObjectResponse()


async def _list_key_versions(backend: Backend, user: str, req: vss_pb2.ListKeyVersionsRequest) -> Message:
    page = await backend.list_key_versions(
        user,
        req.store_id,
        prefix=req.key_prefix,
        page_size=req.page_size if req.HasField("page_size") else None,
        page_token=req.page_token if req.HasField("page_token") else None,
    )
    reply = vss_pb2.ListKeyVersionsResponse(
        key_versions=[vss_pb2.KeyValue(key=kv.key, version=kv.version) for kv in page.key_versions]
    )
    if page.next_page_token is not None:
        reply.next_page_token = page.next_page_token
    if page.global_version is not None:
        reply.global_version = page.global_version
    return reply
