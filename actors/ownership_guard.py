"""ownership-guard: one writer per store. The only code that sends putObjects to VSS.

Owns: the fencing state of both stores, each store's `global_version` as the token
its next write must carry, and (KV) the version of the fence key; whether the node is
fenced out or diverged.
Receives: FencedPut (replicator for the KV store, wallet uploader for the wallet store).
Reads: the local key sets, only to say what each side has when a divergence is accepted.
Sends: putObjects; RecordStoreVersion (after an acquire, and after each wallet write:
the replicator records the KV store's own after each KV batch) and OweAll to the
local-writer; OweWallet to the wallet-keeper; one report (fenced, diverged) to the node.

The fence is the key `__rln_instance__` of the KV store, holding the owner's instance
id. Each store has a token, its `global_version`, which only ever grows: every write
carries it, and a takeover (clear the fence, acquire it) moves it, so the old owner's
next write is a CONFLICT. Every KV write also rewrites the fence at its version, so the
old owner stops at its first write after the clear, before the new owner has acquired;
and since acquiring also moves the token, a stale write cannot land on a new owner's
fence that happens to have the version it expects (a deleted key starts again at 1).
A takeover does not touch the wallet store, so acquiring writes a copy of the fence
there, conditional on that store's token: an old owner half-way through a wallet upload
cannot land one more piece afterwards.

On a CONFLICT the guard reads the store's global version FIRST and the fence SECOND:
a takeover landing between the two reads then shows up as another owner, never as our
fence beside the new owner's token. Then:
- our fence: the conflict is ours (a write that committed although its reply was lost,
  a delete of a key the server never had): take the new token, drop such deletes, retry;
- no fence and global version 0: the store is empty (wiped, or a new server at the same
  URL); no takeover ever produces that, as every store once held has a version above 0
  and neither a clear nor an acquire resets it: re-acquire, have everything owed again,
  say so loudly;
- anything else (another owner, or no fence above 0, a takeover under way): lost. Both
  streams stop, the node hears it once, and stays fenced until the operator acts.

Acquiring checks the token against the version this node recorded last: beyond what its
own re-acquire and one write whose reply was lost explain, another node has written the
store. That is a divergence: unlock refuses it (unless the operator accepts it), and
found later (the server was down at unlock) it stops both streams. Accepted
(`--vss-accept-divergence`), both find it alike: `log_accepted` says how many keys only
the server has and how many only this node has.

Each store has its own worker task, so a large wallet upload never stalls the KV stream;
each handles one write at a time, so a store has one write in flight.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from actors.messages import (
    FencedPut,
    GuardMessage,
    OweAll,
    OweWallet,
    RecordStoreVersion,
    StoreKind,
    WalletMessage,
    WriterMessage,
)
from actors.metrics import NodeMetrics
from actors.vss_port import VssPort
from node import errors, kv_keys, settings
from node.keys import NodeKeys
from node.store import LocalStore, Triple
from vss.errors import ConflictError, NoSuchKeyError, VssError, one_line
from vss.proto.vss_pb2 import KeyValue
from vss.wording import counted

log = logging.getLogger(__name__)

FENCE_KEY = "__rln_instance__"
INBOX = 64
_ACQUIRE_ATTEMPTS = 8
_PUT_ATTEMPTS = 4
RECORD_SETTING = {StoreKind.KV: settings.KV_STORE_VERSION, StoreKind.WALLET: settings.WALLET_STORE_VERSION}


class FenceLost(Exception):
    """Another node took the store over; this one must stop writing. The guard's
    finding; callers see errors.OwnershipLost and the node turns fenced."""


class DivergenceFound(Exception):
    """The store was written by another node since this one last saw it: the guard's
    finding, which unlock turns into the API's StoreDiverged (with key counts) and a
    running node into its diverged state."""

    def __init__(self, divergence: Divergence) -> None:
        super().__init__(divergence.describe())
        self.divergence = divergence


@dataclass(frozen=True)
class Divergence:
    kind: StoreKind
    recorded: int
    found: int

    def describe(self) -> str:
        return (
            f"the {self.kind.value} store's global_version is {self.found}, but this node last saw "
            f"{self.recorded}: another node wrote it meanwhile"
        )


@dataclass(frozen=True)
class Acquired:
    """What acquiring a store found."""

    kind: StoreKind
    token: int  # the store's global version after the acquire: the next write's token
    emptied: bool  # the store was empty (global version 0, no fence)
    divergence: Divergence | None  # set only when the operator accepted it


class LocalKeys(Protocol):
    """What the guard reads of the local store (a LocalStore is one)."""

    def key_sets(self) -> tuple[set[Triple], set[Triple]]:
        """(every local key, every owed key)."""
        ...


class StoreEvent:
    """A report of the guard to the node: the streams stopped for `reason`."""

    def __init__(self, reason: BaseException) -> None:
        self.reason = reason


def load_or_create_instance_id(store: LocalStore) -> str:
    """The id this data dir writes into the fence; made durable before first use, so a
    restart of the same data dir (even after a crash at any point) keeps ownership."""
    stored = store.get_setting(settings.INSTANCE_ID)
    if stored is not None:
        return stored.decode()
    instance_id = str(uuid.uuid4())
    store.set_settings({settings.INSTANCE_ID: instance_id.encode()})
    return instance_id


def recorded_versions(store: LocalStore) -> dict[StoreKind, int | None]:
    found: dict[StoreKind, int | None] = {}
    for kind, name in RECORD_SETTING.items():
        raw = store.get_setting(name)
        found[kind] = None if raw is None else int(raw.decode())
    return found


def takeover_hint(store_id: str) -> str:
    return (
        f"another node holds the VSS store {store_id}; if that node is gone for good, take over with "
        "POST /vssclearfence (while locked) or `vssnode clear-fence`, then unlock again"
    )


async def read_fence(port: VssPort, store_id: str) -> tuple[str | None, int]:
    """(owner's instance id or None, the fence key's version)."""
    try:
        item = await port.get_object(store_id, FENCE_KEY)
    except NoSuchKeyError:
        return None, 0
    return item.value.decode("utf-8", errors="replace"), item.version


async def clear_fence(port: VssPort, store_id: str) -> bool:
    """Delete the fence so another node can take over; returns whether one was there.

    An unconditional delete: it cannot be starved by an old owner that keeps writing
    (a compare-and-set would lose every race to it), and that owner's next write, which
    rewrites the fence at its old version, conflicts. It does not move the store's
    global version: the new owner's acquire does."""
    try:
        await port.put_objects(store_id, delete_items=[KeyValue(key=FENCE_KEY, version=-1)])
    except ConflictError:
        return False  # a delete that removes nothing: there was no fence
    log.warning("cleared the ownership fence of %s: another node may now take over", store_id)
    return True


