"""Scenarios 12 and 13: the server loses the store, and VSS is switched on while it is down.

A wiped server is the bundled server stopped, its SQLite files deleted, and a new one
started on the same (now empty) database file; the fault proxy stays in front, so the
node keeps its VSS URL while the server behind it changes (`FaultProxy.retarget`).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from actors.ownership_guard import FENCE_KEY
from conftest import stop_vss_server
from node import kv_keys
from node.keys import NodeKeys, derive_keys, generate_mnemonic
from node.store import Triple
from nodeutil import client_for, wait_for

from .checker import api_copy, api_wallet, assert_same, local_copy, local_wallet, server_copy, server_wallet
from .harness import PASSWORD, scaled, stamp
from .nodeproc import NodeProcess, node_fleet
from .proxy import running_proxy

pytestmark = [pytest.mark.trio, pytest.mark.faults]

DEADLINE_S = scaled(150, 600)
KEYS = scaled(200, 5000)
CATCH_UP_S = 90  # the retry-queue's backoff tops out at 15 s, the wallet's at 60 s
VERIFY_INTERVAL_S = 2  # how often the running node compares the remote key set with its own


class StateWatch:
    """Polls a node's /nodeinfo state until stopped, and keeps every state it saw."""

    def __init__(self, node: NodeProcess) -> None:
        self.node = node
        self.seen: dict[str, int] = {}
        self.stop = trio.Event()

    async def run(self) -> None:
        for _ in range(1_000_000):  # until stopped; bounded by the scenario's deadline
            if self.stop.is_set():
                return
            state = (await self.node.nodeinfo())["state"]
            self.seen[state] = self.seen.get(state, 0) + 1
            with trio.move_on_after(0.05):
                await self.stop.wait()


def _wipe(server, db_path: Path, spawn_vss_server):
    """Stop the server, delete its SQLite files, start a new one on the same file."""
    stop_vss_server(server)
    for suffix in ("", "-wal", "-shm"):
        Path(str(db_path) + suffix).unlink(missing_ok=True)
    return spawn_vss_server(db=f"sqlite:///{db_path}")


async def _fill(node: NodeProcess, rng: random.Random, count: int) -> dict[str, bytes]:
    """`count` keys and a wallet of two files, all on the server before it returns."""
    for i in range(count):
        value = stamp(f"k{i:05d}", 1, rng.randint(8, 400))
        await node.expect(204, "PUT", f"/kv/k{i:05d}", params={"primary": "loss"}, content=value)
    wallet = {"state.json": b'{"height": 9}', "db/data.bin": rng.randbytes(600_000)}
    for path, data in wallet.items():
        await node.expect(204, "PUT", f"/wallet/files/{path}", content=data)
    await node.expect(200, "POST", "/vssbackup")
    await wait_for(lambda: _pending_is(node, 0), timeout=60, what="the writes replicated")
    return wallet


async def _refilled(node: NodeProcess, server_url: str, keys: NodeKeys, local: dict[Triple, bytes]) -> bool:
    """Nothing owed, the wallet backup whole on the server, and the server listing the
    same KV keys as `local` (the node's, read over its API; nothing is written
    meanwhile). Cheap enough to poll: one listing. The values are compared after."""
    info = await node.backup_info()
    if info["pending_kv_writes"] != 0 or info["backup_required"] or info["backup_restorable"] is not True:
        return False
    async with client_for(server_url, keys) as client:
        listed = [item.key async for item in client.iter_key_versions(keys.kv_store_id) if item.key != FENCE_KEY]
    return sorted(listed) == sorted(kv_keys.to_vss_key(*triple) for triple in local)


async def _pending_is(node: NodeProcess, wanted: int) -> bool:
    return await node.pending() == wanted


