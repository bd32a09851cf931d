"""The KV restore pipeline (actors/restorer.py) against the in-memory server.

The pipeline's mechanics, on asyncio and trio: bring back every value of a store of
many pages (and nothing else), keep the listing only a few pages ahead of the
fetchers, keep at most `concurrency` getObjects in flight, stage in batches bounded by
count and by bytes, skip what was deleted since it was listed or is not of the KV
format. (Failures, retries and progress on the MockClock: tests/test_restorer.py.)
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import anyio
import pytest

import actors.restorer as restorer
from actors.ownership_guard import FENCE_KEY
from actors.restorer import RestoreStatus, restore_kv
from fakevss import PAGE, FakePort, FakeVssServer
from node import crypto, kv_keys
from node.keys import NodeKeys, derive_keys
from node.store import LocalStore, Triple
from vss.backoff import Backoff
from vss.errors import NoSuchKeyError
from vss.proto.vss_pb2 import KeyValue

MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@cache
def keys() -> NodeKeys:
    return derive_keys(MNEMONIC)


@pytest.fixture
def store(tmp_path: Path):
    local = LocalStore(tmp_path / "node.sqlite3")
    yield local
    local.close()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(restorer, "RETRY_BACKOFF", Backoff(base_s=0.001, max_s=0.001))


def triple(i: int) -> Triple:
    return ("ns", "", f"k{i:05d}")


def fill(server: FakeVssServer, count: int, size: int = 64) -> dict[Triple, bytes]:
    """`count` encrypted values in the KV store (and the fence key, which is not data)."""
    plain = {triple(i): os.urandom(size) for i in range(count)}
    items = [KeyValue(key=kv_keys.to_vss_key(*t), version=-1, value=crypto.encrypt_value(keys().signing_key, v))
             for t, v in plain.items()]
    items.append(KeyValue(key=FENCE_KEY, version=-1, value=b"instance-id"))
    for first in range(0, len(items), 1000):
        server.apply_put(keys().kv_store_id, items[first:first + 1000], [], None)
    return plain


def live(store: LocalStore) -> dict[Triple, bytes]:
    return {t: v for t in store.key_sets()[0] if (v := store.get(t)) is not None}


class CountingPort(FakePort):
    """Records how far the listing ran ahead of the fetches, and getObjects in flight."""

    def __init__(self, server: FakeVssServer, fetch_delay_s: float = 0.0) -> None:
        super().__init__(server)
        self.listed = 0
        self.fetched = 0
        self.most_ahead = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.fetch_delay_s = fetch_delay_s

    async def list_key_versions(self, store_id, key_prefix=None, page_size=None, page_token=None):  # type: ignore[no-untyped-def]
        self.most_ahead = max(self.most_ahead, self.listed - self.fetched)
        page = await super().list_key_versions(store_id, key_prefix, page_size, page_token)
        self.listed += len(page.key_versions)
        return page

    async def get_object(self, store_id: str, key: str) -> KeyValue:
        self.fetched += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.fetch_delay_s:
                await anyio.sleep(self.fetch_delay_s)
            return await super().get_object(store_id, key)
        finally:
            self.in_flight -= 1


async def restore(port: FakePort, store: LocalStore, **kwargs: int) -> tuple[int, list[RestoreStatus]]:
    seen: list[RestoreStatus] = []
    count = await restore_kv(port, keys(), store, seen.append, {"restored-from": b"here"}, **kwargs)
    return count, seen


@pytest.mark.anyio
async def test_every_value_of_a_store_of_many_pages_comes_back_and_nothing_else(store: LocalStore) -> None:
    server = FakeVssServer()
    plain = fill(server, 2_345)
    count, seen = await restore(server.port(), store)
    assert count == 2_345
    assert live(store) == plain
    assert store.get_setting("restored-from") == b"here"
    assert seen[-1] == RestoreStatus(keys_listed=2_345, listing_done=True, keys_done=2_345,
                                     bytes_done=2_345 * 64, finished=True)


@pytest.mark.anyio
async def test_an_empty_store_restores_nothing_and_finishes(store: LocalStore) -> None:
    count, seen = await restore(FakeVssServer().port(), store)
    assert count == 0
    assert seen[-1].finished and seen[-1].listing_done and seen[-1].keys_done == 0


@pytest.mark.anyio
async def test_the_listing_stays_a_few_pages_ahead_of_the_fetches(store: LocalStore) -> None:
    server = FakeVssServer()
    fill(server, 5_000)
    port = CountingPort(server, fetch_delay_s=0.0005)
    count, _ = await restore(port, store)
    assert count == 5_000
    # The listing waits while _LISTED_AHEAD keys wait for a fetcher: it never lists
    # the whole store first, however fast the server lists.
    assert port.most_ahead < restorer._LISTED_AHEAD + PAGE
    assert port.most_ahead >= restorer._RESUME_LISTING  # and it did run ahead, not page by page


@pytest.mark.anyio
async def test_at_most_concurrency_getobjects_are_in_flight(store: LocalStore) -> None:
    server = FakeVssServer()
    fill(server, 600)
    port = CountingPort(server, fetch_delay_s=0.002)
    count, _ = await restore(port, store, concurrency=7)
    assert count == 600
    assert port.most_in_flight == 7


@pytest.mark.anyio
async def test_default_concurrency_is_read_when_the_restore_starts(store: LocalStore,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeVssServer()
    fill(server, 300)
    port = CountingPort(server, fetch_delay_s=0.002)
    monkeypatch.setattr(restorer, "DEFAULT_CONCURRENCY", 5)
    await restore(port, store)
    assert port.most_in_flight == 5


@pytest.mark.anyio
async def test_staging_goes_in_batches_bounded_by_count_and_by_bytes(store: LocalStore,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    batches: list[tuple[int, int]] = []
    original = store.stage

    def stage(rows: list[tuple[Triple, bytes]]) -> None:
        batches.append((len(rows), sum(len(v) for _, v in rows)))
        original(rows)

    monkeypatch.setattr(store, "stage", stage)
    server = FakeVssServer()
    fill(server, 2_500)
    await restore(server.port(), store)
    assert sorted(n for n, _ in batches) == [500, 1_000, 1_000]

    batches.clear()
    big = FakeVssServer()
    value_size = 300 * 1024  # over the size decrypted in a worker thread, too
    plain = fill(big, 60, size=value_size)
    store.clear_staging()
    with store._transaction() as conn:  # start from an empty node again
        conn.execute("DELETE FROM kv")
    count, _ = await restore(big.port(), store)
    assert count == 60 and live(store) == plain
    assert all(size < restorer._STAGE_BYTES + value_size for _, size in batches)
    assert len(batches) >= 60 * value_size // (restorer._STAGE_BYTES + value_size)


@pytest.mark.anyio
async def test_a_key_deleted_after_it_was_listed_is_skipped(store: LocalStore) -> None:
    server = FakeVssServer()
    plain = fill(server, 150)
    port = server.port()
    gone = kv_keys.to_vss_key(*triple(3))
    port.fail_next("get_object", NoSuchKeyError(f"no {gone}"))  # whichever key is fetched first
    count, seen = await restore(port, store)
    assert count == 149 and len(live(store)) == 149
    assert set(live(store)) < set(plain)
    assert seen[-1].keys_listed == 150 and seen[-1].keys_done == 149


@pytest.mark.anyio
async def test_keys_outside_the_kv_format_are_skipped(store: LocalStore) -> None:
    server = FakeVssServer()
    plain = fill(server, 20)
    server.apply_put(keys().kv_store_id, [KeyValue(key="not/a//key", version=-1, value=b"x")], [], None)
    count, seen = await restore(server.port(), store)
    assert count == 20 and live(store) == plain
    assert seen[-1].keys_listed == 20
