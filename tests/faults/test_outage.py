"""Scenario 1: the VSS server goes away for a while under steady writes.

A real node process talks to the bundled server through the fault proxy; the test
writes to the node over its HTTP API and checks the server's copy (read directly,
decrypted) against the node's local store at the end.
"""

from __future__ import annotations

import random

import pytest
import trio

from node.keys import derive_keys, generate_mnemonic
from nodeutil import wait_for

from .checker import assert_same, local_copy, server_copy
from .harness import PASSWORD, Ledger, scaled, write_steadily
from .nodeproc import node_fleet
from .proxy import running_proxy

pytestmark = [pytest.mark.trio, pytest.mark.faults]

DEADLINE_S = scaled(240, 600)
RECOVERY_TIMEOUT_S = 90  # the retry-queue's backoff tops out at 15 s
OUTAGE_PHASE_S = scaled(2, 15)
# A write that waited on the network would hang in the blackhole until the phase ends
# (or the VSS client's 10 s timeout); a local commit takes milliseconds. Not a speed
# check: a bound an order of magnitude away from both.
PROMPT_WRITE_S = 1.0
# After a one-second outage the retry-queue has failed once or twice, so its backoff is
# a second or two (it doubles from 0.25 s, up to 15 s): resuming takes far less than this.
RESUME_TIMEOUT_S = 8


async def _phase(node, ledger, rng, seconds: float, latencies: list[float], writers: int = 2) -> int:
    stop = trio.Event()
    counts: list[int] = []

    async def writer(seed: int) -> None:
        counts.append(
            await write_steadily(
                node, ledger, random.Random(seed), stop=stop, max_writes=100_000, pause_s=0.005,
                delete_rate=0.05, latencies=latencies,
            )
        )

    async with trio.open_nursery() as nursery:
        for _ in range(writers):
            nursery.start_soon(writer, rng.randrange(2**32))
        await trio.sleep(seconds)
        stop.set()
    return sum(counts)


async def test_server_down_under_steady_writes(tmp_path, vss_server, report):
    """Fault: the VSS server is unreachable for a while, in three ways one after the
    other: every new connection is reset right after accept; then nothing listens
    on its port (connections refused); then it accepts connections and never answers
    (a blackhole: every call hangs until the client gives up). Meanwhile two clients
    write steadily (puts and a few deletes) to 40 keys.

    Expected: every write is acknowledged at once (204, never waiting on the
    network); pending_kv_writes rises to exactly the number of keys changed during
    the outage; once the server is back, pending returns to 0 without any new write,
    and the server's copy equals the local one, which holds every acknowledged write.
    """
    rng = random.Random(report.seed)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    upstream = vss_server.url.removesuffix("/vss")
    ledger = Ledger("steady", [f"k{i}" for i in range(40)])
    latencies: list[float] = []
    with trio.fail_after(DEADLINE_S):
        async with running_proxy(upstream, seed=report.seed) as proxy, node_fleet(tmp_path) as fleet:
            node = fleet.node("a", proxy.url + "/vss")
            await node.start()
            await node.init(PASSWORD, mnemonic)
            await node.unlock(PASSWORD)

            writes = await _phase(node, ledger, rng, 1.0, latencies)
            await wait_for(lambda: _pending_is(node, 0), timeout=30, what="warm-up writes replicated")
            changed_before = {k for k, e in ledger.entries.items() if e.counter}
            counters_before = {k: e.counter for k, e in ledger.entries.items()}

            proxy.refuse_all = True
            proxy.reset_open_connections()
            reset_writes = await _phase(node, ledger, rng, OUTAGE_PHASE_S, latencies)
            proxy.refuse_all = False
            await proxy.go_down()
            refused_writes = await _phase(node, ledger, rng, OUTAGE_PHASE_S, latencies)
            pending_refused = await node.pending()
            error_while_down = (await node.backup_info())["server_error"]

            await proxy.go_up()
            proxy.blackhole = True
            blackholed_writes = await _phase(node, ledger, rng, OUTAGE_PHASE_S, latencies)
            changed_in_outage = {k for k, e in ledger.entries.items() if e.counter != counters_before[k]}
            pending_peak = await node.pending()
            assert pending_peak == len(changed_in_outage), (
                f"pending_kv_writes is {pending_peak} after the outage, but {len(changed_in_outage)} keys were changed during it"
            )
            assert pending_refused > 0 and error_while_down is not None
            assert proxy.counts["refuse"] > 0, "no connection was refused at accept during the first phase"

            proxy.blackhole = False  # recovered; no write from here on
            recovery_started = trio.current_time()
            await wait_for(lambda: _pending_is(node, 0), timeout=RECOVERY_TIMEOUT_S, what="catch-up without new writes")
            recovery_s = trio.current_time() - recovery_started

            await node.lock()
            local = local_copy(node.data_dir)
            assert_same(await server_copy(vss_server.url, keys), local, "after recovery")
            assert_same(ledger.expected(), {k: v for k, v in local.items() if k[0] == "steady"}, "acknowledged writes vs local")

            slowest = max(latencies)
            report.set(
                writes_acknowledged=writes + reset_writes + refused_writes + blackholed_writes,
                writes_during_reset_at_accept=reset_writes,
                writes_during_refused=refused_writes,
                writes_during_blackhole=blackholed_writes,
                keys_written=len(changed_before | changed_in_outage),
                pending_peak=pending_peak,
                slowest_write_ms=round(slowest * 1000, 1),
                recovery_s=round(recovery_s, 1),
            )
            report.add_proxy(proxy.figures())
            assert slowest < PROMPT_WRITE_S, f"a write took {slowest:.2f} s during the outage: it waited on the network"


