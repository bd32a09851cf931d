"""wallet-restorer: pulls the wallet stream back into an absent wallet directory, at unlock.

Unlock runs it in two steps around the KV restore, so that a refused unlock makes
neither stream live: `stage_wallet` (before) holds the fence and, when
`DATA_DIR/wallet/<fingerprint>/` does not exist, restores the server's backup into a
staged directory beside it; `install_wallet` (after the KV state went live) renames
the staged copy into place, or creates an empty wallet.

The restore reads `backup/manifest` (absent: there is nothing to restore), then the
metadata and the fingerprint (which must be this mnemonic's), then the pieces: fetched
in parallel (at most `concurrency` at once, fetched or waiting) and fed in order to
`WalletRestore`, which decrypts them into a temp zip in a worker thread. Memory holds
at most `concurrency` pieces of 1 MiB, whatever the wallet's size.

Guarantees: the wallet directory appears complete (renamed into place after the whole
stream authenticated and unpacked) or not at all. Any failure, a wrong mnemonic, or a
backup mixed by an interrupted upload, raises RestoreFailed and leaves no directory;
what a killed restore leaves behind is swept at the next unlock, which simply restores
again.
"""

from __future__ import annotations

import enum
import logging
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from actors.ownership_guard import OwnershipGuard
from node import errors
from node.crypto import DecryptionError
from node.keys import NodeKeys
from node.wallet_archive import (
    FINGERPRINT_KEY,
    MANIFEST_KEY,
    METADATA_KEY,
    CorruptBackup,
    WalletRestore,
    chunk_key,
    parse_fingerprint,
    parse_manifest,
    parse_metadata,
)
from node.wallet_files import WalletHome
from vss.client import VssClient
from vss.errors import NoSuchKeyError, VssError

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 8


async def restore_wallet(
    client: VssClient, keys: NodeKeys, home: WalletHome, *, dest: Path | None = None, concurrency: int = DEFAULT_CONCURRENCY
) -> bool:
    """Restore the wallet backup of `keys` into `dest` (default `home.root`; must be absent).

    Returns False when the server holds no backup (nothing is created), True once the
    wallet directory is in place. Raises RestoreFailed saying why otherwise.
    """
    store_id = keys.wallet_store_id
    dest = home.root if dest is None else dest
    try:
        try:
            manifest = await client.get_object(store_id, MANIFEST_KEY)
        except NoSuchKeyError:
            return False
        chunk_count, total_size = parse_manifest(manifest.value)
        salt, prefix = parse_metadata(await _required(client, store_id, METADATA_KEY))
        fingerprint = parse_fingerprint(await _required(client, store_id, FINGERPRINT_KEY))
        if fingerprint != keys.fingerprint:
            raise errors.RestoreFailed(
                f"the wallet backup on the server belongs to wallet {fingerprint}, not to this mnemonic's "
                f"{keys.fingerprint}; nothing was restored"
            )
        restore = await anyio.to_thread.run_sync(
            lambda: WalletRestore(salt, prefix, keys.signing_key, fingerprint, dest, home.work_dir, total_size=total_size)
        )
        with restore:
            await _feed_in_order(client, store_id, chunk_count, restore, concurrency)
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
    log.info("restored the wallet (%d bytes in %d pieces) from VSS", total_size, chunk_count)
    return True


async def _required(client: VssClient, store_id: str, key: str) -> bytes:
    try:
        return (await client.get_object(store_id, key)).value
    except NoSuchKeyError:
        raise CorruptBackup(f"{key} is missing although a manifest exists") from None


