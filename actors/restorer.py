"""restorer: pulls the KV stream back from the server into an empty node, at unlock.

Owns: the staging table while it runs, and the progress it publishes (`RestoreStatus`).
Pipeline: one task lists the store page by page into a queue of keys that a bounded
pool of fetchers (getObject + decrypt) take from; the fetchers collect rows into
batches, and one stager writes each batch (a thousand values, or 8 MiB) into
`restore_staging` in a worker thread. Listing, fetching and staging overlap, so the
time is bounded by the slowest of them rather than their sum. The listing stops while
a thousand keys wait for a fetcher, so memory does not grow with the store. Per
key there is one getObject and one decrypt and nothing else: no task, channel or
thread hop of its own (keys are handed over a page at a time; values of 256 KiB or
more are decrypted in a worker thread, to keep the loop responsive).
Guarantees: nothing is live until the end, when one transaction moves the staged
values into `kv`; an interrupted or failed restore leaves the node empty and can simply
be run again (from the start: staged values are not reused). A transient failure of one
call is retried with backoff, so a lossy link slows a large restore down rather than
failing it. A value that fails to decrypt (wrong mnemonic, corrupted data) fails the
whole restore: it is never written anywhere. Progress (keys listed, restored, bytes,
rate, time left) is logged every few seconds.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from actors.ownership_guard import FENCE_KEY
from actors.progress import Throttle
from actors.tasks import first_cause
from actors.vss_port import VssPort
from node import crypto, errors, kv_keys
from node.keys import NodeKeys
from node.store import LocalStore, Triple
from vss.backoff import Backoff
from vss.errors import NoSuchKeyError, VssError
from vss.wording import counted

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_ATTEMPTS = 6  # per call, each one a client call with its own quick retries
RETRY_BACKOFF = Backoff(base_s=0.5, max_s=8.0)
# getObjects in flight. Measured (bench/RESULTS.md): 32 as fast as 64 at 0 ms, 0.52x of
# it at +50 ms; the node's client keeps 64 connections, so more cannot be in flight.
DEFAULT_CONCURRENCY = 64
_STAGE_BATCH = 1000  # values per staging transaction, or:
_STAGE_BYTES = 8 * 1024 * 1024  # plaintext bytes per staging transaction
_LISTED_AHEAD = 1000  # keys listed and not yet fetched, past which the listing waits
_RESUME_LISTING = _LISTED_AHEAD // 2  # ... until the fetchers took the queue down to this
_THREAD_DECRYPT_BYTES = 256 * 1024


@dataclass(frozen=True)
class RestoreStatus:
    """The progress of the last restore; replaced whole, never mutated."""

    keys_listed: int = 0
    listing_done: bool = False
    keys_done: int = 0
    bytes_done: int = 0
    finished: bool = False


class _Restore:
    """One run of the pipeline: its progress, the keys waiting for a fetcher, and the
    rows waiting for the stager."""

    def __init__(self, port: VssPort, keys: NodeKeys, store: LocalStore, publish: Callable[[RestoreStatus], None]) -> None:
        self.port = port
        self.keys = keys
        self.store = store
        self.publish = publish
        self.status = RestoreStatus()
        self.pending: deque[tuple[str, Triple]] = deque()
        self.listed_all = False
        self.keys_ready = anyio.Event()  # replaced each time it is set: keys arrived, or the listing ended
        self.room = anyio.Event()  # set when the fetchers took the queue down to _RESUME_LISTING
        self.rows: list[tuple[Triple, bytes]] = []
        self.row_bytes = 0
        self.progress = Throttle()

    def offer(self, listed: list[tuple[str, Triple]], *, last: bool) -> None:
        """The lister's page of keys (and whether it was the last): wake the fetchers."""
        self.pending.extend(listed)
        self.listed_all = last
        ready, self.keys_ready = self.keys_ready, anyio.Event()
        ready.set()

    def advance(self, **changes: int | bool) -> None:
        self.status = replace(self.status, **changes)  # type: ignore[arg-type]
        self.publish(self.status)
        elapsed = self.progress.due()
        if elapsed is not None:
            log.info("restore: %s", progress_line(self.status, elapsed))


def progress_line(status: RestoreStatus, elapsed_s: float) -> str:
    """'1,234 of 10,000 keys (2.1 MiB), 2,345 keys/s, about 4 s left'."""
    rate = status.keys_done / elapsed_s if elapsed_s > 0 else 0.0
    total = f" of {status.keys_listed:,}" if status.listing_done else f" ({status.keys_listed:,} listed so far)"
    line = f"{counted(status.keys_done, 'key')}{total}, {status.bytes_done / 2**20:.1f} MiB, {rate:,.0f} keys/s"
    if status.listing_done and rate > 0:
        line += f", about {max(0.0, (status.keys_listed - status.keys_done) / rate):.0f} s left"
    return line


