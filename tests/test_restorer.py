"""The restore pipelines against the in-memory server, on MockClock.

The KV restore (`actors/restorer.py`) lists the store page by page, fetches and decrypts
every value, stages them and makes them live in one transaction: each test checks what
is live afterwards (everything, or nothing), what was fetched, how long the backoff
made it wait, and the progress it published. The wallet restore is checked for the one
refusal that must come before anything is allocated: a manifest claiming a million
pieces.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace

import anyio
import pytest

import actors.progress
import actors.restorer
import actors.wallet_restorer
from actors.ownership_guard import FENCE_KEY
from actors.progress import ProgressLog
from actors.restorer import RETRY_ATTEMPTS, RETRY_BACKOFF, RestoreStatus, restore_kv
from actors.wallet_restorer import restore_wallet
from actorutil import markers, seed_kv, thread_aware_clock, vss_key
from fakevss import PAGE, FakeVssServer
from guardutil import keys
from node import errors
from node.store import LocalStore
from node.wallet_files import WalletHome
from node.wallet_format import CHUNK_SIZE, FINGERPRINT_KEY, MANIFEST_KEY, METADATA_KEY, metadata_document
from nodeutil import local_items
from vss.errors import AuthError, InternalServerError, VssUnavailableError
from vss.proto.vss_pb2 import KeyValue

LIVE = {"restored-from": b"the fake server"}


@pytest.fixture
def clock(monkeypatch):
    return thread_aware_clock(monkeypatch)


@pytest.fixture
def store(tmp_path):
    store = LocalStore(tmp_path / "node.sqlite3")
    yield store
    store.close()


def values(count: int) -> dict[str, bytes]:
    return {f"k{i:04}": bytes([i % 251]) * (i % 300) for i in range(count)}


def seeded(count: int) -> tuple[FakeVssServer, dict[str, bytes]]:
    server = FakeVssServer()
    kv = values(count)
    seed_kv(server, kv)
    server.apply_put(keys().kv_store_id, [KeyValue(key=FENCE_KEY, version=0, value=b"node-a")], [], None)
    return server, kv


def live(store: LocalStore) -> dict[str, bytes]:
    return {triple[2]: value for triple, value in local_items(store).items()}


@pytest.mark.trio
async def test_every_key_is_restored_across_pages_and_the_fence_is_left_out(clock, store, caplog):
    """Situation: 1,100 keys (11 pages and more than one staging batch) and the fence.
    Expected: every key is live with its value, nothing is owed, the live settings are
    recorded; the fence is neither restored nor counted nor warned about; the progress
    only grows and ends consistent (all listed, all done, every byte, finished)."""
    caplog.set_level(logging.WARNING, logger="actors.restorer")
    server, kv = seeded(1100)
    port = server.port()
    statuses: list[RestoreStatus] = []
    with anyio.fail_after(600):
        count = await restore_kv(port, keys(), store, statuses.append, LIVE, concurrency=16)
    assert count == 1100 and live(store) == kv
    assert markers(store) == {} and store.get_setting("restored-from") == b"the fake server"
    assert port.calls.count("list_key_versions") == 1101 // PAGE + 1
    assert port.calls.count("get_object") == 1100  # never the fence
    assert [r.getMessage() for r in caplog.records] == []
    final = statuses[-1]
    assert final == RestoreStatus(keys_listed=1100, listing_done=True, keys_done=1100,
                                  bytes_done=sum(map(len, kv.values())), finished=True)
    for field in ("keys_listed", "keys_done", "bytes_done"):
        figures = [getattr(s, field) for s in statuses]
        assert figures == sorted(figures), field
    assert [s.finished for s in statuses].index(True) == len(statuses) - 1
    assert all(s.listing_done for s in statuses[[s.listing_done for s in statuses].index(True):])


class Ticking:
    """Stands in for the time module of the code under test: each reading of monotonic()
    is one second later than the one before, so a restore "takes" a second per step."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 1.0
        return self.now


KV_PROGRESS = re.compile(r"restore: (?P<done>[\d,]+) keys? (?:of (?P<total>[\d,]+)|\((?P<listed>[\d,]+) listed so far\)), "
                         r"(?P<mib>\d+\.\d) MiB, (?P<rate>[\d,]+) keys/s(?:, about (?P<left>\d+) s left)?")


