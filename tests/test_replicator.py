"""The replicator with a real local-writer, against the in-memory server, on MockClock.

The ownership-guard is a stand-in that puts straight onto the fake server (or reports
the fence lost); the retry-queue is a recorder, so each test sees exactly what the
replicator hands over. Each test names a situation and what must reach the server,
what stays owed (markers), and what the callers and the status hear.
"""

from __future__ import annotations

import anyio
import pytest

from actors.messages import Deferred, KeysChanged, ReplicationStopped, RetryBatch, SendNow, Succeeded
from actors.ownership_guard import FenceLost
from actors.replicator import BATCH_WINDOW_S, REJECTED_RETRY_S
from actorutil import KvRig, eventually, markers, none_within, remote_kv, t, thread_aware_clock
from node import errors


@pytest.fixture
def clock(monkeypatch):
    return thread_aware_clock(monkeypatch)


@pytest.fixture
def rig(tmp_path):
    rig = KvRig(tmp_path)
    yield rig
    rig.close()


def synced(rig: KvRig) -> bool:
    return not markers(rig.store)


@pytest.mark.trio
async def test_writes_within_the_window_share_one_batch(clock, rig):
    """Situation: five writes commit within the batch window, two more a second later.
    Expected: the five land in one putObjects, the two in a second one; all markers
    are cleared once they are on the server."""
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            for i in range(5):
                await rig.put(f"k{i}", f"v{i}".encode())
            await eventually(lambda: synced(rig), "the first five landed")
            await anyio.sleep(1)
            await rig.put("k5", b"v5")
            await rig.put("k6", b"v6")
            await eventually(lambda: synced(rig), "the last two landed")
            tg.cancel_scope.cancel()
    assert [sorted(put.keys) for put in rig.guard.puts] == [
        [f"_/_/k{i}" for i in range(5)],
        ["_/_/k5", "_/_/k6"],
    ]
    assert remote_kv(rig.server) == {f"k{i}": f"v{i}".encode() for i in range(7)}
    assert rig.replicator.status.keys_sent == 7 and rig.replicator.status.batches_sent == 2
    assert rig.metrics.value("replicated_keys_total") == 7


@pytest.mark.trio
async def test_the_newest_value_wins_when_a_key_changes_while_its_batch_is_in_flight(clock, rig):
    """Situation: k=old is read and on its way to the server when k=new commits.
    Expected: the batch with the old value lands but does not clear k's marker (it is
    at the newer seq); the new value follows and only then is k synced."""
    first = rig.port.pause_before("put_objects")
    second = rig.port.pause_before("put_objects")
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            await rig.put("k", b"old")
            await first.reached.wait()
            newer = await rig.put("k", b"new")
            first.release()
            await second.reached.wait()  # the old value landed; the new one is on its way
            await rig.flush()  # the clear of the old batch is handled
            assert remote_kv(rig.server) == {"k": b"old"}
            assert markers(rig.store) == {"k": newer}
            second.release()
            await eventually(lambda: synced(rig), "the new value landed")
            tg.cancel_scope.cancel()
    assert remote_kv(rig.server) == {"k": b"new"}


@pytest.mark.trio
async def test_a_failed_batch_goes_to_the_retry_queue_and_later_keys_wait_there(clock, rig):
    """Fault: the server is down. Expected: the batch is handed to the retry-queue as
    failed (markers kept); a key written afterwards is deferred without another attempt
    on the server; once the retry-queue offers them again with the server back, they all
    land, and the next write goes out directly again."""
    rig.port.down = True
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            await rig.put("a", b"1")
            await rig.put("b", b"2")
            await eventually(lambda: bool(rig.retries(Deferred)), "the failure handed over")
            assert rig.retries(Deferred)[0].failed and set(rig.retries(Deferred)[0].triples) == {t("a"), t("b")}
            assert rig.replicator.status.failures == 1 and rig.replicator.status.last_error
            await rig.put("c", b"3")
            await eventually(lambda: len(rig.retries(Deferred)) == 2, "c deferred")
            assert not rig.retries(Deferred)[1].failed and rig.retries(Deferred)[1].triples == [t("c")]
            assert rig.kv_puts() == 1  # c was never tried against the failing server
            assert set(markers(rig.store)) == {"a", "b", "c"}
            rig.port.down = False
            await rig.send(RetryBatch([t("a"), t("b"), t("c")]))
            await eventually(lambda: synced(rig), "the retried keys landed")
            assert rig.retries(Succeeded)
            await rig.put("d", b"4")
            await eventually(lambda: synced(rig), "d landed")
            tg.cancel_scope.cancel()
    assert len(rig.retries(Deferred)) == 2  # d was sent, not deferred
    assert remote_kv(rig.server) == {"a": b"1", "b": b"2", "c": b"3", "d": b"4"}


