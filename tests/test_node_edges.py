"""The whole node at the edges of its promises, in-process, against the in-memory server.

Each test names a fault, the expected outcome, and compares the server's copy
(decrypted, independently of the node) with the node's local state: a server that
lost its data, a server down while VSS is first enabled, a value the server refuses,
a stale node given its store back, a fenced node left alone, writes that wait for the
server, and verification finding what the server got wrong.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors import Node, NodeState, wallet_upload
from actors.ownership_guard import FENCE_KEY, clear_fence
from actors.wallet_restorer import restore_wallet
from fakevss import FakePort, FakeVssServer
from node import crypto, errors, kv_keys
from node.config import NodeConfig
from node.data_dir import DataDirInUse
from node.keys import NodeKeys, derive_keys, generate_mnemonic
from node.store import Triple
from node.wallet_files import WalletHome
from node.wallet_format import MANIFEST_KEY
from nodeutil import FAST_LIMITS, local_items, wait_for
from vss.errors import InvalidRequestError, VssUnavailableError
from vss.proto.vss_pb2 import KeyValue

pytestmark = pytest.mark.trio
PASSWORD = "edge password"
URL = "https://vss.example/vss"  # never dialled: the node talks to the in-memory server


@asynccontextmanager
async def node_on(server: FakeVssServer, data_dir: Path, *, port: FakePort | None = None, vss: bool = True,
                  **settings: Any) -> AsyncIterator[Node]:
    config = NodeConfig(data_dir=data_dir, vss_url=URL if vss else None, vault_limits=FAST_LIMITS, **settings)
    the_port = port or server.port()
    async with Node.open(config, vss_port=lambda keys: the_port) as node:
        yield node


def server_kv(server: FakeVssServer, keys: NodeKeys) -> dict[Triple, bytes]:
    """The server's copy of the KV stream, decrypted without the node."""
    found = {}
    for key, value in server.values(keys.kv_store_id).items():
        if key != FENCE_KEY:
            found[kv_keys.from_vss_key(key)] = crypto.decrypt_value(keys.signing_key, value)
    return found


async def settled(node: Node) -> bool:
    info = await node.backup_info()
    return info["pending_kv_writes"] == 0 and not info["backup_required"]


async def test_a_wiped_server_is_refilled_and_the_node_stays_running(tmp_path):
    """Fault: the server loses all its data while the node runs. Expected: the node is
    not fenced; its next write finds the store empty, takes it again, and every key and
    the wallet go back; the refill is counted."""
    server = FakeVssServer()
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    async with node_on(server, tmp_path / "a") as node:
        await node.init(PASSWORD, mnemonic)
        await node.unlock(PASSWORD)
        for i in range(30):
            await node.put("ns", "", f"k{i}", b"value %d" % i)
        await node.wallet_write("w", b"wallet")
        await node.backup_now()
        await wait_for(lambda: settled(node), what="everything on the server")
        server.wipe()
        await node.put("ns", "", "after", b"the write that finds the store empty")
        await wait_for(lambda: len(server_kv(server, keys)) == 31, what="the refill")
        await wait_for(lambda: settled(node), what="the wallet uploaded again")
        assert node.state is NodeState.RUNNING
        assert server_kv(server, keys) == local_items(node.store)
        assert MANIFEST_KEY in server.values(keys.wallet_store_id)
        assert node.metrics.value("store_resets_total") == 2  # the KV store and the wallet store


async def test_a_server_wiped_while_the_node_was_stopped_is_refilled_at_unlock(tmp_path):
    server = FakeVssServer()
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    async with node_on(server, tmp_path / "a") as node:
        await node.init(PASSWORD, mnemonic)
        await node.unlock(PASSWORD)
        for i in range(10):
            await node.put("ns", "", f"k{i}", b"v")
        await node.wallet_write("w", b"wallet")
        await node.backup_now()
        await wait_for(lambda: settled(node), what="everything on the server")
    server.wipe()
    async with node_on(server, tmp_path / "a") as node:
        await node.unlock(PASSWORD)
        await wait_for(lambda: settled(node), what="the refill after unlock")
        assert server_kv(server, keys) == local_items(node.store) and len(local_items(node.store)) == 10
        assert (await node.backup_info())["backup_restorable"] is True