@pytest.mark.trio
async def test_a_long_restore_logs_its_progress_with_counts(clock, store, caplog, monkeypatch):
    """Situation: a restore of 1,100 keys in 11 pages, staged 50 at a time, that takes
    long (a clock moving a second per reading: each page listed and each batch staged
    is a second). Expected: a progress line every five seconds with the keys done, the
    total once the listing knows it (what was listed so far before), the MiB and the
    rate, with the time left once the total is known; the figures only grow; the last
    line says how many keys were restored and how long it took."""
    monkeypatch.setattr(actors.progress, "time", Ticking())  # the restore reads its clock through its throttle
    monkeypatch.setattr(actors.restorer, "_STAGE_BATCH", 50)
    caplog.set_level(logging.INFO, logger="actors.restorer")
    server, kv = seeded(1100)
    with anyio.fail_after(600):
        assert await restore_kv(server.port(), keys(), store, lambda _: None, LIVE, concurrency=4) == 1100
    lines = [r.getMessage() for r in caplog.records if r.name == "actors.restorer"]
    progress = [KV_PROGRESS.fullmatch(line) for line in lines[:-1]]
    assert len(progress) >= 5 and all(progress), lines  # 11 pages + 22 batches + the end: 34 seconds
    done = [int(m["done"].replace(",", "")) for m in progress if m]
    assert done == sorted(done) and 0 < done[-1] <= 1100, done
    assert all((m["total"] is None) == (m["left"] is None) for m in progress if m), lines
    assert [m["total"] for m in progress if m][-1] == "1,100", lines
    assert re.fullmatch(r"restored 1,100 keys \(0\.\d MiB\) from VSS in 3\d\.0 s", lines[-1]), lines


def test_the_wallet_restore_progress_line_says_how_much_how_fast_and_how_long(monkeypatch, caplog):
    """ProgressLog (the wallet restore's): nothing before five seconds, then one line
    with MiB done of the total, the rate and the time left; the next only five seconds
    later."""
    monkeypatch.setattr(actors.progress, "time", Ticking())  # started at 1 s
    caplog.set_level(logging.INFO, logger="test.progress")
    progress = ProgressLog(logging.getLogger("test.progress"), "wallet restore", 48 * 2**20)
    for done_mib in (1, 2, 3, 4, 12, 13):  # read at 2, 3, 4, 5, 6 and 7 s
        progress.advance(done_mib * 2**20)
    assert [r.getMessage() for r in caplog.records] == ["wallet restore: 12.0 of 48.0 MiB, 2.4 MiB/s, about 15 s left"]


@pytest.mark.trio
async def test_a_value_that_does_not_decrypt_fails_the_restore_and_nothing_is_live(clock, store):
    """Fault: one of 300 values is not a ciphertext of this mnemonic (corrupted, or
    another node's key). Expected: RestoreFailed naming the key; nothing is live and the
    restore does not say finished. With the value repaired, running it again restores
    everything."""
    server, kv = seeded(300)
    server.apply_put(keys().kv_store_id, [KeyValue(key=vss_key("k0123"), version=-1, value=b"\x01" + bytes(90))], [], None)
    statuses: list[RestoreStatus] = []
    with anyio.fail_after(600):
        with pytest.raises(errors.RestoreFailed, match="k0123"):
            await restore_kv(server.port(), keys(), store, statuses.append, LIVE)
        assert local_items(store) == {} and not store.has_state() and store.get_setting("restored-from") is None
        assert not statuses[-1].finished
        seed_kv(server, {"k0123": kv["k0123"]})
        assert await restore_kv(server.port(), keys(), store, statuses.append, LIVE) == 300
    assert live(store) == kv


