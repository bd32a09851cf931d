"""Scenario 2: a flaky server under concurrent writes to overlapping keys."""

from __future__ import annotations

import random

import pytest
import trio

from node.keys import derive_keys, generate_mnemonic
from node.store import Triple
from nodeutil import wait_for

from .checker import assert_same, local_copy, server_copy, server_snapshot
from .harness import PASSWORD, Ledger, counter_of, populate_server, scaled, stamp, write_steadily
from .nodeproc import node_fleet
from .proxy import FaultRates, running_proxy

pytestmark = [pytest.mark.trio, pytest.mark.faults]

DEADLINE_S = scaled(300, 1200)
CONVERGE_TIMEOUT_S = 120
WRITERS = 6
KEYS = 60
ROUNDS = scaled(5, 40)
WRITES = scaled(1200, 12_000)
FLAKY = FaultRates(
    refuse=0.05,
    error_500=0.07,
    reset_request=0.04,
    stall_request=0.02,
    garbage=0.04,
    reset_response=0.05,
    stall_response=0.02,
    drop_after_commit=0.10,
)


class OrderWatch:
    """Snapshots of the server's copy taken while the writes go on: per key, the
    counter seen on the server must never go down (an older value landing after a
    newer one), and every value seen must be one that was written to that key."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.highest: dict[Triple, int] = {}
        self.snapshots = 0
        self.problems: list[str] = []

    def observe(self, remote: dict[Triple, bytes]) -> None:
        self.snapshots += 1
        for triple, value in remote.items():
            if triple[0] != self.ledger.primary:
                continue
            key = triple[2]
            try:
                counter = counter_of(value)
                ok = value.split(b":", 2)[1] == key.encode() and counter <= self.ledger.entries[key].counter
            except (ValueError, IndexError, KeyError):
                counter, ok = -1, False
            if not ok:
                self.problems.append(f"snapshot {self.snapshots}: {key} holds {value[:40]!r}, never written")
                continue
            seen = self.highest.get(triple, 0)
            if counter < seen:
                self.problems.append(f"snapshot {self.snapshots}: {key} went back from counter {seen} to {counter}")
            self.highest[triple] = max(seen, counter)


async def test_flaky_server_under_concurrent_overlapping_writes(tmp_path, vss_server, report):
    """Fault: on the way to the server, about a third of the VSS calls fail: 500s,
    connections reset before the request is forwarded, requests stalled then reset,
    200s with garbage bodies, answers reset or stalled halfway, answers dropped after
    the server committed the call; 5% of new connections are reset at accept; plus
    latency with jitter and 300 ms spikes. In
    each of several rounds six clients write concurrently to 60 shared keys (one
    write per key in flight; each value carries the key's counter; 5% deletes), then
    stop until the node has caught up; faults on throughout.

    Expected: every write is acknowledged; after each round the replication
    converges with the faults still on (pending_kv_writes returns to 0); while it
    runs, snapshots of the
    server's copy never show a key going back to an older counter; at the end the
    server's copy equals the local one key by key (no key older on the server), and
    the local one holds every acknowledged write.
    """
    rng = random.Random(report.seed)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    ledger = Ledger("flaky", [f"k{i}" for i in range(KEYS)])
    watch = OrderWatch(ledger)
    with trio.fail_after(DEADLINE_S):
        async with running_proxy(vss_server.url.removesuffix("/vss"), seed=report.seed) as proxy, node_fleet(tmp_path) as fleet:
            node = fleet.node("a", proxy.url + "/vss")
            await node.start()
            await node.init(PASSWORD, mnemonic)
            await node.unlock(PASSWORD)
            proxy.rates = FLAKY
            proxy.latency_ms, proxy.jitter_ms = 2, 8
            proxy.spike_rate, proxy.spike_ms, proxy.stall_ms = 0.03, 300, 300

            written: list[int] = []
            converge_times: list[float] = []

            async def writer(seed: int, count: int) -> None:
                written.append(
                    await write_steadily(
                        node, ledger, random.Random(seed), stop=trio.Event(), max_writes=count,
                        size_range=(32, 2048), delete_rate=0.05, pause_s=0.01,
                    )
                )

            async def watcher(stop_watching: trio.Event) -> None:
                for _ in range(10_000):  # until the writers of this round are done
                    watch.observe(await server_snapshot(vss_server.url, keys))
                    with trio.move_on_after(0.3):
                        await stop_watching.wait()
                    if stop_watching.is_set():
                        return

            for _ in range(ROUNDS):
                stop_watching = trio.Event()
                async with trio.open_nursery() as outer:
                    outer.start_soon(watcher, stop_watching)
                    async with trio.open_nursery() as writers:
                        for _ in range(WRITERS):
                            writers.start_soon(writer, rng.randrange(2**32), WRITES // ROUNDS // WRITERS)
                    stop_watching.set()
                started = trio.current_time()
                await wait_for(lambda: _pending_is(node, 0), timeout=CONVERGE_TIMEOUT_S, what="convergence with the faults on")
                converge_times.append(trio.current_time() - started)
                watch.observe(await server_snapshot(vss_server.url, keys))
            metrics = await node.metrics()
            await node.lock()
            proxy.heal()

            remote = await server_copy(vss_server.url, keys)
            watch.observe(remote)
            local = local_copy(node.data_dir)
            older = [t[2] for t, v in local.items() if t in remote and counter_of(remote[t]) < counter_of(v)]
            report.set(
                writes_acknowledged=sum(written),
                writes_deletes=ledger.acked_deletes,
                keys=KEYS,
                writers=WRITERS,
                server_snapshots=watch.snapshots,
                rounds=ROUNDS,
                slowest_convergence_s=round(max(converge_times), 1),
                node_replication_failures=int(metrics.get("vssnode_replication_failures_total", 0)),
                node_replication_batches=int(metrics.get("vssnode_replication_batches_total", 0)),
                keys_older_on_server=len(older),
            )
            report.add_proxy(proxy.figures())
            assert not watch.problems, "server copy went backwards:\n" + "\n".join(watch.problems[:20])
            assert not older, f"keys older on the server than locally: {older[:20]}"
            assert_same(remote, local, "after convergence under faults")
            assert_same(ledger.expected(), {k: v for k, v in local.items() if k[0] == "flaky"}, "acknowledged writes vs local")


async def _pending_is(node, wanted: int) -> bool:
    return await node.pending() == wanted


# Lossy enough to fail a few of a restore's calls, mild enough that one VSS call fails
# all three of the client's attempts rarely (about 1 in 500).
MILDLY_FLAKY = FaultRates(refuse=0.02, error_500=0.04, reset_request=0.02, stall_request=0.01, garbage=0.02,
                          reset_response=0.02, drop_after_commit=0.02)


async def test_restore_through_a_flaky_server(tmp_path, vss_server, report):
    """Fault: a new node restores 200 keys at unlock through a mildly flaky proxy
    (about 13% of calls fail: 500s, resets, stalls, garbage, drops; some connections
    refused at accept; latency spikes).

    Expected: each unlock either succeeds with the complete state or fails with
    502 RestoreFailed leaving the kv table empty — never partial; unlocking again
    (bounded) succeeds, and the restored state equals the server's copy.
    """
    refused, figures = await _restore_through(tmp_path, vss_server, report, MILDLY_FLAKY, keys_count=200, unlocks=20)
    report.set(keys_on_server=200, unlocks_refused=refused, unlocks=refused + 1)
    report.add_proxy(figures)


async def test_restore_completes_through_a_lossy_link(tmp_path, vss_server, report):
    """Fault: a new node restores 500 keys through a link that loses 30% of the calls
    (500s and connection resets, each retried by the client at most 3 times).

    Expected: the restore completes within 3 unlocks (a transient failure of one key
    is retried, not fatal to the whole restore), never leaving partial state.
    """
    rates = FaultRates(error_500=0.15, reset_request=0.10, reset_response=0.05)
    refused, figures = await _restore_through(tmp_path, vss_server, report, rates, keys_count=500, unlocks=3)
    report.set(keys_on_server=500, unlocks_refused=refused)
    report.add_proxy(figures)


async def _restore_through(tmp_path, vss_server, report, rates: FaultRates, *, keys_count: int, unlocks: int) -> tuple[int, dict]:
    """Populate the server, then unlock a new node through a proxy with `rates` until it
    succeeds (at most `unlocks` times); checks no failed unlock left state behind and
    the final state; returns the refused unlocks and the proxy's figures."""
    rng = random.Random(report.seed)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    items = {("flaky-restore", "", f"k{i:04d}"): stamp(f"k{i:04d}", 1, rng.randint(8, 300)) for i in range(keys_count)}
    refused = 0
    with trio.fail_after(DEADLINE_S):
        await populate_server(vss_server.url, keys, items)
        async with running_proxy(vss_server.url.removesuffix("/vss"), seed=report.seed) as proxy, node_fleet(tmp_path) as fleet:
            node = fleet.node("new", proxy.url + "/vss")
            await node.start()
            await node.init(PASSWORD, mnemonic)
            proxy.rates = rates
            proxy.spike_rate, proxy.spike_ms, proxy.stall_ms = 0.02, 200, 200
            for _ in range(unlocks):
                answer = await node.try_unlock(PASSWORD)
                if answer.status_code == 200:
                    break
                assert answer.status_code == 502 and answer.json()["name"] == "RestoreFailed", answer.text
                assert local_copy(node.data_dir) == {}, "a failed restore left state behind"
                refused += 1
            else:
                raise AssertionError(f"{unlocks} unlocks through the faults all failed; the last said: {answer.json()['error']}")
            await node.lock()
            proxy.heal()
            local = local_copy(node.data_dir)
            assert_same(items, local, "restored through faults")
            assert_same(await server_copy(vss_server.url, keys), local, "server vs restored")
            return refused, proxy.figures()
