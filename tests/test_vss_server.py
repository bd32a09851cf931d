"""Behaviour of the bundled VSS server, the same suite over SQLite and PostgreSQL.

Drives the ASGI app in-process (lifespan, then httpx through ASGITransport) with
protobuf requests built by hand, one protocol rule per test (docs/PROTOCOL.md). PostgreSQL tests run
in a schema of their own, dropped afterwards, because the `test` database is shared.
"""

from __future__ import annotations

import base64
import logging
import os
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import anyio
import pytest

from asgiutil import serving
from vss.auth import sign_header
from vss.errors import ConflictError, InvalidRequestError
from vss.proto import vss_pb2 as pb
from vss.server.app import create_app
from vss.server.backend import Backend, Write
from vss.server.postgres import PostgresBackend
from vss.server.sqlite import SqliteBackend
from vss.server.wire import check_put_items

pytestmark = pytest.mark.anyio

ALICE = bytes.fromhex("11" * 32)
BOB = bytes.fromhex("22" * 32)
STORE = "store-1"

OK = 200
CONFLICT = (409, pb.CONFLICT_EXCEPTION)
INVALID = (400, pb.INVALID_REQUEST_EXCEPTION)
NO_SUCH_KEY = (404, pb.NO_SUCH_KEY_EXCEPTION)
AUTH = (401, pb.AUTH_EXCEPTION)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # asyncpg runs on asyncio


# -- backends -------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def new_backend(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[Callable[[], Backend]]:
    """A factory of unopened backends that all share one empty database.

    Calling it twice gives two independent instances (own connections) on the same data,
    as two server processes would have.
    """
    if request.param == "sqlite":
        path = str(tmp_path / "vss.sqlite3")
        yield lambda: SqliteBackend(path)
        return
    import asyncpg

    dsn = request.getfixturevalue("postgres_dsn")
    schema = f"vss_test_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    yield lambda: PostgresBackend(dsn, schema=schema, pool_size=5)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def opened(new_backend) -> AsyncIterator[Backend]:
    backend = new_backend()
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


# -- a hand-rolled protocol caller ------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str

    def error(self) -> tuple[int, int]:
        """(HTTP status, ErrorResponse.error_code)."""
        assert self.status != 200, "expected a failure"
        return self.status, pb.ErrorResponse.FromString(self.body).error_code

    def message(self, message_type):
        assert self.status == 200, f"{self.status}: {pb.ErrorResponse.FromString(self.body)}"
        return message_type.FromString(self.body)


class Caller:
    """One user talking to the app; `key` None sends no Authorization header."""

    def __init__(self, client, key: bytes | None) -> None:
        self.client = client
        self.key = key

    def headers(self) -> dict[str, str]:
        return {} if self.key is None else {"Authorization": sign_header(self.key)}

    async def raw(self, path: str, body: bytes, *, method: str = "POST", headers=None) -> Reply:
        response = await self.client.request(
            method, path, content=body, headers={**self.headers(), **(headers or {})}
        )
        return Reply(response.status_code, response.content, response.headers.get("content-type", ""))

    async def call(self, name: str, message) -> Reply:
        return await self.raw(f"/vss/{name}", message.SerializeToString())

    async def put(
        self,
        writes: Sequence[tuple[str, int, bytes]] = (),
        deletes: Sequence[tuple[str, int]] = (),
        *,
        global_version: int | None = None,
        store: str = STORE,
    ) -> Reply:
        req = pb.PutObjectRequest(
            store_id=store,
            transaction_items=[pb.KeyValue(key=k, version=v, value=val) for k, v, val in writes],
            delete_items=[pb.KeyValue(key=k, version=v) for k, v in deletes],
        )
        if global_version is not None:
            req.global_version = global_version
        return await self.call("putObjects", req)

    async def get(self, key: str, *, store: str = STORE) -> Reply:
        return await self.call("getObject", pb.GetObjectRequest(store_id=store, key=key))

    async def value(self, key: str, *, store: str = STORE) -> tuple[int, bytes] | None:
        """(version, value) of a key, None if it is missing."""
        reply = await self.get(key, store=store)
        if reply.status == 404:
            return None
        kv = reply.message(pb.GetObjectResponse).value
        assert kv.key == key
        return kv.version, kv.value

    async def global_version(self, *, store: str = STORE) -> int:
        kv = (await self.get("global_version", store=store)).message(pb.GetObjectResponse).value
        assert kv.value == b""
        return kv.version

    async def delete(self, key: str | None, version: int = -1, *, store: str = STORE) -> Reply:
        req = pb.DeleteObjectRequest(store_id=store)
        if key is not None:
            req.key_value.CopyFrom(pb.KeyValue(key=key, version=version))
        return await self.call("deleteObject", req)

    async def list(
        self,
        *,
        prefix: str | None = None,
        page_size: int | None = None,
        page_token: str | None = None,
        store: str = STORE,
    ) -> Reply:
        req = pb.ListKeyVersionsRequest(store_id=store)
        if prefix is not None:
            req.key_prefix = prefix
        if page_size is not None:
            req.page_size = page_size
        if page_token is not None:
            req.page_token = page_token
        return await self.call("listKeyVersions", req)

    async def list_all(self, *, prefix: str | None = None, page_size: int | None = None) -> list[tuple[str, int]]:
        """Every (key, version), following page tokens to the end."""
        found: list[tuple[str, int]] = []
        token = None
        while True:
            page = (await self.list(prefix=prefix, page_size=page_size, page_token=token)).message(
                pb.ListKeyVersionsResponse
            )
            found += [(kv.key, kv.version) for kv in page.key_versions]
            if not page.next_page_token:
                return found
            token = page.next_page_token


