"""Scenarios 16 and 17: one writer per data dir, and a fenced node that is left running."""

from __future__ import annotations

import random

import pytest
import trio

from actors.retry_queue import SWEEP_INTERVAL_S
from node.keys import NodeKeys, derive_keys, generate_mnemonic
from nodeutil import client_for, wait_for

from .checker import assert_same, local_copy, server_copy
from .harness import PASSWORD, SOAK, stamp
from .nodeproc import REPO_ROOT, NodeProcess, free_loopback_port, node_fleet, vssnode_command
from .proxy import FaultRates, running_proxy

pytestmark = [pytest.mark.trio, pytest.mark.faults]

DEADLINE_S = 120
# The second process has nothing to wait for: it reads its flags, opens the data dir,
# finds it locked and exits. Seconds of Python start-up, never the 30 s a start may take.
REFUSED_WITHIN_S = 10.0
# Left alone past one retry-queue sweep (60 s) in the default run, past four in soak.
LEFT_ALONE_S = SWEEP_INTERVAL_S * (4 if SOAK else 1) + 10
LOOK_EVERY_S = 5.0


async def _pending_is(node: NodeProcess, wanted: int) -> bool:
    return await node.pending() == wanted


async def _state_is(node: NodeProcess, state: str) -> bool:
    return (await node.nodeinfo())["state"] == state


async def _key_versions(url: str, keys: NodeKeys) -> dict[str, dict[str, int]]:
    async with client_for(url, keys) as client:
        return {
            store: {item.key: item.version async for item in client.iter_key_versions(store)}
            for store in (keys.kv_store_id, keys.wallet_store_id)
        }


async def test_a_second_process_on_a_data_dir_in_use(tmp_path, vss_server, report):
    """Fault: while a node runs (unlocked, replicating to VSS) on a data dir, a second
    `vssnode run` is started on the same data dir (another port, same VSS URL).

    Expected: the second exits at once with status 2 and a one-line reason on stderr
    (the data dir is in use), without ever answering on its port; the first keeps
    serving and replicating: writes made after the refusal land, and the server's copy
    equals the first node's local one.
    """
    rng = random.Random(report.seed)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    with trio.fail_after(DEADLINE_S):
        async with node_fleet(tmp_path) as fleet:
            first = fleet.node("first", vss_server.url)
            await first.start()
            await first.init(PASSWORD, mnemonic)
            await first.unlock(PASSWORD)
            for i in range(20):
                value = stamp(f"k{i}", 1, rng.randint(8, 300))
                await first.expect(204, "PUT", f"/kv/k{i}", params={"primary": "two"}, content=value)
            port = free_loopback_port()
            listen = f"127.0.0.1:{port}"
            command = [*vssnode_command(), "run", str(first.data_dir), "--listen", listen, "--vss-url", vss_server.url]
            started = trio.current_time()
            second = await trio.run_process(command, cwd=REPO_ROOT, capture_stdout=True, capture_stderr=True, check=False)
            took_s = trio.current_time() - started
            stderr = second.stderr.decode(errors="replace").strip().splitlines()
            for i in range(20, 40):
                value = stamp(f"k{i}", 1, rng.randint(8, 300))
                await first.expect(204, "PUT", f"/kv/k{i}", params={"primary": "two"}, content=value)
            await first.expect(204, "PUT", "/kv/k0", params={"primary": "two"}, content=stamp("k0", 2, 50))
            await wait_for(lambda: _pending_is(first, 0), timeout=30, what="the first node's writes replicated")
            state = (await first.nodeinfo())["state"]
            await first.lock()
            await first.stop()
            assert_same(await server_copy(vss_server.url, keys), local_copy(first.data_dir), "server vs the first node")
            report.set(second_exit_status=second.returncode, second_took_s=round(took_s, 2), second_stderr_lines=len(stderr),
                       second_stderr=" | ".join(stderr)[:300])
            assert second.returncode == 2, f"status {second.returncode}; stderr: {stderr}"
            assert len(stderr) == 1 and "in use by another vssnode process" in stderr[0], stderr
            assert b"node API on" not in second.stdout, second.stdout
            assert took_s < REFUSED_WITHIN_S, f"the second process took {took_s:.1f} s to give up"
            assert state == "running"
            assert len(local_copy(first.data_dir)) == 40


