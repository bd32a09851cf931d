"""Scenarios 6 and 7: who owns the store — a takeover, and two nodes racing to start."""

from __future__ import annotations

import random

import pytest
import trio

from node.keys import derive_keys, generate_mnemonic
from nodeutil import wait_for

from .checker import assert_same, local_copy, server_copy, server_snapshot
from .harness import PASSWORD, populate_server, scaled, stamp
from .nodeproc import node_fleet
from .proxy import running_proxy

pytestmark = [pytest.mark.trio, pytest.mark.faults]

DEADLINE_S = scaled(180, 900)
RACES = scaled(3, 25)


async def test_takeover_fences_out_the_old_owner(tmp_path, vss_server, report):
    """Fault: node A runs and keeps writing; on another data dir with the same
    mnemonic, node B is refused at first (409 OwnershipConflict), then the operator
    clears the fence on B (POST /vssclearfence while B is locked), B unlocks (and
    restores) and writes the same keys and new ones. A keeps writing throughout.

    Expected: from the moment the fence is cleared no write of A lands on the server:
    snapshots taken while A writes show only the A-values the server held at the
    clear, and none made after it (values carry A's counter); A notices: its
    /nodeinfo says "fenced", /vssbackupinfo says fenced, its writes answer
    409 OwnershipLost while reads still work; the server's copy equals B's local one.
    """
    rng = random.Random(report.seed)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    shared = [f"k{i}" for i in range(30)]
    a_counter = {key: 0 for key in shared}
    a_acked: dict[str, bytes] = {}  # the last value of each key A acknowledged
    a_stats = {"acknowledged": 0, "refused": 0}
    cleared_at: dict[str, int] = {}
    landed_late: list[str] = []

    frozen: dict = {}  # A's values on the server right after the fence was cleared

    def check_no_late_a_writes(remote) -> None:
        """After the clear, the server's A-values can only be the ones it held then."""
        for triple, value in remote.items():
            if triple[0] != "shared" or not value.startswith(b"A:"):
                continue
            counter = int(value.split(b":")[1])
            if counter > cleared_at[triple[2]]:
                landed_late.append(f"{triple[2]}: A's write #{counter}, made after the clear (#{cleared_at[triple[2]]}), landed")
            elif value != frozen.get(triple):
                landed_late.append(f"{triple[2]}: A's write #{counter} landed after the clear")

    with trio.fail_after(DEADLINE_S):
        async with running_proxy(vss_server.url.removesuffix("/vss"), seed=report.seed) as proxy, node_fleet(tmp_path) as fleet:
            proxy.latency_ms, proxy.jitter_ms = 1, 10
            a = fleet.node("a", proxy.url + "/vss")
            b = fleet.node("b", proxy.url + "/vss")
            await a.start()
            await b.start()
            await a.init(PASSWORD, mnemonic)
            await a.unlock(PASSWORD)
            a_done = trio.Event()

            async def a_writes() -> None:
                # A writes until it is fenced (409) or the test has seen enough; bounded.
                for _ in range(20_000):
                    if a_done.is_set():
                        return
                    key = rng.choice(shared)
                    a_counter[key] += 1
                    value = b"A:%d:" % a_counter[key] + b"a" * rng.randint(10, 300)
                    response = await a.put(key, value, "shared")
                    if response.status_code == 409:
                        assert response.json()["name"] == "OwnershipLost", response.text
                        a_stats["refused"] += 1
                        return
                    assert response.status_code == 204, response.text
                    a_acked[key] = value
                    a_stats["acknowledged"] += 1
                    await trio.sleep(0.02)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(a_writes)
                await wait_for(lambda: a_stats["acknowledged"] >= 50, timeout=30, what="A writing")

                await b.init(PASSWORD, mnemonic)
                refused = await b.try_unlock(PASSWORD)
                assert refused.status_code == 409 and refused.json()["name"] == "OwnershipConflict", refused.text
                assert "vssclearfence" in refused.json()["error"]

                cleared = await _clear_fence_as_an_operator(b)
                cleared_at.update(a_counter)  # writes counted from here were made after the clear
                frozen.update((t, v) for t, v in (await server_snapshot(vss_server.url, keys)).items() if v.startswith(b"A:"))
                await b.unlock(PASSWORD)
                b_written = 0
                for i in range(60):
                    key = shared[i % len(shared)] if i < 45 else f"b-only-{i}"
                    response = await b.put(key, b"B:%d" % i, "shared")
                    assert response.status_code == 204, response.text
                    b_written += 1
                    if i % 15 == 0:
                        check_no_late_a_writes(await server_snapshot(vss_server.url, keys))
                await wait_for(lambda: _pending_is(b, 0), timeout=60, what="B's writes replicated")
                await wait_for(lambda: _state_is(a, "fenced"), timeout=60, what="A to notice it lost the fence")
                a_done.set()

            refused_put = await a.put("k0", b"A:late", "shared")
            refused_delete = await a.delete("k1", "shared")
            for response in (refused_put, refused_delete):
                assert response.status_code == 409 and response.json()["name"] == "OwnershipLost", response.text
            read_back = next(iter(a_acked))
            got = await a.get(read_back, "shared")  # reads still work, and give A's own last value
            assert got.status_code == 200 and got.content == a_acked[read_back], got.text
            a_info = await a.backup_info()
            assert a_info.get("fenced") is True, a_info

            await b.lock()
            remote = await server_copy(vss_server.url, keys)
            check_no_late_a_writes(remote)
            assert not landed_late, "writes of the fenced-out node landed:\n" + "\n".join(landed_late[:20])
            assert_same(remote, local_copy(b.data_dir), "server vs the new owner B")
            report.set(
                a_writes_acknowledged=a_stats["acknowledged"],
                a_writes_refused_409=a_stats["refused"] + 2,
                a_writes_after_clear=sum(a_counter[k] - cleared_at[k] for k in shared),
                b_writes=b_written,
                clear_fence_attempts=cleared,
                late_a_writes_on_server=len(landed_late),
            )
            report.add_proxy(proxy.figures())