async def test_server_wiped_while_the_node_runs(tmp_path, spawn_vss_server, report):
    """Fault: a running node has synced 200 keys and a wallet; the server is stopped,
    its SQLite files deleted, and a new server started on the same (empty) file behind
    the same URL. Nothing is written to the node afterwards; it compares the remote key
    set with its own every 2 s (`--vss-verify-interval 2`).

    Expected: the node is never `fenced` (its /nodeinfo state, polled throughout, is
    only ever `running`); it finds the empty store, takes it again and re-sends every
    key and the wallet with no new write: the server's copy equals the local one,
    pending returns to 0, the wallet backup restores byte for byte; /metrics counts
    the refilled stores in `vssnode_store_resets_total`; a full /vssverify finds
    nothing missing or different.
    """
    rng = random.Random(report.seed)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    db_path = tmp_path / "server-db" / "vss.sqlite3"
    db_path.parent.mkdir()
    server = spawn_vss_server(db=f"sqlite:///{db_path}")
    with trio.fail_after(DEADLINE_S):
        async with running_proxy(server.url.removesuffix("/vss"), seed=report.seed) as proxy, node_fleet(tmp_path) as fleet:
            node = fleet.node("a", proxy.url + "/vss", "--vss-verify-interval", str(VERIFY_INTERVAL_S))
            await node.start()
            await node.init(PASSWORD, mnemonic)
            await node.unlock(PASSWORD)
            wallet = await _fill(node, rng, KEYS)
            resets_before = (await node.metrics()).get("vssnode_store_resets_total", 0)
            watch = StateWatch(node)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch.run)
                server = _wipe(server, db_path, spawn_vss_server)
                proxy.retarget(server.url.removesuffix("/vss"))
                wiped = trio.current_time()
                assert await server_copy(server.url, keys) == {}, "the new server is not empty"
                local = await api_copy(node, [("loss", "")])
                await wait_for(lambda: _refilled(node, server.url, keys, local), timeout=CATCH_UP_S, what="the store refilled")
                refilled_s = trio.current_time() - wiped
                assert_same(await server_copy(server.url, keys), local, "the refilled store vs the node's API")
                metrics = await node.metrics()
                verify = (await node.expect(200, "POST", "/vssverify", timeout=120)).json()
                watch.stop.set()
            assert await server_wallet(server.url, keys, tmp_path / "scratch") == wallet
            await node.lock()
            await node.stop()
            local = local_copy(node.data_dir)
            assert len(local) == KEYS
            assert_same(await server_copy(server.url, keys), local, "after the refill")
            assert local_wallet(node.data_dir, keys) == wallet
            resets = metrics.get("vssnode_store_resets_total", 0) - resets_before
            report.set(
                keys=KEYS,
                wallet_bytes=sum(map(len, wallet.values())),
                refilled_after_s=round(refilled_s, 1),
                store_resets_counted=int(resets),
                states_seen=", ".join(f"{s} x{n}" for s, n in sorted(watch.seen.items())),
                verify_missing=verify["missing_on_server"],
                verify_mismatched=verify["mismatched"],
            )
            report.add_proxy(proxy.figures())
            assert set(watch.seen) == {"running"}, f"the node left `running`: {watch.seen}\n{node.log_tail()}"
            assert resets == 2, f"vssnode_store_resets_total went up by {resets}, not 2 (the KV and the wallet store)"
            assert verify["missing_on_server"] == 0 and verify["mismatched"] == 0 and verify["wallet_restorable"] is True, verify