async def test_a_server_wiped_while_it_was_down_at_unlock_is_refilled_once_it_is_back(tmp_path):
    """Fault: the server is down while the node unlocks; it comes back having lost its
    data. Expected: the guard takes the stores at the first write, finds them empty,
    and every local key and the wallet are owed again and land, not only that write.
    (The background comparison is off: it would re-send the KV keys on its own, and
    this is about what the guard does.)"""
    server = FakeVssServer()
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    async with node_on(server, tmp_path / "a") as node:
        await node.init(PASSWORD, mnemonic)
        await node.unlock(PASSWORD)
        for i in range(10):
            await node.put("ns", "", f"k{i}", b"before the outage")
        await node.wallet_write("w", b"wallet")
        await node.backup_now()
        await wait_for(lambda: settled(node), what="everything on the server")
    port = FakePort(server)
    port.down = True
    async with node_on(server, tmp_path / "a", port=port, vss_verify_interval_s=0) as node:
        await node.unlock(PASSWORD)
        server.wipe()
        port.down = False
        await node.put("ns", "", "after", b"the write that takes the empty store")
        await wait_for(lambda: len(server_kv(server, keys)) == 11, what="every key sent again")
        await wait_for(lambda: settled(node), what="the wallet uploaded again")
        assert node.state is NodeState.RUNNING
        assert server_kv(server, keys) == local_items(node.store)
        restored = tmp_path / "restored"
        assert await restore_wallet(port, keys, WalletHome(tmp_path / "a", keys.fingerprint), dest=restored)
        assert (restored / "w").read_bytes() == b"wallet"


async def test_vss_enabled_while_the_server_is_down_owes_every_key(tmp_path):
    """Fault: a node with state is first started with VSS while the server is down.
    Expected: it unlocks, every local key is owed (pending counts them all, before
    anything was sent), and once the server is back they all land."""
    server = FakeVssServer()
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    async with node_on(server, tmp_path / "a", vss=False) as node:
        await node.init(PASSWORD, mnemonic)
        await node.unlock(PASSWORD)
        for i in range(12):
            await node.put("ns", "", f"k{i}", b"before vss")
    port = FakePort(server)
    port.down = True
    async with node_on(server, tmp_path / "a", port=port) as node:
        await node.unlock(PASSWORD)
        assert (await node.backup_info())["pending_kv_writes"] == 12
        port.down = False
        await wait_for(lambda: settled(node), timeout=30, what="the owed keys after the server came up")
        assert server_kv(server, keys) == local_items(node.store)


async def test_a_value_the_server_refuses_blocks_nothing_else(tmp_path):
    """Fault: one value is over the server's body limit, among 20 small ones. Expected:
    the small ones land; the big one stays owed and is reported by name; once it is
    overwritten with a value the server takes, it lands and the report clears."""
    server = FakeVssServer()
    server.max_body_bytes = 64 * 1024
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    async with node_on(server, tmp_path / "a") as node:
        await node.init(PASSWORD, mnemonic)
        await node.unlock(PASSWORD)
        await node.put("ns", "", "huge", b"x" * 100_000)
        for i in range(20):
            await node.put("ns", "", f"small{i}", b"s")
        await wait_for(lambda: len(server_kv(server, keys)) == 20, what="the small values")
        await wait_for(lambda: _pending_is(node, 1), what="their markers cleared")
        info = await node.backup_info()
        assert info["rejected_kv_writes"] == 1 and "ns/_/huge" in info["kv_error"]
        assert info["pending_kv_writes"] == 1 and ("ns", "", "huge") not in server_kv(server, keys)
        with pytest.raises(errors.ReplicationRejected):
            await node.put("ns", "", "huge2", b"y" * 100_000, durability="remote")
        await node.put("ns", "", "huge", b"now small")
        await node.delete("ns", "", "huge2")
        await wait_for(lambda: settled(node), what="the value that changed")
        info = await node.backup_info()
        assert info["rejected_kv_writes"] == 0 and info["kv_error"] is None
        assert server_kv(server, keys) == local_items(node.store)