async def test_two_nodes_racing_to_unlock(tmp_path, vss_server, report):
    """Fault: two nodes on fresh data dirs, same mnemonic, against a store that holds
    data and no fence, unlock at the same moment (the proxy adds seeded jitter so the
    interleaving varies). Repeated with a new mnemonic each time.

    Expected: exactly one unlock succeeds and restores the data; the other answers
    409 OwnershipConflict (saying how to take over), stays locked and wrote nothing
    locally; the server's copy equals the winner's local one.
    """
    rng = random.Random(report.seed)
    wins = {"first": 0, "second": 0}
    with trio.fail_after(DEADLINE_S):
        async with running_proxy(vss_server.url.removesuffix("/vss"), seed=report.seed) as proxy, node_fleet(tmp_path) as fleet:
            proxy.latency_ms, proxy.jitter_ms = 0, 15
            for race in range(RACES):
                mnemonic = generate_mnemonic()
                keys = derive_keys(mnemonic)
                items = {("race", "", f"k{i}"): stamp(f"k{i}", race, rng.randint(8, 200)) for i in range(40)}
                await populate_server(vss_server.url, keys, items)
                pair = [fleet.node(f"race{race}-{side}", proxy.url + "/vss") for side in ("first", "second")]
                for node in pair:
                    await node.start()
                    await node.init(PASSWORD, mnemonic)
                answers: dict[str, object] = {}
                spans: dict[str, tuple[float, float]] = {}
                go = trio.Event()
                parked = 0

                # The closures below run and end within this iteration (the nursery waits
                # for them), so the loop variables they use are this race's.
                async def unlock(node, side: str) -> None:
                    nonlocal parked
                    parked += 1
                    await go.wait()  # noqa: B023
                    started = trio.current_time()
                    answers[side] = await node.try_unlock(PASSWORD)  # noqa: B023
                    spans[side] = (started, trio.current_time())  # noqa: B023

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(unlock, pair[0], "first")
                    nursery.start_soon(unlock, pair[1], "second")
                    await wait_for(lambda: parked == 2, timeout=10, what="both unlocks ready")  # noqa: B023
                    go.set()
                # the race happened: both unlocks were under way at the same time
                assert max(s for s, _ in spans.values()) < min(e for _, e in spans.values()), spans
                statuses = {side: answer.status_code for side, answer in answers.items()}
                assert sorted(statuses.values()) == [200, 409], f"race {race}: {statuses}"
                winner_side = "first" if statuses["first"] == 200 else "second"
                winner, loser = (pair[0], pair[1]) if winner_side == "first" else (pair[1], pair[0])
                loser_answer = answers["second" if winner_side == "first" else "first"]
                assert loser_answer.json()["name"] == "OwnershipConflict", loser_answer.text
                assert "vssclearfence" in loser_answer.json()["error"]
                assert (await loser.nodeinfo())["state"] == "locked"
                wins[winner_side] += 1
                await winner.lock()
                for node in pair:
                    await node.stop()
                assert local_copy(loser.data_dir) == {}, "the losing node wrote state locally"
                assert_same(items, local_copy(winner.data_dir), f"race {race}: winner's restore")
                assert_same(await server_copy(vss_server.url, keys), local_copy(winner.data_dir), f"race {race}")
            report.set(races=RACES, won_by_first=wins["first"], won_by_second=wins["second"], losers_409=RACES)
            report.add_proxy(proxy.figures())