async def test_server_wiped_while_the_node_is_stopped(tmp_path, spawn_vss_server, report):
    """Fault: a node synced 200 keys and a wallet, then stopped; meanwhile the server
    was wiped (stopped, SQLite files deleted, started again on the same empty file).
    The node is started and unlocked again, same data dir, same URL.

    Expected: the unlock succeeds (no OwnershipConflict, no StoreDiverged: an empty
    store is not another owner); the node is `running`, never `fenced`; it says loudly
    that the server lost the store and re-sends every key and the wallet: the server's
    copy equals the local one, pending returns to 0, the wallet restores byte for byte.
    """
    rng = random.Random(report.seed)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    db_path = tmp_path / "server-db" / "vss.sqlite3"
    db_path.parent.mkdir()
    server = spawn_vss_server(db=f"sqlite:///{db_path}")
    with trio.fail_after(DEADLINE_S):
        async with running_proxy(server.url.removesuffix("/vss"), seed=report.seed) as proxy, node_fleet(tmp_path) as fleet:
            node = fleet.node("a", proxy.url + "/vss")
            await node.start()
            await node.init(PASSWORD, mnemonic)
            await node.unlock(PASSWORD)
            wallet = await _fill(node, rng, KEYS)
            await node.lock()
            await node.stop()
            server = _wipe(server, db_path, spawn_vss_server)
            proxy.retarget(server.url.removesuffix("/vss"))
            assert await server_copy(server.url, keys) == {}, "the new server is not empty"
            await node.start()
            started = trio.current_time()
            await node.unlock(PASSWORD)
            state_after_unlock = (await node.nodeinfo())["state"]
            local = await api_copy(node, [("loss", "")])
            await wait_for(lambda: _refilled(node, server.url, keys, local), timeout=CATCH_UP_S, what="the store refilled")
            refilled_s = trio.current_time() - started
            assert_same(await server_copy(server.url, keys), local, "the refilled store vs the node's API")
            state_at_end = (await node.nodeinfo())["state"]
            assert await api_wallet(node) == wallet
            await node.lock()
            await node.stop()
            local = local_copy(node.data_dir)
            assert len(local) == KEYS
            assert_same(await server_copy(server.url, keys), local, "after the refill")
            assert await server_wallet(server.url, keys, tmp_path / "scratch") == wallet
            said_so = "THE VSS SERVER LOST THE KV STORE" in node.log_path.read_text()
            report.set(keys=KEYS, refilled_after_s=round(refilled_s, 1), state_after_unlock=state_after_unlock)
            report.add_proxy(proxy.figures())
            assert state_after_unlock == "running" and state_at_end == "running", (state_after_unlock, state_at_end)
            assert said_so, f"the node did not say that the server lost the store\n{node.log_tail()}"


# A fix re-sends the KV store within a second or two of the wallet's refill (the
# retry-queue's first backoff is 0.25 s); the node's own pass would take 6 hours.
KV_REFILL_WITHIN_S = 20


async def test_server_wiped_while_running_found_by_the_wallet_stream(tmp_path, spawn_vss_server, report):
    """Fault: as in the wipe above, but the node's verification pass keeps its default
    (every 6 hours, so it does not run), and the first write after the wipe is a
    wallet change backed up at once (POST /vssbackup); no KV write follows.

    Expected: the wallet write finds the store empty; the node re-takes it and, since
    the same server lost the KV store along with it, re-sends the KV keys too: within
    seconds the server's KV copy equals the local one (and pending_kv_writes never
    claims 0 while the server lacks them); the node is never `fenced`.
    """
    rng = random.Random(report.seed)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    db_path = tmp_path / "server-db" / "vss.sqlite3"
    db_path.parent.mkdir()
    server = spawn_vss_server(db=f"sqlite:///{db_path}")
    with trio.fail_after(DEADLINE_S):
        async with running_proxy(server.url.removesuffix("/vss"), seed=report.seed) as proxy, node_fleet(tmp_path) as fleet:
            node = fleet.node("a", proxy.url + "/vss")
            await node.start()
            await node.init(PASSWORD, mnemonic)
            await node.unlock(PASSWORD)
            await _fill(node, rng, KEYS)
            local = await api_copy(node, [("loss", "")])
            server = _wipe(server, db_path, spawn_vss_server)
            proxy.retarget(server.url.removesuffix("/vss"))
            await node.expect(204, "PUT", "/wallet/files/state.json", content=b'{"height": 10}')
            version = (await node.expect(200, "POST", "/vssbackup")).json()["version"]
            found = trio.current_time()
            remote: dict[Triple, bytes] = {}
            info: dict = {}
            with trio.move_on_after(KV_REFILL_WITHIN_S):
                for _ in range(10_000):  # until the KV store is back; bounded by the move_on_after
                    remote = await server_copy(server.url, keys)
                    info = await node.backup_info()
                    if remote == local:
                        break
                    await trio.sleep(0.2)  # a poll interval
            waited_s = trio.current_time() - found
            state = (await node.nodeinfo())["state"]
            metrics = await node.metrics()
            report.set(
                keys=KEYS,
                wallet_version_after_wipe=version,
                server_kv_keys_after_wait=len(remote),
                waited_s=round(waited_s, 1),
                pending_kv_writes_reported=info.get("pending_kv_writes", -1),
                store_resets_counted=int(metrics.get("vssnode_store_resets_total", 0)),
            )
    assert state == "running", state
    assert remote == local, (
        f"{waited_s:.0f} s after the wallet stream found the server emptied, the server holds {len(remote)} of "
        f"the {len(local)} KV keys while /vssbackupinfo says pending_kv_writes {info.get('pending_kv_writes')}"
    )