@pytest.mark.trio
async def test_a_refused_value_is_isolated_and_stays_owed(clock, rig):
    """Fault: the server refuses bodies over 2,000 bytes; one value of 5,000 bytes is
    batched with four small ones. Expected: the batch is split, the four land, the large
    key alone is refused: it stays owed (marker kept), is reported in the status and
    counted once, is not offered to the server again by a sweep before REJECTED_RETRY_S,
    is tried again after it, and is sent at once when it changes (then the report
    clears). The server is not treated as failing: nothing is handed to the retry-queue."""
    rig.server.max_body_bytes = 2000
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            for i in range(4):
                await rig.put(f"s{i}", b"small")
            await rig.put("big", b"x" * 5000)
            await eventually(lambda: set(markers(rig.store)) == {"big"}, "the small ones landed")
            await eventually(lambda: rig.replicator.status.rejected == 1, "the refusal reported")
            assert "_/_/big" in (rig.replicator.status.rejected_error or "")
            assert rig.metrics.value("kv_value_refusals_total") == 1
            tried = rig.kv_puts()
            await rig.send(RetryBatch([t("big")]))  # what a sweep of the markers offers
            await none_within(60, lambda: rig.port.wait_calls("put_objects", tried + 1), "a retry of the refused key")
            await anyio.sleep(REJECTED_RETRY_S)
            await rig.send(RetryBatch([t("big")]))
            await rig.port.wait_calls("put_objects", tried + 1)  # tried again after REJECTED_RETRY_S
            await eventually(lambda: rig.guard.puts[-1].error is not None, "refused again")
            assert rig.replicator.status.rejected == 1 and set(markers(rig.store)) == {"big"}
            assert rig.metrics.value("kv_value_refusals_total") == 1  # one refusal of that key counted
            await rig.put("big", b"now small")
            await eventually(lambda: synced(rig), "the changed value landed")
            tg.cancel_scope.cancel()
    assert remote_kv(rig.server) == {**{f"s{i}": b"small" for i in range(4)}, "big": b"now small"}
    assert rig.replicator.status.rejected == 0 and rig.replicator.status.rejected_error is None
    assert rig.retries(Deferred) == []


@pytest.mark.trio
async def test_send_now_is_answered_when_its_key_lands_without_waiting_for_company(clock, rig):
    """Situation: a durability=remote write. Expected: its batch leaves at once (not
    after the batch window), the caller is answered only once the key is on the server;
    asked again after the marker is gone, it is answered at once without a send."""
    pause = rig.port.pause_before("put_objects")
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            seq = await rig.put("k", b"v")
            written_at = anyio.current_time()
            request = SendNow(t("k"), seq)
            await rig.send(request)
            await pause.reached.wait()
            assert rig.port.call_times["put_objects"][0] - written_at < BATCH_WINDOW_S
            assert not request.reply.done
            pause.release()
            await request.reply.wait()
            assert remote_kv(rig.server) == {"k": b"v"}
            await eventually(lambda: synced(rig))
            again = SendNow(t("k"), seq)
            await rig.send(again)
            await again.reply.wait()
            tg.cancel_scope.cancel()
    assert rig.kv_puts() == 1


@pytest.mark.trio
async def test_send_now_of_a_refused_value_fails_with_replication_rejected(clock, rig):
    """Fault: the server refuses the value. Expected: the waiting caller hears
    ReplicationRejected at once; the value stays owed."""
    rig.server.max_body_bytes = 1000
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            seq = await rig.put("big", b"x" * 4000)
            request = SendNow(t("big"), seq)
            await rig.send(request)
            with pytest.raises(errors.ReplicationRejected):
                await request.reply.wait()
            tg.cancel_scope.cancel()
    assert markers(rig.store) == {"big": seq}


@pytest.mark.trio
async def test_after_the_fence_is_lost_nothing_is_sent_waiters_fail_and_the_inbox_drains(clock, tmp_path):
    """Fault: another node took the store over. Expected: the waiting durability=remote
    caller hears OwnershipLost, the retry-queue hears ReplicationStopped once, nothing
    more is sent, later SendNows fail at once, and the replicator keeps taking messages
    (more than its inbox holds), so neither the local-writer nor anyone else ever
    blocks on it or finds it closed; the keys stay owed."""
    rig = KvRig(tmp_path, replicator_inbox=4)
    rig.guard.lose(FenceLost("injected: taken over"))
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            seq = await rig.put("k", b"v")
            waiting = SendNow(t("k"), seq)
            await rig.send(waiting)
            with pytest.raises(errors.OwnershipLost):
                await waiting.reply.wait()
            await eventually(lambda: bool(rig.retries(ReplicationStopped)), "the retry-queue told")
            for _ in range(2):  # at once, and again after the replicator had time to settle
                for i in range(50):
                    await rig.send(KeysChanged([t(f"x{i}")]))
                    await rig.send(RetryBatch([t("k")]))
                for i in range(10):
                    await rig.put(f"w{i}", b"v")
                await anyio.sleep(1)
            later = SendNow(t("k"), seq)
            await rig.send(later)
            with pytest.raises(errors.OwnershipLost):
                await later.reply.wait()
            tg.cancel_scope.cancel()
    assert len(rig.guard.puts) == 1  # the one that found the fence lost
    assert len(rig.retries(ReplicationStopped)) == 1
    assert rig.replicator.status.stopped is not None
    assert set(markers(rig.store)) == {"k", *(f"w{i}" for i in range(10))}
    rig.close()
