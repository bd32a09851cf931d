"""The wallet stream's writes to the server: one sealed backup onto the `backup/*` keys.

Used by the wallet-backup actor, one upload at a time. Follows BACKUP-FORMAT.md:
- read the current version of every `backup/*` key (listKeyVersions, prefix `backup/`)
  and write each key conditionally on it (0 when absent), so a concurrent writer is
  caught as a CONFLICT; on a CONFLICT, re-read the versions and retry once, then give up;
- a backup of one piece (ciphertext <= 1 MiB) goes out as one putObjects: `backup/data`,
  manifest, fingerprint and metadata together, so the server holds the old backup or
  the new one, never a mix;
- a larger one writes `backup/chunk/{i}` each in its own call, then manifest,
  fingerprint and metadata last, in one transaction;
- afterwards, pieces the new manifest does not reference (a shorter backup, or the other
  layout) are deleted, best effort.

What an interrupted chunked upload leaves: the chunk keys are fixed names, so the new
pieces overwrite the pieces of the previous backup *before* the manifest flips. If the
previous backup was a single piece (`backup/data`), it stays whole and in force. If it
was chunked too, an interrupted upload leaves its manifest and metadata pointing at a
mix of old and new pieces, which no layout-preserving order can avoid; the mix fails
the STREAM tag check, so a restore refuses it cleanly (RestoreFailed, nothing written),
and the node keeps the wallet marked "backup required" and uploads again until a whole
backup lands.

Ownership: the wallet store has no fencing token of its own, so before each upload and
again before the manifest flips, the uploader reads the KV store's fence: another
owner's id, or no fence after this session held it (a takeover in progress), raises
FenceLost and nothing more is written.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio

from actors.ownership_guard import FENCE_KEY, FenceLost, OwnershipGuard
from node import errors
from node.keys import NodeKeys
from node.wallet_archive import CHUNK_KEY_PREFIX, DATA_KEY, FINGERPRINT_KEY, MANIFEST_KEY, METADATA_KEY, WalletBackup
from vss.client import VssClient
from vss.errors import ConflictError, NoSuchKeyError, VssError
from vss.proto.vss_pb2 import KeyValue

log = logging.getLogger(__name__)

BACKUP_PREFIX = "backup/"
_DELETES_PER_CALL = 500  # the protocol allows 1000 items per putObjects


class WalletUploader:
    def __init__(self, client: VssClient, keys: NodeKeys, guard: OwnershipGuard, instance_id: str) -> None:
        self._client = client
        self._keys = keys
        self._store_id = keys.wallet_store_id
        self._guard = guard
        self._instance_id = instance_id

    async def upload(self, backup: WalletBackup) -> int:
        """Put `backup` on the server; returns the manifest's version afterwards.

        Raises FenceLost (another node owns the store), ConflictError (a concurrent
        writer, twice in a row), another VssError, or OSError reading the backup.
        """
        await self.check_owner()
        for attempt in (1, 2):
            versions = await self._versions()
            try:
                version = await self._write(backup, versions)
            except ConflictError as exc:
                if attempt == 2:
                    raise
                await self.check_owner()
                log.warning("wallet backup conflicted with another write (%s); re-reading versions, retrying once", exc)
                continue
            await self._drop_stale(backup, versions)
            return version
        raise AssertionError("unreachable")

    async def check_owner(self) -> None:
        """Raise FenceLost unless this node holds the fence of its KV store."""
        if self._guard.lost:
            raise FenceLost()
        try:
            owner = (await self._client.get_object(self._keys.kv_store_id, FENCE_KEY)).value.decode("utf-8", "replace")
        except NoSuchKeyError:
            owner = None
        if owner == self._instance_id:
            return
        if owner is None and self._guard.token is None:
            # The server was down at unlock, so the fence was never taken this session:
            # take it now, as the KV stream does before its first write.
            try:
                await OwnershipGuard(self._client, self._keys, self._instance_id).acquire()
            except errors.OwnershipConflict:
                raise FenceLost() from None
            return
        log.error("the wallet store's owner changed (fence: %s); wallet backups stopped", "gone" if owner is None else "another node")
        raise FenceLost()

    async def _versions(self) -> dict[str, int]:
        found = {}
        async for item in self._client.iter_key_versions(self._store_id, key_prefix=BACKUP_PREFIX):
            found[item.key] = item.version
        return found

    async def _write(self, backup: WalletBackup, versions: dict[str, int]) -> int:
        def item(key: str, value: bytes) -> KeyValue:
            return KeyValue(key=key, version=versions.get(key, 0), value=value)

        documents = [
            item(MANIFEST_KEY, backup.manifest_json()),
            item(FINGERPRINT_KEY, backup.fingerprint_value()),
            item(METADATA_KEY, backup.metadata_json()),
        ]
        if backup.chunk_count == 1:
            data = await anyio.to_thread.run_sync(backup.read_chunk, 0)
            await self._client.put_objects(self._store_id, [item(DATA_KEY, data), *documents])
        else:
            for index in range(backup.chunk_count):
                piece = await anyio.to_thread.run_sync(backup.read_chunk, index)
                await self._client.put_objects(self._store_id, [item(backup.chunk_key(index), piece)])
                del piece
            await self.check_owner()
            await self._client.put_objects(self._store_id, documents)
        return versions.get(MANIFEST_KEY, 0) + 1

    async def _drop_stale(self, backup: WalletBackup, versions: dict[str, int]) -> None:
        """Delete the pieces the new manifest does not reference; failures only log."""
        written = {backup.chunk_key(i) for i in range(backup.chunk_count)}
        stale = [
            KeyValue(key=key, version=version)
            for key, version in sorted(versions.items())
            if (key == DATA_KEY or key.startswith(CHUNK_KEY_PREFIX)) and key not in written
        ]
        for batch in _batches(stale, _DELETES_PER_CALL):
            try:
                await self._client.put_objects(self._store_id, delete_items=batch)
            except VssError as exc:
                log.warning("could not delete %d stale wallet backup pieces (%s); the next backup tries again", len(batch), exc)
                return


def _batches(items: Sequence[KeyValue], size: int) -> list[Sequence[KeyValue]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