async def test_a_stale_node_given_the_store_back_is_refused_unless_it_accepts(tmp_path, caplog):
    """Fault: node A was replaced by B (a restore onto a fresh data dir), B wrote, then
    A is given the store back (its fence cleared). Expected: A's unlock is refused with
    StoreDiverged naming both sides' counts, and writes nothing; with the divergence
    accepted, A's state wins and is re-sent, the log gives both counts, and B's keys
    stay on the server."""
    server = FakeVssServer()
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    async with node_on(server, tmp_path / "a") as a:
        await a.init(PASSWORD, mnemonic)
        await a.unlock(PASSWORD)
        await a.put("ns", "", "shared", b"from A")
        await a.put("ns", "", "a-only", b"from A")
        await wait_for(lambda: settled(a), what="A on the server")
    async with node_on(server, tmp_path / "b") as b:
        await b.init(PASSWORD, mnemonic)
        await b.clear_fence(PASSWORD)
        await b.unlock(PASSWORD)
        await b.delete("ns", "", "a-only")
        for i in range(7):
            await b.put("ns", "", f"b{i}", b"from B")
        await b.put("ns", "", "shared", b"from B")
        await wait_for(lambda: settled(b), what="B on the server")
    before = server_kv(server, keys)
    async with node_on(server, tmp_path / "a") as a:
        await a.clear_fence(PASSWORD)
        with pytest.raises(errors.StoreDiverged) as refused:
            await a.unlock(PASSWORD)
        message = str(refused.value)
        assert "7 keys only on the server" in message and "1 key only on this node" in message, message
        assert "(global_version +" in message and "restore into a fresh data dir" in message, message
        assert a.state is NodeState.LOCKED and server_kv(server, keys) == before
        assert FENCE_KEY not in server.values(keys.kv_store_id)
    async with node_on(server, tmp_path / "a", vss_accept_divergence=True) as a:
        await a.unlock(PASSWORD)
        assert "7 keys only on the server (left alone), 1 key only on this node" in caplog.text
        await wait_for(lambda: settled(a), what="A's state re-sent")
        remote = server_kv(server, keys)
        assert remote[("ns", "", "shared")] == b"from A" and remote[("ns", "", "a-only")] == b"from A"
        assert all(remote[("ns", "", f"b{i}")] == b"from B" for i in range(7))  # reported, never deleted


async def test_a_node_that_never_wrote_still_notices_that_another_node_wrote(tmp_path):
    """Fault: node A unlocks a fresh data dir and never writes (so nothing but its unlock
    records the stores' versions); node B takes the store over and writes; A is locked,
    its fence is cleared, and it unlocks again. Expected: 409 StoreDiverged, as for a
    node that had written: a data dir with no record yet records what it found."""
    server = FakeVssServer()
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    async with node_on(server, tmp_path / "a") as a, node_on(server, tmp_path / "b") as b:
        await a.init(PASSWORD, mnemonic)
        await a.unlock(PASSWORD)
        await b.init(PASSWORD, mnemonic)
        await b.clear_fence(PASSWORD)
        await b.unlock(PASSWORD)
        for i in range(3):
            await b.put("ns", "", f"b{i}", b"from B")
            await wait_for(lambda: settled(b), what="B's write on the server")
        await b.lock()
        await a.lock()
        assert await a.clear_fence(PASSWORD)
        before = server_kv(server, keys)
        with pytest.raises(errors.StoreDiverged) as refused:
            await a.unlock(PASSWORD)
        assert refused.value.status == 409 and "3 keys only on the server" in str(refused.value)
        assert a.state is NodeState.LOCKED and server_kv(server, keys) == before
        assert FENCE_KEY not in server.values(keys.kv_store_id)


async def test_a_divergence_found_after_an_unreachable_unlock_stops_replication_not_writes(tmp_path):
    server = FakeVssServer()
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    async with node_on(server, tmp_path / "a") as a:
        await a.init(PASSWORD, mnemonic)
        await a.unlock(PASSWORD)
        await a.put("ns", "", "k", b"A")
        await wait_for(lambda: settled(a), what="A on the server")
    async with node_on(server, tmp_path / "b") as b:
        await b.init(PASSWORD, mnemonic)
        await b.clear_fence(PASSWORD)
        await b.unlock(PASSWORD)
        for i in range(3):
            await b.put("ns", "", f"b{i}", b"B")
            await wait_for(lambda: settled(b), what="B's write on the server")
    port = FakePort(server)
    async with node_on(server, tmp_path / "a", port=port) as a:
        await clear_fence(port, keys.kv_store_id)
        port.down = True
        await a.unlock(PASSWORD)  # the server is down: the check waits for the first write
        port.down = False
        await a.put("ns", "", "k", b"A again")
        await wait_for(lambda: a.state is NodeState.DIVERGED, what="the divergence found at the first write")
        await a.put("ns", "", "still", b"writes go on, owed")
        info = await a.backup_info()
        assert info["diverged"] is True and info["pending_kv_writes"] == 2 and "another node" in info["kv_error"]
        assert server_kv(server, keys)[("ns", "", "k")] == b"A"  # nothing of A landed


