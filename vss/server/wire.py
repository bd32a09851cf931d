"""A cheap look at protobuf wire data before it is decoded.

Decoding a `PutObjectRequest` builds one Python object per item, so a 9.5 MiB body of
two million empty delete items costs hundreds of megabytes and seconds of a blocked
event loop before the 1000-item limit could even be checked. `check_put_items` walks
only the top-level fields of the body (a tag varint, then the payload skipped by its
length) and stops as soon as the body has more items, or more fields, than a valid
request can have: the cost of refusing a hostile body is bounded by the limit, not by
the body's size.
"""

from __future__ import annotations

from vss.errors import InvalidRequestError

TRANSACTION_ITEMS_FIELD = 3
DELETE_ITEMS_FIELD = 4
EXTRA_FIELDS = 16
"""Top-level fields allowed beyond the items: store_id and global_version, plus room
for fields a newer client might add. A valid request never repeats more than that."""

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5
_MAX_VARINT_BYTES = 10


def check_put_items(body: bytes, limit: int) -> int:
    """Count the items (fields 3 and 4) of a serialized PutObjectRequest, without decoding.

    Raises InvalidRequestError once there are more than `limit` items or more than
    `limit + EXTRA_FIELDS` top-level fields, or if the wire data is malformed (a
    truncated varint or payload, field number 0, a group or an unknown wire type).
    Returns the number of items otherwise.
    """
    view = memoryview(body)
    end = len(view)
    pos = items = fields = 0
    max_fields = limit + EXTRA_FIELDS
    while pos < end:
        tag, pos = _read_varint(view, pos, end)
        field, wire_type = tag >> 3, tag & 7
        if field == 0:
            raise _malformed("field number 0")
        if wire_type == _LENGTH_DELIMITED:
            length, pos = _read_varint(view, pos, end)
            pos += length
            if field in (TRANSACTION_ITEMS_FIELD, DELETE_ITEMS_FIELD):
                items += 1
                if items > limit:
                    raise InvalidRequestError(
                        f"putObjects carries more than {limit} items, the limit is {limit}; split the call"
                    )
        elif wire_type == _VARINT:
            _, pos = _read_varint(view, pos, end)
        elif wire_type == _FIXED64:
            pos += 8
        elif wire_type == _FIXED32:
            pos += 4
        else:
            raise _malformed(f"wire type {wire_type} of field {field}")
        if pos > end:
            raise _malformed(f"field {field} runs past the end of the body")
        fields += 1
        if fields > max_fields:
            raise InvalidRequestError(
                f"putObjects has more than {max_fields} top-level fields; a valid request has at most "
                f"{limit} items plus a few other fields"
            )
    return items


def _read_varint(view: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    for offset in range(_MAX_VARINT_BYTES):
        if pos + offset >= end:
            raise _malformed("a varint runs past the end of the body")
        byte = view[pos + offset]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos + offset + 1
        shift += 7
    raise _malformed("a varint is longer than 10 bytes")


def _malformed(what: str) -> InvalidRequestError:
    return InvalidRequestError(f"body is not a valid PutObjectRequest: {what}")