async def key_counts(local: LocalKeys, port: VssPort, kv_store_id: str) -> tuple[int, int]:
    """(keys only the server has, keys only this node has) of the KV stream."""
    remote: set[Triple] = set()
    async for item in port.iter_key_versions(kv_store_id):
        if item.key == FENCE_KEY:
            continue
        try:
            remote.add(kv_keys.from_vss_key(item.key))
        except errors.InvalidKey:
            continue
    here, _ = await anyio.to_thread.run_sync(local.key_sets)
    return len(remote - here), len(here - remote)


async def log_accepted(divergence: Divergence, local: LocalKeys, port: VssPort, kv_store_id: str) -> None:
    """Say loudly that a divergence was accepted, and what each side has that the other
    lacks: at unlock and when the guard finds it later alike. A server that cannot be
    listed costs the counts, never the re-send that follows."""
    try:
        only_server, only_node = await key_counts(local, port, kv_store_id)
        counts = f"{counted(only_server, 'key')} only on the server (left alone), {counted(only_node, 'key')} only on this node"
    except VssError as exc:
        counts = f"the keys on each side could not be counted ({one_line(exc)})"
    log.warning("!" * 72)
    log.warning("--vss-accept-divergence: %s; the local state wins and is re-sent whole", divergence.describe())
    log.warning("%s", counts)
    log.warning("!" * 72)


class _Fence:
    """One store's fencing state; used by one task at a time (its worker, or acquire)."""

    def __init__(self, kind: StoreKind, store_id: str, recorded: int | None) -> None:
        self.kind = kind
        self.store_id = store_id
        self.token: int | None = None
        self.fence_version = 0  # KV only: the fence key's version as last written
        self.recorded = recorded


