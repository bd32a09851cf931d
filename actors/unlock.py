"""What unlock does with VSS before the actors start.

1. Take both stores (the ownership-guard's acquire; KV first). Another node's fence
   refuses the unlock (OwnershipConflict); a store another node wrote since this node
   last saw it refuses it too (StoreDiverged, with the key counts on each side), unless
   `--vss-accept-divergence`: then the local state wins and is owed whole.
2. Owe what the server lacks: a node with state and a server that never had it (VSS
   newly enabled, another URL) owes everything, whether or not the server answers now;
   a server that lost the store (empty, no fence) under a node that had synced to it
   is refilled.
3. Restore a node that has nothing locally: the wallet to a staged place first, then
   the KV state made live, then the wallet renamed into place, so an unlock refused for
   either stream makes neither live.

A server that cannot be reached only fails the unlock when a restore is needed
(`--vss-allow-empty-restore` turns that into a loud empty start); otherwise the node
comes up and the guard takes the stores, with the same checks, once the server is back.
Either way the refusal and the log say why, with the error's own line (`why_unanswered`):
a wrong base path or an untrusted certificate is named as such, not "could not be
reached". Every refusal leaves the node as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from actors.messages import RemoteSeen, StoreKind
from actors.ownership_guard import RECORD_SETTING, DivergenceFound, OwnershipGuard, key_counts, log_accepted
from actors.restorer import RestoreStatus, restore_kv
from actors.vss_port import VssPort
from actors.wallet_restorer import WalletStage, allowed_failure, install_wallet, stage_wallet
from node import errors, settings
from node.config import NodeConfig
from node.keys import NodeKeys
from node.store import LocalStore
from node.wallet_files import WalletHome
from node.wallet_format import MANIFEST_KEY
from vss.errors import AuthError, InvalidRequestError, NoSuchKeyError, VssError, VssUnavailableError, one_line
from vss.wording import counted

log = logging.getLogger(__name__)


@dataclass
class _Situation:
    """What the node has locally, what it knows of this VSS URL, and what it owes."""

    url: bytes
    kv_known: bool
    wallet_known: bool
    has_state: bool
    wallet_present: bool
    owe_kv: bool = False  # the server lost the store, or the operator accepted a divergence
    owe_wallet: bool = False

    @property
    def needs_restore(self) -> bool:
        return not self.kv_known and not self.has_state


async def prepare(
    store: LocalStore,
    config: NodeConfig,
    port: VssPort,
    keys: NodeKeys,
    guard: OwnershipGuard,
    home: WalletHome,
    publish_restore: Callable[[RestoreStatus], None],
) -> RemoteSeen | None:
    """Run steps 1-3; raise the NodeError that refuses the unlock, if any. Returns what
    the server holds of the wallet stream, when it answered."""
    assert config.vss_url is not None
    url = config.vss_url.encode()
    situation = _Situation(
        url=url,
        kv_known=store.get_setting(settings.KV_SYNCED_URL) == url,
        wallet_known=store.get_setting(settings.WALLET_SYNCED_URL) == url,
        has_state=await anyio.to_thread.run_sync(store.has_state),
        wallet_present=home.exists(),
    )
    unanswered = await _take_stores(store, port, keys, guard, situation)
    if situation.has_state and (situation.owe_kv or not situation.kv_known):
        first = await anyio.to_thread.run_sync(store.next_seq)
        owed = await anyio.to_thread.run_sync(store.mark_all_unsynced, first)
        store.set_settings({settings.KV_SYNCED_URL: url})
        log.info("%s owed to the VSS server", counted(owed, "local key"))
    stage = await _stage_wallet(port, unanswered, keys, home, config, situation)
    if situation.needs_restore:
        if unanswered is not None:
            _restore_failed(store, config, why_unanswered(unanswered))
        else:
            try:
                await restore_kv(port, keys, store, publish_restore, {settings.KV_SYNCED_URL: url})
            except errors.RestoreFailed as exc:
                _restore_failed(store, config, str(exc))
    owed_wallet = situation.wallet_present and (situation.owe_wallet or not situation.wallet_known)
    await install_wallet(stage, home, owed_to_server=owed_wallet)
    if not situation.wallet_known:
        store.set_settings({settings.WALLET_SYNCED_URL: url})
    return await _wallet_seen(port, keys) if unanswered is None else None


async def _wallet_seen(port: VssPort, keys: NodeKeys) -> RemoteSeen | None:
    """The version of the server's wallet manifest, so the node can say it from the start."""
    try:
        return RemoteSeen(version=(await port.get_object(keys.wallet_store_id, MANIFEST_KEY)).version)
    except NoSuchKeyError:
        return RemoteSeen(version=None)
    except VssError:
        return None