@dataclass
class Users:
    alice: Caller
    bob: Caller
    anonymous: Caller


@pytest.fixture
async def users(new_backend) -> AsyncIterator[Users]:
    async with serving(create_app(new_backend(), auth="sigs")) as client:
        yield Users(Caller(client, ALICE), Caller(client, BOB), Caller(client, None))


@pytest.fixture
async def alice(users: Users) -> Caller:
    return users.alice


# -- versions ---------------------------------------------------------------------------


async def test_unconditional_put_stores_version_one_and_overwrites(alice: Caller) -> None:
    assert (await alice.put([("k", -1, b"one")])).status == OK
    assert await alice.value("k") == (1, b"one")
    assert (await alice.put([("k", 1, b"two")])).status == OK
    assert await alice.value("k") == (2, b"two")
    # -1 is an upsert whatever is stored, and resets the version to 1.
    assert (await alice.put([("k", -1, b"three")])).status == OK
    assert await alice.value("k") == (1, b"three")


async def test_version_zero_creates_only(alice: Caller) -> None:
    assert (await alice.put([("k", 0, b"first")])).status == OK
    assert await alice.value("k") == (1, b"first")
    assert (await alice.put([("k", 0, b"second")])).error() == CONFLICT
    assert await alice.value("k") == (1, b"first")


async def test_version_v_updates_only_at_v(alice: Caller) -> None:
    assert (await alice.put([("missing", 1, b"x")])).error() == CONFLICT
    assert await alice.value("missing") is None
    await alice.put([("k", 0, b"v1")])
    assert (await alice.put([("k", 2, b"ahead")])).error() == CONFLICT
    assert (await alice.put([("k", 1, b"v2")])).status == OK
    assert (await alice.put([("k", 1, b"stale")])).error() == CONFLICT
    assert (await alice.put([("k", 2, b"v3")])).status == OK
    assert await alice.value("k") == (3, b"v3")


async def test_versions_below_minus_one_are_invalid(alice: Caller) -> None:
    await alice.put([("k", -1, b"x")])
    assert (await alice.put([("k", -2, b"y")])).error() == INVALID
    assert (await alice.put(deletes=[("k", -2)])).error() == INVALID
    assert (await alice.delete("k", -5)).error() == INVALID
    assert await alice.value("k") == (1, b"x")


async def test_get_missing_key_is_no_such_key(alice: Caller) -> None:
    assert (await alice.get("nothing-here")).error() == NO_SUCH_KEY


async def test_values_are_opaque_bytes_including_empty_and_large(alice: Caller) -> None:
    chunk = os.urandom(1024 * 1024)  # a wallet chunk
    binary = bytes(range(256))
    assert (await alice.put([("empty", -1, b""), ("chunk", -1, chunk), ("bin", -1, binary)])).status == OK
    assert await alice.value("empty") == (1, b"")
    assert await alice.value("chunk") == (1, chunk)
    assert await alice.value("bin") == (1, binary)


# -- deletes inside putObjects ------------------------------------------------------------


async def test_delete_items_unconditional_and_conditional(alice: Caller) -> None:
    await alice.put([("a", -1, b"a"), ("b", -1, b"b")])
    await alice.put([("b", 1, b"b2")])  # b at version 2
    assert (await alice.put(deletes=[("a", -1)])).status == OK
    assert await alice.value("a") is None
    assert (await alice.put(deletes=[("b", 1)])).error() == CONFLICT
    assert await alice.value("b") == (2, b"b2")
    assert (await alice.put(deletes=[("b", 2)])).status == OK
    assert await alice.value("b") is None


async def test_delete_item_removing_no_row_is_conflict_even_unconditional(alice: Caller) -> None:
    assert (await alice.put(deletes=[("never-existed", -1)])).error() == CONFLICT
    assert (await alice.put(deletes=[("never-existed", 3)])).error() == CONFLICT


# -- transactions ---------------------------------------------------------------------------


async def test_put_is_all_or_nothing_on_item_conflict(alice: Caller) -> None:
    await alice.put([("existing", -1, b"old"), ("doomed", -1, b"keep me")])
    reply = await alice.put(
        [("fresh", 0, b"new"), ("existing", -1, b"changed"), ("existing2", 7, b"bad version")],
        deletes=[("doomed", -1)],
    )
    assert reply.error() == CONFLICT
    assert await alice.value("fresh") is None
    assert await alice.value("existing") == (1, b"old")
    assert await alice.value("doomed") == (1, b"keep me")


async def test_put_is_all_or_nothing_on_failed_delete(alice: Caller) -> None:
    await alice.put([("a", -1, b"a")])
    reply = await alice.put([("a", 1, b"a2"), ("b", 0, b"b")], deletes=[("ghost", -1)])
    assert reply.error() == CONFLICT
    assert await alice.value("a") == (1, b"a")
    assert await alice.value("b") is None


async def test_put_is_all_or_nothing_on_global_version_mismatch(alice: Caller) -> None:
    reply = await alice.put([("k", -1, b"x")], deletes=[], global_version=5)
    assert reply.error() == CONFLICT
    assert await alice.value("k") is None
    assert await alice.global_version() == 0


async def test_item_conflict_does_not_bump_global_version(alice: Caller) -> None:
    await alice.put([("k", 0, b"x")], global_version=0)
    assert (await alice.put([("k", 0, b"again")], global_version=1)).error() == CONFLICT
    assert await alice.global_version() == 1
    assert await alice.value("k") == (1, b"x")