async def test_a_fenced_node_stays_fenced_while_left_alone(tmp_path, mock_clock):
    """Fault: node B takes the store over and node A is left running for ten minutes
    (its retry-queue sweeps every minute). Expected: A stays fenced, says so, and its
    actors stay up (before, a sweep hit the replicator's closed channel and the node
    dropped to locked, clearing the operator's alert)."""
    mock_clock.autojump_threshold = 0.05
    server = FakeVssServer()
    mnemonic = generate_mnemonic()
    async with node_on(server, tmp_path / "a") as a, node_on(server, tmp_path / "b") as b:
        await a.init(PASSWORD, mnemonic)
        await a.unlock(PASSWORD)
        await a.put("ns", "", "k", b"A")
        await wait_for(lambda: settled(a), what="A on the server")
        await b.init(PASSWORD, mnemonic)
        await b.clear_fence(PASSWORD)
        await b.unlock(PASSWORD)
        await a.put("ns", "", "k2", b"A after the takeover")
        await wait_for(lambda: a.state is NodeState.FENCED, what="A fenced")
        await anyio.sleep(600)
        assert a.state is NodeState.FENCED and (await a.backup_info())["fenced"] is True
        assert a.gauges()["fenced"] == 1.0 and a.session_status() is not None
        with pytest.raises(errors.OwnershipLost):
            await a.put("ns", "", "k3", b"refused")
        assert await a.get("ns", "", "k2") == b"A after the takeover"


async def test_durability_remote_waits_for_the_server(tmp_path):
    """A write with durability=remote returns once the server has it; with the server
    down it answers ReplicationTimeout after the timeout, committed locally and owed,
    and lands once the server is back."""
    server = FakeVssServer()
    port = FakePort(server)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    async with node_on(server, tmp_path / "a", port=port, remote_write_timeout_s=1.0) as node:
        await node.init(PASSWORD, mnemonic)
        await node.unlock(PASSWORD)
        await node.put("ns", "", "k", b"on the server before the reply", durability="remote")
        assert server_kv(server, keys)[("ns", "", "k")] == b"on the server before the reply"
        await node.delete("ns", "", "k", durability="remote")
        assert ("ns", "", "k") not in server_kv(server, keys)
        port.down = True
        with pytest.raises(errors.ReplicationTimeout):
            await node.put("ns", "", "late", b"owed", durability="remote")
        assert await node.get("ns", "", "late") == b"owed"
        assert (await node.backup_info())["pending_kv_writes"] == 1
        port.down = False
        await wait_for(lambda: settled(node), timeout=30, what="the owed write once the server is back")
        assert server_kv(server, keys)[("ns", "", "late")] == b"owed"
        with pytest.raises(errors.InvalidRequest):
            await node.put("ns", "", "k", b"v", durability="eventually")  # type: ignore[arg-type]
    async with node_on(server, tmp_path / "off", vss=False) as plain:
        await plain.init(PASSWORD, generate_mnemonic())
        await plain.unlock(PASSWORD)
        with pytest.raises(errors.VssNotEnabled):
            await plain.put("ns", "", "k", b"v", durability="remote")


async def test_verify_and_the_auditor_find_what_the_server_got_wrong(tmp_path):
    """Fault: the server's copy is tampered with behind the node's back: one value
    replaced, one key removed, one foreign key added. Expected: verify counts each
    (mismatched, missing, extra), keys still owed are not counted, the missing key is
    re-sent, and the foreign one is left alone."""
    server = FakeVssServer()
    port = FakePort(server)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    store = keys.kv_store_id
    async with node_on(server, tmp_path / "a", port=port) as node:
        await node.init(PASSWORD, mnemonic)
        await node.unlock(PASSWORD)
        for i in range(10):
            await node.put("ns", "", f"k{i}", b"value %d" % i)
        await node.wallet_write("w", b"wallet")
        await node.backup_now()
        await wait_for(lambda: settled(node), what="everything on the server")
        clean = await node.verify()
        assert (clean.missing_on_server, clean.extra_on_server, clean.mismatched, clean.wallet_restorable) == (0, 0, 0, True)
        other = crypto.encrypt_value(keys.signing_key, b"not what the node wrote")
        server.apply_put(store, [KeyValue(key="ns/_/k1", version=-1, value=other)], [], None)
        server.apply_put(store, [KeyValue(key="ns/_/foreign", version=-1, value=other)], [], None)
        server.apply_put(store, [], [KeyValue(key="ns/_/k2", version=-1)], None)
        report = await node.verify()
        assert (report.missing_on_server, report.extra_on_server, report.mismatched) == (1, 1, 1)
        assert report.keys_checked == 11 and report.pending == 0
        info = await node.backup_info()
        assert (info["verify_missing"], info["verify_extra"]) == (1, 1) and info["last_verified_at"] is not None
        await wait_for(lambda: ("ns", "", "k2") in server_kv(server, keys), what="the missing key re-sent")
        assert ("ns", "", "foreign") in server_kv(server, keys)