async def _take_stores(
    store: LocalStore, port: VssPort, keys: NodeKeys, guard: OwnershipGuard, situation: _Situation
) -> VssError | None:
    """Step 1, and what step 2 owes because of it. Returns None when the server answered,
    else the error that says why it could not be used."""
    for kind in (StoreKind.KV, StoreKind.WALLET):
        try:
            acquired = await guard.acquire(kind)
        except VssError as exc:
            if not situation.needs_restore:
                log.warning("%s at unlock; local writes are kept and sent once it answers", why_unanswered(exc))
            return exc
        except DivergenceFound as exc:
            raise await _diverged(store, port, keys, exc) from None
        store.set_settings({RECORD_SETTING[kind]: str(acquired.token).encode()})
        if acquired.divergence is not None:
            await log_accepted(acquired.divergence, store, port, keys.kv_store_id)
            situation.owe_kv = situation.owe_wallet = True
        elif acquired.emptied and (situation.kv_known if kind is StoreKind.KV else situation.wallet_known):
            log.error("!" * 72)
            log.error("THE VSS SERVER LOST THE %s STORE (empty, no fence): re-sending everything", kind.value.upper())
            log.error("!" * 72)
            if kind is StoreKind.KV:
                situation.owe_kv = True
            else:
                situation.owe_wallet = True
    return None


def why_unanswered(exc: VssError) -> str:
    """Why the VSS server could not be used, in one line: the refusal's reason and the log's."""
    detail = one_line(exc)
    if isinstance(exc, InvalidRequestError):
        # The node's calls are well-formed: a server that finds them invalid is answering
        # at a path that is not its VSS API (the bundled server names the path it got).
        return f"the server at --vss-url refused the node's call as invalid ({detail}): is the base URL right?"
    if isinstance(exc, AuthError):
        return f"the VSS server refused the node's credentials ({detail})"
    if isinstance(exc, VssUnavailableError):
        hint = ": a server with a private CA is trusted with --vss-ca-file" if "CERTIFICATE_VERIFY_FAILED" in detail else ""
        return f"the VSS server could not be reached or gave no VSS answer ({detail}){hint}"
    return f"the VSS server failed ({detail})"


async def _diverged(store: LocalStore, port: VssPort, keys: NodeKeys, exc: DivergenceFound) -> errors.StoreDiverged:
    only_server, only_node = await key_counts(store, port, keys.kv_store_id)
    gap = exc.divergence.found - exc.divergence.recorded
    return errors.StoreDiverged(
        f"{exc.divergence.describe()} (global_version {'+' if gap > 0 else ''}{gap}): "
        f"{counted(only_server, 'key')} only on the server, {counted(only_node, 'key')} only on this node. "
        "The safe way is to restore into a fresh data dir with this mnemonic; to make this node's state win "
        "and overwrite the server's, unlock with --vss-accept-divergence"
    )


async def _stage_wallet(
    port: VssPort, unanswered: VssError | None, keys: NodeKeys, home: WalletHome, config: NodeConfig,
    situation: _Situation,
) -> WalletStage:
    if unanswered is not None and not situation.wallet_present:
        reason = why_unanswered(unanswered)
        if not config.vss_allow_empty_restore:
            raise errors.RestoreFailed(f"restore from VSS failed, nothing was restored: {reason}")
        await allowed_failure(home, reason)
        return WalletStage.EMPTY
    return await stage_wallet(None if unanswered is not None else port, keys, home,
                              allow_empty_restore=config.vss_allow_empty_restore)


def _restore_failed(store: LocalStore, config: NodeConfig, reason: str) -> None:
    """Refuse the unlock, or, with --vss-allow-empty-restore, start empty and say so."""
    if not config.vss_allow_empty_restore:
        raise errors.RestoreFailed(f"restore from VSS failed, nothing was restored: {reason}")
    log.warning("!" * 72)
    log.warning("RESTORE FROM VSS FAILED: %s", reason)
    log.warning("--vss-allow-empty-restore is set: STARTING WITH EMPTY STATE")
    log.warning("!" * 72)
    assert config.vss_url is not None
    store.set_settings({settings.KV_SYNCED_URL: config.vss_url.encode()})