async def test_failed_put_leaves_no_trace_for_later_calls(alice: Caller) -> None:
    assert (await alice.put([("a", 0, b"a")], deletes=[("ghost", -1)])).error() == CONFLICT
    # A later create of the same key must see it absent.
    assert (await alice.put([("a", 0, b"a")])).status == OK
    assert await alice.list_all() == [("a", 1)]


async def test_empty_put_is_a_noop(alice: Caller) -> None:
    assert (await alice.put()).status == OK
    assert await alice.global_version() == 0
    assert await alice.list_all() == []


# -- global version ----------------------------------------------------------------------------


async def test_global_version_of_new_store_is_zero_with_empty_value(alice: Caller) -> None:
    kv = (await alice.get("global_version", store="untouched")).message(pb.GetObjectResponse).value
    assert (kv.key, kv.version, kv.value) == ("global_version", 0, b"")


async def test_global_version_checked_and_incremented_only_when_present(alice: Caller) -> None:
    assert (await alice.put([("a", -1, b"1")], global_version=0)).status == OK
    assert await alice.global_version() == 1
    assert (await alice.put([("b", -1, b"2")])).status == OK  # no check, no change
    assert await alice.global_version() == 1
    assert (await alice.put([("c", -1, b"3")], global_version=0)).error() == CONFLICT
    assert await alice.value("c") is None
    assert (await alice.put([("c", -1, b"3")], global_version=1)).status == OK
    assert await alice.global_version() == 2
    # global_version alone (no items) is a fence bump.
    assert (await alice.put(global_version=2)).status == OK
    assert await alice.global_version() == 3
    assert (await alice.put(global_version=2)).error() == CONFLICT
    assert (await alice.put(global_version=-1)).error() == CONFLICT
    assert await alice.global_version() == 3


async def test_global_version_is_per_store(alice: Caller) -> None:
    await alice.put(global_version=0, store="one")
    await alice.put(global_version=1, store="one")
    assert await alice.global_version(store="one") == 2
    assert await alice.global_version(store="two") == 0
    assert (await alice.put(global_version=0, store="two")).status == OK


async def test_reserved_global_version_key_cannot_be_written_or_deleted(alice: Caller) -> None:
    await alice.put(global_version=0)
    assert (await alice.put([("global_version", -1, b"x")])).error() == INVALID
    assert (await alice.put([("global_version", 0, b"x")])).error() == INVALID
    assert (await alice.put(deletes=[("global_version", -1)])).error() == INVALID
    assert (await alice.delete("global_version")).error() == INVALID
    assert await alice.global_version() == 1


async def test_global_version_key_is_never_listed(alice: Caller) -> None:
    await alice.put([("a", -1, b"a")], global_version=0)
    await alice.put([("global_versio", -1, b"prefix of the reserved name")], global_version=1)
    assert [k for k, _ in await alice.list_all()] == ["global_versio", "a"]
    assert [k for k, _ in await alice.list_all(prefix="global_")] == ["global_versio"]


# -- request shape limits ------------------------------------------------------------------------


async def test_duplicate_keys_in_one_call_are_invalid(alice: Caller) -> None:
    await alice.put([("x", -1, b"x")])
    assert (await alice.put([("k", -1, b"1"), ("k", -1, b"2")])).error() == INVALID
    assert (await alice.put(deletes=[("x", -1), ("x", 1)])).error() == INVALID
    assert (await alice.put([("x", 1, b"new")], deletes=[("x", -1)])).error() == INVALID
    assert await alice.value("k") is None
    assert await alice.value("x") == (1, b"x")


async def test_at_most_1000_items_per_call(alice: Caller) -> None:
    thousand = [(f"k{i:04}", -1, b"v") for i in range(1000)]
    assert (await alice.put(thousand)).status == OK
    assert len(await alice.list_all()) == 1000
    too_many = [(f"n{i:04}", -1, b"v") for i in range(1001)]
    assert (await alice.put(too_many)).error() == INVALID
    mixed = [(f"m{i:04}", -1, b"v") for i in range(600)]
    assert (await alice.put(mixed, deletes=[(f"k{i:04}", -1) for i in range(401)])).error() == INVALID
    assert await alice.value("n0000") is None
    assert await alice.value("m0000") is None
    assert await alice.value("k0000") == (1, b"v")


async def test_key_length_limit_is_600_characters(alice: Caller) -> None:
    longest = "é" * 600  # characters, not bytes
    assert (await alice.put([(longest, -1, b"ok")])).status == OK
    assert await alice.value(longest) == (1, b"ok")
    too_long = "k" * 601
    assert (await alice.put([(too_long, -1, b"no")])).error() == INVALID
    assert (await alice.get(too_long)).error() == INVALID
    assert (await alice.delete(too_long)).error() == INVALID
    assert [k for k, _ in await alice.list_all()] == [longest]


async def test_store_id_must_be_1_to_120_characters(alice: Caller) -> None:
    longest = "s" * 120
    assert (await alice.put([("k", -1, b"ok")], store=longest)).status == OK
    assert await alice.value("k", store=longest) == (1, b"ok")
    for bad in ("", "s" * 121):
        assert (await alice.put([("k", -1, b"no")], store=bad)).error() == INVALID
        assert (await alice.put(global_version=0, store=bad)).error() == INVALID
        assert (await alice.get("k", store=bad)).error() == INVALID
        assert (await alice.delete("k", store=bad)).error() == INVALID
        assert (await alice.list(store=bad)).error() == INVALID


