"""The retry-queue on MockClock: its backoff, its sweeps, its bound, its outage lines.

Most tests put a scripted stand-in where the replicator would be: it records when each
RetryBatch arrived and answers as a replicator would with the server down (Deferred,
failed) or up (the keys' markers cleared, then Succeeded). One test runs the real
replicator and local-writer against the in-memory server instead, to see a server that
comes back caught up without a single new write.
"""

from __future__ import annotations

import logging
import re

import anyio
import pytest

from actors.messages import Deferred, ReplicationStopped, Rescan, RetryBatch, Succeeded
from actors.metrics import NodeMetrics
from actors.retry_queue import DEFAULT_BACKOFF, SWEEP_INTERVAL_S, RetryQueue
from actorutil import KvRig, commit_directly, eventually, markers, none_within, stream, t, thread_aware_clock
from node.store import LocalStore, Triple

FAILING_LINE = "VSS writes are failing"
CAUGHT_UP = re.compile(r"VSS reachable again: ([\d,]+) keys? sent in \d+\.\d s")


@pytest.fixture
def clock(monkeypatch):
    return thread_aware_clock(monkeypatch)


class StandIn:
    """Where the replicator would be: records RetryBatches, answers as the server allows."""

    def __init__(self, store: LocalStore, failures: int = 0) -> None:
        self.store = store
        self.failures_left = failures  # answer this many batches as failed, then land them
        self.batches: list[tuple[float, list[Triple]]] = []
        self._arrived: anyio.Event | None = None

    def times(self) -> list[float]:
        return [at for at, _ in self.batches]

    def gaps(self) -> list[float]:
        times = self.times()
        return [round(b - a, 6) for a, b in zip(times, times[1:], strict=False)]

    async def wait_batches(self, count: int) -> None:
        while len(self.batches) < count:
            self._arrived = anyio.Event()
            await self._arrived.wait()

    async def run(self, inbox, queue) -> None:  # type: ignore[no-untyped-def]
        async for batch in inbox:
            assert isinstance(batch, RetryBatch)
            self.batches.append((anyio.current_time(), list(batch.triples)))
            if self._arrived is not None:
                self._arrived.set()
            if self.failures_left > 0:
                self.failures_left -= 1
                await queue.send(Deferred(list(batch.triples), failed=True, error="injected: the server is down"))
                continue
            owed = await anyio.to_thread.run_sync(self.store.read_owed, batch.triples)
            await anyio.to_thread.run_sync(self.store.apply_bookkeeping, [(o.triple, o.seq) for o in owed], {})
            await queue.send(Succeeded(len(owed)))


class QueueRig:
    def __init__(self, store: LocalStore, stand_in: StandIn, **kwargs: object) -> None:
        self.metrics = NodeMetrics()
        self.inbox, inbox_in = stream(1024)
        replicator_out, self._replicator_in = stream(1024)
        self.queue = RetryQueue(store, inbox_in, replicator_out, self.metrics, **kwargs)  # type: ignore[arg-type]
        self.stand_in = stand_in

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        tg.start_soon(self.queue.run)
        tg.start_soon(self.stand_in.run, self._replicator_in, self.inbox.clone())


@pytest.mark.trio
async def test_the_backoff_grows_caps_and_starts_over_after_a_success(clock, tmp_path):
    """Fault: the server fails the first eight offers of a key owed since the last
    session. Expected: it is offered at once, then after 0.25 s, 0.5 s, 1, 2, 4, 8 s and
    then every 15 s (the cap); it lands at the ninth offer. A failure after that success
    waits 0.25 s again, not 15."""
    store = LocalStore(tmp_path / "node.sqlite3")
    commit_directly(store, {"k1": b"v"}, owed=True)
    stand_in = StandIn(store, failures=8)
    rig = QueueRig(store, stand_in)
    assert DEFAULT_BACKOFF.jitter == 0  # the timing below is exact
    with anyio.fail_after(600):
        async with anyio.create_task_group() as tg:
            start = anyio.current_time()
            rig.start(tg)
            await stand_in.wait_batches(9)
            await eventually(lambda: not markers(store), "k1 landed")
            assert stand_in.times()[0] == start
            assert stand_in.gaps() == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
            assert rig.metrics.value("retry_queue_keys") == 0  # the queue published itself empty
            commit_directly(store, {"k2": b"v"}, owed=True)
            stand_in.failures_left = 1
            failed_at = anyio.current_time()
            await rig.inbox.send(Deferred([t("k2")], failed=True, error="injected"))  # a live batch failed
            await stand_in.wait_batches(11)
            tg.cancel_scope.cancel()
    assert [round(at - failed_at, 6) for at in stand_in.times()[9:]] == [0.25, 0.75]
    store.close()


