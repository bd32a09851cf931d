"""The local-writer alone, on a real SQLite file, its peers replaced by recorded channels.

Each test names the situation and what the writer must do: commit queued writes as one
group and answer each caller with its seq only after the commit, write the unsynced
marker in the same transaction, never block a commit on a full replicator inbox,
clear only markers that were not rewritten since, record the stores' versions, owe
everything on request, and answer every caller of a group it was stopped in the
middle of.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import anyio
import pytest
import trio.testing

from actors.local_writer import LocalWriter
from actors.messages import (
    ClearMarkers,
    Flush,
    KeysChanged,
    OweAll,
    OweKeys,
    RecordStoreVersion,
    Rescan,
    StoreKind,
    WriteRequest,
)
from actors.metrics import NodeMetrics
from actors.ownership_guard import recorded_versions
from actorutil import commit_directly, markers, stream, t, thread_aware_clock
from node import settings
from node.errors import NodeLocked
from node.store import LocalChange, LocalStore, Triple
from nodeutil import local_items


@pytest.fixture
def clock(monkeypatch):
    return thread_aware_clock(monkeypatch)


class GatedStore(LocalStore):
    """A LocalStore whose group commit (or bookkeeping) can be held in its worker thread:
    `entered` is set once the call is in the thread, the call goes on once `gate` is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.commits: list[list[LocalChange]] = []
        self.hold_writes = False
        self.hold_bookkeeping = False
        self.gate = threading.Event()
        self.entered: anyio.Event | None = None

    @contextlib.contextmanager
    def opened_at_the_end(self) -> Iterator[None]:
        """Whatever the test does, the held thread is let go when it ends."""
        try:
            yield
        finally:
            self.gate.set()

    def _hold(self) -> None:
        if self.entered is not None:
            anyio.from_thread.run_sync(self.entered.set)
        assert self.gate.wait(timeout=30), "the test never opened the gate"

    def apply_writes(self, writes: Sequence[LocalChange], first_seq: int, *, track_unsynced: bool,
                     cleared=(), settings=None) -> None:  # type: ignore[no-untyped-def]
        self.commits.append(list(writes))
        if self.hold_writes:
            self._hold()
        super().apply_writes(writes, first_seq, track_unsynced=track_unsynced, cleared=cleared, settings=settings)

    def apply_bookkeeping(self, cleared, settings) -> None:  # type: ignore[no-untyped-def]
        if self.hold_bookkeeping:
            self._hold()
        super().apply_bookkeeping(cleared, settings)


class WriterRig:
    """The local-writer with recorded replicator and retry-queue inboxes."""

    def __init__(self, store: LocalStore, *, replicator_inbox: float = 1024) -> None:
        self.store = store
        self.metrics = NodeMetrics()
        self.inbox, inbox_in = stream(4096)
        self.to_replicator, self.replicator_out = stream(replicator_inbox)
        self.to_retry, self.retry_out = stream(1024)
        self.writer = LocalWriter(store, inbox_in, self.metrics, self.to_replicator, self.to_retry)
        self.scope = anyio.CancelScope()

    async def run(self) -> None:
        with self.scope:
            await self.writer.run()

    def queue_write(self, key: str, value: bytes | None) -> WriteRequest:
        request = WriteRequest(LocalChange(t(key), value))
        self.inbox.send_nowait(request)
        return request

    async def write(self, key: str, value: bytes | None) -> int:
        seq = await self.queue_write(key, value).reply.wait()
        assert seq is not None
        return seq

    async def flush(self) -> None:
        flush = Flush()
        await self.inbox.send(flush)
        await flush.reply.wait()

    def notified(self) -> list[list[Triple]]:
        """The KeysChanged the replicator was sent, in order (drains its inbox)."""
        out = []
        while True:
            try:
                message = self.replicator_out.receive_nowait()
            except anyio.WouldBlock:
                return out
            assert isinstance(message, KeysChanged)
            out.append(message.triples)

    def rescans(self) -> int:
        count = 0
        while True:
            try:
                message = self.retry_out.receive_nowait()
            except anyio.WouldBlock:
                return count
            assert isinstance(message, Rescan)
            count += 1


async def outcome(reply_owner: WriteRequest | Flush | RecordStoreVersion) -> object:
    """What the caller heard: the value, or the exception."""
    try:
        return await reply_owner.reply.wait()
    except Exception as exc:
        return exc