async def test_empty_keys_and_nul_characters_are_invalid(alice: Caller) -> None:
    assert (await alice.put([("", -1, b"x")])).error() == INVALID
    assert (await alice.put(deletes=[("", -1)])).error() == INVALID
    assert (await alice.get("")).error() == INVALID
    assert (await alice.delete("")).error() == INVALID
    assert (await alice.put([("a\x00b", -1, b"x")])).error() == INVALID
    assert (await alice.put([("k", -1, b"x")], store="s\x00")).error() == INVALID
    assert (await alice.list(prefix="a\x00")).error() == INVALID
    assert await alice.list_all() == []


# -- deleteObject ---------------------------------------------------------------------------------


async def test_delete_object_is_idempotent(alice: Caller) -> None:
    assert (await alice.delete("never-existed")).status == OK
    assert (await alice.delete("never-existed", 4)).status == OK
    await alice.put([("k", -1, b"x")])
    await alice.put([("k", 1, b"y")])  # version 2
    assert (await alice.delete("k", 1)).status == OK  # mismatch: success, nothing removed
    assert await alice.value("k") == (2, b"y")
    assert (await alice.delete("k", 2)).status == OK
    assert await alice.value("k") is None
    await alice.put([("u", -1, b"x")])
    assert (await alice.delete("u", -1)).status == OK
    assert await alice.value("u") is None
    assert (await alice.delete("u", -1)).status == OK


async def test_delete_object_without_key_value_is_invalid(alice: Caller) -> None:
    await alice.put([("k", -1, b"x")])
    assert (await alice.delete(None)).error() == INVALID
    assert await alice.value("k") == (1, b"x")


# -- listKeyVersions ------------------------------------------------------------------------------


async def test_list_is_newest_created_first_and_overwrite_keeps_position(alice: Caller) -> None:
    for key in ("first", "second", "third"):
        await alice.put([(key, -1, b"v")])
    await alice.put([("first", 1, b"updated")])  # version 2, still the oldest
    assert await alice.list_all() == [("third", 1), ("second", 1), ("first", 2)]
    await alice.put([("first", -1, b"upsert")])  # upsert of an existing key: same position
    assert await alice.list_all() == [("third", 1), ("second", 1), ("first", 1)]


async def test_deleted_then_recreated_key_is_new(alice: Caller) -> None:
    for key in ("a", "b", "c"):
        await alice.put([(key, -1, b"v")])
    await alice.put(deletes=[("a", -1)])
    await alice.put([("a", 0, b"again")])
    assert await alice.list_all() == [("a", 1), ("c", 1), ("b", 1)]
    await alice.delete("b")
    await alice.put([("b", -1, b"again")])
    assert [k for k, _ in await alice.list_all()] == ["b", "a", "c"]


async def test_list_returns_no_values(alice: Caller) -> None:
    await alice.put([("k", -1, b"secret-ish")])
    page = (await alice.list()).message(pb.ListKeyVersionsResponse)
    assert [(kv.key, kv.version, kv.value) for kv in page.key_versions] == [("k", 1, b"")]


async def test_prefix_is_literal_and_case_sensitive(alice: Caller) -> None:
    keys = ["a_b", "axb", "a%c", "abc", "A_b", "_/_/manager", "_x", "x_", "a\\b", "a[b]"]
    await alice.put([(key, -1, b"v") for key in keys])

    async def listed(prefix: str) -> set[str]:
        return {k for k, _ in await alice.list_all(prefix=prefix)}

    assert await listed("a_") == {"a_b"}
    assert await listed("a%") == {"a%c"}
    assert await listed("_") == {"_/_/manager", "_x"}
    assert await listed("_/_/") == {"_/_/manager"}
    assert await listed("%") == set()
    assert await listed("A") == {"A_b"}
    assert await listed("a") == {"a_b", "axb", "a%c", "abc", "a\\b", "a[b]"}
    assert await listed("a\\") == {"a\\b"}
    assert await listed("a[") == {"a[b]"}
    assert await listed("") == set(keys)
    assert await listed("abcd") == set()


async def test_pages_are_capped_at_100_and_cover_everything_once(alice: Caller) -> None:
    keys = [f"key-{i:03}" for i in range(250)]
    for start in range(0, 250, 50):
        await alice.put([(k, -1, b"v") for k in keys[start : start + 50]])
    await alice.put(global_version=0)

    first = (await alice.list()).message(pb.ListKeyVersionsResponse)
    assert len(first.key_versions) == 100
    assert first.HasField("global_version") and first.global_version == 1
    assert first.next_page_token
    second = (await alice.list(page_token=first.next_page_token)).message(pb.ListKeyVersionsResponse)
    assert len(second.key_versions) == 100
    assert not second.HasField("global_version")
    third = (await alice.list(page_token=second.next_page_token)).message(pb.ListKeyVersionsResponse)
    assert len(third.key_versions) == 50
    assert not third.HasField("global_version")
    assert third.next_page_token == ""  # last page

    listed = [kv.key for page in (first, second, third) for kv in page.key_versions]
    assert listed == list(reversed(keys))


async def test_page_size_is_honoured_and_capped(alice: Caller) -> None:
    await alice.put([(f"k{i:03}", -1, b"v") for i in range(150)])
    small = (await alice.list(page_size=7)).message(pb.ListKeyVersionsResponse)
    assert [kv.key for kv in small.key_versions] == [f"k{i:03}" for i in range(149, 142, -1)]
    big = (await alice.list(page_size=1000)).message(pb.ListKeyVersionsResponse)
    assert len(big.key_versions) == 100
    walked = await alice.list_all(page_size=7)
    assert [k for k, _ in walked] == [f"k{i:03}" for i in range(149, -1, -1)]


