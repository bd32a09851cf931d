"""The ownership-guard alone, against the in-memory server, on trio's MockClock.

Each test scripts one fencing situation exactly: a takeover landing between the two
reads that follow a conflict, an old owner's wallet write after a takeover, a server
that lost its data, a reply lost after a commit, a store another node wrote meanwhile.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import anyio
import pytest

from actors.messages import StoreKind
from actors.ownership_guard import FENCE_KEY, DivergenceFound, FenceLost, clear_fence
from fakevss import FakePort, FakeVssServer
from guardutil import GuardUnderTest, item, keys
from node import errors
from vss.errors import ConflictError, VssUnavailableError
from vss.proto.vss_pb2 import KeyValue

KV, WALLET = StoreKind.KV, StoreKind.WALLET


def fence_owner(server: FakeVssServer) -> bytes | None:
    row = server.store(keys().kv_store_id).rows.get(FENCE_KEY)
    return None if row is None else row.value


class TakeoverBetweenReads(FakePort):
    """Runs a scripted takeover right before the second read that follows a conflict."""

    def __init__(self, server: FakeVssServer) -> None:
        super().__init__(server)
        self._takeover: Callable[[], Awaitable[None]] | None = None
        self._reads_since_conflict: int | None = None

    def arm(self, takeover: Callable[[], Awaitable[None]]) -> None:
        self._takeover = takeover

    async def put_objects(self, store_id: str, transaction_items: Sequence[KeyValue] = (),
                          delete_items: Sequence[KeyValue] = (), global_version: int | None = None) -> None:
        try:
            await super().put_objects(store_id, transaction_items, delete_items, global_version)
        except ConflictError:
            if self._takeover is not None:
                self._reads_since_conflict = 0
            raise

    async def _enter(self, op: str) -> None:
        if self._reads_since_conflict is not None and op in ("get_object", "get_global_version"):
            self._reads_since_conflict += 1
            if self._reads_since_conflict == 2 and self._takeover is not None:
                takeover, self._takeover, self._reads_since_conflict = self._takeover, None, None
                await takeover()
        await super()._enter(op)


async def take_both(guard: GuardUnderTest) -> None:
    await guard.guard.acquire(KV)
    await guard.guard.acquire(WALLET)


@pytest.mark.trio
async def test_a_takeover_between_the_two_reads_after_a_conflict_fences_the_old_owner(autojump_clock):
    """Fault: A's first batch conflicts on its own (it deletes a key the server never
    had); node B's takeover (clear + acquire) lands between A's two reads. Expected: A
    stops writing (FenceLost) and the fence stays B's. Reading the fence before the
    global version let A adopt B's token beside its own fence version, equal to B's
    fresh fence, and take the store back."""
    server = FakeVssServer()
    a = GuardUnderTest(TakeoverBetweenReads(server), "node-a")
    b = GuardUnderTest(server.port(), "node-b")
    await take_both(a)

    async def takeover() -> None:
        assert await clear_fence(b.port, keys().kv_store_id)
        await b.guard.acquire(KV)

    async with anyio.create_task_group() as tg:
        a.start(tg)
        b.start(tg)
        a.port.arm(takeover)  # type: ignore[attr-defined]
        with pytest.raises(FenceLost):
            await a.put(KV, [item("_/_/from-a")], deletes=[KeyValue(key="_/_/never-there", version=-1)])
        assert fence_owner(server) == b"node-b"
        assert "_/_/from-a" not in server.values(keys().kv_store_id)
        await b.put(KV, [item("_/_/from-b")])  # the new owner writes on
        assert [type(event.reason) for event in a.events] == [FenceLost]
        with pytest.raises(FenceLost):  # and the old one stays stopped
            await a.put(KV, [item("_/_/again")])
        tg.cancel_scope.cancel()


@pytest.mark.trio
async def test_the_old_owner_lands_no_wallet_piece_after_a_takeover(autojump_clock):
    """Fault: node B takes the store over while node A is half-way through a wallet
    upload. Expected: A's next wallet write conflicts and A stops; B's copy of the fence
    is in the wallet store."""
    server = FakeVssServer()
    a = GuardUnderTest(server.port(), "node-a")
    b = GuardUnderTest(server.port(), "node-b")
    await take_both(a)
    async with anyio.create_task_group() as tg:
        a.start(tg)
        await a.put(WALLET, [KeyValue(key="backup/chunk/0", version=0, value=b"piece 0")])
        assert await clear_fence(b.port, keys().kv_store_id)
        await take_both(b)
        with pytest.raises(FenceLost):
            await a.put(WALLET, [KeyValue(key="backup/chunk/1", version=0, value=b"piece 1")])
        wallet = server.values(keys().wallet_store_id)
        assert "backup/chunk/1" not in wallet and wallet[FENCE_KEY] == b"node-b"
        tg.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_wiped_server_is_taken_again_and_everything_owed(autojump_clock):
    """Fault: the server loses all its data while the node runs. Expected: the next
    write re-takes the empty store (no takeover can produce an empty one), lands, finds
    the wallet store empty too and takes it again, asks for every local key and the
    wallet to be owed again, and counts both; not fenced."""
    server = FakeVssServer()
    a = GuardUnderTest(server.port(), "node-a")
    await take_both(a)
    async with anyio.create_task_group() as tg:
        a.start(tg)
        await a.put(KV, [item("_/_/k1")])
        server.wipe()
        token = await a.put(KV, [item("_/_/k2")])
        assert token == 2  # acquire (0 -> 1) and this write (1 -> 2) on the new store
        assert fence_owner(server) == b"node-a" and "_/_/k2" in server.values(keys().kv_store_id)
        assert a.owe_all == 1 and a.owe_wallet == 1 and a.events == []
        assert a.metrics.value("store_resets_total") == 2
        assert server.values(keys().wallet_store_id)[FENCE_KEY] == b"node-a"
        assert (KV, 1) in a.records  # the re-acquire is recorded before the write goes (the write's own: ClearMarkers)
        tg.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_reply_lost_after_its_commit_is_adopted_not_taken_for_a_takeover(autojump_clock):
    """Fault: a KV write commits but its reply is lost. Expected: the retry conflicts,
    the guard finds its own fence, adopts the new token and writes again; nothing stops."""
    server = FakeVssServer()
    port = FakePort(server)
    a = GuardUnderTest(port, "node-a")
    await take_both(a)
    original = server.apply_put

    def commit_then_lose(*args: object) -> None:
        original(*args)  # type: ignore[arg-type]
        server.apply_put = original  # type: ignore[method-assign]
        raise VssUnavailableError("injected: reply lost after commit")

    async with anyio.create_task_group() as tg:
        a.start(tg)
        server.apply_put = commit_then_lose  # type: ignore[method-assign]
        with pytest.raises(VssUnavailableError):
            await a.put(KV, [item("_/_/k", b"1")])
        assert await a.put(KV, [item("_/_/k", b"2")]) == 3
        assert server.values(keys().kv_store_id)["_/_/k"] == b"2" and a.events == []
        tg.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_store_written_by_another_node_is_refused_at_acquire(autojump_clock):
    """Fault: node A last saw global version 1; meanwhile node B took over, wrote, and
    someone cleared B's fence. Expected: A's acquire refuses (DivergenceFound) and
    writes no fence; with the divergence accepted it acquires and says so."""
    server = FakeVssServer()
    b = GuardUnderTest(server.port(), "node-b")
    await take_both(b)
    async with anyio.create_task_group() as tg:
        b.start(tg)
        for i in range(3):
            await b.put(KV, [item(f"_/_/b{i}")])
        tg.cancel_scope.cancel()
    assert await clear_fence(b.port, keys().kv_store_id)
    stale = GuardUnderTest(server.port(), "node-a", recorded={KV: 1, WALLET: 1})
    with pytest.raises(DivergenceFound) as refused:
        await stale.guard.acquire(KV)
    assert refused.value.divergence.recorded == 1 and refused.value.divergence.found == 4
    assert fence_owner(server) is None
    accepting = GuardUnderTest(server.port(), "node-a", recorded={KV: 1, WALLET: 1}, accept_divergence=True)
    acquired = await accepting.guard.acquire(KV)
    assert acquired.divergence is not None and fence_owner(server) == b"node-a"


@pytest.mark.trio
async def test_our_own_reacquire_and_one_lost_reply_are_not_a_divergence(autojump_clock):
    server = FakeVssServer()
    a = GuardUnderTest(server.port(), "node-a")
    await take_both(a)  # KV global version 1
    async with anyio.create_task_group() as tg:
        a.start(tg)
        await a.put(KV, [item("_/_/k")])  # 2, recorded
        tg.cancel_scope.cancel()
    server.apply_put(keys().kv_store_id, [item("_/_/lost")], [], 2)  # a write whose reply never came: 3
    assert await clear_fence(a.port, keys().kv_store_id)
    again = GuardUnderTest(server.port(), "node-a", recorded={KV: 2, WALLET: 1})
    assert (await again.guard.acquire(KV)).divergence is None


@pytest.mark.trio
async def test_a_server_down_at_unlock_is_taken_at_the_first_write(autojump_clock):
    """Fault: the server is down while the node unlocks. Expected: the first write takes
    both stores (recording their versions) and lands."""
    server = FakeVssServer()
    port = FakePort(server)
    a = GuardUnderTest(port, "node-a")
    port.down = True
    with pytest.raises(VssUnavailableError):
        await a.guard.acquire(KV)
    port.down = False
    async with anyio.create_task_group() as tg:
        a.start(tg)
        assert await a.put(KV, [item("_/_/k")]) == 2
        assert fence_owner(server) == b"node-a"
        assert server.values(keys().wallet_store_id)[FENCE_KEY] == b"node-a"
        assert (KV, 1) in a.records and (WALLET, 1) in a.records
        tg.cancel_scope.cancel()


@pytest.mark.trio
async def test_another_nodes_fence_found_later_is_a_lost_store(autojump_clock):
    server = FakeVssServer()
    b = GuardUnderTest(server.port(), "node-b")
    await b.guard.acquire(KV)
    a = GuardUnderTest(server.port(), "node-a")
    with pytest.raises(errors.OwnershipConflict):
        await a.guard.acquire(KV)
    async with anyio.create_task_group() as tg:
        a.start(tg)
        with pytest.raises(FenceLost):
            await a.put(KV, [item("_/_/k")])
        assert [type(e.reason) for e in a.events] == [FenceLost]
        tg.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_divergence_found_later_stops_both_streams(autojump_clock):
    server = FakeVssServer()
    b = GuardUnderTest(server.port(), "node-b")
    await take_both(b)
    async with anyio.create_task_group() as tg:
        b.start(tg)
        await b.put(KV, [item("_/_/b1")])
        await b.put(KV, [item("_/_/b2")])  # two writes: more than one lost reply explains
        tg.cancel_scope.cancel()
    assert await clear_fence(b.port, keys().kv_store_id)
    a = GuardUnderTest(server.port(), "node-a", recorded={KV: 1, WALLET: 1})
    async with anyio.create_task_group() as tg:
        a.start(tg)
        with pytest.raises(DivergenceFound):
            await a.put(KV, [item("_/_/a")])
        with pytest.raises(DivergenceFound):
            await a.put(WALLET, [item("backup/x")])
        assert [type(e.reason) for e in a.events] == [DivergenceFound]
        assert fence_owner(server) is None and "_/_/a" not in server.values(keys().kv_store_id)
        tg.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_wipe_found_by_the_wallet_stream_refills_the_kv_store_too(autojump_clock):
    """Fault: the server loses its data and the first write after it is a wallet write.
    Expected: the KV store is found empty too and owed again at once (before, only the
    wallet was, and the KV keys waited for the next KV write or the 6-hour audit)."""
    server = FakeVssServer()
    a = GuardUnderTest(server.port(), "node-a")
    await take_both(a)
    async with anyio.create_task_group() as tg:
        a.start(tg)
        await a.put(KV, [item("_/_/k")])
        server.wipe()
        with pytest.raises(ConflictError):  # the uploader re-reads its versions and tries again
            await a.put(WALLET, [KeyValue(key="backup/manifest", version=3, value=b"m")])
        with anyio.fail_after(10):
            while a.owe_all == 0:  # the stand-in writer takes it in its own time
                await anyio.sleep(0.01)
        assert a.owe_all == 1 and a.owe_wallet == 1 and a.metrics.value("store_resets_total") == 2
        assert fence_owner(server) == b"node-a"
        await a.put(KV, [item("_/_/k")])  # and the KV stream writes on with its new token
        tg.cancel_scope.cancel()


def store_at(server: FakeVssServer, store_id: str, version: int) -> None:
    """Bring a store with no fence to this global version (as another node's writes
    would, its fence since cleared)."""
    for token in range(server.store(store_id).global_version, version):
        server.apply_put(store_id, [item(f"_/_/other{token}")], [], token)


@pytest.mark.trio
@pytest.mark.parametrize("found", [4, 3, 1])
async def test_a_store_below_the_record_but_above_0_has_diverged(autojump_clock, found):
    """Fault: this node last saw the KV store at global version 5, and finds it lower
    (above 0) with no fence: not its own store any more (a store's version only grows;
    another node's store, or a server restored from an old copy). Expected: refused as
    a divergence, and no fence is written."""
    server = FakeVssServer()
    store_at(server, keys().kv_store_id, found)
    a = GuardUnderTest(server.port(), "node-a", recorded={KV: 5, WALLET: 1})
    with pytest.raises(DivergenceFound) as refused:
        await a.guard.acquire(KV)
    assert (refused.value.divergence.recorded, refused.value.divergence.found) == (5, found)
    assert fence_owner(server) is None and server.store(keys().kv_store_id).global_version == found


@pytest.mark.trio
async def test_a_store_at_0_with_no_fence_is_emptied_not_diverged(autojump_clock):
    """The same node finding the store at version 0 with no fence: the server lost its
    data (no takeover produces that). Expected: acquired and reported emptied, so it is
    refilled, not refused as a divergence."""
    server = FakeVssServer()
    a = GuardUnderTest(server.port(), "node-a", recorded={KV: 5, WALLET: 1})
    acquired = await a.guard.acquire(KV)
    assert acquired.emptied and acquired.divergence is None and acquired.token == 1
    assert fence_owner(server) == b"node-a"


@pytest.mark.trio
async def test_a_wallet_write_in_flight_never_holds_up_a_kv_write(autojump_clock):
    """A large wallet upload takes long on the wire. Expected: while a wallet putObjects
    is held in flight, a KV write is served and lands (each store has its own worker);
    the wallet write then lands too."""
    server = FakeVssServer()
    port = FakePort(server)
    a = GuardUnderTest(port, "node-a")
    await take_both(a)
    async with anyio.create_task_group() as tg:
        a.start(tg)
        held = port.pause_before("put_objects")
        wallet_done = anyio.Event()

        async def wallet_write() -> None:
            await a.put(WALLET, [KeyValue(key="backup/chunk/0", version=0, value=b"a large piece")])
            wallet_done.set()

        tg.start_soon(wallet_write)
        with anyio.fail_after(10):
            await held.reached.wait()
        with anyio.fail_after(10):
            await a.put(KV, [item("_/_/k")])
        assert "_/_/k" in server.values(keys().kv_store_id) and not wallet_done.is_set()
        held.release()
        with anyio.fail_after(10):
            await wallet_done.wait()
        assert "backup/chunk/0" in server.values(keys().wallet_store_id)
        tg.cancel_scope.cancel()


async def diverged_while_down(server: FakeVssServer, local_keys: Sequence[str]) -> GuardUnderTest:
    """Node B takes the store over and writes `_/_/b0`, `_/_/b1` and `_/_/shared` (more
    than one lost reply explains), its fence is then cleared; node A (which last saw
    version 1 and holds `local_keys`) accepts divergences and could not reach the
    server at unlock. Returns A, not started."""
    b = GuardUnderTest(server.port(), "node-b")
    await take_both(b)
    async with anyio.create_task_group() as tg:
        b.start(tg)
        for key in ("b0", "b1", "shared"):
            await b.put(KV, [item(f"_/_/{key}")])
        tg.cancel_scope.cancel()
    assert await clear_fence(b.port, keys().kv_store_id)
    port = FakePort(server)
    a = GuardUnderTest(port, "node-a", recorded={KV: 1, WALLET: 1}, accept_divergence=True, local_keys=local_keys)
    port.down = True
    with pytest.raises(VssUnavailableError):
        await a.guard.acquire(KV)
    port.down = False
    return a


async def owed_again(guard: GuardUnderTest) -> None:
    with anyio.fail_after(10):
        while guard.owe_all == 0 or guard.owe_wallet == 0:  # the stand-ins take them in their own time
            await anyio.sleep(0.01)


@pytest.mark.trio
async def test_an_accepted_divergence_found_later_logs_the_key_counts(autojump_clock, caplog):
    """Fault: the server was down at unlock, and the store another node wrote meanwhile
    is found at the first write; the operator accepted divergences. Expected: as at
    unlock, the log says how many keys only the server has and how many only this node
    has, and everything local is owed again."""
    server = FakeVssServer()
    a = await diverged_while_down(server, ["shared", "a-only"])
    async with anyio.create_task_group() as tg:
        a.start(tg)
        await a.put(KV, [item("_/_/a-only")])
        await owed_again(a)
        tg.cancel_scope.cancel()
    assert "--vss-accept-divergence: the kv store's global_version is 4, but this node last saw 1" in caplog.text
    assert "2 keys only on the server (left alone), 1 key only on this node" in caplog.text, caplog.text
    assert fence_owner(server) == b"node-a" and a.events == []


@pytest.mark.trio
async def test_keys_that_cannot_be_counted_never_cost_the_resend(autojump_clock, caplog):
    """Fault: as above, but listing the store to count the keys fails. Expected: the log
    says the counts are unknown, and everything local is owed again all the same."""
    server = FakeVssServer()
    a = await diverged_while_down(server, ["a-only"])
    a.port.fail_next("list_key_versions", VssUnavailableError("injected: the listing failed"))
    async with anyio.create_task_group() as tg:
        a.start(tg)
        await a.put(KV, [item("_/_/a-only")])
        await owed_again(a)
        tg.cancel_scope.cancel()
    assert "the keys on each side could not be counted (VssUnavailableError: injected: the listing failed)" in caplog.text
