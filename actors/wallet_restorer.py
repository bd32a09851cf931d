"""wallet-restorer: pulls the wallet stream back into an absent wallet directory, at unlock.

Unlock runs it in two steps around the KV restore, so that a refused unlock makes
neither stream live: `stage_wallet` (before; the ownership-guard already holds both
stores) restores the server's backup, when `DATA_DIR/wallet/<fingerprint>/` does not
exist, into a staged directory beside it; `install_wallet` (after the KV state went
live) renames the staged copy into place, or creates an empty wallet.

The restore reads `backup/manifest` (absent: there is nothing to restore) and checks it
before anything is planned for it, then the metadata and the fingerprint (which must be
this mnemonic's), then the pieces: fetched in parallel, at most `concurrency` at once,
and fed in order to `WalletRestore`, which decrypts them into a temp zip in a worker
thread. Memory and tasks are bounded by `concurrency`, whatever the manifest says.

Guarantees: the wallet directory appears complete (renamed into place after the whole
stream authenticated and unpacked) or not at all. Any failure, a wrong mnemonic, or a
backup mixed by an interrupted upload, raises RestoreFailed and leaves no directory;
what a killed restore leaves behind is swept at the next unlock, which simply restores
again. A failure the operator allowed (`--vss-allow-empty-restore`) starts with an
empty wallet and marks the server's backup unreadable, so nothing is uploaded over it
until the operator says so.
"""

from __future__ import annotations

import enum
import logging
from pathlib import Path

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from actors.progress import ProgressLog
from actors.tasks import first_cause
from actors.vss_port import VssPort
from node import errors
from node.crypto import DecryptionError
from node.keys import NodeKeys
from node.wallet_archive import WalletRestore
from node.wallet_files import BACKUP_REQUIRED, REMOTE_INCOMPLETE, REMOTE_UNREADABLE, WalletHome
from node.wallet_format import (
    FINGERPRINT_KEY,
    MANIFEST_KEY,
    METADATA_KEY,
    CorruptBackup,
    chunk_key,
    parse_fingerprint,
    parse_manifest,
    parse_metadata,
)
from vss.errors import NoSuchKeyError, VssError
from vss.wording import counted

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 8


async def restore_wallet(
    port: VssPort, keys: NodeKeys, home: WalletHome, *, dest: Path | None = None, concurrency: int = DEFAULT_CONCURRENCY
) -> bool:
    """Restore the wallet backup of `keys` into `dest` (default `home.root`; must be absent).

    Returns False when the server holds no backup (nothing is created), True once the
    wallet directory is in place. Raises RestoreFailed saying why otherwise.
    """
    store_id = keys.wallet_store_id
    dest = home.root if dest is None else dest
    try:
        try:
            manifest = parse_manifest((await port.get_object(store_id, MANIFEST_KEY)).value)
        except NoSuchKeyError:
            return False
        salt, prefix = parse_metadata(await _required(port, store_id, METADATA_KEY))
        fingerprint = parse_fingerprint(await _required(port, store_id, FINGERPRINT_KEY))
        if fingerprint != keys.fingerprint:
            raise errors.RestoreFailed(
                f"the wallet backup on the server belongs to wallet {fingerprint}, not to this mnemonic's "
                f"{keys.fingerprint}; nothing was restored"
            )
        restore = await anyio.to_thread.run_sync(
            lambda: WalletRestore(
                salt, prefix, keys.signing_key, fingerprint, dest, home.work_dir, total_size=manifest.total_size
            )
        )
        with restore:
            progress = ProgressLog(log, "wallet restore", manifest.total_size)
            await _feed_in_order(port, store_id, manifest.chunk_count, restore, concurrency, progress)
            await anyio.to_thread.run_sync(restore.finish)
    except DecryptionError:
        raise errors.RestoreFailed(
            "the wallet backup does not decrypt: a wrong mnemonic, corrupted data, or an upload that was "
            "interrupted and mixed the pieces of two backups; nothing was restored"
        ) from None
    except CorruptBackup as exc:
        raise errors.RestoreFailed(f"the wallet backup on the server is damaged: {exc}; nothing was restored") from None
    except VssError as exc:
        raise errors.RestoreFailed(f"fetching the wallet backup from VSS failed: {exc}") from exc
    log.info("restored the wallet (%s in %s) from VSS", counted(manifest.total_size, "byte"),
             counted(manifest.chunk_count, "piece"))
    return True


async def _required(port: VssPort, store_id: str, key: str) -> bytes:
    try:
        return (await port.get_object(store_id, key)).value
    except NoSuchKeyError:
        raise CorruptBackup(f"{key} is missing although a manifest exists") from None


