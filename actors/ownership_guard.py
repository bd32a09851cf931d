"""ownership-guard: one writer per store, enforced with two conditions on every batch.

Owns: this node's instance id (durable in the data dir before the fence is first
written), and the two fencing conditions as last seen: the KV store's
`global_version` and the version of the fence key itself.
Used by: the unlock sequence (acquire) and then only by the replicator, one call at a
time, so its state never has two users at once.
Guarantees: no KV write of a node that lost ownership lands after the takeover.
- Every batch rewrites the fence key at its current version, so once an operator
  deletes the fence (an unconditional delete, which cannot be starved by a busy old
  owner), the old owner's next batch is a CONFLICT and it stops writing.
- Every batch also carries the store's `global_version`, and acquiring the fence moves
  it, so a stale batch cannot land even if the new owner's fresh fence happens to have
  the version the stale batch expects (a deleted key's version starts again at 1).
On a CONFLICT it reads the fence: still ours (a batch that committed although its
response was lost, or a delete of a key the server never had) → refresh both
conditions, drop deletes of absent keys, retry; anyone else's or none → FenceLost.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from node import errors
from node.keys import NodeKeys
from node.store import LocalStore
from vss.client import VssClient
from vss.errors import ConflictError, NoSuchKeyError
from vss.proto.vss_pb2 import KeyValue

log = logging.getLogger(__name__)

FENCE_KEY = "__rln_instance__"
INSTANCE_ID_SETTING = "instance_id"
_ACQUIRE_ATTEMPTS = 5


class FenceLost(Exception):
    """Another node took the store over; this one must stop writing."""


def load_or_create_instance_id(store: LocalStore) -> str:
    """The id this data dir writes into the fence; made durable before first use, so a
    restart of the same data dir (even after a crash at any point) keeps ownership."""
    stored = store.get_setting(INSTANCE_ID_SETTING)
    if stored is not None:
        return stored.decode()
    instance_id = str(uuid.uuid4())
    store.set_settings({INSTANCE_ID_SETTING: instance_id.encode()})
    return instance_id


def takeover_hint(store_id: str) -> str:
    return (
        f"another node holds the VSS store {store_id}; if that node is gone for good, "
        "take over with POST /vssclearfence (while locked), then unlock again"
    )


class OwnershipGuard:
    def __init__(self, client: VssClient, keys: NodeKeys, instance_id: str) -> None:
        self._client = client
        self._store_id = keys.kv_store_id
        self._instance_id = instance_id
        self.token: int | None = None  # global_version; None until the fence is held
        self._fence_version = 0
        self.lost = False

    @property
    def held(self) -> bool:
        return self.token is not None and not self.lost

    async def _read_fence(self) -> tuple[str | None, int]:
        """(owner's instance id or None, the fence key's version)."""
        try:
            item = await self._client.get_object(self._store_id, FENCE_KEY)
        except NoSuchKeyError:
            return None, 0
        return item.value.decode("utf-8", errors="replace"), item.version

    async def acquire(self) -> None:
        """Hold the fence or raise OwnershipConflict; VSS errors propagate."""
        for _ in range(_ACQUIRE_ATTEMPTS):
            owner, fence_version = await self._read_fence()
            if owner == self._instance_id:
                self.token = await self._client.get_global_version(self._store_id)
                self._fence_version = fence_version
                return
            if owner is not None:
                raise errors.OwnershipConflict(takeover_hint(self._store_id))
            version = await self._client.get_global_version(self._store_id)
            try:
                await self._client.put_objects(self._store_id, [self._fence(0)], global_version=version)
            except ConflictError:
                continue  # someone moved first, or our own write landed unseen: look again
            self.token, self._fence_version = version + 1, 1
            log.info("holding the ownership fence of %s", self._store_id)
            return
        raise errors.OwnershipConflict(takeover_hint(self._store_id))

    def _fence(self, version: int) -> KeyValue:
        return KeyValue(key=FENCE_KEY, version=version, value=self._instance_id.encode())

    async def put(self, items: Sequence[KeyValue], deletes: Sequence[KeyValue]) -> None:
        """Write one KV batch under the fence. Raises FenceLost, or a VssError."""
        if self.lost:
            raise FenceLost()
        if self.token is None:
            await self.acquire_or_lose()
        for _ in range(3):
            try:
                await self._client.put_objects(
                    self._store_id, [*items, self._fence(self._fence_version)], deletes, global_version=self.token
                )
            except ConflictError:
                owner, fence_version = await self._read_fence()
                if owner != self._instance_id:
                    self._lose()
                self.token = await self._client.get_global_version(self._store_id)
                self._fence_version = fence_version
                deletes = await self._existing(deletes)
                continue
            self.token += 1
            self._fence_version += 1
            return
        raise ConflictError("VSS write kept conflicting although this node holds the fence")

    async def acquire_or_lose(self) -> None:
        """Acquire later (the server was down at unlock); another owner means we lost."""
        try:
            await self.acquire()
        except errors.OwnershipConflict:
            self._lose()

    async def _existing(self, deletes: Sequence[KeyValue]) -> list[KeyValue]:
        """Deletes of keys the server does not have would conflict forever: drop them."""
        kept = []
        for item in deletes:
            try:
                await self._client.get_object(self._store_id, item.key)
            except NoSuchKeyError:
                continue
            kept.append(item)
        return kept

    def _lose(self) -> None:
        self.lost = True
        log.error("ownership of VSS store %s was taken over by another node: replication stopped", self._store_id)
        raise FenceLost()


async def clear_fence(client: VssClient, keys: NodeKeys) -> bool:
    """Delete the fence so this node can take over; returns whether one was there.

    An unconditional delete: it cannot be starved by an old owner that keeps writing
    (a compare-and-set on the store's version would lose every race to it), and that
    owner's next batch, which rewrites the fence at its old version, conflicts."""
    store_id = keys.kv_store_id
    try:
        await client.put_objects(store_id, delete_items=[KeyValue(key=FENCE_KEY, version=-1)])
    except ConflictError:
        return False  # a delete that removes nothing: there was no fence
    log.warning("cleared the ownership fence of %s: this node may now take over", store_id)
    return True
