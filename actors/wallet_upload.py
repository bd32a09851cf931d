"""The wallet stream's uploads: one sealed backup onto the `backup/*` keys, fenced.

Used by the wallet-keeper's upload task, one upload at a time. Every write goes through
the ownership-guard, so it carries the wallet store's token: after a takeover not one
more piece of the old owner lands.

Two paths (docs/FORMAT.md, "The wallet stream"):
- **atomic**, whenever the backup fits one request (at most ATOMIC_MAX_BYTES of
  ciphertext and the protocol's 1000 items): every piece, the manifest, the metadata,
  the fingerprint and the deletion of pieces the new manifest no longer names, in one
  putObjects. The server holds the old backup or the new one, never a mix. A 413 from
  the server (or a proxy) sends the backup down the other path.
- **piece by piece**, for larger wallets: each piece in its own putObjects, then the
  documents in one, then the stale pieces are deleted. If that overwrites pieces of
  the previous backup, the previous backup stops being whole the moment the first
  piece lands: the "remote incomplete" marker is made durable first and cleared only
  once the manifest names the new pieces, so `/vssbackupinfo` says
  `backup_restorable: false` for exactly that window, SIGKILL included.

Every key is written conditionally on the version listed just before (0 when absent),
as rgb-lib does; a CONFLICT re-reads the versions and tries once more.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from actors.messages import FencedPut, GuardMessage, StoreKind
from actors.progress import ProgressLog
from actors.vss_port import VssPort
from node.keys import NodeKeys
from node.wallet_archive import WalletBackup
from node.wallet_files import REMOTE_INCOMPLETE, WalletHome
from node.wallet_format import BACKUP_PREFIX, CHUNK_SIZE, MANIFEST_KEY, is_piece_key
from vss.errors import ConflictError, RequestTooLargeError, VssError
from vss.proto.vss_pb2 import KeyValue

log = logging.getLogger(__name__)

ATOMIC_MAX_BYTES = 16 * 1024 * 1024
MAX_ITEMS = 1000  # the protocol's limit per putObjects
_DELETES_PER_CALL = 500


class WalletUploader:
    def __init__(self, port: VssPort, keys: NodeKeys, guard: MemoryObjectSendStream[GuardMessage], home: WalletHome) -> None:
        self._port = port
        self._store_id = keys.wallet_store_id
        self._guard = guard
        self._home = home

    async def upload(self, backup: WalletBackup) -> int:
        """Put `backup` on the server; returns the manifest's version afterwards.

        Raises FenceLost or DivergenceFound (the guard stopped the stream),
        ConflictError (a concurrent writer, twice in a row), another VssError, or
        OSError reading the backup.
        """
        for attempt in (1, 2):
            versions = await self.remote_versions()
            try:
                return await self._upload(backup, versions)
            except ConflictError as exc:
                if attempt == 2:
                    raise
                log.warning("wallet backup conflicted with another write (%s); re-reading versions, retrying once", exc)
        raise AssertionError("unreachable")

    async def remote_versions(self) -> dict[str, int]:
        """Every `backup/*` key on the server with its version."""
        found = {}
        async for item in self._port.iter_key_versions(self._store_id, key_prefix=BACKUP_PREFIX):
            found[item.key] = item.version
        return found

    async def _upload(self, backup: WalletBackup, versions: dict[str, int]) -> int:
        stale = _stale_pieces(backup, versions)
        if backup.total_size <= ATOMIC_MAX_BYTES and backup.chunk_count + 3 + len(stale) <= MAX_ITEMS:
            try:
                return await self._atomic(backup, versions, stale)
            except RequestTooLargeError:
                log.info("the wallet backup (%d bytes) is too large for one request here; uploading it piece by piece",
                         backup.total_size)
        return await self._piece_by_piece(backup, versions, stale)

    async def _atomic(self, backup: WalletBackup, versions: dict[str, int], stale: list[KeyValue]) -> int:
        pieces = [await anyio.to_thread.run_sync(backup.read_chunk, i) for i in range(backup.chunk_count)]
        items = [_item(backup.chunk_key(i), piece, versions) for i, piece in enumerate(pieces)]
        items += [_item(key, value, versions) for key, value in backup.documents().items()]
        await self._put(items, stale)
        # A whole backup is there again, whatever an interrupted upload left before.
        await anyio.to_thread.run_sync(self._home.set_flag, REMOTE_INCOMPLETE, False)
        return versions.get(MANIFEST_KEY, 0) + 1

    async def _piece_by_piece(self, backup: WalletBackup, versions: dict[str, int], stale: list[KeyValue]) -> int:
        overwrites = any(backup.chunk_key(i) in versions for i in range(backup.chunk_count))
        if overwrites:
            await anyio.to_thread.run_sync(self._home.set_flag, REMOTE_INCOMPLETE, True)
        progress = ProgressLog(log, "wallet upload", backup.total_size)
        for index in range(backup.chunk_count):
            piece = await anyio.to_thread.run_sync(backup.read_chunk, index)
            await self._put([_item(backup.chunk_key(index), piece, versions)])
            progress.advance(min(backup.total_size, (index + 1) * CHUNK_SIZE))
            del piece
        await self._put([_item(key, value, versions) for key, value in backup.documents().items()])
        await anyio.to_thread.run_sync(self._home.set_flag, REMOTE_INCOMPLETE, False)
        await self._drop(stale)
        return versions.get(MANIFEST_KEY, 0) + 1

    async def _drop(self, stale: Sequence[KeyValue]) -> None:
        """Delete pieces the new manifest does not name; a failure only logs."""
        for start in range(0, len(stale), _DELETES_PER_CALL):
            try:
                await self._put([], stale[start : start + _DELETES_PER_CALL])
            except VssError as exc:
                log.warning("could not delete %d stale wallet backup pieces (%s); the next backup tries again",
                            len(stale) - start, exc)
                return

    async def _put(self, items: Sequence[KeyValue], deletes: Sequence[KeyValue] = ()) -> None:
        put = FencedPut(StoreKind.WALLET, items, deletes)
        await self._guard.send(put)
        await put.reply.wait()


def _item(key: str, value: bytes, versions: dict[str, int]) -> KeyValue:
    return KeyValue(key=key, version=versions.get(key, 0), value=value)


def _stale_pieces(backup: WalletBackup, versions: dict[str, int]) -> list[KeyValue]:
    written = {backup.chunk_key(i) for i in range(backup.chunk_count)}
    return [
        KeyValue(key=key, version=version)
        for key, version in sorted(versions.items())
        if is_piece_key(key) and key not in written
    ]
