"""Scenario 15: a stale node is given the store back after another node wrote it —
refused at unlock, or, unlocked while the server was down, stopped once it answers."""

from __future__ import annotations

import random

import pytest
import trio

from actors.ownership_guard import FENCE_KEY
from node.keys import NodeKeys, derive_keys, generate_mnemonic
from nodeutil import client_for, wait_for

from .checker import api_wallet, assert_same, local_copy, local_wallet, server_copy, server_wallet
from .harness import PASSWORD, stamp
from .nodeproc import NodeProcess, node_fleet
from .proxy import running_proxy

pytestmark = [pytest.mark.trio, pytest.mark.faults]

DEADLINE_S = 150
A_KEYS = 30
B_OVERWRITES = 10  # of A's keys, given new values by B
B_DELETES = 5  # of A's keys, deleted by B: then only A has them
B_NEW = 50  # keys only B (and so the server) has


async def _key_versions(url: str, keys: NodeKeys, store_id: str) -> dict[str, int]:
    async with client_for(url, keys) as client:
        return {item.key: item.version async for item in client.iter_key_versions(store_id)}


async def _pending_is(node: NodeProcess, wanted: int) -> bool:
    return await node.pending() == wanted


async def _wallet_landed(node: NodeProcess) -> bool:
    info = await node.backup_info()
    return info["backup_required"] is False and info["backup_restorable"] is True


async def test_a_stale_node_given_the_store_back(tmp_path, vss_server, report):
    """Fault: node A writes 30 keys and a wallet, and stops. Node B restores from the
    server on a fresh data dir (after clearing the fence), overwrites 10 of A's keys,
    deletes 5, writes 50 new ones and its own wallet, and stops. Then A's fence is
    cleared (B's fence, from A, while A is locked) and A is unlocked.

    Expected: A's unlock is refused with 409 StoreDiverged, whose message says
    "50 keys only on the server, 5 keys only on this node"; A stays locked and nothing
    of it lands (every key version on the server is as B left it; only the fence is
    gone, which the operator cleared). Started again with --vss-accept-divergence, A
    unlocks and its local state wins: its 30 keys are re-sent (B's 10 overwrites are
    replaced by A's values, B's 5 deletes undone), the 50 keys only the server has
    stay there, and the wallet on the server is A's again.
    """
    rng = random.Random(report.seed)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    url = vss_server.url
    a_names = [f"k{i:02d}" for i in range(A_KEYS)]
    with trio.fail_after(DEADLINE_S):
        async with node_fleet(tmp_path) as fleet:
            a = fleet.node("a", url)
            await a.start()
            await a.init(PASSWORD, mnemonic)
            await a.unlock(PASSWORD)
            for name in a_names:
                value = stamp("A:" + name, 1, rng.randint(8, 200))
                await a.expect(204, "PUT", f"/kv/{name}", params={"primary": "div"}, content=value)
            a_wallet = {"state.json": b'{"owner": "A"}', "db/a.bin": rng.randbytes(100_000)}
            for path, data in a_wallet.items():
                await a.expect(204, "PUT", f"/wallet/files/{path}", content=data)
            await a.expect(200, "POST", "/vssbackup")
            await wait_for(lambda: _pending_is(a, 0), timeout=30, what="A's writes replicated")
            await a.lock()
            await a.stop()
            a_local = local_copy(a.data_dir)

            b = fleet.node("b", url)
            await b.start()
            await b.init(PASSWORD, mnemonic)
            await b.clear_fence(PASSWORD)
            await b.unlock(PASSWORD)
            assert await api_wallet(b) == a_wallet, "B did not restore A's wallet"
            for name in a_names[:B_OVERWRITES]:
                await b.expect(204, "PUT", f"/kv/{name}", params={"primary": "div"}, content=b"B:" + name.encode())
            for name in a_names[-B_DELETES:]:
                await b.expect(204, "DELETE", f"/kv/{name}", params={"primary": "div"})
            for i in range(B_NEW):
                await b.expect(204, "PUT", f"/kv/b{i:02d}", params={"primary": "div"}, content=b"B-only %d" % i)
            b_wallet = {"state.json": b'{"owner": "B"}'}
            await b.expect(204, "PUT", "/wallet/files/state.json", content=b_wallet["state.json"])
            await b.expect(204, "DELETE", "/wallet/files/db/a.bin")
            await b.expect(200, "POST", "/vssbackup")
            await wait_for(lambda: _pending_is(b, 0), timeout=30, what="B's writes replicated")
            await b.lock()
            await b.stop()
            b_server = await server_copy(url, keys)
            assert_same(b_server, local_copy(b.data_dir), "server vs B")
            kv_before = await _key_versions(url, keys, keys.kv_store_id)
            wallet_before = await _key_versions(url, keys, keys.wallet_store_id)

            await a.start()
            cleared = (await a.clear_fence(PASSWORD))["cleared"]
            refused = await a.try_unlock(PASSWORD)
            refused_state = (await a.nodeinfo())["state"]
            kv_after = await _key_versions(url, keys, keys.kv_store_id)
            wallet_after = await _key_versions(url, keys, keys.wallet_store_id)
            await a.stop()
            assert refused.status_code == 409 and refused.json()["name"] == "StoreDiverged", refused.text
            message = refused.json()["error"]
            assert f"{B_NEW} keys only on the server, {B_DELETES} keys only on this node" in message, message
            assert "--vss-accept-divergence" in message, message
            assert refused_state == "locked", refused_state
            kv_before.pop(FENCE_KEY)
            assert cleared is True and kv_after == kv_before, "A's refused unlock changed the KV store"
            assert wallet_after == wallet_before, "A's refused unlock changed the wallet store"
            assert_same(await server_copy(url, keys), b_server, "after A's refused unlock")
            assert local_copy(a.data_dir) == a_local, "the refused unlock changed A's local state"

            a.extra_args = ("--vss-accept-divergence",)
            await a.start()
            await a.unlock(PASSWORD)
            accepted_state = (await a.nodeinfo())["state"]
            await wait_for(lambda: _pending_is(a, 0), timeout=60, what="A's state re-sent")
            await wait_for(lambda: _wallet_landed(a), timeout=60, what="A's wallet re-sent")
            await a.lock()
            await a.stop()
            remote = await server_copy(url, keys)
            expected = {**b_server, **a_local}
            assert_same(remote, expected, "after --vss-accept-divergence: A's keys over the server's")
            assert local_copy(a.data_dir) == a_local, "accepting the divergence changed A's local state"
            assert local_wallet(a.data_dir, keys) == a_wallet
            assert await server_wallet(url, keys, tmp_path / "scratch") == a_wallet, "the server's wallet is not A's"
            b_only = {t for t in remote if t not in a_local}
            report.set(
                a_keys=A_KEYS,
                b_overwrites=B_OVERWRITES,
                b_deletes=B_DELETES,
                b_new_keys=B_NEW,
                refused_status=refused.status_code,
                refusal_message=message,
                state_after_accept=accepted_state,
                keys_only_on_server_kept=len(b_only),
                server_keys_at_end=len(remote),
            )
            assert accepted_state == "running", accepted_state
            assert len(b_only) == B_NEW


