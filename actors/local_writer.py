"""local-writer: the only writer of the node's SQLite database while the node runs.

Owns: the writer connection and the next change sequence number.
Receives: WriteRequest (api), ClearMarkers (replicator), RecordStoreVersion and OweAll
(ownership-guard), OweKeys (auditor), Flush (session).
Sends: KeysChanged to the replicator (never blocking), Rescan to the retry-queue when
that notification could not be delivered or keys became owed in bulk.
Guarantees: each caller is answered only after its change is durable (one fsync'd
transaction per group of queued writes: group commit), and every change to be
replicated carries a durable unsynced marker from that same transaction, so a full
channel or a crash never loses what is owed. Bookkeeping (cleared markers, the stores'
global versions) rides in the writes' transaction when the group has writes, else in
one cheaper transaction without an fsync of its own. Whatever happens to a group
taken from the inbox (a disk error, the node locking mid-commit), every caller in it is
answered. It never waits on the network.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from actors.messages import (
    ClearMarkers,
    Flush,
    KeysChanged,
    OweAll,
    OweKeys,
    RecordStoreVersion,
    ReplicatorMessage,
    Rescan,
    RetryMessage,
    StoreKind,
    WriteRequest,
    WriterMessage,
)
from actors.metrics import NodeMetrics
from actors.ownership_guard import RECORD_SETTING
from node.errors import NodeLocked
from node.store import LocalStore, Triple
from vss.wording import counted

log = logging.getLogger(__name__)

MAX_GROUP = 1024  # messages per group; more queued ones form the next group


class LocalWriter:
    def __init__(
        self,
        store: LocalStore,
        inbox: MemoryObjectReceiveStream[WriterMessage],
        metrics: NodeMetrics,
        replicator: MemoryObjectSendStream[ReplicatorMessage] | None = None,
        retry_queue: MemoryObjectSendStream[RetryMessage] | None = None,
    ) -> None:
        self._store = store
        self._inbox = inbox
        self._metrics = metrics
        self._replicator = replicator
        self._retry_queue = retry_queue
        self._owe_rescan = False

    @property
    def replicating(self) -> bool:
        return self._replicator is not None

    async def run(self) -> None:
        seq = await anyio.to_thread.run_sync(self._store.next_seq)
        async with self._inbox:
            try:
                while True:
                    group = [await self._inbox.receive()]
                    self._take_queued(group)
                    try:
                        seq = await self._handle(group, seq)
                    finally:
                        _refuse(group)  # whoever this group did not answer (cancelled) hears it
            finally:
                self._refuse_queued()

    def _take_queued(self, group: list[WriterMessage]) -> None:
        while len(group) < MAX_GROUP:
            try:
                group.append(self._inbox.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream):
                return

    def _refuse_queued(self) -> None:
        """Stopping (lock): whoever still waits on a queued message hears that it was not done."""
        while True:
            try:
                message = self._inbox.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return
            _refuse([message])

    async def _handle(self, group: Sequence[WriterMessage], seq: int) -> int:
        writes = [m for m in group if isinstance(m, WriteRequest)]
        cleared, versions = _bookkeeping_of(group)
        if writes:
            seq = await self._commit(writes, seq, cleared, versions)
        elif cleared or versions:
            await anyio.to_thread.run_sync(self._store.apply_bookkeeping, cleared, versions)
        for message in group:
            if isinstance(message, (ClearMarkers, RecordStoreVersion)):
                message.reply.set(None)
        if any(isinstance(m, OweAll) for m in group):
            seq = await self._owe_all(seq)
        owed = [t for m in group if isinstance(m, OweKeys) for t in m.triples]
        if owed:
            seq = await self._owe_keys(owed, seq)
        for message in group:
            if isinstance(message, Flush):
                message.reply.set(None)
        return seq

    async def _commit(
        self, writes: list[WriteRequest], seq: int, cleared: list[tuple[Triple, int]], versions: dict[str, bytes]
    ) -> int:
        changes = [w.change for w in writes]
        try:
            await anyio.to_thread.run_sync(
                lambda: self._store.apply_writes(
                    changes, seq, track_unsynced=self.replicating, cleared=cleared, settings=versions
                )
            )
        except Exception as exc:  # the disk failed: every caller of this group hears it
            log.error("local commit failed: %s", exc)
            for request in writes:
                request.reply.fail(exc)
            if cleared or versions:  # the bookkeeping does not depend on the writes: on its own
                await anyio.to_thread.run_sync(self._store.apply_bookkeeping, cleared, versions)
            return seq
        self._metrics.local_commits.inc()
        for i, request in enumerate(writes):
            request.reply.set(seq + i)
        self._notify([w.change.triple for w in writes])
        return seq + len(writes)

    async def _owe_all(self, seq: int) -> int:
        owed = await anyio.to_thread.run_sync(self._store.mark_all_unsynced, seq)
        log.warning("%s owed to the VSS server again", counted(owed, "key"))
        self._owe_rescan = True
        self._ask_rescan()
        return int(await anyio.to_thread.run_sync(self._store.next_seq))

    async def _owe_keys(self, triples: list[Triple], seq: int) -> int:
        added = await anyio.to_thread.run_sync(self._store.mark_unsynced, triples, seq)
        if added:
            self._notify(triples)
        return int(await anyio.to_thread.run_sync(self._store.next_seq))

    def _notify(self, triples: list[Triple]) -> None:
        """Tell the replicator without ever blocking the commit path."""
        if self._replicator is None:
            return
        try:
            self._replicator.send_nowait(KeysChanged(triples))
        except anyio.WouldBlock:
            self._owe_rescan = True  # the markers still hold these keys
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return
        self._ask_rescan()

    def _ask_rescan(self) -> None:
        if not self._owe_rescan or self._retry_queue is None:
            return
        try:
            self._retry_queue.send_nowait(Rescan())
            self._owe_rescan = False
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # tried again after the next commit; the retry-queue also sweeps


def _bookkeeping_of(group: Sequence[WriterMessage]) -> tuple[list[tuple[Triple, int]], dict[str, bytes]]:
    """The markers to clear and the store versions to record, of one group."""
    cleared: list[tuple[Triple, int]] = []
    versions: dict[str, bytes] = {}
    for message in group:  # in order: a later version of a store replaces an earlier one
        if isinstance(message, ClearMarkers):
            cleared.extend(message.sent)
            versions[RECORD_SETTING[StoreKind.KV]] = str(message.store_version).encode()
        elif isinstance(message, RecordStoreVersion):
            versions[RECORD_SETTING[message.kind]] = str(message.version).encode()
    return cleared, versions


def _refuse(messages: Sequence[WriterMessage]) -> None:
    for message in messages:
        if isinstance(message, (WriteRequest, Flush, RecordStoreVersion, ClearMarkers)):
            message.reply.fail(NodeLocked("the node was locked before this write was committed"))
