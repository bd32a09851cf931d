"""local-writer: the only writer of the node's SQLite database.

Owns: the writer connection and the next change sequence number.
Receives: WriteRequest (from the api), ClearMarkers (from the replicator), Flush.
Sends: KeysChanged to the replicator (never blocking), Rescan to the retry-queue when
that notification could not be delivered.
Guarantees: each caller is answered only after its change is durable (one fsync'd
transaction per group of queued writes: group commit), and every change to be
replicated carries a durable unsynced marker from that same transaction, so a full
channel or a crash never loses what is owed. It never waits on the network.
"""

from __future__ import annotations

import logging

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from actors.messages import ClearMarkers, Flush, KeysChanged, Rescan, WriteRequest
from node.errors import NodeLocked
from node.store import LocalStore

log = logging.getLogger(__name__)

MAX_GROUP = 1024  # writes per transaction; more queued ones form the next group


class LocalWriter:
    def __init__(
        self,
        store: LocalStore,
        inbox: ObjectReceiveStream,
        replicator: ObjectSendStream | None = None,
        retry_queue: ObjectSendStream | None = None,
    ) -> None:
        self._store = store
        self._inbox = inbox
        self._replicator = replicator
        self._retry_queue = retry_queue
        self._owe_rescan = False
        self.commits = 0  # transactions, for metrics

    @property
    def replicating(self) -> bool:
        return self._replicator is not None

    async def run(self) -> None:
        seq = await anyio.to_thread.run_sync(self._store.next_seq)
        async with self._inbox:
            try:
                while True:
                    group = [await self._inbox.receive()]
                    while len(group) < MAX_GROUP:
                        try:
                            group.append(self._inbox.receive_nowait())
                        except (anyio.WouldBlock, anyio.EndOfStream):
                            break
                    seq = await self._handle(group, seq)
            finally:
                self._refuse_queued()

    def _refuse_queued(self) -> None:
        """Stopping (lock): whoever still waits on a write hears that it was not made."""
        while True:
            try:
                message = self._inbox.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return
            if isinstance(message, (WriteRequest, Flush)):
                message.reply.fail(NodeLocked("the node was locked before this write was committed"))

    async def _handle(self, group: list, seq: int) -> int:
        writes = [m for m in group if isinstance(m, WriteRequest)]
        sent = [pair for m in group if isinstance(m, ClearMarkers) for pair in m.sent]
        if sent:  # first: cheap, and a marker re-set by a write below has a new seq anyway
            await anyio.to_thread.run_sync(self._store.clear_markers, sent)
        if writes:
            try:
                await anyio.to_thread.run_sync(
                    lambda: self._store.apply_writes(
                        [w.write for w in writes], seq, track_unsynced=self.replicating
                    )
                )
            except Exception as exc:  # the disk failed: every caller of this group hears it
                log.error("local commit failed: %s", exc)
                for request in writes:
                    request.reply.fail(exc)
            else:
                seq += len(writes)
                self.commits += 1
                for request in writes:
                    request.reply.set()
                self._notify([w.write.triple for w in writes])
        for message in group:
            if isinstance(message, Flush):
                message.reply.set()
        return seq

    def _notify(self, triples: list) -> None:
        """Tell the replicator without ever blocking the commit path."""
        if self._replicator is None:
            return
        try:
            self._replicator.send_nowait(KeysChanged(triples))
        except anyio.WouldBlock:
            self._owe_rescan = True  # the markers still hold these keys
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return
        if self._owe_rescan and self._retry_queue is not None:
            try:
                self._retry_queue.send_nowait(Rescan())
                self._owe_rescan = False
            except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass  # tried again after the next commit; the retry-queue also sweeps
