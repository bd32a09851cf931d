"""replicator: carries committed KV changes to the VSS server, encrypted and batched.

Owns: the keys it is about to send, whether the server looked healthy at the last
attempt, the keys the server refused (with why), the callers waiting for a key to land
(durability=remote), and the figures it publishes (`ReplicationStatus`).
Receives: KeysChanged (local-writer), RetryBatch (retry-queue), SendNow (api).
Sends: FencedPut to the ownership-guard; ClearMarkers (with the store's new version,
waited for) to the local-writer; Deferred, Succeeded and ReplicationStopped to the
retry-queue.

Guarantees:
- one batch in flight at a time; each key's value is read from the local store right
  before it is sent, so the newest committed value always wins and an older value can
  never land after a newer one;
- a batch that fails is handed to the retry-queue whole, and while the server is
  failing new keys go straight there instead of hammering it;
- one value the server refuses (413 from its body limit or a proxy's, or invalid)
  blocks nothing else: a refused batch is split until the refused keys stand alone;
  those stay owed (their markers stay), are retried slowly and at once when they
  change, and are reported;
- a SendNow is answered once that change (or a newer one) is on the server: its key
  either has no marker any more when the batch reads it (it landed meanwhile) or is in
  a batch that lands; a refusal answers it at once;
- once the store is fenced or diverged it sends nothing more, answers every waiter,
  and goes on draining its inbox so no sender ever finds it gone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from actors.messages import (
    ClearMarkers,
    Deferred,
    FencedPut,
    GuardMessage,
    ReplicationStopped,
    ReplicatorMessage,
    Reply,
    RetryBatch,
    RetryMessage,
    SendNow,
    StoreKind,
    Succeeded,
    WriterMessage,
)
from actors.metrics import NodeMetrics
from actors.ownership_guard import DivergenceFound, FenceLost
from node import crypto, errors, kv_keys
from node.store import LocalStore, Owed, Triple
from vss.errors import InvalidRequestError, RequestTooLargeError, VssError, one_line
from vss.proto.vss_pb2 import KeyValue
from vss.wording import counted

log = logging.getLogger(__name__)

MAX_WAITERS = 4096  # durability=remote callers held at once before abandoned ones are dropped
MAX_BATCH_ITEMS = 500  # the protocol allows 1000 per putObjects
BATCH_WINDOW_S = 0.02  # how long a first pending key waits for company
MAX_BATCH_BYTES = 8 * 1024 * 1024  # one larger value still goes alone
MIN_BATCH_BYTES = 64 * 1024  # what a refused batch can shrink the budget to
REJECTED_RETRY_S = 600.0  # a refused value that did not change is tried again this often
_ENCRYPT_SLICE_BYTES = 4 * 1024  # ~0.2 ms of encryption between two yields to the loop
_THREAD_ENCRYPT_BYTES = 64 * 1024
_REFUSALS = (RequestTooLargeError, InvalidRequestError)


@dataclass(frozen=True)
class ReplicationStatus:
    """What the replicator last saw; replaced whole, never mutated, so readers are safe."""

    keys_sent: int = 0
    batches_sent: int = 0
    failures: int = 0
    last_sync_at: float | None = None
    last_error: str | None = None
    rejected: int = 0  # keys the server refuses, still owed
    rejected_error: str | None = None  # the latest refusal: which key, and why
    stopped: str | None = None  # why replication stopped for good (fenced, diverged)


class Replicator:
    def __init__(
        self,
        store: LocalStore,
        signing_key: bytes,
        inbox: MemoryObjectReceiveStream[ReplicatorMessage],
        guard: MemoryObjectSendStream[GuardMessage],
        writer: MemoryObjectSendStream[WriterMessage],
        retry_queue: MemoryObjectSendStream[RetryMessage],
        metrics: NodeMetrics,
    ) -> None:
        self._store = store
        self._signing_key = signing_key
        self._inbox = inbox
        self._guard = guard
        self._writer = writer
        self._retry_queue = retry_queue
        self._metrics = metrics
        self._pending: dict[Triple, None] = {}
        self._deferred: list[Triple] = []
        self._urgent = False
        self._healthy = True
        self._max_batch_bytes = MAX_BATCH_BYTES
        self._rejected: dict[Triple, str] = {}
        self._rejected_retry_at: dict[Triple, float] = {}
        self._waiters: dict[Triple, list[tuple[int, Reply[None]]]] = {}
        self._stopped: BaseException | None = None
        self.status = ReplicationStatus()

    async def run(self) -> None:
        async with self._inbox:
            while True:
                if not self._pending:
                    self._accept(await self._inbox.receive())
                    if not self._urgent:
                        await self._linger()
                self._drain_inbox()
                self._urgent = False
                if self._deferred:
                    deferred, self._deferred = self._deferred, []
                    await self._retry_queue.send(Deferred(deferred, failed=False))
                if self._pending and self._stopped is None:
                    await self._send_next_batch()
                elif self._stopped is not None:
                    self._pending.clear()

    # -- taking messages -----------------------------------------------------------------

    def _accept(self, message: ReplicatorMessage) -> None:
        if isinstance(message, SendNow):
            self._await_landing(message)
            triples = [message.triple]
        elif isinstance(message, RetryBatch):
            now = anyio.current_time()
            triples = [t for t in message.triples if self._rejected_retry_at.get(t, 0.0) <= now]
            self._pending.update(dict.fromkeys(triples))
            return
        else:
            triples = message.triples
            for triple in triples:  # a refused value that changed is tried again at once
                self._rejected_retry_at.pop(triple, None)
        if self._stopped is not None:
            return
        if self._healthy:
            self._pending.update(dict.fromkeys(triples))
        else:  # the server is failing: let the retry-queue's backoff decide when
            self._deferred.extend(triples)

    def _await_landing(self, message: SendNow) -> None:
        if self._stopped is not None:
            message.reply.fail(_stopped_error(self._stopped))
            return
        self._rejected_retry_at.pop(message.triple, None)
        self._waiters.setdefault(message.triple, []).append((message.seq, message.reply))
        self._urgent = True
        if sum(len(w) for w in self._waiters.values()) > MAX_WAITERS:
            self._drop_abandoned()

    def _drop_abandoned(self) -> None:
        for triple in list(self._waiters):
            kept = [(seq, reply) for seq, reply in self._waiters[triple] if not (reply.abandoned or reply.done)]
            if kept:
                self._waiters[triple] = kept
            else:
                del self._waiters[triple]

    async def _linger(self) -> None:
        """Let the commits of the next few milliseconds join this batch.

        Sending each commit on its own would put a read, an encryption, a signed HTTP
        call and a marker clear behind every local write, on the same event loop and
        disk; a short wait turns a stream of single writes into batches, at the cost of
        that much replication lag. A durability=remote write ends the wait at once.
        """
        with anyio.move_on_after(BATCH_WINDOW_S):
            while len(self._pending) < MAX_BATCH_ITEMS and not self._urgent:
                self._accept(await self._inbox.receive())

    def _drain_inbox(self) -> None:
        while True:
            try:
                self._accept(self._inbox.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream):
                return

    # -- sending -----------------------------------------------------------------------------

    async def _send_next_batch(self) -> None:
        triples = []
        for triple in self._pending:
            triples.append(triple)
            if len(triples) >= MAX_BATCH_ITEMS:
                break
        for triple in triples:
            del self._pending[triple]
        owed = await anyio.to_thread.run_sync(self._store.read_owed, triples)
        self._landed_meanwhile(set(triples) - {o.triple for o in owed})
        batches = self._split_by_size(owed)
        for position, batch in enumerate(batches):
            try:
                await self._send(batch)
            except VssError as exc:
                await self._on_failure(exc, [o.triple for b in batches[position:] for o in b])
                return
            except (FenceLost, DivergenceFound) as exc:
                await self._stop(exc)
                return

    async def _send(self, batch: list[Owed]) -> None:
        """Put `batch` on the server; a refused batch is split until the refused keys
        stand alone. Raises the VssError of a failure that is not a refusal."""
        try:
            await self._put(batch)
        except _REFUSALS as exc:
            if len(batch) == 1:
                self._reject(batch[0].triple, exc)
                return
            if isinstance(exc, RequestTooLargeError):
                self._max_batch_bytes = max(MIN_BATCH_BYTES, _size(batch) // 2)
            middle = len(batch) // 2
            await self._send(batch[:middle])
            await self._send(batch[middle:])

    async def _put(self, batch: list[Owed]) -> None:
        items, deletes = await self._encode(batch)
        put = FencedPut(StoreKind.KV, items, deletes)
        await self._guard.send(put)
        version = await put.reply.wait()
        self._healthy = True
        self._metrics.replicated_keys.inc(len(batch))
        self._metrics.replication_batches.inc()
        self.status = replace(
            self.status,
            keys_sent=self.status.keys_sent + len(batch),
            batches_sent=self.status.batches_sent + 1,
            last_sync_at=time.time(),
            last_error=None,
        )
        for owed in batch:
            if self._rejected.pop(owed.triple, None) is not None:
                self._rejected_retry_at.pop(owed.triple, None)
                self._publish_rejected()
            self._answer_waiters(owed.triple, owed.seq)
        # Recorded with the store's new version before the next batch goes: a crash then
        # leaves at most one batch on the server that this node did not record.
        clear = ClearMarkers([(o.triple, o.seq) for o in batch], version)
        await self._writer.send(clear)
        await clear.reply.wait()
        await self._retry_queue.send(Succeeded(len(batch)))

    async def _on_failure(self, exc: VssError, unsent: list[Triple]) -> None:
        """Hand the unsent keys and everything behind them over; the backoff decides when."""
        self._healthy = False
        self._metrics.replication_failures.inc()
        self.status = replace(self.status, failures=self.status.failures + 1, last_error=one_line(exc))
        log.debug("VSS write of %s failed (%s)", counted(len(unsent), "key"), one_line(exc))
        rest = unsent + list(self._pending)
        self._pending.clear()
        await self._retry_queue.send(Deferred(rest, failed=True, error=one_line(exc)))

    def _reject(self, triple: Triple, exc: VssError) -> None:
        key = kv_keys.to_vss_key(*triple)
        reason = f"the server refused the value of {key!r}: {one_line(exc)}"
        if triple not in self._rejected:
            log.error("%s; it stays owed and is retried when it changes (and every %.0f s)", reason, REJECTED_RETRY_S)
            self._metrics.rejected_kv_writes.inc()
        self._rejected[triple] = reason
        self._rejected_retry_at[triple] = anyio.current_time() + REJECTED_RETRY_S
        self._publish_rejected(reason)
        for _, reply in self._waiters.pop(triple, []):
            reply.fail(errors.ReplicationRejected(reason + "; the value is committed locally and still owed"))

    def _publish_rejected(self, latest: str | None = None) -> None:
        error = latest if latest is not None else next(iter(self._rejected.values()), None)
        self.status = replace(self.status, rejected=len(self._rejected), rejected_error=error)

    def _answer_waiters(self, triple: Triple, seq: int) -> None:
        waiting = self._waiters.get(triple)
        if not waiting:
            return
        kept = []
        for wanted, reply in waiting:
            if wanted <= seq:
                reply.set(None)
            elif not reply.abandoned:
                kept.append((wanted, reply))
        if kept:
            self._waiters[triple] = kept
        else:
            del self._waiters[triple]

    def _landed_meanwhile(self, unmarked: set[Triple]) -> None:
        """Keys without a marker any more: whatever was committed of them is on the server."""
        for triple in unmarked & self._waiters.keys():
            for _, reply in self._waiters.pop(triple):
                reply.set(None)

    async def _stop(self, reason: BaseException) -> None:
        self._stopped = reason
        self.status = replace(self.status, stopped=one_line(reason), last_error=one_line(reason))
        self._pending.clear()
        for waiting in self._waiters.values():
            for _, reply in waiting:
                reply.fail(_stopped_error(reason))
        self._waiters.clear()
        await self._retry_queue.send(ReplicationStopped())

    def _split_by_size(self, owed: list[Owed]) -> list[list[Owed]]:
        batches: list[list[Owed]] = []
        current: list[Owed] = []
        size = 0
        for item in owed:
            item_size = _size([item])
            if current and size + item_size > self._max_batch_bytes:
                batches.append(current)
                current, size = [], 0
            current.append(item)
            size += item_size
        if current:
            batches.append(current)
        return batches

    async def _encode(self, batch: Sequence[Owed]) -> tuple[list[KeyValue], list[KeyValue]]:
        """Encrypt a batch on the event loop, a slice at a time.

        For small values a worker thread would not help: the work holds the GIL, so it
        stalls the loop just the same. Yielding after every slice lets the local writes
        queued meanwhile through, so a batch never holds a write up for more than a
        slice (measured: write p99 4.8 -> 3.5-4.0 ms with a healthy server). A large
        value goes to a thread, where the GIL is at least handed back between segments.
        """
        items, deletes = [], []
        budget = 0
        for owed in batch:
            key = kv_keys.to_vss_key(*owed.triple)
            if owed.value is None:
                deletes.append(KeyValue(key=key, version=-1))
                continue
            if len(owed.value) >= _THREAD_ENCRYPT_BYTES:  # too long for one slice of the loop
                value = await anyio.to_thread.run_sync(crypto.encrypt_value, self._signing_key, owed.value)
            else:
                value = crypto.encrypt_value(self._signing_key, owed.value)
            items.append(KeyValue(key=key, version=-1, value=value))
            budget += len(owed.value) + 256
            if budget >= _ENCRYPT_SLICE_BYTES:
                budget = 0
                await anyio.lowlevel.checkpoint()
        return items, deletes


def _size(batch: Sequence[Owed]) -> int:
    return sum(len(item.value or b"") + 128 for item in batch)


def _stopped_error(reason: BaseException) -> errors.NodeError:
    if isinstance(reason, FenceLost):
        return errors.OwnershipLost("this node lost ownership of its VSS store to another node; the write is kept locally")
    return errors.StoreDiverged(f"replication stopped: {reason}; the write is kept locally")