async def restore_kv(
    port: VssPort,
    keys: NodeKeys,
    store: LocalStore,
    publish: Callable[[RestoreStatus], None],
    live_settings: dict[str, bytes],
    *,
    concurrency: int | None = None,
) -> int:
    """Restore every KV key of the store; returns how many keys were made live.

    Raises RestoreFailed (with the reason) if anything goes wrong; the node is then as
    empty as before. `live_settings` are recorded in the same transaction as the data.
    `concurrency`: getObjects in flight at most (DEFAULT_CONCURRENCY, read at the call).
    """
    concurrency = concurrency or DEFAULT_CONCURRENCY
    run = _Restore(port, keys, store, publish)
    run.publish(run.status)
    await anyio.to_thread.run_sync(store.clear_staging)
    try:
        await _pipeline(run, concurrency)
    except BaseExceptionGroup as group:  # one failure cancels the rest: report the first
        raise first_cause(group) from None
    count = await anyio.to_thread.run_sync(store.make_restore_live, live_settings)
    run.advance(finished=True)
    log.info("restored %s (%.1f MiB) from VSS in %.1f s", counted(count, "key"), run.status.bytes_done / 2**20,
             run.progress.elapsed())
    return int(count)


async def _pipeline(run: _Restore, concurrency: int) -> None:
    batch_send, batch_recv = anyio.create_memory_object_stream[list[tuple[Triple, bytes]]](2)
    async with anyio.create_task_group() as staging:
        staging.start_soon(_stage, run, batch_recv)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_list_keys, run)
            for _ in range(concurrency):
                tg.start_soon(_fetch, run, batch_send)
        async with batch_send:
            if run.rows:
                await batch_send.send(run.rows)
                run.rows = []


async def _list_keys(run: _Restore) -> None:
    store_id = run.keys.kv_store_id
    token: str | None = None
    while True:
        while len(run.pending) >= _LISTED_AHEAD:
            run.room = anyio.Event()
            await run.room.wait()
        page = await _patiently(f"listing the VSS store {store_id}", run.port.list_key_versions, store_id,
                                page_token=token)
        listed: list[tuple[str, Triple]] = []
        for item in page.key_versions:
            if item.key == FENCE_KEY:
                continue
            try:
                listed.append((item.key, kv_keys.from_vss_key(item.key)))
            except errors.InvalidKey:
                log.warning("restore skips %r: not a key of the KV format", item.key)
        token = page.next_page_token if page.HasField("next_page_token") else None
        run.offer(listed, last=not token)
        run.advance(keys_listed=run.status.keys_listed + len(listed), listing_done=not token)
        if not token:
            return


async def _fetch(run: _Restore, batches: MemoryObjectSendStream[list[tuple[Triple, bytes]]]) -> None:
    signing_key, store_id, get_object = run.keys.signing_key, run.keys.kv_store_id, run.port.get_object
    pending = run.pending
    while True:
        if not pending:
            if run.listed_all:
                return
            await run.keys_ready.wait()
            continue
        vss_key, triple = pending.popleft()
        if len(pending) == _RESUME_LISTING:
            run.room.set()
        try:
            item = await _patiently(f"fetching {vss_key!r}", get_object, store_id, vss_key)
        except NoSuchKeyError:
            continue  # deleted since it was listed
        stored = item.value
        try:
            if len(stored) >= _THREAD_DECRYPT_BYTES:
                value = await anyio.to_thread.run_sync(crypto.decrypt_value, signing_key, stored)
            else:
                value = crypto.decrypt_value(signing_key, stored)
        except crypto.DecryptionError as exc:
            raise errors.RestoreFailed(
                f"the value of {vss_key!r} does not decrypt: wrong mnemonic or corrupted backup; nothing was restored"
            ) from exc
        run.rows.append((triple, value))
        run.row_bytes += len(value)
        if len(run.rows) >= _STAGE_BATCH or run.row_bytes >= _STAGE_BYTES:
            batch, run.rows, run.row_bytes = run.rows, [], 0
            await batches.send(batch)


async def _patiently(what: str, call: Callable[..., Awaitable[T]], *args: object, **kwargs: object) -> T:
    """One VSS call of the restore, retried with backoff while the failure is transient.

    The client already retries a few times within a second or two; a restore of many
    thousands of keys over a lossy link needs more patience than that per key, or the
    chance that every key gets through falls exponentially with the number of keys.
    """
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return await call(*args, **kwargs)
        except VssError as exc:
            if not exc.retryable or attempt == RETRY_ATTEMPTS:
                if isinstance(exc, NoSuchKeyError):
                    raise
                raise errors.RestoreFailed(f"{what} failed: {exc}") from exc
            delay = RETRY_BACKOFF.delay(attempt)
            log.info("restore: %s failed (%s); retrying in %.1f s", what, exc, delay)
            await anyio.sleep(delay)
    raise AssertionError("unreachable")


async def _stage(run: _Restore, batches: MemoryObjectReceiveStream[list[tuple[Triple, bytes]]]) -> None:
    async with batches:
        async for batch in batches:
            await anyio.to_thread.run_sync(run.store.stage, batch)
            run.advance(keys_done=run.status.keys_done + len(batch),
                        bytes_done=run.status.bytes_done + sum(len(value) for _, value in batch))
