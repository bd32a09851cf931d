"""Scenario 14: one value the server refuses, among small ones that must not wait for it."""

from __future__ import annotations

import random

import pytest
import trio

from node import kv_keys
from node.keys import derive_keys, generate_mnemonic
from nodeutil import wait_for

from .checker import assert_same, local_copy, server_copy, server_snapshot
from .harness import PASSWORD, stamp
from .nodeproc import NodeProcess, node_fleet
from .proxy import running_proxy

pytestmark = [pytest.mark.trio, pytest.mark.faults]

DEADLINE_S = 120
BODY_LIMIT = 256 * 1024
BIG_BYTES = 512 * 1024  # encrypted, twice the server's body limit
SMALL = 20
# The small values go in the node's first batches: with the big one refused and split
# off, they need a few putObjects, milliseconds each. The node retries a refused value
# only every 10 minutes, so a bound of seconds tells "not held up by it" from "held up".
PROMPT_S = 10.0


@pytest.mark.parametrize("limit_at", ["server", "proxy"])
async def test_an_oversized_value_among_small_ones(tmp_path, spawn_vss_server, report, limit_at):
    """Fault: bodies over 256 KiB are refused with 413 — by the server itself
    (`--max-body-bytes`, a VSS error body) or by a proxy in front of it (a plain-text
    body, as a reverse proxy answers); a node is given 20 small values and, among
    them, one of 512 KiB (accepted locally: the node's own limit is 32 MiB).

    Expected: the 20 small values land promptly (within seconds, not held up by the
    refused one); /vssbackupinfo says `rejected_kv_writes` 1, `kv_error` names the
    big value's key, `pending_kv_writes` 1 (it stays owed); /metrics agrees; once the
    big value is overwritten with a small one, that lands at once: rejected goes back
    to 0, pending to 0, and the server's copy equals the local one.
    """
    rng = random.Random(report.seed)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    server = spawn_vss_server("--max-body-bytes", str(BODY_LIMIT)) if limit_at == "server" else spawn_vss_server()
    big_at = rng.randrange(SMALL)
    names = [f"small{i:02d}" for i in range(SMALL)]
    names.insert(big_at, "big")
    big_key = kv_keys.to_vss_key("o", "", "big")
    with trio.fail_after(DEADLINE_S):
        async with running_proxy(server.url.removesuffix("/vss"), seed=report.seed) as proxy, node_fleet(tmp_path) as fleet:
            if limit_at == "proxy":
                proxy.max_body_bytes = BODY_LIMIT
            node = fleet.node("a", proxy.url + "/vss")
            await node.start()
            await node.init(PASSWORD, mnemonic)
            await node.unlock(PASSWORD)
            values = {}
            started = trio.current_time()
            for name in names:
                values[name] = rng.randbytes(BIG_BYTES) if name == "big" else stamp(name, 1, rng.randint(16, 2000))
                await node.expect(204, "PUT", f"/kv/{name}", params={"primary": "o"}, content=values[name])
            written_s = trio.current_time() - started
            small = {("o", "", n): v for n, v in values.items() if n != "big"}
            await wait_for(lambda: _server_has(server.url, keys, small), timeout=PROMPT_S, what="the 20 small values landed")
            landed_s = trio.current_time() - started
            await wait_for(lambda: _rejected(node, 1), timeout=PROMPT_S, what="the big value reported refused")
            refused_info = await node.backup_info()
            refused_metrics = await node.metrics()

            values["big"] = b"small at last"
            await node.expect(204, "PUT", "/kv/big", params={"primary": "o"}, content=values["big"])
            replaced = trio.current_time()
            await wait_for(lambda: _pending_is(node, 0), timeout=PROMPT_S, what="the small replacement landed")
            replaced_s = trio.current_time() - replaced
            final_info = await node.backup_info()
            await node.lock()
            await node.stop()
            local = local_copy(node.data_dir)
            assert_same(await server_copy(server.url, keys), local, "after the replacement")
            assert local == {("o", "", n): v for n, v in values.items()}
            report.set(
                small_values=SMALL,
                big_value_bytes=BIG_BYTES,
                server_body_limit=BODY_LIMIT,
                big_value_position=big_at,
                writes_took_s=round(written_s, 2),
                small_landed_after_s=round(landed_s, 2),
                replacement_landed_after_s=round(replaced_s, 2),
                refusals_counted=int(refused_metrics.get("vssnode_kv_value_refusals_total", 0)),
                kv_error=str(refused_info["kv_error"])[:200],
            )
            report.add_proxy(proxy.figures())
            assert refused_info["rejected_kv_writes"] == 1, refused_info
            assert refused_info["pending_kv_writes"] == 1, refused_info
            assert refused_info["kv_error"] and big_key in refused_info["kv_error"], refused_info
            assert refused_metrics.get("vssnode_rejected_kv_writes") == 1.0, refused_metrics
            assert refused_metrics.get("vssnode_pending_kv_writes") == 1.0, refused_metrics
            assert final_info["rejected_kv_writes"] == 0 and final_info["pending_kv_writes"] == 0, final_info
            assert final_info["kv_error"] is None, final_info


async def _server_has(url: str, keys, wanted: dict) -> bool:
    remote = await server_snapshot(url, keys)
    return all(remote.get(triple) == value for triple, value in wanted.items())


async def _rejected(node: NodeProcess, count: int) -> bool:
    return (await node.backup_info())["rejected_kv_writes"] == count


async def _pending_is(node: NodeProcess, wanted: int) -> bool:
    return await node.pending() == wanted