async def test_a_stale_node_unlocked_while_the_server_is_down(tmp_path, vss_server, report):
    """Fault: as above — A wrote and stopped, B took the store over and wrote, A's fence
    was cleared — but A is unlocked while its link to the server is down, so unlock
    cannot see the divergence; A takes local writes (KV and wallet); then the link
    comes back.

    Expected: A unlocks (running, its writes owed); once the server answers, A finds
    that another node wrote the store: its state becomes `diverged` (/nodeinfo,
    /vssbackupinfo `"diverged": true` with the reason in `kv_error`, /metrics
    `vssnode_diverged 1.0`); local writes still succeed and stay owed; nothing of A
    lands: the server's copy, and every key version of both stores, stay as B left
    them (the fence aside); the server's wallet is still B's.
    """
    rng = random.Random(report.seed)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    url = vss_server.url
    with trio.fail_after(DEADLINE_S):
        async with running_proxy(url.removesuffix("/vss"), seed=report.seed) as link, node_fleet(tmp_path) as fleet:
            a = fleet.node("a", link.url + "/vss")
            await a.start()
            await a.init(PASSWORD, mnemonic)
            await a.unlock(PASSWORD)
            for i in range(A_KEYS):
                value = stamp(f"k{i:02d}", 1, rng.randint(8, 200))
                await a.expect(204, "PUT", f"/kv/k{i:02d}", params={"primary": "div"}, content=value)
            await a.expect(204, "PUT", "/wallet/files/state.json", content=b'{"owner": "A"}')
            await a.expect(200, "POST", "/vssbackup")
            await wait_for(lambda: _pending_is(a, 0), timeout=30, what="A's writes replicated")
            await a.lock()
            await a.stop()

            b = fleet.node("b", url)
            await b.start()
            await b.init(PASSWORD, mnemonic)
            await b.clear_fence(PASSWORD)
            await b.unlock(PASSWORD)
            for i in range(B_NEW):
                await b.expect(204, "PUT", f"/kv/b{i:02d}", params={"primary": "div"}, content=b"B-only %d" % i)
            await b.expect(204, "PUT", "/wallet/files/state.json", content=b'{"owner": "B"}')
            await b.expect(200, "POST", "/vssbackup")
            await wait_for(lambda: _pending_is(b, 0), timeout=30, what="B's writes replicated")
            await b.lock()
            await b.stop()
            b_server = await server_copy(url, keys)
            b_wallet = await server_wallet(url, keys, tmp_path / "scratch")

            await a.start()
            await a.clear_fence(PASSWORD)
            before = {store: await _key_versions(url, keys, store) for store in (keys.kv_store_id, keys.wallet_store_id)}
            await link.go_down()
            await a.unlock(PASSWORD)
            state_while_down = (await a.nodeinfo())["state"]
            late = {f"k{i:02d}": b"A late %d" % i for i in range(5)}
            for name, value in late.items():
                await a.expect(204, "PUT", f"/kv/{name}", params={"primary": "div"}, content=value)
            await a.expect(204, "PUT", "/wallet/files/state.json", content=b'{"owner": "A", "late": true}')
            await link.go_up()
            await wait_for(lambda: _state_is(a, "diverged"), timeout=60, what="A to find the divergence")
            info = await a.backup_info()
            metrics = await a.metrics()
            after_write = await a.request("PUT", "/kv/k09", params={"primary": "div"}, content=b"A while diverged")
            pending = await a.pending()
            await a.lock()
            await a.stop()
            after = {store: await _key_versions(url, keys, store) for store in (keys.kv_store_id, keys.wallet_store_id)}
            before[keys.kv_store_id].pop(FENCE_KEY, None)
            after[keys.kv_store_id].pop(FENCE_KEY, None)
            remote = await server_copy(url, keys)
            report.set(state_while_down=state_while_down, a_late_writes=len(late) + 2, a_pending_at_end=pending,
                       kv_error=str(info["kv_error"])[:200])
            report.add_proxy(link.figures())
            assert state_while_down == "running", state_while_down
            assert info["diverged"] is True and info["fenced"] is False, info
            assert info["kv_error"] and "another node wrote it" in info["kv_error"], info
            assert metrics.get("vssnode_diverged") == 1.0 and metrics.get("vssnode_running") == 0.0, metrics
            assert after_write.status_code == 204, after_write.text
            assert pending == len(late) + 1, f"{pending} keys owed, expected the {len(late) + 1} written after the unlock"
            assert after == before, "A wrote to the server after another node had written it"
            assert_same(remote, b_server, "the server after the diverged node ran")
            assert await server_wallet(url, keys, tmp_path / "scratch") == b_wallet, "the server's wallet is no longer B's"
            local = local_copy(a.data_dir)
            assert all(local[("div", "", name)] == value for name, value in late.items())