async def test_vss_enabled_while_the_server_is_down(tmp_path, vss_server, report):
    """Fault: a node ran without --vss-url and has state (60 keys, a wallet file); it is
    restarted with --vss-url pointing at a server that is down (nothing listens).

    Expected: it unlocks; /vssbackupinfo says `pending_kv_writes` = 60, the number of
    local keys, and that the wallet backup is required; local writes go on; when the
    server comes up everything lands with no further write: pending returns to 0, the
    server's copy equals the local one, the wallet restores byte for byte.
    """
    rng = random.Random(report.seed)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    count = 60
    with trio.fail_after(DEADLINE_S):
        async with running_proxy(vss_server.url.removesuffix("/vss"), seed=report.seed) as proxy, node_fleet(tmp_path) as fleet:
            node = fleet.node("a", None)
            await node.start()
            await node.init(PASSWORD, mnemonic)
            await node.unlock(PASSWORD)
            for i in range(count):
                value = stamp(f"k{i}", 1, rng.randint(8, 300))
                await node.expect(204, "PUT", f"/kv/k{i}", params={"primary": "late"}, content=value)
            wallet = {"state.json": b'{"height": 3}', "db/data.bin": rng.randbytes(200_000)}
            await node.expect(204, "PUT", "/wallet/files/state.json", content=wallet["state.json"])
            await node.expect(204, "PUT", "/wallet/files/db/data.bin", content=wallet["db/data.bin"])
            await node.lock()
            await node.stop()

            await proxy.go_down()
            node.vss_url = proxy.url + "/vss"
            await node.start()
            await node.unlock(PASSWORD)
            state = (await node.nodeinfo())["state"]
            down_info = await node.backup_info()
            await node.expect(204, "PUT", "/kv/while-down", params={"primary": "late"}, content=b"written while down")
            pending_after_write = await node.pending()
            await proxy.go_up()
            back = trio.current_time()
            await wait_for(lambda: _pending_is(node, 0), timeout=CATCH_UP_S, what="the owed keys landed")
            await wait_for(lambda: _wallet_landed(node), timeout=CATCH_UP_S, what="the owed wallet landed")
            caught_up_s = trio.current_time() - back
            await node.lock()
            await node.stop()
            local = local_copy(node.data_dir)
            assert_same(await server_copy(vss_server.url, keys), local, "after the server came up")
            assert await server_wallet(vss_server.url, keys, tmp_path / "scratch") == wallet
            report.set(
                local_keys=count,
                pending_while_down=down_info["pending_kv_writes"],
                caught_up_after_s=round(caught_up_s, 1),
            )
            report.add_proxy(proxy.figures())
            assert state == "running", state
            assert down_info["pending_kv_writes"] == count, down_info
            assert down_info["backup_required"] is True, down_info
            assert pending_after_write == count + 1
            assert len(local) == count + 1


async def _wallet_landed(node: NodeProcess) -> bool:
    info = await node.backup_info()
    return info["backup_required"] is False and info["backup_restorable"] is True
