"""Scenarios 4 and 5: the node process is SIGKILLed, during writes and during restore."""

from __future__ import annotations

import random

import pytest
import trio

from node.keys import derive_keys, generate_mnemonic
from nodeutil import wait_for

from .checker import assert_same, local_copy, local_pending, server_copy
from .harness import PASSWORD, Ledger, populate_server, scaled, stamp, write_steadily
from .nodeproc import node_fleet
from .proxy import FaultRates, running_proxy

pytestmark = [pytest.mark.trio, pytest.mark.faults]

RECOVERY_TIMEOUT_S = 90
WRITE_KILLS = scaled(10, 60)
WRITERS = 6
RESTORE_KEYS = scaled(300, 20_000)
RESTORE_KILLS = scaled(4, 8)


async def test_sigkill_during_heavy_writes(tmp_path, vss_server, report):
    """Fault: the node process is SIGKILLed at a random moment (seeded) while six
    clients write as fast as it answers (puts of up to 8 KiB and deletes over 80
    keys) and replication calls are in flight (the proxy adds latency, drops a few
    answers after commit and resets a few mid-answer); then it is started again on
    the same data dir. Repeated.

    Expected: after each kill the local store holds, for every key, its last
    acknowledged value or the one that was in flight when the node died — never
    anything older; the restarted node unlocks without a fence takeover; at the end,
    with no new write, pending returns to 0 and the server's copy equals the local
    one.
    """
    rng = random.Random(report.seed)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    ledger = Ledger("crash", [f"k{i}" for i in range(80)])
    kill_delays: list[float] = []
    with trio.fail_after(60 + WRITE_KILLS * 20):
        async with running_proxy(vss_server.url.removesuffix("/vss"), seed=report.seed) as proxy, node_fleet(tmp_path) as fleet:
            proxy.latency_ms, proxy.jitter_ms = 5, 20
            proxy.rates = FaultRates(drop_after_commit=0.05, reset_response=0.03)
            node = fleet.node("a", proxy.url + "/vss")
            await node.start()
            await node.init(PASSWORD, mnemonic)
            for round_no in range(WRITE_KILLS):
                if round_no:
                    await node.start()
                await node.unlock(PASSWORD)
                delay = rng.uniform(0.1, 1.5)
                kill_delays.append(delay)
                async with trio.open_nursery() as nursery:
                    for _ in range(WRITERS):
                        nursery.start_soon(
                            lambda seed: write_steadily(
                                node, ledger, random.Random(seed), stop=trio.Event(), max_writes=100_000,
                                size_range=(64, 8192), delete_rate=0.1,
                            ),
                            rng.randrange(2**32),
                        )
                    await trio.sleep(delay)
                    await node.kill()
                problems = ledger.check_after_crash(local_copy(node.data_dir))
                assert not problems, f"after kill {round_no + 1}, acknowledged writes are missing:\n" + "\n".join(problems[:20])
            owed_after_last_kill = local_pending(node.data_dir)
            await node.start()
            await node.unlock(PASSWORD)
            await wait_for(lambda: _pending_is(node, 0), timeout=RECOVERY_TIMEOUT_S, what="convergence after the last restart")
            await node.lock()
            assert_same(await server_copy(vss_server.url, keys), local_copy(node.data_dir), "after the last restart")
            report.set(
                kills=fleet.kills,
                writes_acknowledged=ledger.acked_writes + ledger.acked_deletes,
                writes_in_flight_at_kills=ledger.unanswered,
                owed_after_last_kill=owed_after_last_kill,
                kill_delay_min_s=round(min(kill_delays), 2),
                kill_delay_max_s=round(max(kill_delays), 2),
            )
            report.add_proxy(proxy.figures())


async def test_sigkill_during_restore(tmp_path, vss_server, report):
    """Fault: a node on a new data dir restores many small keys at unlock and is
    SIGKILLed at a random moment (seeded, uniform over 1.2 times the duration of one
    uninterrupted restore, measured first on another data dir), then started again on
    that dir. Repeated. A kill that comes after the restore went live moves the test
    on to yet another new data dir (which takes the fence over with /vssclearfence).

    Expected: after every kill the local kv table is either empty or complete (the
    restore makes its staging live in one transaction), never partial; the next
    unlock completes the restore; the restored state equals the server's copy.
    """
    rng = random.Random(report.seed)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    items = {("restore", "", f"k{i:06d}"): stamp(f"k{i:06d}", 1, rng.randint(8, 64)) for i in range(RESTORE_KEYS)}
    outcomes: list[str] = []
    delays: list[float] = []
    with trio.fail_after(120 + RESTORE_KILLS * RESTORE_KEYS / 100):
        await populate_server(vss_server.url, keys, items)
        async with node_fleet(tmp_path) as fleet:
            calibration = fleet.node("calibration", vss_server.url)
            await calibration.start()
            await calibration.init(PASSWORD, mnemonic)
            started = trio.current_time()
            await calibration.unlock(PASSWORD)
            restore_s = trio.current_time() - started
            await calibration.stop()
            assert_same(items, local_copy(calibration.data_dir), "uninterrupted restore")

            node = await _new_device(fleet, vss_server.url, mnemonic, 1)
            for _ in range(RESTORE_KILLS):
                if not node.running:
                    await node.start()
                delay = rng.uniform(0.0, restore_s * 1.2)
                delays.append(delay)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_unlock_until_killed, node)
                    await trio.sleep(delay)
                    await node.kill()
                local = local_copy(node.data_dir)
                assert len(local) in (0, len(items)), f"half-restored: {len(local)} of {len(items)} keys are live after a kill"
                outcomes.append("complete" if local else "empty")
                if local:  # the kill came after the restore went live: go on with a new device
                    assert_same(items, local, "a restore that went live before the kill")
                    node = await _new_device(fleet, vss_server.url, mnemonic, len(outcomes) + 1)
            if not node.running:
                await node.start()
            await node.unlock(PASSWORD)
            info = await node.nodeinfo()
            await node.lock()
            local = local_copy(node.data_dir)
            assert_same(items, local, "restored state vs what was written to the server")
            assert_same(await server_copy(vss_server.url, keys), local, "after the completed restore")
            report.set(
                keys_on_server=len(items),
                kills=fleet.kills,
                empty_after_kill=outcomes.count("empty"),
                complete_after_kill=outcomes.count("complete"),
                uninterrupted_restore_s=round(restore_s, 1),
                kill_delay_min_s=round(min(delays), 2),
                kill_delay_max_s=round(max(delays), 2),
                final_restore_keys=info["restore"]["keys_done"],
            )


async def _new_device(fleet, vss_url: str, mnemonic: str, number: int):
    """A node on a new data dir, initialised with the mnemonic, that has taken the
    fence over (while locked) so that its unlock restores."""
    node = fleet.node(f"new{number}", vss_url)
    await node.start()
    await node.init(PASSWORD, mnemonic)
    await node.clear_fence(PASSWORD)
    return node


async def _unlock_until_killed(node) -> None:
    """Unlock; the kill makes the call fail, which is what the test wants."""
    try:
        await node.try_unlock(PASSWORD)
    except Exception:  # noqa: BLE001 - any transport error: the process is gone
        pass


async def _restored_at_least(node, target: int) -> bool:
    try:
        info = await node.nodeinfo()
    except Exception:  # noqa: BLE001 - the node is busy starting or gone
        return False
    return info["restore"]["keys_done"] >= target or info["restore"]["finished"]


async def _pending_is(node, wanted: int) -> bool:
    return await node.pending() == wanted