async def test_exact_multiple_of_page_size_ends_cleanly(alice: Caller) -> None:
    await alice.put([(f"k{i}", -1, b"v") for i in range(10)])
    pages = []
    token = None
    while True:
        page = (await alice.list(page_size=5, page_token=token)).message(pb.ListKeyVersionsResponse)
        pages.append(len(page.key_versions))
        if not page.next_page_token:
            break
        token = page.next_page_token
    # Full pages of 5, then at most an empty closing page: nothing lost, nothing twice.
    assert pages[:2] == [5, 5] and sum(pages) == 10


async def test_page_size_zero_returns_only_global_version(alice: Caller) -> None:
    await alice.put([("k", -1, b"v")], global_version=0)
    page = (await alice.list(page_size=0)).message(pb.ListKeyVersionsResponse)
    assert list(page.key_versions) == []
    assert page.global_version == 1
    assert not page.next_page_token


async def test_negative_page_size_is_invalid(alice: Caller) -> None:
    assert (await alice.list(page_size=-1)).error() == INVALID


async def test_empty_store_lists_nothing_with_global_version_zero(alice: Caller) -> None:
    page = (await alice.list()).message(pb.ListKeyVersionsResponse)
    assert list(page.key_versions) == []
    assert page.HasField("global_version") and page.global_version == 0
    assert not page.next_page_token


async def test_malformed_and_empty_page_tokens_are_invalid(alice: Caller) -> None:
    await alice.put([(f"k{i}", -1, b"v") for i in range(3)])
    good = (await alice.list(page_size=1)).message(pb.ListKeyVersionsResponse).next_page_token
    assert (await alice.list(page_token=good)).status == OK
    for bad in ("", "not a token!", "%%%", "AAAA", good + "x", "LTE", "é"):
        assert (await alice.list(page_token=bad)).error() == INVALID, bad


async def test_keys_created_while_paging_do_not_disturb_later_pages(alice: Caller) -> None:
    await alice.put([(f"old{i}", -1, b"v") for i in range(6)])
    first = (await alice.list(page_size=3)).message(pb.ListKeyVersionsResponse)
    await alice.put([("brand-new", -1, b"v")])
    await alice.put([("old5", 1, b"updated")])  # update of a key on the first page
    rest = []
    token = first.next_page_token
    while token:
        page = (await alice.list(page_size=3, page_token=token)).message(pb.ListKeyVersionsResponse)
        rest += [kv.key for kv in page.key_versions]
        token = page.next_page_token
    assert [kv.key for kv in first.key_versions] == ["old5", "old4", "old3"]
    assert rest == ["old2", "old1", "old0"]


async def test_prefix_with_pagination(alice: Caller) -> None:
    await alice.put([(f"{'p' if i % 2 else 'q'}/{i:03}", -1, b"v") for i in range(60)])
    walked = await alice.list_all(prefix="p/", page_size=4)
    assert [k for k, _ in walked] == [f"p/{i:03}" for i in range(59, 0, -2)]


async def test_page_tokens_past_int64_or_of_thousands_of_digits_are_invalid(alice: Caller, caplog) -> None:
    # Both once escaped as 500s with a traceback: OverflowError in the database driver,
    # ValueError from int() of more than 4300 digits.
    await alice.put([("k", -1, b"v")])
    for digits in ("9" * 19, "9" * 25, "9" * 5000, "1" + "0" * 19):
        token = base64.urlsafe_b64encode(digits.encode()).rstrip(b"=").decode()
        assert (await alice.list(page_token=token)).error() == INVALID, digits[:30]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_largest_int64_page_token_is_accepted(alice: Caller) -> None:
    await alice.put([("k", -1, b"v")])
    token = base64.urlsafe_b64encode(str(2**63 - 1).encode()).rstrip(b"=").decode()
    page = (await alice.list(page_token=token)).message(pb.ListKeyVersionsResponse)
    assert [kv.key for kv in page.key_versions] == ["k"]