class OwnershipGuard:
    """Fences both stores of one node. `acquire()` at unlock, then `run()` as an actor."""

    def __init__(
        self,
        port: VssPort,
        keys: NodeKeys,
        instance_id: str,
        recorded: dict[StoreKind, int | None],
        local: LocalKeys,
        *,
        accept_divergence: bool,
        metrics: NodeMetrics,
    ) -> None:
        self._port = port
        self._local = local
        self._metrics = metrics
        self._me = instance_id
        self._accept_divergence = accept_divergence
        self._fences = {
            StoreKind.KV: _Fence(StoreKind.KV, keys.kv_store_id, recorded.get(StoreKind.KV)),
            StoreKind.WALLET: _Fence(StoreKind.WALLET, keys.wallet_store_id, recorded.get(StoreKind.WALLET)),
        }
        self._acquiring = anyio.Lock()
        self._stopped: BaseException | None = None  # FenceLost or DivergenceFound, for good

    # -- acquiring ---------------------------------------------------------------------------

    async def acquire(self, kind: StoreKind) -> Acquired:
        """Take one store (the KV store first: its fence is the authority). Raises
        OwnershipConflict, DivergenceFound (not accepted), or a VssError."""
        async with self._acquiring:
            return await self._take(kind)

    async def _take(self, kind: StoreKind) -> Acquired:
        if kind is StoreKind.WALLET and self._fences[StoreKind.KV].token is None:
            raise AssertionError("the wallet store is taken only while the KV store's fence is held")
        fence = self._fences[kind]
        acquired = await self._acquire(fence)
        fence.recorded = fence.token
        return acquired

    async def _acquire(self, fence: _Fence) -> Acquired:
        for _ in range(_ACQUIRE_ATTEMPTS):
            version = await self._port.get_global_version(fence.store_id)  # first: see the module docstring
            owner, fence_version = await read_fence(self._port, fence.store_id)
            if fence.kind is StoreKind.KV and owner is not None and owner != self._me:
                raise errors.OwnershipConflict(takeover_hint(fence.store_id))
            if fence.kind is StoreKind.KV and owner == self._me:
                fence.token, fence.fence_version = version, fence_version
                return Acquired(fence.kind, version, emptied=False, divergence=None)
            # Only a takeover replaces our fence (or its wallet copy): while it is ours, no
            # other node can have written the store.
            emptied = version == 0 and owner is None
            divergence = None if emptied or owner == self._me else self._divergence(fence, version)
            if divergence is not None and not self._accept_divergence:
                raise DivergenceFound(divergence)
            # KV: create the fence. Wallet: write our copy over whatever is there. Either
            # way conditional on the token, which the write moves.
            item = KeyValue(key=FENCE_KEY, version=fence_version if owner is not None else 0, value=self._me.encode())
            try:
                await self._port.put_objects(fence.store_id, [item], global_version=version)
            except ConflictError:
                continue  # someone moved first, or our own write landed unseen: look again
            fence.token, fence.fence_version = version + 1, item.version + 1
            log.info("holding the %s store %s (global version %d)", fence.kind.value, fence.store_id, fence.token)
            return Acquired(fence.kind, fence.token, emptied=emptied, divergence=divergence)
        raise errors.OwnershipConflict(
            f"could not take the {fence.kind.value} store {fence.store_id}: it kept changing under this node"
        )

    @staticmethod
    def _divergence(fence: _Fence, version: int) -> Divergence | None:
        """Our own re-acquire and one write whose reply was lost explain `recorded` or
        `recorded + 1`; anything else was written by another node."""
        if fence.recorded is None or version in (fence.recorded, fence.recorded + 1):
            return None
        return Divergence(fence.kind, fence.recorded, version)

    # -- the actor ------------------------------------------------------------------------------

    async def run(
        self,
        inbox: MemoryObjectReceiveStream[GuardMessage],
        writer: MemoryObjectSendStream[WriterMessage],
        wallet_keeper: MemoryObjectSendStream[WalletMessage],
        report: Callable[[StoreEvent], None],
    ) -> None:
        """Serve fenced puts until cancelled (lock); never returns on its own."""
        self._writer, self._wallet_keeper, self._report = writer, wallet_keeper, report
        queues = {kind: anyio.create_memory_object_stream[FencedPut](INBOX) for kind in StoreKind}
        async with anyio.create_task_group() as tg, inbox:
            for kind, (_, receive) in queues.items():
                tg.start_soon(self._serve_store, self._fences[kind], receive)
            async for message in inbox:
                await queues[message.kind][0].send(message)

    async def _serve_store(self, fence: _Fence, puts: MemoryObjectReceiveStream[FencedPut]) -> None:
        async with puts:
            async for put in puts:
                if self._stopped is not None:
                    put.reply.fail(self._stopped)
                    continue
                try:
                    put.reply.set(await self._fenced_put(fence, put.items, put.deletes))
                except (FenceLost, DivergenceFound) as exc:
                    self._stop(exc)
                    put.reply.fail(exc)
                except Exception as exc:  # a VssError: the sender decides what it means
                    put.reply.fail(exc)

    async def _fenced_put(self, fence: _Fence, items: Sequence[KeyValue], deletes: Sequence[KeyValue]) -> int:
        if fence.token is None:
            await self._acquire_later()
        for _ in range(_PUT_ATTEMPTS):
            assert fence.token is not None
            written = list(items)
            if fence.kind is StoreKind.KV:
                written.append(KeyValue(key=FENCE_KEY, version=fence.fence_version, value=self._me.encode()))
            try:
                await self._port.put_objects(fence.store_id, written, deletes, global_version=fence.token)
            except ConflictError:
                deletes = await self._after_conflict(fence, deletes)
                if fence.kind is StoreKind.WALLET:
                    raise  # wallet items are conditional on key versions: the uploader re-reads them
                continue
            fence.token += 1
            fence.fence_version += 1
            if fence.kind is StoreKind.WALLET:
                await self._record(fence)
            # The KV store's version is recorded by the replicator, in the same
            # transaction as the markers this write clears (ClearMarkers), before its
            # next batch: the KV write path pays for one bookkeeping commit, not two.
            return fence.token
        raise ConflictError(f"writes to the {fence.kind.value} store kept conflicting although this node holds it")

    async def _after_conflict(self, fence: _Fence, deletes: Sequence[KeyValue]) -> Sequence[KeyValue]:
        """Why did a write conflict? Adopt our own token, refill an emptied store, or lose."""
        version = await self._port.get_global_version(fence.store_id)  # first
        owner, fence_version = await read_fence(self._port, fence.store_id)
        if owner == self._me:
            fence.token = version
            if fence.kind is StoreKind.KV:
                fence.fence_version = fence_version
            return await self._existing(fence.store_id, deletes)
        if owner is None and version == 0:
            await self._refill(fence)
            return await self._existing(fence.store_id, deletes)
        shown = "no fence" if owner is None else "another node's fence"
        log.error("the %s store %s now holds %s: this node lost ownership and stops writing", fence.kind.value,
                  fence.store_id, shown)
        raise FenceLost(f"the {fence.kind.value} store was taken over by another node")

    async def _refill(self, fence: _Fence) -> None:
        """The server lost the store: take it again and owe it everything. A server that
        lost one store has usually lost both: the other is looked at too, so a wipe found
        by either stream refills both (or one wallet write would leave the KV store
        empty on the server until the next KV write)."""
        async with self._acquiring:
            await self._take_again(fence)
            other = self._fences[StoreKind.WALLET if fence.kind is StoreKind.KV else StoreKind.KV]
            if other.token is not None and await self._is_empty(other):
                await self._take_again(other)

    async def _is_empty(self, fence: _Fence) -> bool:
        version = await self._port.get_global_version(fence.store_id)  # first, as always
        owner, _ = await read_fence(self._port, fence.store_id)
        return version == 0 and owner is None

    async def _take_again(self, fence: _Fence) -> None:
        log.error("!" * 72)
        log.error("THE VSS SERVER LOST THE %s STORE %s (empty, no fence): taking it again and re-sending everything",
                  fence.kind.value.upper(), fence.store_id)
        log.error("!" * 72)
        fence.token = None
        fence.recorded = None
        try:
            await self._acquire(fence)
        except errors.OwnershipConflict as exc:  # another node took the empty store first
            raise FenceLost(str(exc)) from None
        await self._record(fence)
        self._metrics.store_resets.inc()
        if fence.kind is StoreKind.KV:
            await self._writer.send(OweAll())
        else:
            await self._wallet_keeper.send(OweWallet())

    async def _acquire_later(self) -> None:
        """The server was down at unlock: acquire both stores now, with the same checks."""
        async with self._acquiring:
            for kind in (StoreKind.KV, StoreKind.WALLET):
                fence = self._fences[kind]
                if fence.token is not None:
                    continue
                try:
                    acquired = await self._take(kind)
                except errors.OwnershipConflict as exc:
                    raise FenceLost(str(exc)) from None
                if acquired.divergence is not None:  # before the record: a node stopped here finds it again
                    await log_accepted(acquired.divergence, self._local, self._port, self._fences[StoreKind.KV].store_id)
                elif acquired.emptied:
                    log.warning("the %s store was empty: everything local is owed to it again", kind.value)
                await self._record(fence)
                if acquired.emptied or acquired.divergence is not None:
                    if kind is StoreKind.KV:
                        await self._writer.send(OweAll())
                    await self._wallet_keeper.send(OweWallet())

    async def _record(self, fence: _Fence) -> None:
        """Make the new token durable before the next write of this store goes out."""
        assert fence.token is not None
        request = RecordStoreVersion(fence.kind, fence.token)
        await self._writer.send(request)
        await request.reply.wait()
        fence.recorded = fence.token

    async def _existing(self, store_id: str, deletes: Sequence[KeyValue]) -> list[KeyValue]:
        """Deletes of keys the server does not have would conflict forever: drop them."""
        kept = []
        for item in deletes:
            try:
                await self._port.get_object(store_id, item.key)
            except NoSuchKeyError:
                continue
            kept.append(item)
        return kept

    def _stop(self, reason: BaseException) -> None:
        if self._stopped is not None:
            return
        self._stopped = reason
        if not isinstance(reason, FenceLost):
            log.error("VSS replication stopped: %s; lock the node and decide (see --vss-accept-divergence)", reason)
        self._report(StoreEvent(reason))
