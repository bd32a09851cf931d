"""Scenario 3: the retry-queue overflows while the server is down.

The retry-queue holds at most `capacity` keys in memory (10_000 by default,
`--retry-queue-capacity`); beyond that it drops the oldest and relies on the durable
unsynced markers. The default run drives an in-process node (the same `Node` the
process runs, on trio here) configured with a small capacity; the soak run also does
it with a real node process and the default capacity.
"""

from __future__ import annotations

import random

import pytest
import trio

from actors import Node
from node.config import NodeConfig
from node.keys import derive_keys, generate_mnemonic
from nodeutil import FAST_LIMITS, wait_for

from .checker import assert_same, local_copy, server_copy
from .harness import PASSWORD, SOAK, stamp
from .nodeproc import node_fleet
from .proxy import running_proxy

pytestmark = [pytest.mark.trio, pytest.mark.faults]

DEADLINE_S = 300
RECOVERY_TIMEOUT_S = 120
SMALL_CAPACITY = 200
WRITERS = 8


async def _write_distinct(put, count: int, rng: random.Random) -> None:
    """`count` distinct keys, written by WRITERS concurrent tasks."""
    sizes = [rng.randint(16, 256) for _ in range(count)]

    async def writer(first: int) -> None:
        for i in range(first, count, WRITERS):
            await put(f"k{i:06d}", stamp(f"k{i:06d}", 1, sizes[i]))

    async with trio.open_nursery() as nursery:
        for first in range(WRITERS):
            nursery.start_soon(writer, first)


async def test_retry_queue_overflow_loses_nothing(tmp_path, vss_server, report):
    """Fault: the server is down (nothing listens) while the node is given five times
    more distinct keys than its retry-queue holds (capacity configured down to 200; an
    in-process node).

    Expected: every write is acknowledged; the queue drops entries from memory
    (retry_queue_dropped_total > 0) but the markers keep them owed: after the server
    comes back, with no new write, pending returns to 0 and nothing is missing on the
    server — its copy equals the local one.
    """
    rng = random.Random(report.seed)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    count = SMALL_CAPACITY * 5
    with trio.fail_after(DEADLINE_S):
        async with running_proxy(vss_server.url.removesuffix("/vss"), seed=report.seed) as proxy:
            config = NodeConfig(
                vault_limits=FAST_LIMITS,
                data_dir=tmp_path / "a", vss_url=proxy.url + "/vss", retry_queue_capacity=SMALL_CAPACITY
            )
            async with Node.open(config) as node:
                await node.init(PASSWORD, mnemonic)
                await node.unlock(PASSWORD)
                await proxy.go_down()
                await _write_distinct(lambda k, v: node.put("overflow", "", k, v), count, rng)
                pending_peak = (await node.backup_info())["pending_kv_writes"]
                assert pending_peak == count
                await wait_for(lambda: (node.metrics.value("retry_queue_dropped_total") or 0) > 0, timeout=60,
                               what="the retry-queue to overflow")
                dropped = node.metrics.value("retry_queue_dropped_total")
                await proxy.go_up()
                started = trio.current_time()
                await wait_for(lambda: _pending_zero(node), timeout=RECOVERY_TIMEOUT_S, what="catch-up after overflow")
                recovery_s = trio.current_time() - started
                batches = node.metrics.value("replication_batches_total") or 0
            local = local_copy(config.data_dir)
            assert len(local) == count
            assert_same(await server_copy(vss_server.url, keys), local, "after overflow and recovery")
            report.set(
                keys_written=count,
                queue_capacity=SMALL_CAPACITY,
                pending_peak=pending_peak,
                queue_dropped=int(dropped),
                recovery_s=round(recovery_s, 1),
                node_replication_batches=int(batches),
            )
            report.add_proxy(proxy.figures())


@pytest.mark.skipif(not SOAK, reason="soak only (VSSNODE_SOAK=1): writes 12,000 keys through a real node")
async def test_retry_queue_overflow_default_capacity_real_process(tmp_path, vss_server, report):
    """Fault: as above, with a real node process and the default capacity (10_000):
    12,000 distinct keys written over HTTP while the server is down.

    Expected: all acknowledged; after the server is back, pending returns to 0 with
    no new write, and the server's copy equals the local one.
    """
    rng = random.Random(report.seed)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    count = 12_000
    with trio.fail_after(DEADLINE_S * 2):
        async with running_proxy(vss_server.url.removesuffix("/vss"), seed=report.seed) as proxy, node_fleet(tmp_path) as fleet:
            node = fleet.node("a", proxy.url + "/vss")
            await node.start()
            await node.init(PASSWORD, mnemonic)
            await node.unlock(PASSWORD)
            await proxy.go_down()

            async def put(key: str, value: bytes) -> None:
                response = await node.put(key, value, "overflow")
                assert response.status_code == 204, response.text

            await _write_distinct(put, count, rng)
            pending_peak = await node.pending()
            dropped = (await node.metrics()).get("vssnode_retry_queue_dropped_total", 0)
            await proxy.go_up()
            started = trio.current_time()
            await wait_for(lambda: _api_pending_zero(node), timeout=RECOVERY_TIMEOUT_S, what="catch-up after overflow")
            recovery_s = trio.current_time() - started
            await node.lock()
            assert_same(await server_copy(vss_server.url, keys), local_copy(node.data_dir), "after overflow and recovery")
            report.set(keys_written=count, pending_peak=pending_peak, queue_dropped=int(dropped), recovery_s=round(recovery_s, 1))
            report.add_proxy(proxy.figures())


async def _pending_zero(node: Node) -> bool:
    return (await node.backup_info())["pending_kv_writes"] == 0


async def _api_pending_zero(node) -> bool:
    return await node.pending() == 0