async def test_a_fenced_node_left_alone(tmp_path, vss_server, report):
    """Fault: node A's writes to the server fail (its link answers every putObjects
    with 500) while it holds 20 owed keys, so its retry-queue is backing off; node B
    takes the store over (clears the fence, unlocks, writes); A's link heals, its next
    retry conflicts and A is fenced. Then A is left running for 70 s (past the
    retry-queue's 60 s sweep; 250 s, four sweeps, in soak), looked at every 5 s: its
    state, /vssbackupinfo, /metrics, a refused write, a read. Its verification pass is
    set to every second (`--vss-verify-interval 1`), so every timer it has runs many
    times over.

    Expected: A stays `fenced` in /nodeinfo, /vssbackupinfo says `"fenced": true`,
    /metrics says `vssnode_fenced 1.0`, on every look; its writes answer 409
    OwnershipLost and its reads 200; its 20 owed keys stay owed locally; the process
    does not exit or log a traceback; A sends not one putObjects after it was fenced,
    and no key of either store changes on the server while it is left alone; the
    server's copy equals B's local one.
    """
    rng = random.Random(report.seed)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    looks = 0
    with trio.fail_after(DEADLINE_S + LEFT_ALONE_S):
        async with running_proxy(vss_server.url.removesuffix("/vss"), seed=report.seed) as link, node_fleet(tmp_path) as fleet:
            link.record_calls = True
            a = fleet.node("a", link.url + "/vss", "--vss-verify-interval", "1")
            b = fleet.node("b", vss_server.url)
            await a.start()
            await b.start()
            await a.init(PASSWORD, mnemonic)
            await a.unlock(PASSWORD)
            for i in range(30):
                value = stamp(f"k{i}", 1, rng.randint(8, 300))
                await a.expect(204, "PUT", f"/kv/k{i}", params={"primary": "alone"}, content=value)
            await a.expect(204, "PUT", "/wallet/files/state.json", content=b'{"owner": "A"}')
            await a.expect(200, "POST", "/vssbackup")
            await wait_for(lambda: _pending_is(a, 0), timeout=30, what="A's first writes replicated")

            link.paths = frozenset({"putObjects"})
            link.rates = FaultRates(error_500=1.0)
            for i in range(30, 50):
                value = stamp(f"k{i}", 1, rng.randint(8, 300))
                await a.expect(204, "PUT", f"/kv/k{i}", params={"primary": "alone"}, content=value)
            await wait_for(lambda: _failed(a), timeout=30, what="A's writes failing")
            owed = await a.pending()

            await b.init(PASSWORD, mnemonic)
            await b.clear_fence(PASSWORD)
            await b.unlock(PASSWORD)
            for i in range(10):
                await b.expect(204, "PUT", f"/kv/b{i}", params={"primary": "alone"}, content=b"B%d" % i)
            await wait_for(lambda: _pending_is(b, 0), timeout=30, what="B's writes replicated")
            link.heal()
            await wait_for(lambda: _state_is(a, "fenced"), timeout=60, what="A fenced at its next retry")
            fenced_at = trio.current_time()
            versions_at_fence = await _key_versions(vss_server.url, keys)

            left_until = fenced_at + LEFT_ALONE_S
            for _ in range(int(LEFT_ALONE_S / LOOK_EVERY_S) + 2):  # until left_until; bounded
                looks += 1
                await _look_at_fenced(a, owed)
                if trio.current_time() >= left_until:
                    break
                await trio.sleep(min(LOOK_EVERY_S, max(0.0, left_until - trio.current_time())))  # the clock must run
            versions_at_end = await _key_versions(vss_server.url, keys)
            alive = a.running
            log = a.log_path.read_text(errors="replace")
            a_puts_after_fence = [c for c in link.calls if c.name == "putObjects" and c.forwarded_at > fenced_at]
            a_calls_after_fence = [c for c in link.calls if c.forwarded_at > fenced_at]
            await b.lock()
            await b.stop()
            assert_same(await server_copy(vss_server.url, keys), local_copy(b.data_dir), "server vs the new owner B")
            report.set(
                left_alone_s=round(trio.current_time() - fenced_at, 1),
                looks=looks,
                a_owed_keys=owed,
                a_calls_after_fence=len(a_calls_after_fence),
                a_puts_after_fence=len(a_puts_after_fence),
                tracebacks_in_a_log=log.count("Traceback"),
            )
            report.add_proxy(link.figures())
            assert alive, f"A exited while fenced\n{a.log_tail()}"
            assert "Traceback" not in log, f"A logged a traceback\n{a.log_tail(120)}"
            assert a_puts_after_fence == [], f"A wrote to the store after it was fenced: {a_puts_after_fence}"
            assert versions_at_end == versions_at_fence, "the server's keys changed while A was left alone"