@pytest.mark.trio
async def test_a_long_outage_offers_a_key_once_per_backoff_step(clock, tmp_path):
    """Fault: the server stays down for well over SWEEP_INTERVAL_S (twelve failed offers,
    about 106 s). Expected: one offer per backoff step, never two at once: each gap is
    the backoff's (0.25 s doubling to 15 s), the periodic sweep included."""
    store = LocalStore(tmp_path / "node.sqlite3")
    commit_directly(store, {"k1": b"v"}, owed=True)
    stand_in = StandIn(store, failures=12)
    rig = QueueRig(store, stand_in)
    with anyio.fail_after(600):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            await eventually(lambda: not markers(store), "k1 landed", step=0.05)
            tg.cancel_scope.cancel()
    assert stand_in.gaps() == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0] + [15.0] * 6
    store.close()


@pytest.mark.trio
async def test_a_server_that_comes_back_is_caught_up_without_new_writes(clock, tmp_path, caplog):
    """Fault: the server is down for 30 s while twenty keys are written, then comes back;
    nothing is written after that. Expected: the retry-queue's timer alone brings every
    key to the server within one capped backoff (15 s), and the outage is logged as one
    line when it starts and one "VSS reachable again: 20 keys sent in T s" when caught up,
    however many attempts failed in between."""
    caplog.set_level(logging.INFO, logger="actors.retry_queue")
    rig = KvRig(tmp_path, real_retry_queue=True)
    rig.port.down = True
    with anyio.fail_after(600):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            for i in range(20):
                await rig.put(f"k{i}", b"v")
            await anyio.sleep(30)
            assert len(markers(rig.store)) == 20
            failed_attempts = rig.kv_puts()
            assert failed_attempts >= 5
            rig.port.down = False
            back_at = anyio.current_time()
            await eventually(lambda: not markers(rig.store), "caught up", step=0.01, max_step=0.01)
            caught_up_in = anyio.current_time() - back_at
            await eventually(lambda: any(CAUGHT_UP.search(r.getMessage()) for r in caplog.records))
            tg.cancel_scope.cancel()
    assert caught_up_in <= DEFAULT_BACKOFF.max_s + 0.1
    lines = [r.getMessage() for r in caplog.records if r.name == "actors.retry_queue"]
    assert len([line for line in lines if FAILING_LINE in line]) == 1, lines
    caught_up = [m for m in map(CAUGHT_UP.search, lines) if m]
    assert len(caught_up) == 1 and caught_up[0].group(1) == "20", lines
    rig.close()


@pytest.mark.trio
async def test_overflow_drops_the_oldest_and_a_sweep_brings_them_back(clock, tmp_path):
    """Fault: five keys fail while the queue holds three. Expected: the two oldest are
    dropped (and counted), the three newest are offered first; the moment they land,
    the markers are read again and the two dropped keys are offered and land too."""
    store = LocalStore(tmp_path / "node.sqlite3")
    stand_in = StandIn(store)
    rig = QueueRig(store, stand_in, capacity=3)
    with anyio.fail_after(600):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            await anyio.sleep(1)  # the first sweep found nothing
            commit_directly(store, {f"k{i}": b"v" for i in range(5)}, owed=True)
            await rig.inbox.send(Deferred([t(f"k{i}") for i in range(5)], failed=True, error="injected"))
            await stand_in.wait_batches(2)
            await eventually(lambda: not markers(store), "all five landed")
            tg.cancel_scope.cancel()
    assert [sorted(batch) for _, batch in stand_in.batches] == [[t("k2"), t("k3"), t("k4")], [t("k0"), t("k1")]]
    first, second = stand_in.times()
    assert second == first  # read back as soon as the queue had room, not at the next periodic sweep
    assert rig.metrics.value("retry_queue_dropped_total") == 2
    store.close()


