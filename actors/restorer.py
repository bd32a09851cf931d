"""restorer: pulls the KV stream back from the server into an empty node, at unlock.

Owns: the staging table while it runs, and the progress figures it publishes.
Pipeline: one task lists the store page by page, feeding keys to a bounded pool of
fetchers (getObject + decrypt), which feed one stager writing batches into
`restore_staging`. Listing, fetching and staging overlap, so the time is bounded by the
slowest of them rather than their sum.
Guarantees: nothing is live until the end, when one transaction moves the staged
values into `kv`; an interrupted or failed restore leaves the node empty and can simply
be run again (from the start: staged values are not reused). A transient failure of one
call is retried with backoff, so a lossy link slows a large restore down rather than
failing it. A value that fails to decrypt (wrong mnemonic, corrupted data) fails the
whole restore: it is never written anywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from actors.ownership_guard import FENCE_KEY
from node import crypto, errors, kv_keys
from node.keys import NodeKeys
from node.store import LocalStore, Triple
from vss.client import VssClient
from vss.errors import NoSuchKeyError, VssError

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_ATTEMPTS = 6  # per call, each one a client call with its own quick retries
RETRY_BASE_S = 0.5
RETRY_MAX_S = 8.0
DEFAULT_CONCURRENCY = 64  # measured: 128 was no faster at 0 ms and 0.69x at +50 ms (CPU-bound)
_STAGE_BATCH = 1000
_THREAD_DECRYPT_BYTES = 256 * 1024


@dataclass
class RestoreProgress:
    """Written only by the running restore; read by /nodeinfo and /metrics."""

    keys_done: int = 0
    bytes_done: int = 0
    finished: bool = False


async def restore_kv(
    client: VssClient,
    keys: NodeKeys,
    store: LocalStore,
    progress: RestoreProgress,
    live_settings: dict[str, bytes],
    *,
    concurrency: int | None = None,
) -> int:
    """Restore every KV key of the store; returns how many keys were made live.

    Raises RestoreFailed (with the reason) if anything goes wrong; the node is then as
    empty as before. `live_settings` are recorded in the same transaction as the data.
    """
    await anyio.to_thread.run_sync(store.clear_staging)
    try:
        await _pipeline(client, keys, store, progress, concurrency or DEFAULT_CONCURRENCY)
    except BaseExceptionGroup as group:  # one failure cancels the rest: report the first
        raise _first_cause(group) from None
    count = await anyio.to_thread.run_sync(store.make_restore_live, live_settings)
    progress.finished = True
    log.info("restored %d keys (%d bytes) from VSS", count, progress.bytes_done)
    return count


async def _pipeline(client: VssClient, keys: NodeKeys, store: LocalStore, progress: RestoreProgress, concurrency: int) -> None:
    key_send, key_recv = anyio.create_memory_object_stream[tuple[str, Triple]](concurrency * 4)
    row_send, row_recv = anyio.create_memory_object_stream[tuple[Triple, bytes]](_STAGE_BATCH * 2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_list_keys, client, keys.kv_store_id, key_send)
        async with key_recv, row_send:
            for _ in range(concurrency):
                tg.start_soon(_fetch, client, keys, key_recv.clone(), row_send.clone())
        tg.start_soon(_stage, store, row_recv, progress)


async def _list_keys(client: VssClient, store_id: str, out: ObjectSendStream) -> None:
    async with out:
        token: str | None = None
        while True:
            page = await _patiently(f"listing the VSS store {store_id}", client.list_key_versions, store_id, page_token=token)
            for item in page.key_versions:
                if item.key == FENCE_KEY:
                    continue
                try:
                    triple = kv_keys.from_vss_key(item.key)
                except ValueError:
                    log.warning("restore skips %r: not a key of the KV format", item.key)
                    continue
                await out.send((item.key, triple))
            token = page.next_page_token if page.HasField("next_page_token") else None
            if not token:
                return


async def _fetch(client: VssClient, keys: NodeKeys, keys_in: ObjectReceiveStream, rows_out: ObjectSendStream) -> None:
    async with keys_in, rows_out:
        async for vss_key, triple in keys_in:
            try:
                item = await _patiently(f"fetching {vss_key!r}", client.get_object, keys.kv_store_id, vss_key)
            except NoSuchKeyError:
                continue  # deleted since it was listed
            stored = item.value
            try:
                if len(stored) >= _THREAD_DECRYPT_BYTES:
                    value = await anyio.to_thread.run_sync(crypto.decrypt_value, keys.signing_key, stored)
                else:
                    value = crypto.decrypt_value(keys.signing_key, stored)
            except crypto.DecryptionError as exc:
                raise errors.RestoreFailed(
                    f"the value of {vss_key!r} does not decrypt: wrong mnemonic or corrupted backup; nothing was restored"
                ) from exc
            await rows_out.send((triple, value))


async def _patiently(what: str, call: Callable[..., Awaitable[T]], *args: object, **kwargs: object) -> T:
    """One VSS call of the restore, retried with backoff while the failure is transient.

    The client already retries a few times within a second or two; a restore of many
    thousands of keys over a lossy link needs more patience than that per key, or the
    chance that every key gets through falls exponentially with the number of keys.
    """
    delay = RETRY_BASE_S
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return await call(*args, **kwargs)
        except VssError as exc:
            if not exc.retryable or attempt == RETRY_ATTEMPTS:
                if isinstance(exc, NoSuchKeyError):
                    raise
                raise errors.RestoreFailed(f"{what} failed: {exc}") from exc
            log.info("restore: %s failed (%s); retrying in %.1f s", what, exc, delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
    raise AssertionError("unreachable")


async def _stage(store: LocalStore, rows_in: ObjectReceiveStream, progress: RestoreProgress) -> None:
    async with rows_in:
        batch: list[tuple[Triple, bytes]] = []
        async for row in rows_in:
            batch.append(row)
            if len(batch) >= _STAGE_BATCH:
                await _flush(store, batch, progress)
                batch = []
        if batch:
            await _flush(store, batch, progress)


async def _flush(store: LocalStore, batch: list[tuple[Triple, bytes]], progress: RestoreProgress) -> None:
    await anyio.to_thread.run_sync(store.stage, batch)
    progress.keys_done += len(batch)
    progress.bytes_done += sum(len(value) for _, value in batch)


def _first_cause(group: BaseExceptionGroup) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_cause(exc)
        if not isinstance(exc, anyio.get_cancelled_exc_class()):
            return exc
    return group