async def test_the_auditor_runs_after_unlock_and_every_interval(tmp_path):
    server = FakeVssServer()
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    async with node_on(server, tmp_path / "a", vss_verify_interval_s=0.2) as node:
        await node.init(PASSWORD, mnemonic)
        await node.unlock(PASSWORD)
        await wait_for(lambda: _verified(node), what="the first pass after unlock")
        await node.put("ns", "", "k", b"v")
        await wait_for(lambda: settled(node), what="the key on the server")
        server.apply_put(keys.kv_store_id, [], [KeyValue(key="ns/_/k", version=-1)], None)
        await wait_for(lambda: ("ns", "", "k") in server_kv(server, keys), what="a periodic pass re-sending it")


async def _pending_is(node: Node, count: int) -> bool:
    return (await node.backup_info())["pending_kv_writes"] == count


async def _verified(node: Node) -> bool:
    return (await node.backup_info())["last_verified_at"] is not None


async def test_one_process_per_data_dir(tmp_path):
    server = FakeVssServer()
    async with node_on(server, tmp_path / "a"):
        with pytest.raises(DataDirInUse):
            Node(NodeConfig(data_dir=tmp_path / "a", vault_limits=FAST_LIMITS))
    async with node_on(server, tmp_path / "a"):  # released when the first one closed
        pass


async def test_a_whole_atomic_upload_ends_the_window_an_interrupted_piecewise_one_opened(tmp_path, monkeypatch):
    """Fault: a piece-by-piece upload over a chunked backup dies after its first piece
    (the server's backup is no longer whole: not restorable). Then the wallet shrinks and
    its next backup goes out in one request. Expected: that whole backup makes it
    restorable again (the window's marker is cleared by any whole upload)."""
    monkeypatch.setattr(wallet_upload, "ATOMIC_MAX_BYTES", 1024 * 1024)
    server = FakeVssServer()
    port = FakePort(server)
    mnemonic = generate_mnemonic()
    async with node_on(server, tmp_path / "a", port=port) as node:
        await node.init(PASSWORD, mnemonic)
        await node.unlock(PASSWORD)
        await node.wallet_write("big", os.urandom(3 * 1024 * 1024))  # incompressible: piece by piece
        await node.backup_now()
        await node.wallet_write("big", os.urandom(3 * 1024 * 1024))
        original = server.apply_put
        pieces = 0

        def die_after_one_piece(store_id: str, items: Any, deletes: Any, version: int | None) -> None:
            nonlocal pieces
            if store_id == derive_keys(mnemonic).wallet_store_id and any(i.key.startswith("backup/chunk/") for i in items):
                pieces += 1
                if pieces > 1:
                    raise VssUnavailableError("injected: the link died")
            original(store_id, items, deletes, version)

        server.apply_put = die_after_one_piece  # type: ignore[method-assign]
        with pytest.raises(errors.VssUnavailable):
            await node.backup_now()
        assert (await node.backup_info())["backup_restorable"] is False
        server.apply_put = original  # type: ignore[method-assign]
        await node.wallet_delete("big")
        await node.wallet_write("small", b"fits one request")
        await node.backup_now()
        info = await node.backup_info()
        assert info["backup_restorable"] is True and info["backup_required"] is False


