"""What unlock does with VSS before the actors start.

Hold the fence, then, for each stream: restore a node that has nothing locally, or owe
a node that has state to a server that has not seen it. The wallet is restored to a
staged place first and renamed into place only after the KV state went live, so an
unlock refused for either stream makes neither live. Every failure leaves the node as
it was; `--vss-allow-empty-restore` turns a failed restore into a loud empty start.
"""

from __future__ import annotations

import logging

import anyio

from actors.ownership_guard import OwnershipGuard, load_or_create_instance_id
from actors.restorer import RestoreProgress, restore_kv
from actors.wallet_restorer import WalletStage, install_wallet, stage_wallet
from node import errors
from node.config import NodeConfig
from node.keys import NodeKeys
from node.store import LocalStore
from node.wallet_files import WalletHome
from vss.client import VssClient
from vss.errors import VssError

log = logging.getLogger(__name__)

# Settings rows: the VSS URL the local KV state (or wallet directory) is known to be
# fully owed to, or restored from. Absent or different at unlock: restore if empty,
# else owe everything to it.
KV_SYNCED_URL = "kv_synced_url"
WALLET_SYNCED_URL = "wallet_synced_url"


async def stage_wallet_dir(store: LocalStore, config: NodeConfig, client: VssClient | None, keys: NodeKeys) -> WalletStage:
    """Restore an absent wallet directory (fence held) to a staged place."""
    instance_id = None
    if client is not None:
        instance_id = await anyio.to_thread.run_sync(load_or_create_instance_id, store)
    home = WalletHome(config.data_dir, keys.fingerprint)
    return await stage_wallet(client, keys, home, instance_id, allow_empty_restore=config.vss_allow_empty_restore)


async def prepare_kv(
    store: LocalStore, config: NodeConfig, client: VssClient, keys: NodeKeys, progress: RestoreProgress
) -> OwnershipGuard:
    """Hold the fence, then restore an empty node or owe a node with state to VSS.

    A server that cannot be reached only fails the unlock when a restore is needed: a
    node with state comes up and sends what it owes once the server is back."""
    instance_id = await anyio.to_thread.run_sync(load_or_create_instance_id, store)
    guard = OwnershipGuard(client, keys, instance_id)
    synced_url = store.get_setting(KV_SYNCED_URL)
    known = synced_url is not None and synced_url.decode() == config.vss_url
    has_state = await anyio.to_thread.run_sync(store.has_state)
    needs_restore = not known and not has_state
    try:
        await guard.acquire()
    except VssError as exc:
        if needs_restore:
            _restore_failed(store, config, f"the VSS server could not be reached: {exc}")
        else:
            log.warning("VSS unreachable at unlock (%s); writes are kept and sent once it is back", exc)
        return guard
    if needs_restore:
        try:
            await restore_kv(client, keys, store, progress, _synced(config))
        except errors.RestoreFailed as exc:
            _restore_failed(store, config, str(exc))
    elif not known:
        first = await anyio.to_thread.run_sync(store.next_seq)
        owed = await anyio.to_thread.run_sync(store.mark_all_unsynced, first)
        store.set_settings(_synced(config))
        log.info("VSS newly enabled: %d local keys are owed to the server", owed)
    return guard


async def install_wallet_dir(
    store: LocalStore, config: NodeConfig, client: VssClient | None, keys: NodeKeys, stage: WalletStage
) -> None:
    """Put the staged wallet in place (after the KV restore); owe a kept one to a new URL."""
    url = (config.vss_url or "").encode()
    known = store.get_setting(WALLET_SYNCED_URL) == url
    home = WalletHome(config.data_dir, keys.fingerprint)
    await install_wallet(stage, home, owed_to_server=client is not None and not known)
    if client is not None and not known:
        store.set_settings({WALLET_SYNCED_URL: url})


def _synced(config: NodeConfig) -> dict[str, bytes]:
    assert config.vss_url is not None
    return {KV_SYNCED_URL: config.vss_url.encode()}


def _restore_failed(store: LocalStore, config: NodeConfig, reason: str) -> None:
    """Refuse the unlock, or, with --vss-allow-empty-restore, start empty and say so."""
    if not config.vss_allow_empty_restore:
        raise errors.RestoreFailed(f"restore from VSS failed, nothing was restored: {reason}")
    log.warning("!" * 72)
    log.warning("RESTORE FROM VSS FAILED: %s", reason)
    log.warning("--vss-allow-empty-restore is set: STARTING WITH EMPTY STATE")
    log.warning("!" * 72)
    store.set_settings(_synced(config))