@pytest.mark.trio
async def test_transient_failures_are_retried_with_backoff_and_the_restore_completes(clock, store):
    """Fault: the first two listings and three fetches fail as an unreachable or failing
    server would. Expected: each call is retried after the restore's backoff (0.5 s,
    then 1 s, with up to 25 % jitter), and the restore completes with every key; it
    waited at least the backoff and not much more."""
    server, kv = seeded(250)
    port = server.port()
    for _ in range(2):
        port.fail_next("list_key_versions", VssUnavailableError("injected: connection refused"))
    for _ in range(3):
        port.fail_next("get_object", InternalServerError("injected: 500"))
    with anyio.fail_after(600):
        started = anyio.current_time()
        assert await restore_kv(port, keys(), store, lambda _: None, LIVE, concurrency=4) == 250
        took = anyio.current_time() - started
    assert live(store) == kv
    assert port.calls.count("list_key_versions") == 3 + 2 and port.calls.count("get_object") == 250 + 3
    listing = RETRY_BACKOFF.base_s * (1 + 2)  # two retries of the first listing, one after the other
    assert listing + RETRY_BACKOFF.base_s <= took <= (listing + RETRY_BACKOFF.base_s) * (1 + RETRY_BACKOFF.jitter) + 0.01


@pytest.mark.trio
async def test_a_call_that_keeps_failing_fails_the_restore_after_its_attempts(clock, store):
    """Fault: fetching the one key fails every time. Expected: RETRY_ATTEMPTS calls with
    the backoff between them, then RestoreFailed; nothing is live."""
    server, _ = seeded(1)
    port = server.port()
    for _ in range(RETRY_ATTEMPTS + 5):
        port.fail_next("get_object", VssUnavailableError("injected: connection refused"))
    with anyio.fail_after(600):
        started = anyio.current_time()
        with pytest.raises(errors.RestoreFailed, match="k0000"):
            await restore_kv(port, keys(), store, lambda _: None, LIVE, concurrency=1)
        took = anyio.current_time() - started
    assert port.calls.count("get_object") == RETRY_ATTEMPTS
    shortest = replace(RETRY_BACKOFF, jitter=0.0)
    assert took >= sum(shortest.delay(n) for n in range(1, RETRY_ATTEMPTS))
    assert local_items(store) == {}


@pytest.mark.trio
async def test_a_failure_that_is_not_transient_is_not_retried(clock, store):
    """Fault: the server refuses the credentials. Expected: RestoreFailed at once, no
    retry, nothing live."""
    server, _ = seeded(5)
    port = server.port()
    port.fail_next("list_key_versions", AuthError("injected: bad signature"))
    with anyio.fail_after(600):
        started = anyio.current_time()
        with pytest.raises(errors.RestoreFailed):
            await restore_kv(port, keys(), store, lambda _: None, LIVE)
        assert anyio.current_time() == started
    assert port.calls == ["list_key_versions"] and local_items(store) == {}


def forged_manifest(chunk_count: int, total_size: int) -> bytes:
    return json.dumps({"chunk_count": chunk_count, "total_size": total_size, "encrypted": True, "version": 1}).encode()


@pytest.mark.trio
@pytest.mark.parametrize("total_size", [1_000_000 * CHUNK_SIZE, 1000], ids=["size-to-match", "size-too-small"])
async def test_a_manifest_claiming_a_million_pieces_is_refused_before_anything_is_allocated(
    clock, tmp_path, monkeypatch, total_size
):
    """Fault: a hostile or damaged manifest says the backup has a million pieces (with a
    size to match, over the ceiling; or a size that cannot fill them). Expected:
    RestoreFailed after reading the manifest alone: no other document or piece is
    fetched, no restore (temp file, tasks) is set up, nothing appears on disk."""
    home = WalletHome(tmp_path / "data", keys().fingerprint)
    server = FakeVssServer()
    documents = {
        MANIFEST_KEY: forged_manifest(1_000_000, total_size),
        METADATA_KEY: metadata_document(bytes(32), bytes(19)),
        FINGERPRINT_KEY: keys().fingerprint.encode(),
    }
    server.apply_put(keys().wallet_store_id, [KeyValue(key=k, version=0, value=v) for k, v in documents.items()], [], None)
    port = server.port()

    def no_restore(*args: object, **kwargs: object) -> None:
        raise AssertionError("a restore was set up for the forged manifest")

    monkeypatch.setattr(actors.wallet_restorer, "WalletRestore", no_restore)
    with anyio.fail_after(60), pytest.raises(errors.RestoreFailed, match="damaged"):
        await restore_wallet(port, keys(), home, dest=tmp_path / "restored")
    assert port.calls == ["get_object"]
    assert not (tmp_path / "restored").exists() and not home.work_dir.exists()