@pytest.mark.trio
async def test_queued_writes_are_one_group_commit_and_each_caller_hears_its_seq_after_it(clock, tmp_path):
    """Situation: ten writes are queued before the writer takes any. Expected: one
    transaction holds them all (one commit counted); while it is on the disk no caller
    has been answered; afterwards each caller has its own seq, in queue order, and every
    value and marker (with that seq) is durable; the replicator hears of them once."""
    store = GatedStore(tmp_path / "node.sqlite3")
    store.hold_writes, store.entered = True, anyio.Event()
    rig = WriterRig(store)
    requests = [rig.queue_write(f"k{i}", f"v{i}".encode()) for i in range(10)]
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            with store.opened_at_the_end():  # inside the group: it waits for the held thread
                tg.start_soon(rig.run)
                await store.entered.wait()
                assert not any(r.reply.done for r in requests)
                store.gate.set()
                seqs = [await r.reply.wait() for r in requests]
                tg.cancel_scope.cancel()
    assert seqs == list(range(1, 11))
    assert len(store.commits) == 1 and rig.metrics.value("local_commits_total") == 1
    fresh = LocalStore(tmp_path / "node.sqlite3")  # another connection: what is on the disk
    assert local_items(fresh) == {t(f"k{i}"): f"v{i}".encode() for i in range(10)}
    assert markers(fresh) == {f"k{i}": i + 1 for i in range(10)}
    assert rig.notified() == [[t(f"k{i}") for i in range(10)]]
    fresh.close()
    store.close()


@pytest.mark.trio
@pytest.mark.parametrize("refusing_table", ["unsynced", "kv"])
async def test_the_marker_and_the_value_commit_together_or_not_at_all(clock, tmp_path, refusing_table):
    """Fault: the disk refuses one row of a group (a trigger aborts the insert of the
    marker, or of the value, of key `poison`). Expected: the whole group is rolled back:
    no value without its marker and no marker without its value; every caller of the
    group hears the failure; the writer goes on and the next write commits with its
    marker."""
    store = LocalStore(tmp_path / "node.sqlite3")
    conn = sqlite3.connect(tmp_path / "node.sqlite3", isolation_level=None)
    conn.execute(
        f"CREATE TRIGGER refuse_poison BEFORE INSERT ON {refusing_table} WHEN NEW.key = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'injected: the disk refuses this row'); END"
    )
    conn.close()
    rig = WriterRig(store)
    group = [rig.queue_write("k1", b"v1"), rig.queue_write("poison", b"p")]
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(rig.run)
            heard = [await outcome(r) for r in group]
            later = await rig.write("k2", b"v2")
            tg.cancel_scope.cancel()
    assert all(isinstance(h, sqlite3.DatabaseError) for h in heard), heard
    assert local_items(store) == {t("k2"): b"v2"}
    assert markers(store) == {"k2": later}
    store.close()


@pytest.mark.trio
async def test_a_full_replicator_inbox_never_blocks_a_commit_and_asks_for_a_rescan(clock, tmp_path):
    """Fault: the replicator takes nothing (its inbox holds no message at all). Expected:
    every write is committed and answered anyway, each stays owed by its marker, and
    the retry-queue is asked to re-read the markers."""
    store = LocalStore(tmp_path / "node.sqlite3")
    rig = WriterRig(store, replicator_inbox=0)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(rig.run)
            seqs = [await rig.write(f"k{i}", b"v") for i in range(3)]
            tg.cancel_scope.cancel()
    assert seqs == [1, 2, 3]
    assert markers(store) == {"k0": 1, "k1": 2, "k2": 3}
    assert rig.rescans() >= 1
    store.close()


@pytest.mark.trio
async def test_a_late_clear_leaves_a_newer_write_owed(clock, tmp_path):
    """Situation: k1 (seq 1) and k2 (seq 2) were sent; k1 was written again (seq 3)
    before the replicator's ClearMarkers for the sent seqs arrived. Expected: k2's marker
    is cleared, k1's stays with seq 3, so its newer value is still sent."""
    store = LocalStore(tmp_path / "node.sqlite3")
    rig = WriterRig(store)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(rig.run)
            first = await rig.write("k1", b"old")
            second = await rig.write("k2", b"v")
            newer = await rig.write("k1", b"new")
            clear = ClearMarkers([(t("k1"), first), (t("k2"), second)], store_version=7)
            await rig.inbox.send(clear)
            await clear.reply.wait()
            tg.cancel_scope.cancel()
    assert markers(store) == {"k1": newer}
    assert store.get_setting(settings.KV_STORE_VERSION) == b"7"  # recorded with the clear
    assert store.read_owed([t("k1")])[0].value == b"new"
    store.close()


@pytest.mark.trio
async def test_store_versions_are_recorded_before_the_guard_hears_back(clock, tmp_path):
    """Situation: the guard reports the stores' new global versions. Expected: while
    the bookkeeping transaction is still on the disk the guard has not heard back; each
    RecordStoreVersion is answered once the version is in the settings."""
    store = GatedStore(tmp_path / "node.sqlite3")
    store.hold_bookkeeping, store.entered = True, anyio.Event()
    rig = WriterRig(store)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            with store.opened_at_the_end():
                tg.start_soon(rig.run)
                kv = RecordStoreVersion(StoreKind.KV, 7)
                await rig.inbox.send(kv)
                await store.entered.wait()
                assert not kv.reply.done
                store.gate.set()
                await kv.reply.wait()
                assert recorded_versions(store)[StoreKind.KV] == 7
                wallet = RecordStoreVersion(StoreKind.WALLET, 3)
                await rig.inbox.send(wallet)
                await wallet.reply.wait()
                tg.cancel_scope.cancel()
    assert recorded_versions(store) == {StoreKind.KV: 7, StoreKind.WALLET: 3}
    store.close()