async def _state_is(node: NodeProcess, state: str) -> bool:
    return (await node.nodeinfo())["state"] == state


async def test_a_diverged_node_asked_to_verify(tmp_path, vss_server, report):
    """Fault: A wrote and stopped; B took the store over and wrote; A's fence was
    cleared and A unlocked while its link was down, took a write, and turned
    `diverged` once the link came back (as in the scenario above). The operator asks A
    for a verification (POST /vssverify).

    Expected: a clean answer — a report, or 409 StoreDiverged — not 500; no traceback
    in A's log; A stays `diverged`.
    """
    mnemonic = generate_mnemonic()
    url = vss_server.url
    with trio.fail_after(DEADLINE_S):
        async with running_proxy(url.removesuffix("/vss"), seed=report.seed) as link, node_fleet(tmp_path) as fleet:
            a = fleet.node("a", link.url + "/vss")
            await a.start()
            await a.init(PASSWORD, mnemonic)
            await a.unlock(PASSWORD)
            await a.expect(204, "PUT", "/kv/k0", params={"primary": "div"}, content=b"A0")
            await wait_for(lambda: _pending_is(a, 0), timeout=30, what="A's write replicated")
            await a.lock()
            await a.stop()
            b = fleet.node("b", url)
            await b.start()
            await b.init(PASSWORD, mnemonic)
            await b.clear_fence(PASSWORD)
            await b.unlock(PASSWORD)
            await b.expect(204, "PUT", "/kv/b0", params={"primary": "div"}, content=b"B0")
            await wait_for(lambda: _pending_is(b, 0), timeout=30, what="B's write replicated")
            await b.lock()
            await b.stop()
            await a.start()
            await a.clear_fence(PASSWORD)
            await link.go_down()
            await a.unlock(PASSWORD)
            await a.expect(204, "PUT", "/kv/k0", params={"primary": "div"}, content=b"A late")
            await link.go_up()
            await wait_for(lambda: _state_is(a, "diverged"), timeout=60, what="A to find the divergence")
            verify = await a.request("POST", "/vssverify", timeout=60)
            state = (await a.nodeinfo())["state"]
            log = a.log_path.read_text(errors="replace")
            report.set(verify_status=verify.status_code, verify_answer=verify.text[:200],
                       tracebacks_in_a_log=log.count("Traceback"))
    assert state == "diverged", state
    assert verify.status_code in (200, 409), f"POST /vssverify on a diverged node answered {verify.status_code}: {verify.text}"
    assert verify.status_code == 200 or verify.json()["name"] == "StoreDiverged", verify.text
    assert "Traceback" not in log, "the diverged node logged a traceback"