async def test_extreme_numbers_and_odd_unicode_are_answered_by_the_protocol(alice: Caller, caplog) -> None:
    """Numbers at the edges of their types and keys of unusual characters get protocol
    answers (never a 500): nothing here is a server fault."""
    odd = "\U0001f600\uffff\u202e\u0301e\U0010fffd"  # emoji, non-character, RTL override, combining, last plane
    assert (await alice.put([(odd, -1, b"v")], store=odd)).status == OK
    assert await alice.value(odd, store=odd) == (1, b"v")
    assert [k for k, _ in await alice.list_all(prefix=odd[:2])] == []  # prefix of another store
    assert (await alice.put(global_version=2**63 - 1)).error() == CONFLICT
    assert (await alice.put(global_version=-(2**63))).error() == CONFLICT
    assert (await alice.put([("k", 2**63 - 1, b"v")])).error() == CONFLICT
    assert (await alice.put([("k", -(2**63), b"v")])).error() == INVALID
    assert (await alice.delete("k", 2**63 - 1)).status == OK
    assert (await alice.list(page_size=2**31 - 1)).status == OK
    assert (await alice.list(page_size=-(2**31))).error() == INVALID
    assert (await alice.list(prefix="x" * 100_000)).status == OK
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_put_with_millions_of_items_is_refused_before_it_is_decoded(alice: Caller) -> None:
    """9.5 MiB of two million empty delete items: decoding it first would build millions
    of Python objects (hundreds of MB) before the 1000-item limit is checked. The items
    are counted on the wire instead; memory stays near the size of the body."""
    body = pb.PutObjectRequest(store_id=STORE).SerializeToString() + b"\x22\x00" * 2_000_000
    tracemalloc.start()
    try:
        reply = await alice.raw("/vss/putObjects", body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reply.error() == INVALID
    assert "1000" in pb.ErrorResponse.FromString(reply.body).message
    assert peak < 8 * len(body), f"peak {peak / 2**20:.0f} MiB of Python memory for a {len(body) / 2**20:.1f} MiB body"
    assert (await alice.put([("after", -1, b"v")])).status == OK  # and it still serves


@pytest.mark.parametrize(
    "body",
    [
        b"\x22",  # a length-delimited field without its length
        b"\x22\x05ab",  # a payload shorter than its length
        b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a varint of 11 bytes
        b"\x00\x00",  # field number 0
        b"\x23\x24",  # a group
        b"\x0a\x01s" * (1000 + 17),  # store_id repeated more often than any valid request has fields
    ],
)
async def test_malformed_put_wire_data_is_invalid(alice: Caller, body: bytes) -> None:
    assert (await alice.raw("/vss/putObjects", body)).error() == INVALID
    assert await alice.list_all() == []


def test_wire_scan_counts_what_protobuf_decodes() -> None:
    req = pb.PutObjectRequest(
        store_id="s",
        global_version=7,
        transaction_items=[pb.KeyValue(key=f"k{i}", version=i - 1, value=b"x" * i) for i in range(300)],
        delete_items=[pb.KeyValue(key=f"d{i}", version=-1) for i in range(700)],
    )
    assert check_put_items(req.SerializeToString(), 1000) == 1000
    req.delete_items.add(key="one-more")
    with pytest.raises(InvalidRequestError, match="more than 1000 items"):
        check_put_items(req.SerializeToString(), 1000)
    assert check_put_items(b"", 1000) == 0
    # Unknown fields of every non-group wire type are skipped, as protobuf skips them.
    assert check_put_items(b"\x28\x96\x01" + b"\x31" + b"\x00" * 8 + b"\x3d" + b"\x00" * 4 + b"\x1a\x00", 1000) == 1


# -- authorization ------------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["getObject", "putObjects", "deleteObject", "listKeyVersions"])
async def test_missing_authorization_is_401(users: Users, call: str) -> None:
    reply = await users.anonymous.raw(f"/vss/{call}", pb.GetObjectRequest(store_id=STORE, key="k").SerializeToString())
    assert reply.error() == AUTH


async def test_bad_authorization_headers_are_401_and_change_nothing(users: Users) -> None:
    good = sign_header(ALICE)
    stale = sign_header(ALICE, unix_time=int(time.time()) - 25 * 3600)
    forged = good[:66] + sign_header(BOB)[66:194] + good[194:]  # Alice's key, Bob's signature
    tampered_time = good[:-1] + ("1" if good[-1] != "1" else "2")
    body = pb.PutObjectRequest(
        store_id=STORE, transaction_items=[pb.KeyValue(key="k", version=-1, value=b"x")]
    ).SerializeToString()
    huge_time = good[:194] + "1" * 5000  # once a 500: int() of the time raised before any check
    for header in ("", "garbage", "zz" * 100 + "1", good[:194], stale, forged, tampered_time, huge_time, "\xe9" * 200):
        reply = await users.anonymous.raw("/vss/putObjects", body, headers={"Authorization": header.encode("latin-1")})
        assert reply.error() == AUTH, header
    assert await users.alice.value("k") is None


async def test_users_are_isolated_even_with_the_same_store_id(users: Users) -> None:
    alice, bob = users.alice, users.bob
    await alice.put([("secret", -1, b"alice's"), ("_/_/manager", -1, b"m")], global_version=0)
    assert (await bob.get("secret")).error() == NO_SUCH_KEY
    assert await bob.list_all() == []
    assert (await bob.list()).message(pb.ListKeyVersionsResponse).global_version == 0
    assert await bob.global_version() == 0
    # Bob's deletes cannot reach Alice's rows.
    assert (await bob.put(deletes=[("secret", -1)])).error() == CONFLICT
    assert (await bob.delete("secret")).status == OK
    # Bob's own writes and global version live apart from Alice's.
    assert (await bob.put([("secret", 0, b"bob's")], global_version=0)).status == OK
    assert await alice.value("secret") == (1, b"alice's")
    assert await bob.value("secret") == (1, b"bob's")
    assert await alice.global_version() == 1
    assert await bob.global_version() == 1
    assert [k for k, _ in await alice.list_all()] == ["_/_/manager", "secret"]


async def test_auth_none_makes_every_caller_one_user(new_backend) -> None:
    async with serving(create_app(new_backend(), auth="none")) as client:
        nobody, alice, bob = Caller(client, None), Caller(client, ALICE), Caller(client, BOB)
        assert (await nobody.put([("k", -1, b"shared")])).status == OK
        assert await alice.value("k") == (1, b"shared")
        assert await bob.value("k") == (1, b"shared")


# -- HTTP surface ----------------------------------------------------------------------------------


async def test_success_and_errors_are_octet_stream(alice: Caller) -> None:
    ok = await alice.put([("k", -1, b"v")])
    assert ok.status == OK and ok.content_type == "application/octet-stream"
    missing = await alice.get("nope")
    assert missing.content_type == "application/octet-stream"
    assert pb.ErrorResponse.FromString(missing.body).message  # says what happened


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/vss/nope"),
        ("POST", "/vss"),
        ("POST", "/"),
        ("POST", "/getObject"),
        ("POST", "/vss/getObject/"),
        ("POST", "/vss/getobject"),
        ("POST", "/static/x"),
        ("GET", "/vss/getObject"),
        ("PUT", "/vss/putObjects"),
        ("DELETE", "/vss/deleteObject"),
        ("OPTIONS", "/vss/listKeyVersions"),
        ("HEAD", "/vss/getObject"),
        ("GET", "/"),
    ],
)
async def test_other_paths_and_methods_are_400(alice: Caller, method: str, path: str) -> None:
    body = pb.PutObjectRequest(
        store_id=STORE, transaction_items=[pb.KeyValue(key="k", version=-1, value=b"x")]
    ).SerializeToString()
    reply = await alice.raw(path, body, method=method)
    assert reply.status == 400
    if method != "HEAD":
        assert pb.ErrorResponse.FromString(reply.body).error_code == pb.INVALID_REQUEST_EXCEPTION
    assert await alice.value("k") is None


