"""retry-queue: keys whose replication failed or was deferred, re-sent with backoff.

Owns: a bounded, ordered set of owed keys (one entry per key: the value is read fresh
when sent, so the newest always wins), the backoff, whether it must re-read the durable
markers because something was dropped, and the outage under way (for its two log lines).
Receives: Deferred, Succeeded, ReplicationStopped (replicator), Rescan (local-writer).
Sends: RetryBatch to the replicator, never blocking (a full inbox just waits for the
next timer tick).
Guarantees: a server that comes back is caught up without new writes (the backoff
timer), memory stays bounded (on overflow the oldest entry is dropped; its marker keeps
it owed), and nothing stays owed forever: after a drop, on a Rescan, at start and on a
slow periodic sweep it re-reads the unsynced markers. An outage logs one line when it
starts and one when the backlog has been sent, not a line per batch. Once replication
has stopped for good (fenced, diverged) it offers nothing more.
"""

from __future__ import annotations

import itertools
import logging
import math

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from actors.messages import Deferred, ReplicationStopped, ReplicatorMessage, Rescan, RetryBatch, RetryMessage, Succeeded
from actors.metrics import NodeMetrics
from node.store import LocalStore, Triple
from vss.backoff import Backoff
from vss.wording import counted

log = logging.getLogger(__name__)

DEFAULT_BACKOFF = Backoff(base_s=0.25, max_s=15.0, jitter=0.0)
SWEEP_INTERVAL_S = 60.0


class RetryQueue:
    def __init__(
        self,
        store: LocalStore,
        inbox: MemoryObjectReceiveStream[RetryMessage],
        replicator: MemoryObjectSendStream[ReplicatorMessage],
        metrics: NodeMetrics,
        *,
        capacity: int = 10_000,
        batch_size: int = 500,
        backoff: Backoff = DEFAULT_BACKOFF,
        sweep_interval_s: float = SWEEP_INTERVAL_S,
    ) -> None:
        self._store = store
        self._inbox = inbox
        self._replicator = replicator
        self._metrics = metrics
        self._capacity = capacity
        self._batch_size = batch_size
        self._backoff = backoff
        self._sweep_interval = sweep_interval_s
        self._queue: dict[Triple, None] = {}
        self._failures = 0  # in a row; 0 while healthy
        self._next_try = 0.0  # anyio clock: no retry batch before this
        self._next_sweep = math.inf  # set once running
        self._rescan_owed = True  # at unlock: whatever the last session left owed
        self._in_flight = False  # a retry batch was handed and has not been answered yet
        self._stopped = False
        self._outage_since: float | None = None  # anyio clock, while failing
        self._recovered_at: float | None = None  # anyio clock, catching up after an outage
        self._caught_up_keys = 0

    async def run(self) -> None:
        async with self._inbox:
            await self._sweep()
            while True:
                message = None
                # Deadlines, not a timeout per wait: a steady stream of messages (keys
                # deferred while the server is down) must not keep postponing the retry.
                with anyio.move_on_after(max(0.0, self._deadline() - anyio.current_time())):
                    message = await self._inbox.receive()
                if self._stopped:
                    continue
                if message is None:
                    await self._on_timer()
                else:
                    await self._on_message(message)

    def _deadline(self) -> float:
        if self._stopped:
            return math.inf
        retry = self._next_try if self._queue or self._rescan_owed else math.inf
        return min(retry, self._next_sweep)

    async def _on_message(self, message: RetryMessage) -> None:
        if isinstance(message, Deferred):
            self._add(message.triples)
            if message.failed:
                self._in_flight = False
                self._on_failure(message.error)
        elif isinstance(message, Succeeded):
            self._in_flight = False
            self._on_success(message.keys)
            if not self._queue and self._rescan_owed:
                await self._sweep()
            self._hand_batch()
            self._maybe_caught_up()
        elif isinstance(message, Rescan):
            self._rescan_owed = True
            if self._failures == 0 and not self._queue:
                await self._sweep()
                self._hand_batch()
        elif isinstance(message, ReplicationStopped):
            self._stopped = True
            self._queue.clear()
        self._metrics.retry_queue_keys.set(len(self._queue))

    def _on_failure(self, error: str) -> None:
        self._failures += 1
        self._next_try = anyio.current_time() + self._backoff.delay(self._failures)
        if self._outage_since is None:
            self._outage_since = anyio.current_time()
            self._recovered_at = None
            log.warning("VSS writes are failing (%s); local writes go on and are re-sent once it is back", error)

    def _on_success(self, keys: int) -> None:
        self._failures = 0
        if self._outage_since is not None:
            self._outage_since = None
            self._recovered_at = anyio.current_time()
            self._caught_up_keys = 0
        if self._recovered_at is not None:
            self._caught_up_keys += keys

    def _maybe_caught_up(self) -> None:
        """After an outage: once the backlog is not only handed over but landed."""
        if self._recovered_at is None or self._queue or self._rescan_owed or self._in_flight:
            return
        took = anyio.current_time() - self._recovered_at
        log.info("VSS reachable again: %s sent in %.1f s", counted(self._caught_up_keys, "key"), took)
        self._recovered_at = None

    async def _on_timer(self) -> None:
        now = anyio.current_time()
        if now >= self._next_sweep or (not self._queue and self._rescan_owed):
            await self._sweep()  # owed after a drop, or the periodic sweep
        if now < self._next_try:
            return  # a sweep found keys; they wait for the backoff like any other
        self._hand_batch()
        if not self._queue and not self._rescan_owed:
            return
        # Nothing could be handed (busy replicator) or more is waiting: try again later.
        self._next_try = max(self._next_try, now + self._backoff.delay(max(1, self._failures)))

    def _add(self, triples: list[Triple]) -> None:
        for triple in triples:
            self._queue.pop(triple, None)
            self._queue[triple] = None
        while len(self._queue) > self._capacity:
            self._queue.pop(next(iter(self._queue)))
            self._metrics.retry_queue_dropped.inc()
            self._rescan_owed = True

    async def _sweep(self) -> None:
        """Re-read the durable markers: whatever is owed and not queued gets queued."""
        owed = await anyio.to_thread.run_sync(self._store.owed_keys, self._capacity)
        self._rescan_owed = len(owed) >= self._capacity  # more than fit: read again later
        self._add([triple for triple, _ in owed])
        if self._sweep_interval > 0:
            self._next_sweep = anyio.current_time() + self._sweep_interval

    def _hand_batch(self) -> None:
        if not self._queue:
            return
        batch = list(itertools.islice(self._queue, self._batch_size))
        try:
            self._replicator.send_nowait(RetryBatch(batch))
        except anyio.WouldBlock:
            return  # the replicator is busy; the timer tries again
        for triple in batch:
            del self._queue[triple]
        self._in_flight = True
        # One retry batch at a time: the next waits for its answer or for the delay.
        self._next_try = anyio.current_time() + self._backoff.delay(max(1, self._failures))