async def _failed(node: NodeProcess) -> bool:
    return (await node.metrics()).get("vssnode_replication_failures_total", 0) >= 1


async def _look_at_fenced(a: NodeProcess, owed: int) -> None:
    """One look at the fenced node: every face of it must still say fenced."""
    info = await a.nodeinfo()
    assert info["state"] == "fenced", info
    backup = await a.backup_info()
    assert backup["fenced"] is True and backup["pending_kv_writes"] == owed, backup
    metrics = await a.metrics()
    assert metrics.get("vssnode_fenced") == 1.0 and metrics.get("vssnode_running") == 0.0, metrics
    for response in (await a.put("k0", b"late", "alone"), await a.request("PUT", "/wallet/files/late.json", content=b"{}")):
        assert response.status_code == 409 and response.json()["name"] == "OwnershipLost", response.text
    assert (await a.get("k1", "alone")).status_code == 200


async def test_a_fenced_node_asked_to_verify(tmp_path, vss_server, report):
    """Fault: node A runs; node B takes the store over; A's next write finds it out and
    A is fenced. The operator asks A for a verification (POST /vssverify).

    Expected: A answers cleanly — a report, or 409 OwnershipLost — not 500; it logs no
    traceback; it stays fenced and keeps serving reads.
    """
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    with trio.fail_after(DEADLINE_S):
        async with node_fleet(tmp_path) as fleet:
            a = fleet.node("a", vss_server.url)
            b = fleet.node("b", vss_server.url)
            await a.start()
            await b.start()
            await a.init(PASSWORD, mnemonic)
            await a.unlock(PASSWORD)
            await a.expect(204, "PUT", "/kv/k0", params={"primary": "verify"}, content=b"A0")
            await wait_for(lambda: _pending_is(a, 0), timeout=30, what="A's write replicated")
            await b.init(PASSWORD, mnemonic)
            await b.clear_fence(PASSWORD)
            await b.unlock(PASSWORD)
            await wait_for(lambda: _fenced_after_a_write(a), timeout=30, what="A fenced")
            verify = await a.request("POST", "/vssverify", timeout=60)
            state = (await a.nodeinfo())["state"]
            read = await a.get("k0", "verify")
            log = a.log_path.read_text(errors="replace")
            await b.lock()
            assert_same(await server_copy(vss_server.url, keys), local_copy(b.data_dir), "server vs B")
            report.set(verify_status=verify.status_code, verify_answer=verify.text[:200],
                       tracebacks_in_a_log=log.count("Traceback"))
    assert state == "fenced" and read.status_code == 200, (state, read.status_code)
    assert verify.status_code in (200, 409), f"POST /vssverify on a fenced node answered {verify.status_code}: {verify.text}"
    assert verify.status_code == 200 or verify.json()["name"] == "OwnershipLost", verify.text
    assert "Traceback" not in log, "the fenced node logged a traceback"


async def _fenced_after_a_write(a: NodeProcess) -> bool:
    await a.put("poke", b"A", "verify")
    return await _state_is(a, "fenced")