@pytest.mark.parametrize("call", ["getObject", "putObjects", "deleteObject", "listKeyVersions"])
async def test_undecodable_bodies_are_400(alice: Caller, call: str) -> None:
    await alice.put([("k", -1, b"v")])
    invalid_utf8_store_id = b"\x0a\x02\xff\xfe"  # field 1 (store_id), bytes that are not UTF-8
    for body in (b"\xff\xff\xff", b"\x0a\x10short", invalid_utf8_store_id):
        assert (await alice.raw(f"/vss/{call}", body)).error() == INVALID
    assert await alice.list_all() == [("k", 1)]


async def test_wrong_message_type_changes_nothing(alice: Caller) -> None:
    # A ListKeyVersionsRequest sent to putObjects decodes as an empty-ish put: store_id
    # set, no items. It must not invent writes.
    body = pb.ListKeyVersionsRequest(store_id=STORE, key_prefix="k", page_size=5).SerializeToString()
    await alice.raw("/vss/putObjects", body)
    assert await alice.list_all() == []


async def test_body_over_limit_is_413_and_changes_nothing(new_backend) -> None:
    limit = 4096
    async with serving(create_app(new_backend(), auth="sigs", max_body_bytes=limit)) as client:
        alice = Caller(client, ALICE)

        def put_of_size(size: int, key: str) -> bytes:
            req = pb.PutObjectRequest(store_id=STORE, transaction_items=[pb.KeyValue(key=key, version=-1)])
            value_size = size
            while True:  # length prefixes grow with the value: converge on the exact size
                req.transaction_items[0].value = b"x" * value_size
                body = req.SerializeToString()
                if len(body) == size:
                    return body
                value_size -= len(body) - size

        # Exactly at the limit: accepted.
        assert (await alice.raw("/vss/putObjects", put_of_size(limit, "fits"))).status == OK
        over = await alice.raw("/vss/putObjects", put_of_size(limit + 1, "big"))
        assert over.status == 413
        assert pb.ErrorResponse.FromString(over.body).message
        # Without Content-Length (a chunked stream): the size that arrives counts.
        body = put_of_size(limit + 1, "big")

        async def chunks():
            for start in range(0, len(body), 1000):
                yield body[start : start + 1000]

        streamed = await client.post("/vss/putObjects", content=chunks(), headers=alice.headers())
        assert "content-length" not in streamed.request.headers
        assert streamed.status_code == 413
        # A declared Content-Length over the limit is refused before the body is read.
        declared = await alice.raw(
            "/vss/putObjects", put_of_size(100, "small"), headers={"Content-Length": str(limit + 1)}
        )
        assert declared.status == 413
        assert await alice.value("big") is None
        assert await alice.value("small") is None
        assert (await alice.value("fits"))[0] == 1


async def test_unexpected_failures_are_500_without_internals(tmp_path) -> None:
    class BrokenBackend(SqliteBackend):
        async def _read_object(self, user, store_id, key):
            raise RuntimeError("password=hunter2 at /secret/path")

    async with serving(create_app(BrokenBackend(str(tmp_path / "vss.sqlite3")), auth="sigs")) as client:
        reply = await Caller(client, ALICE).get("k")
    assert reply.error() == (500, pb.INTERNAL_SERVER_EXCEPTION)
    message = pb.ErrorResponse.FromString(reply.body).message
    assert "hunter2" not in message and "secret" not in message and "Traceback" not in message


async def test_health_says_ok_without_authorization(users: Users) -> None:
    reply = await users.anonymous.client.get("/health")
    assert reply.status_code == 200 and reply.json() == {"status": "ok"}
    assert reply.headers["content-type"] == "application/json"
    assert (await users.anonymous.raw("/health", b"")).status == 400  # POST is not the health check


async def test_health_is_503_when_the_database_does_not_answer(tmp_path) -> None:
    class Unreachable(SqliteBackend):
        async def ping(self) -> None:
            raise ConnectionRefusedError("password=hunter2")

    async with serving(create_app(Unreachable(str(tmp_path / "vss.sqlite3")))) as client:
        reply = await client.get("/health")
    assert reply.status_code == 503
    assert reply.json()["status"] == "unavailable"
    assert "hunter2" not in reply.text