@pytest.mark.trio
async def test_owe_all_marks_every_key_and_asks_for_a_rescan(clock, tmp_path):
    """Situation: the server lost the store; three keys were synced (no marker), one is
    still owed. Expected: every key gets a marker (the owed one keeps its seq), the
    retry-queue is asked to re-read, and the next write's seq is above every marker."""
    store = LocalStore(tmp_path / "node.sqlite3")
    commit_directly(store, {"a": b"1", "b": b"2", "c": b"3"}, owed=False)
    commit_directly(store, {"owed": b"4"}, owed=True)
    owed_seq = markers(store)["owed"]
    rig = WriterRig(store)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(rig.run)
            await rig.inbox.send(OweAll())
            await rig.flush()
            assert rig.rescans() == 1
            after = await rig.write("d", b"5")
            tg.cancel_scope.cancel()
    owed = markers(store)
    assert set(owed) == {"a", "b", "c", "owed", "d"} and owed["owed"] == owed_seq
    assert after == max(owed.values()) and len(set(owed.values())) == 5
    store.close()


@pytest.mark.trio
async def test_owe_keys_marks_what_the_server_lacks_and_tells_the_replicator(clock, tmp_path):
    """Situation: the auditor found two local keys missing on the server. Expected: both
    get markers and the replicator is told; a key already owed keeps its marker."""
    store = LocalStore(tmp_path / "node.sqlite3")
    commit_directly(store, {"a": b"1", "b": b"2"}, owed=False)
    commit_directly(store, {"c": b"3"}, owed=True)
    rig = WriterRig(store)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(rig.run)
            await rig.inbox.send(OweKeys([t("a"), t("b"), t("c")]))
            await rig.flush()
            tg.cancel_scope.cancel()
    assert set(markers(store)) == {"a", "b", "c"} and markers(store)["c"] == 1
    assert rig.notified() == [[t("a"), t("b"), t("c")]]
    store.close()


@pytest.mark.trio
async def test_a_lock_right_after_a_group_is_taken_answers_its_callers_node_locked(clock, tmp_path):
    """Race: the writer has just taken a group of three writes from its inbox when the
    node locks (its scope is cancelled before it reaches the commit). Expected: none of
    the three is committed and each caller hears NodeLocked, never left waiting."""
    store = GatedStore(tmp_path / "node.sqlite3")
    rig = WriterRig(store)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(rig.run)
            await rig.flush()  # running, and about to wait on its empty inbox
            await trio.testing.wait_all_tasks_blocked()
            group = [rig.queue_write(f"k{i}", b"v") for i in range(3)]  # the first wakes the writer
            rig.scope.cancel()  # before the writer runs again: it resumes with the group taken
            heard = [await outcome(r) for r in group]
            tg.cancel_scope.cancel()
    assert all(isinstance(h, NodeLocked) for h in heard), heard
    assert store.commits == [] and local_items(store) == {} and markers(store) == {}
    store.close()


@pytest.mark.trio
async def test_a_lock_during_a_groups_commit_answers_every_caller(clock, tmp_path):
    """Race: the writer took a group (a store version, two writes, a flush) and its one
    transaction is on the disk when the node locks; two more writes arrive meanwhile.
    Expected: the group's transaction completes and each of its callers hears so (the
    version recorded, the writes with their seqs, the flush), and the two queued behind
    hear NodeLocked and are not committed."""
    store = GatedStore(tmp_path / "node.sqlite3")
    store.hold_writes, store.entered = True, anyio.Event()
    rig = WriterRig(store)
    record = RecordStoreVersion(StoreKind.KV, 4)
    flush = Flush()
    rig.inbox.send_nowait(record)
    group = [rig.queue_write("k1", b"v"), rig.queue_write("k2", b"v")]
    rig.inbox.send_nowait(flush)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            with store.opened_at_the_end():  # inside the group: it waits for the held thread
                tg.start_soon(rig.run)
                await store.entered.wait()
                behind = [rig.queue_write("k3", b"v"), rig.queue_write("k4", b"v")]
                rig.scope.cancel()
                store.gate.set()
                heard = [await outcome(r) for r in [record, *group, flush, *behind]]
                tg.cancel_scope.cancel()
    assert heard[:4] == [None, 1, 2, None], heard
    assert all(isinstance(h, NodeLocked) for h in heard[4:]), heard
    assert recorded_versions(store)[StoreKind.KV] == 4
    assert local_items(store) == {t("k1"): b"v", t("k2"): b"v"}
    store.close()
