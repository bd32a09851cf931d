"""The node as a whole: its state machine, and its Python API for use as a library.

    async with Node.open(NodeConfig(data_dir=Path("data"), vss_url="http://127.0.0.1:8081/vss")) as node:
        words = await node.init("password")    # the generated mnemonic, shown once
        await node.unlock("password")          # takes the VSS stores, restores if empty
        await node.put("payments", "", "k1", b"value")
        await node.put("payments", "", "k2", b"value", durability="remote")  # waits for VSS

States: uninitialized --init--> locked --unlock--> unlocking (keys, stores, restore)
--> running --lock--> locked. While running, the ownership-guard may report that the
stores stopped: another node took them over (fenced: reads only) or wrote them while
this node was away (diverged: reads and writes go on, owed, nothing is sent). Either
stays until the operator locks the node (or restarts it), even if the actors then fail:
the operator's alert depends on it. An actor failing while the node runs locks it.
One lifecycle change runs at a time; the actors
of an unlocked node run in one session, started by unlock and stopped by lock. The
actors report to this state machine; none of them takes the lifecycle lock.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import httpx
from anyio.abc import TaskGroup, TaskStatus

from actors.messages import AuditNow, AuditReport, BackupNow, SendNow, WalletChange, WriteRequest
from actors.metrics import NodeMetrics
from actors.ownership_guard import FenceLost, clear_fence
from actors.restorer import RestoreStatus
from actors.session import Session, SessionStatus
from actors.tasks import first_cause
from actors.vss_port import VssPort
from actors.wallet_keeper import UNREADABLE_HINT
from node import errors, kv_keys, settings, wallet_files
from node.config import ConfigError, NodeConfig
from node.data_dir import DataDir
from node.keys import InvalidMnemonic, NodeKeys, derive_keys, generate_mnemonic, validate_mnemonic
from node.mnemonic_vault import open_mnemonic, seal_mnemonic
from node.store import LocalChange, LocalStore, Triple
from node.wallet_files import BACKUP_REQUIRED, REMOTE_INCOMPLETE, REMOTE_UNREADABLE, WalletHome
from vss.client import VssClient, headers_auth
from vss.errors import VssError, one_line

log = logging.getLogger(__name__)

Durability = Literal["local", "remote"]
PortFactory = Callable[[NodeKeys], VssPort]


class NodeState(enum.StrEnum):
    """Where the node is in its lifecycle; the value is what `/nodeinfo` says."""

    UNINITIALIZED = "uninitialized"
    LOCKED = "locked"
    UNLOCKING = "unlocking"
    RUNNING = "running"
    FENCED = "fenced"
    DIVERGED = "diverged"


@dataclass(frozen=True)
class WalletFile:
    """One file of the wallet directory, as `wallet_list()` gives it."""

    path: str
    size: int


class Node:
    """One node on one data dir: its local store, its lifecycle and, once unlocked, its
    actors. Every failure it reports is a `node.errors.NodeError`.

        async with Node.open(NodeConfig(data_dir=path, vss_url=url)) as node:
            mnemonic = await node.init("password")   # once per data dir; show it once
            await node.unlock("password")            # takes the stores, restores if empty
            await node.put("ns", "", "key", b"value")
            value = await node.get("ns", "", "key")

    Run it under anyio (asyncio or trio); one process per data dir (a second one is
    refused with DataDirInUse)."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        vss_transport: httpx.AsyncBaseTransport | None = None,
        vss_port: PortFactory | None = None,
    ) -> None:
        """Open the data dir (refusing one in use, or of another network).

        `vss_transport` puts a fault injector under the real client; `vss_port` replaces
        the client altogether (the test suite's in-memory server). Raises ConfigError.
        """
        self.config = config
        self._vss_transport = vss_transport
        self._vss_port = vss_port
        self._data_dir = DataDir(config.data_dir)
        try:
            self.store = LocalStore(self._data_dir.database)
            recorded = self.store.get_setting(settings.NETWORK)
            if recorded is not None and recorded.decode() != config.network:
                raise ConfigError(
                    f"{config.data_dir} was initialised for {recorded.decode()}, not {config.network}; "
                    "use the matching --network or another data dir"
                )
        except BaseException:
            self._close_files()
            raise
        self._state = NodeState.LOCKED if self.store.get_setting(settings.SEALED_MNEMONIC) else NodeState.UNINITIALIZED
        self._session: Session | None = None
        self._session_done: anyio.Event | None = None
        self._lifecycle = anyio.Lock()
        self._verifying = anyio.Lock()
        self._tg: TaskGroup | None = None
        self.restore_status = RestoreStatus()
        self.metrics = NodeMetrics()
        self.metrics.watch(self.gauges)

    def _close_files(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.close()
        self._data_dir.close()

    # -- running the node ---------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(cls, config: NodeConfig, **kwargs: Any) -> AsyncIterator[Node]:
        """Run a node for the duration of the block; locks it (flushing) on the way out.
        Raises ConfigError for a data dir of another network, DataDirInUse when another
        process holds it."""
        node = cls(config, **kwargs)
        try:
            async with anyio.create_task_group() as tg:
                node._tg = tg
                try:
                    yield node
                finally:
                    with anyio.CancelScope(shield=True):
                        await node.shutdown()
                    tg.cancel_scope.cancel()
        finally:
            node._close_files()

    async def shutdown(self) -> None:
        """Lock the node if it is unlocked (what leaving `open()` does)."""
        if self._session is not None:
            await self.lock()

    @property
    def state(self) -> NodeState:
        """The node's lifecycle state (changes only through init, unlock, lock, and the
        stores' reports)."""
        return self._state

    # -- lifecycle ---------------------------------------------------------------------

    async def init(self, password: str, mnemonic: str | None = None) -> str | None:
        """Seal the mnemonic (generated when None) under the password.

        Returns the generated mnemonic (show it once, it is never shown again), or None
        when one was given. Raises InvalidRequest (bad password or mnemonic) or
        AlreadyInitialized.
        """
        _check_password(password)
        async with self._lifecycle:
            if self._state is not NodeState.UNINITIALIZED:
                raise errors.AlreadyInitialized("the node is already initialised; unlock it instead")
            generated = mnemonic is None
            try:
                words = generate_mnemonic() if mnemonic is None else validate_mnemonic(mnemonic)
            except InvalidMnemonic as exc:
                raise errors.InvalidRequest(str(exc)) from None
            limits = self.config.vault_limits
            sealed = await anyio.to_thread.run_sync(
                lambda: seal_mnemonic(words, password) if limits is None else seal_mnemonic(
                    words, password, opslimit=limits[0], memlimit=limits[1]
                )
            )
            keys = await anyio.to_thread.run_sync(derive_keys, words)
            self.store.set_settings(
                {
                    settings.SEALED_MNEMONIC: sealed,
                    settings.NETWORK: self.config.network.encode(),
                    settings.PUBKEY: keys.pubkey_hex.encode(),
                    settings.FINGERPRINT: keys.fingerprint.encode(),
                }
            )
            self._state = NodeState.LOCKED
            log.info("node initialised for %s", self.config.network)
            return words if generated else None

    async def unlock(self, password: str) -> None:
        """Derive the keys, take the VSS stores, restore if empty, start the actors.

        Returns once the node is running. Raises WrongPassword, OwnershipConflict
        (another node holds the store), StoreDiverged (another node wrote it since),
        RestoreFailed; after any failure the node is locked, as before, and nothing
        was made live.
        """
        async with self._lifecycle:
            try:  # every refusal is logged with its reason, the wrong password as much as a failed restore
                self._require(NodeState.LOCKED)
                keys = await self._keys_from_password(password)
                assert self._tg is not None, "the node is not running: use Node.open()"
                self._state = NodeState.UNLOCKING
                try:
                    self._session = await self._tg.start(self._run_session, keys)
                except BaseException:
                    self._state = NodeState.LOCKED
                    raise
            except BaseException as exc:
                log.warning("unlock failed: %s", one_line(exc))
                raise
            self._state = NodeState.RUNNING
            log.info("node unlocked")

    async def lock(self) -> None:
        """Stop replication and the actors; writes already taken are committed first.

        Works from running, fenced and diverged. Raises NotInitialized or NodeLocked when
        there is nothing to lock."""
        async with self._lifecycle:
            if self._session is None:
                self._require(NodeState.RUNNING)
            session, done = self._session, self._session_done
            self._session = None
            self._state = NodeState.LOCKED
            if session is not None and done is not None:
                session.stop()
                await done.wait()
            log.info("node locked")

    async def clear_fence(self, password: str) -> bool:
        """While locked: delete the ownership fence so this node can take the store over.

        Returns whether there was a fence. Raises VssNotEnabled, NodeNotLocked,
        WrongPassword, VssUnavailable."""
        async with self._lifecycle:
            self._require_vss()
            self._require(NodeState.LOCKED)
            keys = await self._keys_from_password(password)
            port = self._new_port(keys)
            try:
                return await clear_fence(port, keys.kv_store_id)
            except VssError as exc:
                raise errors.VssUnavailable(f"could not clear the fence: {exc}") from exc
            finally:
                await port.aclose()

    async def _keys_from_password(self, password: str) -> NodeKeys:
        _check_password(password)
        sealed = self.store.get_setting(settings.SEALED_MNEMONIC)
        if sealed is None:
            raise errors.NotInitialized("the node is not initialised; call /init first")
        mnemonic = await anyio.to_thread.run_sync(open_mnemonic, sealed, password)
        return await anyio.to_thread.run_sync(derive_keys, mnemonic)

    def _require(self, wanted: NodeState) -> None:
        if self._state is wanted:
            return
        if self._state is NodeState.UNINITIALIZED:
            raise errors.NotInitialized("the node is not initialised; call /init first")
        if wanted is NodeState.LOCKED:
            raise errors.NodeNotLocked(f"the node is {self._state.value}; lock it first")
        if self._state is NodeState.FENCED:
            raise errors.OwnershipLost("this node lost ownership of its VSS store to another node; it no longer writes")
        raise errors.NodeLocked(f"the node is {self._state.value}; unlock it first")

    def _require_vss(self) -> None:
        if not self.config.vss_enabled:
            raise errors.VssNotEnabled("VSS is not enabled on this node; start it with --vss-url")

    def _new_port(self, keys: NodeKeys) -> VssPort:
        if self._vss_port is not None:
            return self._vss_port(keys)
        config = self.config
        assert config.vss_url is not None
        try:
            auth = headers_auth(keys.signing_key, dict(config.vss_headers), config.vss_header_file)
            return VssClient(
                config.vss_url,
                auth,
                transport=self._vss_transport,
                max_connections=64,
                # a value, once encrypted (7% larger), and the response around it
                max_response_bytes=config.max_value_bytes + config.max_value_bytes // 8 + 1024 * 1024,
                ca_file=config.vss_ca_file,
            )
        except ValueError as exc:  # the header file or the CA file became unusable
            raise errors.VssUnavailable(f"cannot set up the VSS client: {exc}") from None

    # -- one unlocked session ----------------------------------------------------------

    async def _run_session(self, keys: NodeKeys, *, task_status: TaskStatus[Session]) -> None:
        port = self._new_port(keys) if self.config.vss_enabled else None
        done = anyio.Event()
        self._session_done = done
        session: Session | None = None
        try:
            session = Session(self.store, self.config, keys, self.metrics, port, self._streams_stopped)
            await session.prepare(self._publish_restore)
            await session.run(task_status=task_status)
        except Exception as exc:
            if session is None or not session.started:
                raise  # unlock fails and says why
            cause = one_line(first_cause(exc) if isinstance(exc, BaseExceptionGroup) else exc)
            if self._state in (NodeState.FENCED, NodeState.DIVERGED):
                # The session stays, stopped: its last figures still answer, and lock() ends it.
                log.error("the node's actors failed (%s) after the node turned %s; it stays %s until it is locked",
                          cause, self._state.value, self._state.value, exc_info=exc)
                return
            # An actor failed: stop the session rather than the whole process.
            log.error("the node's actors failed (%s); the node is now locked, unlock to retry", cause, exc_info=exc)
            self._state, self._session = NodeState.LOCKED, None
        finally:
            done.set()
            if port is not None:
                with anyio.CancelScope(shield=True):
                    await port.aclose()

    def _publish_restore(self, status: RestoreStatus) -> None:
        self.restore_status = status

    def _streams_stopped(self, reason: BaseException) -> None:
        """The guard's one report: fenced (another owner) or diverged (another writer)."""
        if self._state is not NodeState.RUNNING:
            return
        if isinstance(reason, FenceLost):
            self._state = NodeState.FENCED
            log.error("this node lost ownership of its VSS store: state is now fenced; lock it to act")
        else:
            self._state = NodeState.DIVERGED
            log.error("another node wrote the VSS store: state is now diverged; local writes go on, owed")

    # -- the key-value state -------------------------------------------------------------

    def _writable(self) -> Session:
        if self._state is not NodeState.DIVERGED:
            self._require(NodeState.RUNNING)
        assert self._session is not None
        return self._session

    def _readable(self) -> Session:
        if self._state not in (NodeState.FENCED, NodeState.DIVERGED):
            self._require(NodeState.RUNNING)
        assert self._session is not None
        return self._session

    async def put(self, primary: str, secondary: str, key: str, value: bytes, *, durability: Durability = "local") -> None:
        """Store `value` under (primary, secondary, key).

        `durability="local"` returns once the value is durable on this machine (never
        waiting on VSS); `"remote"` also waits until it (or a newer value) is on the
        server. Raises InvalidNamespace, InvalidKey, ValueTooLarge, NodeLocked,
        OwnershipLost; with "remote" also VssNotEnabled, ReplicationTimeout (committed
        locally, still owed) and ReplicationRejected (the server refuses the value).
        """
        triple = _validated(primary, secondary, key)
        if len(value) > self.config.max_value_bytes:
            raise errors.ValueTooLarge(f"value of {len(value)} bytes is over the {self.config.max_value_bytes}-byte limit")
        await self._write(LocalChange(triple, bytes(value)), durability)

    async def delete(self, primary: str, secondary: str, key: str, *, durability: Durability = "local") -> None:
        """Delete the key (also when absent); `durability` as for `put`, and the same
        errors but ValueTooLarge."""
        await self._write(LocalChange(_validated(primary, secondary, key), None), durability)

    async def _write(self, change: LocalChange, durability: Durability) -> None:
        if durability not in ("local", "remote"):
            raise errors.InvalidRequest(f"durability must be 'local' or 'remote', not {durability!r}")
        if durability == "remote":
            self._require_vss()
        session = self._writable()
        request = WriteRequest(change)
        try:
            await session.writer_inbox.send(request)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise errors.NodeLocked("the node was locked before this write was committed") from None
        seq = await request.reply.wait()
        if durability == "remote":
            await self._landed(session, change.triple, seq)

    async def _landed(self, session: Session, triple: Triple, seq: int) -> None:
        wait = SendNow(triple, seq)
        timeout = self.config.remote_write_timeout_s
        try:
            with anyio.fail_after(timeout):
                await session.vss.replicator_inbox.send(wait)
                await wait.reply.wait()
        except TimeoutError:
            wait.reply.abandon()
            raise errors.ReplicationTimeout(
                f"the write is committed locally but did not reach VSS within {timeout:g} s; it is still owed and is "
                "sent once the server answers"
            ) from None
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise errors.NodeLocked("the node was locked before this write reached VSS; it is committed locally") from None

    async def get(self, primary: str, secondary: str, key: str) -> bytes:
        """The value of the key; raises NotFound, InvalidNamespace, InvalidKey, NodeLocked."""
        triple = _validated(primary, secondary, key)
        self._readable()
        value = await anyio.to_thread.run_sync(self.store.get, triple)
        if value is None:
            raise errors.NotFound(f"no value for key {key!r} in namespace {primary!r}/{secondary!r}")
        return value

    async def list_keys(self, primary: str, secondary: str) -> list[str]:
        """Every key name of the namespace, sorted; raises InvalidNamespace, NodeLocked."""
        _validated(primary, secondary, "k")
        self._readable()
        return await anyio.to_thread.run_sync(self.store.list_keys, primary, secondary)

    # -- the wallet directory ------------------------------------------------------------

    async def _to_wallet_keeper(self, message: WalletChange | BackupNow) -> None:
        """Hand the wallet keeper a message; the caller awaits its reply."""
        session = self._writable()
        try:
            await session.wallet_inbox.send(message)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise errors.NodeLocked("the node was locked before this wallet operation ran") from None

    async def wallet_write(self, path: str, data: bytes) -> None:
        """Write a wallet file atomically; returns once durable (a backup follows).
        Raises InvalidPath, ValueTooLarge, NodeLocked, OwnershipLost."""
        wallet_files.split_path(path)
        if len(data) > self.config.max_value_bytes:
            raise errors.ValueTooLarge(f"file of {len(data)} bytes is over the {self.config.max_value_bytes}-byte limit")
        change = WalletChange(path, bytes(data))
        await self._to_wallet_keeper(change)
        await change.reply.wait()

    async def wallet_delete(self, path: str) -> None:
        """Delete a wallet file; deleting an absent file succeeds and changes nothing.
        Raises InvalidPath, NodeLocked, OwnershipLost."""
        wallet_files.split_path(path)
        change = WalletChange(path, None)
        await self._to_wallet_keeper(change)
        await change.reply.wait()

    async def wallet_read(self, path: str) -> bytes:
        """The content of a wallet file; raises InvalidPath, NotFound, NodeLocked."""
        wallet_files.split_path(path)
        session = self._readable()
        return await anyio.to_thread.run_sync(wallet_files.read_file, session.home.root, path)

    async def wallet_list(self) -> list[WalletFile]:
        """Every file of the wallet directory with its size, sorted by path. Raises
        NodeLocked."""
        session = self._readable()
        found = await anyio.to_thread.run_sync(wallet_files.list_files, session.home.root)
        return [WalletFile(path, size) for path, size in found]

    async def backup_now(self, *, replace_unreadable: bool = False) -> int:
        """Upload the wallet now; returns the manifest version of a backup holding every
        earlier change. `replace_unreadable` uploads over a server backup this node could
        not read at its restore. Raises VssNotEnabled, WalletBackupUnreadable,
        VssUnavailable, OwnershipLost, StoreDiverged."""
        self._require_vss()
        request = BackupNow(replace_unreadable=replace_unreadable)
        await self._to_wallet_keeper(request)
        return await request.reply.wait()

    # -- VSS --------------------------------------------------------------------------------

    async def verify(self) -> AuditReport:
        """Fetch and decrypt the whole remote KV store and compare it with the local one,
        and check that the wallet backup restores. Raises VssNotEnabled, NodeLocked,
        VerifyInProgress (one at a time), VssUnavailable."""
        self._require_vss()
        session = self._writable()
        if self._state is not NodeState.RUNNING:
            raise errors.StoreDiverged("replication is stopped (another node wrote the store): lock the node and decide")
        if self._verifying.locked():
            raise errors.VerifyInProgress("a verification is already running; wait for it to finish")
        async with self._verifying:
            request = AuditNow(full=True)
            try:
                await session.vss.audit_inbox.send(request)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                raise errors.NodeLocked("the node was locked before the verification ran") from None
            try:
                report = await request.reply.wait()
            except VssError as exc:
                raise errors.VssUnavailable(f"the verification could not read the VSS store: {exc}") from exc
            return report

    # -- what the node tells about itself ----------------------------------------------------

    def info(self) -> dict[str, Any]:
        """State, network, store ids and restore progress, as `GET /nodeinfo` gives them."""
        pubkey = self.store.get_setting(settings.PUBKEY)
        store_ids = None
        if self.config.vss_enabled and pubkey is not None:
            store_ids = {"kv": pubkey.decode(), "wallet": pubkey.decode() + "_rgb"}
        restore = self.restore_status
        return {
            "state": self._state.value,
            "network": self.config.network,
            "vss_enabled": self.config.vss_enabled,
            "store_ids": store_ids,
            "restore": {
                "keys_listed": restore.keys_listed,
                "listing_done": restore.listing_done,
                "keys_done": restore.keys_done,
                "bytes_done": restore.bytes_done,
                "finished": restore.finished,
            },
        }

    def session_status(self) -> SessionStatus | None:
        """Frozen snapshots of what the running actors last saw (None while locked)."""
        session = self._session
        return None if session is None else session.status()

    def _home(self) -> WalletHome | None:
        fingerprint = self.store.get_setting(settings.FINGERPRINT)
        return None if fingerprint is None else WalletHome(self.config.data_dir, fingerprint.decode())

    async def backup_info(self) -> dict[str, Any]:
        """How far the backup lags and what the server holds, from what the node already
        knows (no network call): the fields of `GET /vssbackupinfo` (README, "The node
        API"). Raises VssNotEnabled."""
        self._require_vss()
        pending, oldest = await anyio.to_thread.run_sync(self.store.pending_stats)
        flags = await anyio.to_thread.run_sync(self._wallet_flags)
        status = self.session_status()
        replication = status.replication if status else None
        wallet = status.wallet if status else None
        audit = status.audit if status else None
        kv_error = None
        if replication is not None:
            kv_error = replication.stopped or replication.last_error or replication.rejected_error
        wallet_error = None
        if wallet is not None:
            wallet_error = wallet.stopped or wallet.last_error or (UNREADABLE_HINT if flags[REMOTE_UNREADABLE] else None)
        exists = wallet.backup_exists if wallet is not None and wallet.remote_known else None
        return {
            "backup_exists": exists,
            "backup_restorable": None if exists is None else bool(
                exists and not flags[REMOTE_INCOMPLETE] and not flags[REMOTE_UNREADABLE]
            ),
            "server_version": wallet.server_version if wallet is not None and wallet.remote_known else None,
            "backup_required": flags[BACKUP_REQUIRED] if flags else None,
            "pending_kv_writes": pending,
            "rejected_kv_writes": replication.rejected if replication else 0,
            "last_sync_at": replication.last_sync_at if replication else None,
            "oldest_pending_age_s": None if oldest is None else max(0.0, time.time() - oldest),
            "last_verified_at": audit.last_verified_at if audit else None,
            "verify_missing": audit.verify_missing if audit else None,
            "verify_extra": audit.verify_extra if audit else None,
            "fenced": self._state is NodeState.FENCED,
            "diverged": self._state is NodeState.DIVERGED,
            "kv_error": kv_error,
            "wallet_error": wallet_error,
            "server_error": kv_error or wallet_error,
        }

    def _wallet_flags(self) -> dict[str, bool]:
        home = self._home()
        return {name: home is not None and home.flag(name) for name in (BACKUP_REQUIRED, REMOTE_INCOMPLETE, REMOTE_UNREADABLE)}

    def gauges(self) -> dict[str, float]:
        """The node-wide figures of `/metrics` (read at scrape time, in a worker thread)."""
        pending, oldest = self.store.pending_stats()
        restore = self.restore_status
        figures: dict[str, float] = {
            "running": float(self._state is NodeState.RUNNING),
            "fenced": float(self._state is NodeState.FENCED),
            "diverged": float(self._state is NodeState.DIVERGED),
            "pending_kv_writes": pending,
            "replication_lag_seconds": 0.0 if oldest is None else max(0.0, time.time() - oldest),
            "restore_keys_listed": restore.keys_listed,
            "restore_keys_done": restore.keys_done,
            "restore_bytes_done": restore.bytes_done,
            "restore_finished": float(restore.finished),
        }
        status = self.session_status()
        if status is not None and status.replication is not None:
            figures["rejected_kv_writes"] = status.replication.rejected
            if status.replication.last_sync_at is not None:
                figures["last_sync_timestamp_seconds"] = status.replication.last_sync_at
        if status is not None and status.audit is not None and status.audit.last_verified_at is not None:
            figures["last_verified_timestamp_seconds"] = status.audit.last_verified_at
            figures["verify_missing"] = float(status.audit.verify_missing or 0)
            figures["verify_extra"] = float(status.audit.verify_extra or 0)
        if status is not None and self.config.vss_enabled:
            flags = self._wallet_flags()
            figures["wallet_backup_required"] = float(flags[BACKUP_REQUIRED])
            wallet = status.wallet
            if wallet.remote_known:
                restorable = bool(wallet.backup_exists) and not flags[REMOTE_INCOMPLETE] and not flags[REMOTE_UNREADABLE]
                figures["wallet_backup_restorable"] = float(restorable)
        return figures


def _check_password(password: object) -> None:
    if not isinstance(password, str) or not password:
        raise errors.InvalidRequest("a non-empty password string is required")


def _validated(primary: str, secondary: str, key: str) -> Triple:
    kv_keys.validate(primary, secondary, key)
    return (primary, secondary, key)


__all__ = ["Node", "NodeState", "WalletFile"]