async def test_metrics_count_requests_items_and_failures(users: Users) -> None:
    alice = users.alice
    await alice.put([("a", -1, b"1"), ("b", -1, b"2")], deletes=[])
    await alice.get("a")
    await alice.get("missing")
    await alice.list()
    await users.anonymous.get("a")
    reply = await users.anonymous.client.get("/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    text = reply.text
    assert 'vss_requests_total{route="getObject",status="200"} 1.0' in text
    assert 'vss_requests_total{route="getObject",status="404"} 1.0' in text
    assert 'vss_requests_total{route="getObject",status="401"} 1.0' in text
    assert "vss_items_written_total 2.0" in text
    assert "vss_items_read_total 3.0" in text  # one object, two listed keys
    assert "vss_auth_failures_total 1.0" in text
    assert "vss_database_errors_total 0.0" in text


def test_create_app_rejects_unknown_auth_mode(tmp_path) -> None:
    with pytest.raises(ValueError):
        create_app(SqliteBackend(str(tmp_path / "x.sqlite3")), auth="password")  # type: ignore[arg-type]


# -- durability and concurrency (backends directly) -------------------------------------------------


async def test_data_survives_close_and_reopen(new_backend) -> None:
    first = new_backend()
    await first.open()
    await first.put_objects("u", STORE, 0, [_write("a"), _write("b")], [])
    await first.put_objects("u", STORE, None, [_write("c")], [])
    await first.close()
    second = new_backend()
    await second.open()
    try:
        assert (await second.get_object("u", STORE, "b")).value == b"b"
        assert (await second.get_object("u", STORE, "global_version")).version == 1
        page = await second.list_key_versions("u", STORE)
        assert [kv.key for kv in page.key_versions] == ["c", "b", "a"]
    finally:
        await second.close()


async def test_concurrent_puts_on_one_backend_fail_alone(opened: Backend) -> None:
    results: dict[str, bool] = {}

    async def put(name: str, writes: list) -> None:
        try:
            await opened.put_objects("u", STORE, None, writes, [])
            results[name] = True
        except Exception as exc:
            assert isinstance(exc, ConflictError), repr(exc)
            results[name] = False

    async with anyio.create_task_group() as tg:
        for i in range(30):
            tg.start_soon(put, f"distinct{i}", [_write(f"d{i}")])
            # Each of these also writes its own key: if it conflicts, that write must vanish.
            tg.start_soon(put, f"contender{i}", [_write(f"c{i}"), _write("contested", version=0)])
    assert all(results[f"distinct{i}"] for i in range(30))
    winners = [i for i in range(30) if results[f"contender{i}"]]
    assert len(winners) == 1
    page = await opened.list_key_versions("u", STORE, page_size=100)
    listed = {kv.key for kv in page.key_versions}
    assert listed == {f"d{i}" for i in range(30)} | {f"c{winners[0]}", "contested"}


@pytest.mark.parametrize("rounds", [15])
async def test_two_instances_never_both_win_the_same_expected_version(new_backend, rounds: int) -> None:
    """Two backends (two pools / connections, as two server processes would have) race."""
    one, two = new_backend(), new_backend()
    await one.open()
    await two.open()
    try:
        await one.put_objects("u", STORE, None, [_write("counter")], [])
        for round_no in range(rounds):
            expected_global = round_no
            expected_key = round_no + 1
            wins: list[str] = []

            async def contend(
                backend: Backend, name: str, round_no: int, expected_global: int, expected_key: int, wins: list[str]
            ) -> None:
                try:
                    await backend.put_objects(
                        "u",
                        STORE,
                        expected_global,
                        [_write(f"owner-{round_no}", value=name.encode())],
                        [],
                    )
                    wins.append(f"global:{name}")
                except ConflictError:
                    pass
                try:
                    await backend.put_objects(
                        "u", STORE, None, [_write("counter", version=expected_key, value=name.encode())], []
                    )
                    wins.append(f"key:{name}")
                except ConflictError:
                    pass

            async with anyio.create_task_group() as tg:
                for i in range(4):
                    for backend, name in ((one, f"one-{i}"), (two, f"two-{i}")):
                        tg.start_soon(contend, backend, name, round_no, expected_global, expected_key, wins)

            global_wins = [w.split(":")[1] for w in wins if w.startswith("global:")]
            key_wins = [w.split(":")[1] for w in wins if w.startswith("key:")]
            assert len(global_wins) == 1, (round_no, wins)
            assert len(key_wins) == 1, (round_no, wins)
            assert (await two.get_object("u", STORE, f"owner-{round_no}")).value == global_wins[0].encode()
            assert (await one.get_object("u", STORE, "counter")).value == key_wins[0].encode()
        assert (await two.get_object("u", STORE, "global_version")).version == rounds
        assert (await one.get_object("u", STORE, "counter")).version == rounds + 1
    finally:
        await one.close()
        await two.close()


async def test_two_instances_race_to_create_one_key(new_backend) -> None:
    one, two = new_backend(), new_backend()
    await one.open()
    await two.open()
    try:
        wins: list[int] = []

        async def create(backend: Backend, n: int) -> None:
            try:
                await backend.put_objects("u", STORE, None, [_write("fence", version=0, value=b"%d" % n)], [])
                wins.append(n)
            except ConflictError:
                pass

        async with anyio.create_task_group() as tg:
            for n in range(16):
                tg.start_soon(create, one if n % 2 else two, n)
        assert len(wins) == 1
        assert (await one.get_object("u", STORE, "fence")).value == b"%d" % wins[0]
    finally:
        await one.close()
        await two.close()


def _write(key: str, *, version: int = -1, value: bytes | None = None) -> Write:
    return Write(key, version, key.encode() if value is None else value)
