"""The auditor against the in-memory server, on MockClock.

The comparison runs beside a real local-writer and replicator (with a stand-in guard),
so a key the server lacks is seen re-sent all the way to the server. Each test sets
up the two sides and checks the counts, what was sent, and what was left alone.
"""

from __future__ import annotations

import anyio
import pytest

from actors.auditor import RETRY_AFTER_FAILURE_S, Auditor
from actors.messages import AuditNow, CheckRemote, Reply
from actorutil import KvRig, commit_directly, eventually, markers, remote_kv, seed_kv, stream, thread_aware_clock, vss_key
from guardutil import keys
from node.wallet_files import WalletHome
from vss.errors import VssUnavailableError
from vss.proto.vss_pb2 import KeyValue


@pytest.fixture
def clock(monkeypatch):
    return thread_aware_clock(monkeypatch)


class AuditRig:
    """An auditor beside a KvRig; the wallet keeper is a recorder of CheckRemote."""

    def __init__(self, kv: KvRig, tmp_path, interval_s: float = 0) -> None:  # type: ignore[no-untyped-def]
        self.kv = kv
        self.home = WalletHome(tmp_path / "data", keys().fingerprint)
        self.home.create_empty()
        self.inbox, inbox_in = stream(8)
        wallet, self._wallet_in = stream(64)
        self.check_remote = 0
        self.auditor = Auditor(kv.port, keys(), kv.store, self.home, inbox_in, kv.writer_inbox.clone(), wallet,
                               interval_s=interval_s)

    def start(self, tg: anyio.abc.TaskGroup, *, run_auditor: bool = False) -> None:
        self.kv.start(tg)
        tg.start_soon(self._record_wallet)
        if run_auditor:
            tg.start_soon(self.auditor.run)

    async def _record_wallet(self) -> None:
        async for message in self._wallet_in:
            assert isinstance(message, CheckRemote)
            self.check_remote += 1


@pytest.mark.trio
async def test_missing_keys_are_re_sent_extra_keys_counted_and_owed_keys_left_out(clock, tmp_path):
    """Situation: of three synced local keys the server has one; the server also holds
    a key this node does not have; one local key is owed (not on the server yet) and one
    local delete is owed (the key still on the server). Expected: the two missing keys
    are counted and re-sent until the server has them; the server's own key is counted
    and left in place; the owed keys are in neither count; the wallet keeper is asked
    to look at the server's backup. A second pass finds nothing missing."""
    kv = KvRig(tmp_path)
    commit_directly(kv.store, {"a": b"1", "b": b"2", "c": b"3"}, owed=False)
    commit_directly(kv.store, {"owed": b"4", "deleted": None}, owed=True)
    seed_kv(kv.server, {"a": b"1", "only-remote": b"x", "deleted": b"old"})
    rig = AuditRig(kv, tmp_path)
    with anyio.fail_after(600):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            report = await rig.auditor.compare(full=False)
            status = rig.auditor.status
            await eventually(lambda: "b" in remote_kv(kv.server) and "c" in remote_kv(kv.server), "re-sent")
            again = await rig.auditor.compare(full=False)
            tg.cancel_scope.cancel()
    assert (report.missing_on_server, report.extra_on_server, report.pending) == (2, 1, 2)
    assert status.verify_missing == 2 and status.verify_extra == 1
    assert again.missing_on_server == 0 and again.extra_on_server == 1
    assert remote_kv(kv.server)["only-remote"] == b"x"  # never deleted
    assert all(vss_key("only-remote") not in put.deletes for put in kv.guard.puts)
    assert set(markers(kv.store)) == {"owed", "deleted"}
    assert rig.check_remote == 2
    kv.close()


@pytest.mark.trio
async def test_a_full_verify_counts_values_the_server_holds_differently(clock, tmp_path):
    """Situation: the server holds a synced key with another value (replaced on the
    server) and one whose value does not decrypt; an owed key's old value differs too.
    Expected: a full verify counts the two synced keys as mismatched, not the owed one;
    nothing is counted missing; the (empty) wallet matches the server having none."""
    kv = KvRig(tmp_path)
    commit_directly(kv.store, {"same": b"1", "replaced": b"2", "garbled": b"3"}, owed=False)
    commit_directly(kv.store, {"owed": b"new"}, owed=True)
    seed_kv(kv.server, {"same": b"1", "replaced": b"something else", "owed": b"old"})
    kv.server.apply_put(keys().kv_store_id, [KeyValue(key=vss_key("garbled"), version=-1, value=b"\x01" + bytes(80))],
                        [], None)
    rig = AuditRig(kv, tmp_path)
    with anyio.fail_after(600):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            full = await rig.auditor.compare(full=True)
            quick = await rig.auditor.compare(full=False)
            tg.cancel_scope.cancel()
    assert full.mismatched == 2 and full.missing_on_server == 0 and full.pending == 1
    assert full.wallet_restorable is True
    assert quick.mismatched is None  # only a full verify fetches values
    assert set(markers(kv.store)) == {"owed"}
    kv.close()


@pytest.mark.trio
async def test_the_periodic_pass_runs_at_start_and_after_each_interval(clock, tmp_path):
    """Situation: an interval of 100 s, and an operator's verify at 50 s. Expected: a
    pass at once, the operator's at 50 s (answered, without moving the schedule), then
    passes at 100 s and 200 s."""
    kv = KvRig(tmp_path)
    rig = AuditRig(kv, tmp_path, interval_s=100)
    with anyio.fail_after(600):
        async with anyio.create_task_group() as tg:
            start = anyio.current_time()
            rig.start(tg, run_auditor=True)
            await anyio.sleep(50)
            request = AuditNow(full=False, reply=Reply())
            await rig.inbox.send(request)
            report = await request.reply.wait()
            await kv.port.wait_calls("list_key_versions", 4)
            tg.cancel_scope.cancel()
    assert report is not None and report.missing_on_server == 0
    assert [at - start for at in kv.port.call_times["list_key_versions"]] == [0, 50, 100, 200]
    kv.close()


@pytest.mark.trio
async def test_a_failed_pass_is_tried_again_sooner_than_the_interval(clock, tmp_path):
    """Fault: the server is unreachable at the first pass; the interval is 1,000 s.
    Expected: the failure is recorded in the status and the next pass comes after
    RETRY_AFTER_FAILURE_S, then the interval again."""
    kv = KvRig(tmp_path)
    rig = AuditRig(kv, tmp_path, interval_s=1000)
    kv.port.fail_next("list_key_versions", VssUnavailableError("injected: connection refused"))
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            start = anyio.current_time()
            rig.start(tg, run_auditor=True)
            await kv.port.wait_calls("list_key_versions", 1)
            await eventually(lambda: rig.auditor.status.last_error is not None, "the failure recorded")
            await kv.port.wait_calls("list_key_versions", 3)
            tg.cancel_scope.cancel()
    assert [at - start for at in kv.port.call_times["list_key_versions"]] == [
        0, RETRY_AFTER_FAILURE_S, RETRY_AFTER_FAILURE_S + 1000
    ]
    kv.close()