class _Piece:
    """One piece being fetched: set once it arrived."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.arrived = anyio.Event()
        self.data = b""


async def _feed_in_order(
    port: VssPort, store_id: str, chunk_count: int, restore: WalletRestore, concurrency: int, progress: ProgressLog
) -> None:
    """Fetch the pieces concurrently, feed them to `restore` strictly in order.

    The fetches start in order, each taking a slot that is freed once its piece was
    fed, and announce themselves on a channel no longer than the slots: at most
    `concurrency` pieces exist at any moment, fetched or waiting.
    """
    slots = anyio.Semaphore(concurrency)
    started, in_order = anyio.create_memory_object_stream[_Piece](concurrency)
    fed = 0

    async def fetch(piece: _Piece) -> None:
        piece.data = await _required(port, store_id, chunk_key(piece.index, chunk_count))
        piece.arrived.set()

    async def start_fetches(tg: TaskGroup, announce: MemoryObjectSendStream[_Piece]) -> None:
        async with announce:
            for index in range(chunk_count):
                await slots.acquire()
                piece = _Piece(index)
                tg.start_soon(fetch, piece)
                await announce.send(piece)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(start_fetches, tg, started)
            async with in_order:
                async for piece in in_order:
                    await piece.arrived.wait()
                    data, piece.data = piece.data, b""
                    await anyio.to_thread.run_sync(restore.feed, data)
                    fed += len(data)
                    progress.advance(fed)
                    slots.release()
    except BaseExceptionGroup as group:  # one failure cancels the rest: report it
        raise first_cause(group) from None


class WalletStage(enum.Enum):
    """What `stage_wallet` found and prepared for `install_wallet`."""

    PRESENT = "present"  # the wallet directory exists: kept as it is
    RESTORED = "restored"  # a complete restored copy waits in `home.staged`
    EMPTY = "empty"  # start with an empty wallet: no backup, VSS off, or an allowed failed restore


async def stage_wallet(port: VssPort | None, keys: NodeKeys, home: WalletHome, *, allow_empty_restore: bool) -> WalletStage:
    """At unlock, before the KV restore: restore an absent wallet directory, staged.

    With VSS on and no wallet directory: restores the server's backup into
    `home.staged`, beside the real place but not in it, so a KV restore that fails
    afterwards leaves no wallet either, and a wallet restore that fails leaves no KV
    state. `port` None means VSS is off or could not be reached; with VSS on that is a
    failed restore. Raises RestoreFailed (unless `allow_empty_restore`: then logs loudly,
    marks the server's backup unreadable and returns EMPTY). Leftovers of an interrupted
    restore or build are removed first, which is how a killed restore is run again.
    """
    await anyio.to_thread.run_sync(home.remove_leftovers)
    if home.exists():
        return WalletStage.PRESENT
    if port is None:
        return WalletStage.EMPTY
    try:
        restored = await restore_wallet(port, keys, home, dest=home.staged)
    except errors.RestoreFailed as exc:
        if not allow_empty_restore:
            raise
        await allowed_failure(home, str(exc))
        return WalletStage.EMPTY
    return WalletStage.RESTORED if restored else WalletStage.EMPTY


async def allowed_failure(home: WalletHome, reason: str) -> None:
    """An allowed failed restore: say so loudly, and protect what the server holds."""
    await anyio.to_thread.run_sync(home.set_flag, REMOTE_UNREADABLE, True)
    log.warning("!" * 72)
    log.warning("WALLET RESTORE FROM VSS FAILED: %s", reason)
    log.warning("--vss-allow-empty-restore is set: STARTING WITH AN EMPTY WALLET")
    log.warning("the server's wallet backup is kept: nothing is uploaded over it until you ask with")
    log.warning('POST /vssbackup {"replace_unreadable": true}')
    log.warning("!" * 72)


async def install_wallet(stage: WalletStage, home: WalletHome, *, owed_to_server: bool) -> None:
    """After the KV restore: put the staged wallet in place (or an empty one).

    A PRESENT wallet is marked "backup required" when `owed_to_server` (VSS on, and
    this URL never had it, or the server lost it), so it is uploaded whole. A crash
    before the rename leaves no wallet directory, so the next unlock restores again.
    """
    if stage is WalletStage.PRESENT:
        if owed_to_server:
            await anyio.to_thread.run_sync(home.set_flag, BACKUP_REQUIRED, True)
            log.info("the wallet is owed to the VSS server whole")
        return
    if stage is WalletStage.RESTORED:
        await anyio.to_thread.run_sync(home.install_staged)
        await anyio.to_thread.run_sync(home.set_flag, REMOTE_INCOMPLETE, False)  # it just restored whole
    else:
        await anyio.to_thread.run_sync(home.create_empty)
    # What is here now is what the server has (or a deliberate empty start): a marker left
    # by a wallet directory that is gone says nothing any more.
    await anyio.to_thread.run_sync(home.set_flag, BACKUP_REQUIRED, False)
