"""retry-queue: keys whose replication failed or was deferred, re-sent with backoff.

Owns: a bounded, ordered set of owed keys (one entry per key: the value is read fresh
when sent, so the newest always wins), the backoff delay, and whether it must re-read
the durable markers because something was dropped.
Receives: Deferred (from the replicator), Succeeded (from the replicator), Rescan (from
the local-writer).
Sends: RetryBatch to the replicator, never blocking (a full inbox just waits for the
next timer tick).
Guarantees: a server that comes back is caught up without new writes (the backoff
timer), memory stays bounded (on overflow the oldest entry is dropped; its marker keeps
it owed), and nothing stays owed forever: after a drop, on a Rescan, at start and on a
slow periodic sweep it re-reads the unsynced markers.
"""

from __future__ import annotations

import itertools
import logging
import math

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from actors.messages import Deferred, Rescan, RetryBatch, Succeeded
from node.store import LocalStore, Triple

log = logging.getLogger(__name__)


class RetryQueue:
    def __init__(
        self,
        store: LocalStore,
        inbox: ObjectReceiveStream,
        replicator: ObjectSendStream,
        *,
        capacity: int = 10_000,
        batch_size: int = 500,
        base_delay_s: float = 0.25,
        max_delay_s: float = 15.0,
        sweep_interval_s: float = 60.0,
    ) -> None:
        self._store = store
        self._inbox = inbox
        self._replicator = replicator
        self._capacity = capacity
        self._batch_size = batch_size
        self._base_delay = base_delay_s
        self._max_delay = max_delay_s
        self._sweep_interval = sweep_interval_s
        self._queue: dict[Triple, None] = {}
        self._delay = base_delay_s
        self._next_try = 0.0  # anyio clock: no retry batch before this
        self._next_sweep = math.inf  # set once running
        self._rescan_owed = True  # at unlock: whatever the last session left owed
        self._healthy = True
        self.dropped = 0  # for metrics

    def __len__(self) -> int:
        return len(self._queue)

    async def run(self) -> None:
        async with self._inbox:
            await self._sweep()
            while True:
                message = None
                # Deadlines, not a timeout per wait: a steady stream of messages (keys
                # deferred while the server is down) must not keep postponing the retry.
                with anyio.move_on_after(max(0.0, self._deadline() - anyio.current_time())):
                    message = await self._inbox.receive()
                if message is None:
                    await self._on_timer()
                else:
                    await self._on_message(message)

    def _deadline(self) -> float:
        if self._queue or self._rescan_owed:
            return self._next_try
        return self._next_sweep

    async def _on_message(self, message: object) -> None:
        if isinstance(message, Deferred):
            self._add(message.triples)
            if message.failed:
                self._healthy = False
                self._delay = min(self._delay * 2, self._max_delay)
                self._next_try = anyio.current_time() + self._delay
        elif isinstance(message, Succeeded):
            self._healthy = True
            self._delay = self._base_delay
            if not self._queue and self._rescan_owed:
                await self._sweep()
            self._hand_batch()
        elif isinstance(message, Rescan):
            self._rescan_owed = True
            if self._healthy and not self._queue:
                await self._sweep()
                self._hand_batch()

    async def _on_timer(self) -> None:
        if not self._queue:
            await self._sweep()  # owed after a drop, or the periodic sweep
        self._hand_batch()
        if not self._queue and not self._rescan_owed:
            return
        # Nothing could be handed (busy replicator) or more is waiting: try again later.
        self._next_try = max(self._next_try, anyio.current_time() + self._delay)

    def _add(self, triples: list[Triple]) -> None:
        for triple in triples:
            self._queue.pop(triple, None)
            self._queue[triple] = None
        while len(self._queue) > self._capacity:
            self._queue.pop(next(iter(self._queue)))
            self.dropped += 1
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
        # One retry batch at a time: the next waits for its answer or for the delay.
        self._next_try = anyio.current_time() + self._delay