async def _feed_in_order(client: VssClient, store_id: str, chunk_count: int, restore: WalletRestore, concurrency: int) -> None:
    """Fetch the pieces concurrently, feed them to `restore` strictly in order."""
    keys = [chunk_key(i, chunk_count) for i in range(chunk_count)]
    slots = anyio.Semaphore(concurrency)  # one per piece fetched or waiting to be fed
    arrived: dict[int, bytes] = {}
    ready = [anyio.Event() for _ in keys]

    async def fetch(index: int) -> None:
        arrived[index] = await _required(client, store_id, keys[index])
        ready[index].set()

    async def start_fetches(tg: TaskGroup) -> None:
        for index in range(chunk_count):
            await slots.acquire()
            tg.start_soon(fetch, index)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(start_fetches, tg)
            for index in range(chunk_count):
                await ready[index].wait()
                piece = arrived.pop(index)
                await anyio.to_thread.run_sync(restore.feed, piece)
                del piece
                slots.release()
    except BaseExceptionGroup as group:  # one failure cancels the rest: report it
        raise _first_cause(group) from None


def _first_cause(group: BaseExceptionGroup) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_cause(exc)
        if not isinstance(exc, anyio.get_cancelled_exc_class()):
            return exc
    return group


async def manifest_version(client: VssClient, keys: NodeKeys) -> int | None:
    """The version of the server's `backup/manifest`, None when there is no backup."""
    try:
        return (await client.get_object(keys.wallet_store_id, MANIFEST_KEY)).version
    except NoSuchKeyError:
        return None


class WalletStage(enum.Enum):
    """What `stage_wallet` found and prepared for `install_wallet`."""

    PRESENT = "present"  # the wallet directory exists: kept as it is
    RESTORED = "restored"  # a complete restored copy waits in `home.staged`
    EMPTY = "empty"  # start with an empty wallet: no backup, VSS off, or an allowed failed restore


async def stage_wallet(
    client: VssClient | None, keys: NodeKeys, home: WalletHome, instance_id: str | None, *, allow_empty_restore: bool
) -> WalletStage:
    """At unlock, before the KV restore: restore an absent wallet directory, staged.

    With VSS on and no wallet directory: holds the fence (refusing, like the KV
    stream, when another node holds it), then restores the server's backup into
    `home.staged`, beside the real place but not in it, so a KV restore that fails
    afterwards leaves no wallet either, and a wallet restore that fails leaves no KV
    state. Raises RestoreFailed (unless `allow_empty_restore`: then logs loudly and
    returns EMPTY) or OwnershipConflict. Leftovers of an interrupted restore or build
    are removed first, which is how a killed restore is simply run again.
    """
    await anyio.to_thread.run_sync(home.remove_leftovers)
    if home.exists():
        return WalletStage.PRESENT
    if client is None:
        return WalletStage.EMPTY
    assert instance_id is not None, "with VSS on, the instance id exists before the fence"
    try:
        try:
            await OwnershipGuard(client, keys, instance_id).acquire()
        except VssError as exc:
            raise errors.RestoreFailed(f"the VSS server could not be reached to restore the wallet: {exc}") from exc
        restored = await restore_wallet(client, keys, home, dest=home.staged)
    except errors.RestoreFailed as exc:
        if not allow_empty_restore:
            raise
        log.warning("!" * 72)
        log.warning("WALLET RESTORE FROM VSS FAILED: %s", exc)
        log.warning("--vss-allow-empty-restore is set: STARTING WITH AN EMPTY WALLET")
        log.warning("!" * 72)
        return WalletStage.EMPTY
    return WalletStage.RESTORED if restored else WalletStage.EMPTY


async def install_wallet(stage: WalletStage, home: WalletHome, *, owed_to_server: bool) -> None:
    """After the KV restore: put the staged wallet in place (or an empty one).

    A PRESENT wallet is marked "backup required" when `owed_to_server` (VSS on, and
    this URL never had it), so it is uploaded whole. A crash before the rename leaves
    no wallet directory, so the next unlock restores again.
    """
    if stage is WalletStage.PRESENT:
        if owed_to_server:
            await anyio.to_thread.run_sync(home.mark_backup_required)
            log.info("the wallet is new to this VSS server: it is owed to it whole")
        return
    if stage is WalletStage.RESTORED:
        await anyio.to_thread.run_sync(home.install_staged)
    else:
        await anyio.to_thread.run_sync(home.create_empty)
    # What is here now is what the server has (or a deliberate empty start): a marker
    # left by a wallet directory that is gone says nothing any more.
    await anyio.to_thread.run_sync(home.clear_backup_required)