async def test_an_actor_that_fails_locks_the_node_which_can_be_unlocked_again(tmp_path, caplog):
    """Fault: a bug makes the replicator fail (the server port raises something no actor
    expects). Expected: the process goes on; the node turns locked, says why in the
    log, and unlocks again; the write it took is kept and sent then."""
    server = FakeVssServer()
    port = FakePort(server)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    async with node_on(server, tmp_path / "a", port=port) as node:
        await node.init(PASSWORD, mnemonic)
        await node.unlock(PASSWORD)
        port.fail_next("put_objects", RuntimeError("injected: a bug"))
        await node.put("ns", "", "k", b"kept")
        await wait_for(lambda: node.state is NodeState.LOCKED, what="the node locking itself")
        assert "the node's actors failed" in caplog.text
        with pytest.raises(errors.NodeLocked):
            await node.put("ns", "", "k2", b"refused while locked")
        await node.unlock(PASSWORD)
        await wait_for(lambda: settled(node), what="the kept write sent after the new unlock")
        assert server_kv(server, keys) == {("ns", "", "k"): b"kept"}


async def test_a_fenced_node_stays_fenced_when_its_actors_then_fail(tmp_path, caplog):
    """Fault: node B takes the store over; node A learns it from its wallet stream while
    a KV write of A's is still in flight, and that write then fails with something no
    actor expects (a bug), so A's actors fail after A turned fenced. Expected: A stays
    fenced, and says so, with the failure in its log (before, it dropped to locked and
    the operator's alert cleared itself); reads go on; locking ends it."""
    server = FakeVssServer()
    port = FakePort(server)
    mnemonic = generate_mnemonic()
    async with node_on(server, tmp_path / "a", port=port) as a, node_on(server, tmp_path / "b") as b:
        await a.init(PASSWORD, mnemonic)
        await a.unlock(PASSWORD)
        await a.put("ns", "", "k", b"A")
        await a.wallet_write("w", b"A's wallet")
        await wait_for(lambda: settled(a), what="A on the server")
        await b.init(PASSWORD, mnemonic)
        await b.clear_fence(PASSWORD)
        await b.unlock(PASSWORD)
        held = port.pause_before("put_objects")
        await a.put("ns", "", "k2", b"in flight")
        with anyio.fail_after(15):
            await held.reached.wait()  # A's KV write, held on its way to the server
        await a.wallet_write("w", b"A's wallet, changed")  # its upload finds B's fence
        await wait_for(lambda: a.state is NodeState.FENCED, what="A fenced by its wallet stream")
        port.fail_next("put_objects", RuntimeError("injected: a bug"))
        held.release()
        await wait_for(lambda: "the node's actors failed" in caplog.text, what="A's actors failing")
        assert a.state is NodeState.FENCED and (await a.backup_info())["fenced"] is True
        assert "failed (RuntimeError: injected: a bug) after the node turned fenced; it stays fenced" in caplog.text
        assert a.gauges()["fenced"] == 1.0
        assert await a.get("ns", "", "k2") == b"in flight"
        with pytest.raises(errors.OwnershipLost):
            await a.put("ns", "", "k3", b"refused")
        await a.lock()
        assert a.state is NodeState.LOCKED
        with pytest.raises(errors.OwnershipConflict):  # B holds the store
            await a.unlock(PASSWORD)


async def test_every_refused_unlock_is_logged_with_its_reason(tmp_path, caplog):
    """Each way an unlock is refused (not initialised, a wrong password, a server that
    answers at a path that is not VSS, a node already running) is logged once, with its
    reason; the refused restore names the path and hints at the base URL."""
    caplog.set_level(logging.WARNING, logger="actors.node")
    server = FakeVssServer()
    port = FakePort(server)
    async with node_on(server, tmp_path / "a", port=port) as node:
        with pytest.raises(errors.NotInitialized):
            await node.unlock(PASSWORD)
        await node.init(PASSWORD, generate_mnemonic())
        with pytest.raises(errors.WrongPassword):
            await node.unlock("not the password")
        port.fail_next("get_global_version", InvalidRequestError("POST /foo/vss/listKeyVersions is not a VSS call"))
        with pytest.raises(errors.RestoreFailed):
            await node.unlock(PASSWORD)
        await node.unlock(PASSWORD)
        with pytest.raises(errors.NodeNotLocked):
            await node.unlock(PASSWORD)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("unlock failed")]
    assert len(lines) == 4, lines
    assert "NotInitialized" in lines[0] and "WrongPassword" in lines[1] and "NodeNotLocked" in lines[3]
    assert "RestoreFailed" in lines[2] and "/foo/vss/listKeyVersions is not a VSS call" in lines[2]
    assert "is the base URL right?" in lines[2]