@pytest.mark.trio
async def test_the_periodic_sweep_finds_keys_nobody_announced(clock, tmp_path):
    """Situation: a marker appears without any message (a notification lost for good).
    Expected: nothing is offered until the periodic sweep, SWEEP_INTERVAL_S after the
    previous one; then the key is offered and lands."""
    store = LocalStore(tmp_path / "node.sqlite3")
    stand_in = StandIn(store)
    rig = QueueRig(store, stand_in)
    with anyio.fail_after(600):
        async with anyio.create_task_group() as tg:
            start = anyio.current_time()
            rig.start(tg)
            await anyio.sleep(10)
            commit_directly(store, {"lost": b"v"}, owed=True)
            await stand_in.wait_batches(1)
            await eventually(lambda: not markers(store), "the key landed")
            tg.cancel_scope.cancel()
    assert stand_in.batches == [(start + SWEEP_INTERVAL_S, [t("lost")])]
    store.close()


@pytest.mark.trio
async def test_a_rescan_reads_the_markers_at_once(clock, tmp_path):
    """Situation: the local-writer could not tell the replicator of a commit and asks for
    a rescan. Expected: the key is offered at once, not at the next periodic sweep."""
    store = LocalStore(tmp_path / "node.sqlite3")
    stand_in = StandIn(store)
    rig = QueueRig(store, stand_in)
    with anyio.fail_after(600):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            await anyio.sleep(10)
            commit_directly(store, {"k": b"v"}, owed=True)
            asked_at = anyio.current_time()
            await rig.inbox.send(Rescan())
            await stand_in.wait_batches(1)
            tg.cancel_scope.cancel()
    assert stand_in.batches == [(asked_at, [t("k")])]
    store.close()


@pytest.mark.trio
async def test_after_replication_stopped_nothing_more_is_offered(clock, tmp_path):
    """Fault: the store was taken over while a key was being retried. Expected: after
    ReplicationStopped the queue is empty and offers nothing more, whatever it hears
    (deferred keys, rescans) and however long it waits (sweeps included)."""
    store = LocalStore(tmp_path / "node.sqlite3")
    commit_directly(store, {"k": b"v"}, owed=True)
    stand_in = StandIn(store, failures=1_000)
    rig = QueueRig(store, stand_in)
    with anyio.fail_after(10_000):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            await stand_in.wait_batches(3)
            await rig.inbox.send(ReplicationStopped())
            await anyio.sleep(1)
            offered = len(stand_in.batches)
            commit_directly(store, {"k2": b"v"}, owed=True)
            await rig.inbox.send(Deferred([t("k"), t("k2")], failed=True, error="injected"))
            await rig.inbox.send(Rescan())
            await none_within(5 * SWEEP_INTERVAL_S, lambda: stand_in.wait_batches(offered + 1), "an offer after the stop")
            tg.cancel_scope.cancel()
    assert rig.metrics.value("retry_queue_keys") == 0  # the queue published itself empty
    store.close()


@pytest.mark.parametrize("batch_size", [
    500,
    2,
])
@pytest.mark.trio
async def test_an_outage_logs_one_line_when_it_starts_and_one_when_caught_up(clock, tmp_path, caplog, batch_size):
    """Fault: five owed keys meet four failed attempts, then the server is back.
    Expected: one warning when the first attempt fails, none for the next three, and one
    "VSS reachable again: 5 keys sent in T s" once every key landed, not one per batch,
    whether the backlog goes in one batch or in batches of two."""
    caplog.set_level(logging.INFO, logger="actors.retry_queue")
    store = LocalStore(tmp_path / "node.sqlite3")
    commit_directly(store, {f"k{i}": b"v" for i in range(5)}, owed=True)
    stand_in = StandIn(store, failures=4)
    rig = QueueRig(store, stand_in, batch_size=batch_size)
    with anyio.fail_after(600):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            await eventually(lambda: not markers(store), "all landed", step=0.01)
            await anyio.sleep(60)
            tg.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if r.name == "actors.retry_queue"]
    assert len([line for line in lines if FAILING_LINE in line]) == 1, lines
    caught_up = [m for m in map(CAUGHT_UP.search, lines) if m]
    assert len(caught_up) == 1 and caught_up[0].group(1) == "5", lines
    store.close()