async def _pending_is(node, wanted: int) -> bool:
    return await node.pending() == wanted


async def test_replication_resumes_while_writes_continue(tmp_path, vss_server, report):
    """Fault: a one-second outage (nothing listens) while a client writes steadily
    (a write every ~20 ms), then the server is back and the writes go on.

    Expected: replication resumes while the writes continue: within a few seconds of
    the server's return (the backoff after one or two failures is a second or two), a
    batch lands, although the client never pauses. Checked at the end: server copy ==
    local copy.
    """
    rng = random.Random(report.seed)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    ledger = Ledger("resume", [f"k{i}" for i in range(20)])
    with trio.fail_after(DEADLINE_S):
        async with running_proxy(vss_server.url.removesuffix("/vss"), seed=report.seed) as proxy, node_fleet(tmp_path) as fleet:
            node = fleet.node("a", proxy.url + "/vss")
            await node.start()
            await node.init(PASSWORD, mnemonic)
            await node.unlock(PASSWORD)
            stop = trio.Event()
            resumed_after: list[float] = []

            async def watch() -> None:
                await proxy.go_down()
                await wait_for(lambda: _failed_once(node), timeout=30, what="a failed VSS write")
                await trio.sleep(1.0)
                batches = (await node.metrics()).get("vssnode_replication_batches_total", 0)
                await proxy.go_up()
                back = trio.current_time()
                try:
                    await wait_for(lambda: _batches_above(node, batches), timeout=RESUME_TIMEOUT_S,
                                   what="replication to resume during writes")
                    resumed_after.append(trio.current_time() - back)
                finally:
                    stop.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                nursery.start_soon(
                    lambda: write_steadily(node, ledger, random.Random(rng.randrange(2**32)), stop=stop, max_writes=100_000,
                                           pause_s=0.02)
                )
            await wait_for(lambda: _pending_is(node, 0), timeout=RECOVERY_TIMEOUT_S, what="catch-up")
            await node.lock()
            assert_same(await server_copy(vss_server.url, keys), local_copy(node.data_dir), "after the writes")
            report.set(writes_acknowledged=ledger.acked_writes, resumed_after_s=round(resumed_after[0], 1))
            report.add_proxy(proxy.figures())


async def _failed_once(node) -> bool:
    return (await node.metrics()).get("vssnode_replication_failures_total", 0) >= 1


async def _batches_above(node, batches: float) -> bool:
    """A batch has landed on the server since `batches` were counted."""
    return (await node.metrics()).get("vssnode_replication_batches_total", 0) > batches