async def _clear_fence_as_an_operator(node) -> int:
    """POST /vssclearfence once, as an operator would: an unconditional delete, so a
    busy old owner cannot make it fail. Returns the attempts it took (always 1)."""
    response = await node.request("POST", "/vssclearfence", json={"password": PASSWORD})
    assert response.status_code == 200 and response.json()["cleared"] is True, f"{response.text}\n{node.log_tail()}"
    return 1


async def test_takeover_succeeds_while_the_old_owner_keeps_writing(tmp_path, vss_server, report):
    """Fault: node A, next to the server (direct), writes steadily; node B reaches the
    server through 40 ms of latency, as a new machine elsewhere would, and the
    operator clears the fence on B.

    Expected: the takeover goes through (one /vssclearfence, then B unlocks); A is
    fenced out. Without that, a node that is still running somewhere — the very case
    a takeover is for — blocks every takeover for as long as it writes.
    """
    mnemonic = generate_mnemonic()
    rng = random.Random(report.seed)
    with trio.fail_after(DEADLINE_S):
        async with running_proxy(vss_server.url.removesuffix("/vss"), seed=report.seed) as proxy, node_fleet(tmp_path) as fleet:
            proxy.latency_ms = 40
            a = fleet.node("a", vss_server.url)
            b = fleet.node("b", proxy.url + "/vss")
            await a.start()
            await b.start()
            await a.init(PASSWORD, mnemonic)
            await a.unlock(PASSWORD)
            await b.init(PASSWORD, mnemonic)
            stop = trio.Event()
            answers: list[int] = []
            acknowledged = 0
            during_clear = 0

            async def a_writes() -> None:
                nonlocal acknowledged
                for i in range(50_000):  # until the clear is done; bounded
                    if stop.is_set():
                        return
                    response = await a.put(f"k{i % 50}", b"A:%d" % i, "shared")
                    if response.status_code != 204:
                        return  # fenced
                    acknowledged += 1
                    await trio.sleep(rng.uniform(0.001, 0.004))  # the workload's pace

            async with trio.open_nursery() as nursery:
                nursery.start_soon(a_writes)
                await wait_for(lambda: acknowledged >= 50, timeout=30, what="A writing steadily")
                try:
                    before = acknowledged
                    response = await b.request("POST", "/vssclearfence", json={"password": PASSWORD})
                    during_clear = acknowledged - before
                    answers.append(response.status_code)
                finally:
                    stop.set()
            report.set(clear_fence_status=answers[0], a_writes_during_the_clear=during_clear)
            assert answers == [200], f"/vssclearfence answered {response.status_code}: {response.text}"
            await b.unlock(PASSWORD)
            await wait_for(lambda: _a_fenced_after_write(a), timeout=30, what="A fenced out")


async def _a_fenced_after_write(a) -> bool:
    await a.put("poke", b"A:poke", "shared")
    return (await a.nodeinfo())["state"] == "fenced"


async def _pending_is(node, wanted: int) -> bool:
    return await node.pending() == wanted


async def _state_is(node, state: str) -> bool:
    return (await node.nodeinfo())["state"] == state
