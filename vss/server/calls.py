"""The four VSS calls as functions: a decoded request in, a serialized response out.

This is the protocol layer between HTTP (`vss.server.app`) and storage
(`vss.server.backend`): it knows the messages of vss/proto/vss.proto and nothing of
ASGI. Each call returns its response body and the number of items it wrote or read,
for the metrics.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from vss.errors import InvalidRequestError
from vss.proto import vss_pb2
from vss.server.backend import MAX_ITEMS_PER_PUT, Backend, Delete, Write
from vss.server.wire import check_put_items

_EMPTY_PUT_RESPONSE = vss_pb2.PutObjectResponse().SerializeToString()
_EMPTY_DELETE_RESPONSE = vss_pb2.DeleteObjectResponse().SerializeToString()

M = TypeVar("M", bound=Message)
Handler = Callable[[Backend, str, bytes], Awaitable[tuple[bytes, int]]]


@dataclass(frozen=True, slots=True)
class Call:
    """One protocol call: its name (the path under /vss), whether it writes, its handler."""

    name: str
    writes: bool
    handle: Handler


def _decode(request_type: type[M], body: bytes) -> M:
    message: M = request_type()
    try:
        message.ParseFromString(body)
    except (DecodeError, ValueError) as exc:
        raise InvalidRequestError(f"body is not a valid {request_type.__name__}: {exc}") from None
    return message


async def get_object(backend: Backend, user: str, body: bytes) -> tuple[bytes, int]:
    req = _decode(vss_pb2.GetObjectRequest, body)
    found = await backend.get_object(user, req.store_id, req.key)
    reply = vss_pb2.GetObjectResponse()
    value = reply.value
    value.key = found.key
    value.version = found.version
    value.value = found.value
    return reply.SerializeToString(), 1


async def put_objects(backend: Backend, user: str, body: bytes) -> tuple[bytes, int]:
    # Counted on the wire first: decoding builds an object per item (see vss.server.wire).
    check_put_items(body, MAX_ITEMS_PER_PUT)
    req = _decode(vss_pb2.PutObjectRequest, body)
    writes = [Write(item.key, item.version, item.value) for item in req.transaction_items]
    deletes = [Delete(item.key, item.version) for item in req.delete_items]
    await backend.put_objects(
        user, req.store_id, req.global_version if req.HasField("global_version") else None, writes, deletes
    )
    return _EMPTY_PUT_RESPONSE, len(writes) + len(deletes)


async def delete_object(backend: Backend, user: str, body: bytes) -> tuple[bytes, int]:
    req = _decode(vss_pb2.DeleteObjectRequest, body)
    if not req.HasField("key_value"):
        raise InvalidRequestError("deleteObject needs key_value")
    await backend.delete_object(user, req.store_id, req.key_value.key, req.key_value.version)
    return _EMPTY_DELETE_RESPONSE, 1


async def list_key_versions(backend: Backend, user: str, body: bytes) -> tuple[bytes, int]:
    req = _decode(vss_pb2.ListKeyVersionsRequest, body)
    page = await backend.list_key_versions(
        user,
        req.store_id,
        prefix=req.key_prefix,
        page_size=req.page_size if req.HasField("page_size") else None,
        page_token=req.page_token if req.HasField("page_token") else None,
    )
    reply = vss_pb2.ListKeyVersionsResponse()
    listed = reply.key_versions
    for kv in page.key_versions:
        listed.add(key=kv.key, version=kv.version)
    if page.next_page_token is not None:
        reply.next_page_token = page.next_page_token
    if page.global_version is not None:
        reply.global_version = page.global_version
    return reply.SerializeToString(), len(page.key_versions)


CALLS: dict[str, Call] = {
    call.name: call
    for call in (
        Call("getObject", False, get_object),
        Call("putObjects", True, put_objects),
        Call("deleteObject", True, delete_object),
        Call("listKeyVersions", False, list_key_versions),
    )
}
"""Every call of the protocol, by name."""
