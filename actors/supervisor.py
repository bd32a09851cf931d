"""The node as a whole: its lifecycle, and the task group in which its actors live.

`Node` is also the Python API for using the node as a library, in-process:

    async with Node.open(NodeConfig(data_dir=Path("data"), vss_url="http://127.0.0.1:8081/vss")) as node:
        await node.init("password")            # returns the generated mnemonic
        await node.unlock("password")
        await node.put("payments", "", "k1", b"value")

Lifecycle: uninitialized --init--> locked --unlock--> unlocking (keys, fence, restore)
--> running --lock--> locked; a lost fence turns running into fenced. One lifecycle
change runs at a time. The actors of an unlocked node run in one task group, started by
unlock and cancelled by lock; nothing outlives it.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import httpx
from anyio.abc import ObjectSendStream, TaskGroup, TaskStatus

from actors.local_writer import LocalWriter
from actors.messages import Flush, WriteRequest
from actors.ownership_guard import OwnershipGuard, clear_fence, load_or_create_instance_id
from actors.replicator import Replicator
from actors import unlock
from actors.restorer import RestoreProgress
from actors.retry_queue import RetryQueue
from actors.wallet_backup import BackupNow, WalletChange, WalletKeeper
from actors.wallet_restorer import manifest_version
from actors.wallet_upload import WalletUploader
from node import errors, kv_keys, wallet_files
from node.config import ConfigError, NodeConfig
from node.keys import InvalidMnemonic, NodeKeys, derive_keys, generate_mnemonic, validate_mnemonic
from node.mnemonic_vault import WrongPassword, open_mnemonic, seal_mnemonic
from node.store import LocalStore, Triple, Write
from node.wallet_files import WalletHome
from vss.client import SignatureAuth, VssClient
from vss.errors import VssError

log = logging.getLogger(__name__)

# Settings rows (the node's own bookkeeping, never visible through /kv).
SEALED_MNEMONIC = "sealed_mnemonic"
NETWORK = "network"
PUBKEY = "pubkey_hex"
FINGERPRINT = "fingerprint"

WRITER_INBOX = 4096
REPLICATOR_INBOX = 1024
RETRY_INBOX = 1024
LOCK_FLUSH_S = 5.0
BACKUP_INFO_TIMEOUT_S = 5.0


class NodeState(str, enum.Enum):
    UNINITIALIZED = "uninitialized"
    LOCKED = "locked"
    UNLOCKING = "unlocking"
    RUNNING = "running"
    FENCED = "fenced"


@dataclass
class _Session:
    """What one unlocked period holds; created by unlock, dropped by lock."""

    keys: NodeKeys
    writer_inbox: ObjectSendStream
    writer: LocalWriter
    stopped: anyio.Event
    replicator: Replicator | None = None
    retry_queue: RetryQueue | None = None
    guard: OwnershipGuard | None = None
    client: VssClient | None = None
    stop: anyio.Event = field(default_factory=anyio.Event)
    wallet: WalletKeeper | None = None


class Node:
    def __init__(self, config: NodeConfig, *, vss_transport: httpx.AsyncBaseTransport | None = None) -> None:
        """Open the data dir. `vss_transport` lets tests put a fault injector under the client."""
        self.config = config
        self._vss_transport = vss_transport
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = LocalStore(config.data_dir / "node.sqlite3")
        recorded = self.store.get_setting(NETWORK)
        if recorded is not None and recorded.decode() != config.network:
            self.store.close()
            raise ConfigError(
                f"{config.data_dir} was initialised for {recorded.decode()}, not {config.network}; "
                "use the matching --network or another data dir"
            )
        self._state = NodeState.LOCKED if self.store.get_setting(SEALED_MNEMONIC) else NodeState.UNINITIALIZED
        self._session: _Session | None = None
        self._lifecycle = anyio.Lock()
        self._tg: TaskGroup | None = None
        self.restore_progress = RestoreProgress()

    # -- running the node ---------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(cls, config: NodeConfig, **kwargs: object) -> AsyncIterator[Node]:
        """Run a node for the duration of the block; locks it (flushing) on the way out."""
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
            node.store.close()

    async def shutdown(self) -> None:
        if self._session is not None:
            await self.lock()

    @property
    def state(self) -> NodeState:
        return self._state

    # -- lifecycle ---------------------------------------------------------------------

    async def init(self, password: str, mnemonic: str | None = None) -> str | None:
        """Seal the mnemonic under the password; returns the mnemonic if it generated it."""
        if not isinstance(password, str) or not password:
            raise errors.InvalidRequest("a non-empty password is required")
        async with self._lifecycle:
            if self._state is not NodeState.UNINITIALIZED:
                raise errors.AlreadyInitialized("the node is already initialised; unlock it instead")
            generated = mnemonic is None
            try:
                words = generate_mnemonic() if generated else validate_mnemonic(mnemonic)
            except InvalidMnemonic as exc:
                raise errors.InvalidRequest(str(exc)) from None
            sealed = await anyio.to_thread.run_sync(seal_mnemonic, words, password)
            keys = await anyio.to_thread.run_sync(derive_keys, words)
            self.store.set_settings(
                {
                    SEALED_MNEMONIC: sealed,
                    NETWORK: self.config.network.encode(),
                    PUBKEY: keys.pubkey_hex.encode(),
                    FINGERPRINT: keys.fingerprint.encode(),
                }
            )
            self._state = NodeState.LOCKED
            log.info("node initialised for %s", self.config.network)
            return words if generated else None

    async def _keys_from_password(self, password: str) -> NodeKeys:
        if not isinstance(password, str) or not password:
            raise errors.InvalidRequest("a non-empty password string is required")
        sealed = self.store.get_setting(SEALED_MNEMONIC)
        if sealed is None:
            raise errors.NotInitialized("the node is not initialised; call /init first")
        try:
            mnemonic = await anyio.to_thread.run_sync(open_mnemonic, sealed, password)
        except WrongPassword:
            raise errors.WrongPassword("wrong password") from None
        return await anyio.to_thread.run_sync(derive_keys, mnemonic)

    async def unlock(self, password: str) -> None:
        """Derive the keys, hold the fence, restore if empty, start the actors."""
        async with self._lifecycle:
            self._require(NodeState.LOCKED)
            keys = await self._keys_from_password(password)
            assert self._tg is not None, "the node is not running: use Node.open()"
            self._state = NodeState.UNLOCKING
            try:
                self._session = await self._tg.start(self._run_session, keys)
            except BaseException:
                self._state = NodeState.LOCKED
                raise
            self._state = NodeState.RUNNING
            log.info("node unlocked")

    async def lock(self) -> None:
        """Flush local commits, give replication a moment, stop every actor."""
        async with self._lifecycle:
            if self._session is None:
                self._require(NodeState.RUNNING)
            session, self._session = self._session, None
            self._state = NodeState.LOCKED
            session.stop.set()
            await session.stopped.wait()
            log.info("node locked")

    async def clear_fence(self, password: str) -> bool:
        """Delete the ownership fence (while locked) so this node can take the store over."""
        async with self._lifecycle:
            self._require_vss()
            self._require(NodeState.LOCKED)
            keys = await self._keys_from_password(password)
            async with self._new_client(keys) as client:
                try:
                    return await clear_fence(client, keys)
                except VssError as exc:
                    raise errors.VssUnavailable(f"could not clear the fence: {exc}") from exc

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

    def _new_client(self, keys: NodeKeys) -> VssClient:
        assert self.config.vss_url is not None
        return VssClient(
            self.config.vss_url, SignatureAuth(keys.signing_key), transport=self._vss_transport, max_connections=64
        )

    # -- one unlocked session ----------------------------------------------------------

    async def _run_session(self, keys: NodeKeys, *, task_status: TaskStatus) -> None:
        session_stopped = anyio.Event()
        client = self._new_client(keys) if self.config.vss_enabled else None
        running = False

        def started(session: _Session) -> None:
            nonlocal running
            running = True
            task_status.started(session)

        try:
            wallet = await unlock.stage_wallet_dir(self.store, self.config, client, keys)
            guard = None
            if client is not None:
                self.restore_progress = RestoreProgress()
                guard = await unlock.prepare_kv(self.store, self.config, client, keys, self.restore_progress)
            await unlock.install_wallet_dir(self.store, self.config, client, keys, wallet)
            await self._run_actors(keys, client, guard, session_stopped, started)
        except Exception:
            if not running:
                raise  # unlock fails and says why
            # An actor crashed: stop the session rather than the whole process.
            log.exception("the node's actors failed; the node is now locked, unlock to retry")
            self._state, self._session = NodeState.LOCKED, None
        finally:
            session_stopped.set()
            if client is not None:
                with anyio.CancelScope(shield=True):
                    await client.aclose()

    async def _run_actors(
        self,
        keys: NodeKeys,
        client: VssClient | None,
        guard: OwnershipGuard | None,
        session_stopped: anyio.Event,
        started: Callable[[_Session], None],
    ) -> None:
        writer_send, writer_recv = anyio.create_memory_object_stream[object](WRITER_INBOX)
        replicating = client is not None and guard is not None
        if replicating:
            repl_send, repl_recv = anyio.create_memory_object_stream[object](REPLICATOR_INBOX)
            retry_send, retry_recv = anyio.create_memory_object_stream[object](RETRY_INBOX)
            writer = LocalWriter(self.store, writer_recv, repl_send, retry_send)
        else:
            writer = LocalWriter(self.store, writer_recv)
        session = _Session(keys=keys, writer_inbox=writer_send, writer=writer, stopped=session_stopped)
        session.wallet = await self._new_wallet_keeper(keys, client, guard)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._run_wallet_keeper, session.wallet)
            if replicating:
                session.retry_queue = RetryQueue(
                    self.store, retry_recv, repl_send.clone(), capacity=self.config.retry_queue_capacity
                )
                session.replicator = Replicator(
                    self.store, guard, keys.signing_key, repl_recv, writer_send.clone(), retry_send.clone()
                )
                session.guard, session.client = guard, client
                tg.start_soon(self._run_replicator, session.replicator)
                tg.start_soon(session.retry_queue.run)
            tg.start_soon(session.writer.run)
            started(session)
            await session.stop.wait()
            with anyio.move_on_after(LOCK_FLUSH_S, shield=True):
                flush = Flush()
                await writer_send.send(flush)
                await flush.reply.wait()
            tg.cancel_scope.cancel()

    async def _run_replicator(self, replicator: Replicator) -> None:
        await replicator.run()
        if replicator.status.fenced and self._state is NodeState.RUNNING:
            self._state = NodeState.FENCED
            log.error("this node lost ownership of its VSS store: state is now fenced")

    # -- the wallet directory ------------------------------------------------------------

    def _wallet_home(self, keys: NodeKeys) -> WalletHome:
        return WalletHome(self.config.data_dir, keys.fingerprint)

    async def _new_wallet_keeper(self, keys: NodeKeys, client: VssClient | None, guard: OwnershipGuard | None) -> WalletKeeper:
        uploader = None
        if client is not None and guard is not None:
            instance_id = await anyio.to_thread.run_sync(load_or_create_instance_id, self.store)
            uploader = WalletUploader(client, keys, guard, instance_id)
        return WalletKeeper(self._wallet_home(keys), keys.signing_key, uploader)

    async def _run_wallet_keeper(self, keeper: WalletKeeper) -> None:
        await keeper.run()
        if keeper.status.fenced and self._state is NodeState.RUNNING:
            self._state = NodeState.FENCED
            log.error("this node lost ownership of its VSS store (seen by the wallet backup): state is now fenced")

    async def _to_wallet_keeper(self, message: WalletChange | BackupNow) -> object:
        session = self._writable_session()
        assert session.wallet is not None
        try:
            await session.wallet.inbox.send(message)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._require(NodeState.RUNNING)
            raise errors.NodeLocked("the node was locked before this wallet operation ran") from None
        return await message.reply.wait()

    async def wallet_write(self, path: str, data: bytes) -> None:
        """Write a wallet file atomically; returns once durable (a backup follows)."""
        wallet_files.split_path(path)
        if len(data) > self.config.max_value_bytes:
            raise errors.ValueTooLarge(f"file of {len(data)} bytes is over the {self.config.max_value_bytes}-byte limit")
        await self._to_wallet_keeper(WalletChange(path, bytes(data)))

    async def wallet_delete(self, path: str) -> None:
        """Delete a wallet file; deleting an absent file succeeds and changes nothing."""
        wallet_files.split_path(path)
        await self._to_wallet_keeper(WalletChange(path, None))

    async def wallet_read(self, path: str) -> bytes:
        wallet_files.split_path(path)
        self._readable()
        assert self._session is not None
        return await anyio.to_thread.run_sync(wallet_files.read_file, self._wallet_home(self._session.keys).root, path)

    async def wallet_list(self) -> list[dict]:
        self._readable()
        assert self._session is not None
        found = await anyio.to_thread.run_sync(wallet_files.list_files, self._wallet_home(self._session.keys).root)
        return [{"path": path, "size": size} for path, size in found]

    async def backup_now(self) -> int:
        """Upload the wallet now; the manifest version of a backup holding every earlier change."""
        self._require_vss()
        version = await self._to_wallet_keeper(BackupNow())
        assert isinstance(version, int)
        return version

    async def _wallet_backup_info(self, session: _Session | None) -> dict:
        fingerprint = self.store.get_setting(FINGERPRINT)
        required = None
        if fingerprint is not None:
            home = WalletHome(self.config.data_dir, fingerprint.decode())
            required = await anyio.to_thread.run_sync(home.backup_required)
        info: dict = {
            "backup_exists": None,
            "server_version": None,
            "backup_required": required,
            "last_backup_error": session.wallet.status.last_error if session and session.wallet else None,
        }
        if session is None or session.client is None:
            return info  # locked: the keys that sign for the server are not in memory
        try:
            with anyio.fail_after(BACKUP_INFO_TIMEOUT_S):
                version = await manifest_version(session.client, session.keys)
        except (VssError, TimeoutError) as exc:
            info["server_error"] = f"reading the wallet backup from VSS failed: {exc or 'timed out'}"
            return info
        info["backup_exists"], info["server_version"] = version is not None, version
        return info

    # -- the key-value state -------------------------------------------------------------

    def _writable_session(self) -> _Session:
        self._require(NodeState.RUNNING)
        assert self._session is not None
        return self._session

    def _readable(self) -> None:
        if self._state is not NodeState.FENCED:
            self._require(NodeState.RUNNING)

    async def put(self, primary: str, secondary: str, key: str, value: bytes) -> None:
        """Store `value`; returns once it is durable locally (never waits on VSS)."""
        triple = _validated(primary, secondary, key)
        if len(value) > self.config.max_value_bytes:
            raise errors.ValueTooLarge(f"value of {len(value)} bytes is over the {self.config.max_value_bytes}-byte limit")
        await self._write(Write(triple, bytes(value)))

    async def delete(self, primary: str, secondary: str, key: str) -> None:
        await self._write(Write(_validated(primary, secondary, key), None))

    async def _write(self, write: Write) -> None:
        session = self._writable_session()
        request = WriteRequest(write)
        try:
            await session.writer_inbox.send(request)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise errors.NodeLocked("the node was locked before this write was committed") from None
        await request.reply.wait()

    async def get(self, primary: str, secondary: str, key: str) -> bytes:
        triple = _validated(primary, secondary, key)
        self._readable()
        value = await anyio.to_thread.run_sync(self.store.get, triple)
        if value is None:
            raise errors.NotFound(f"no value for key {key!r} in namespace {primary!r}/{secondary!r}")
        return value

    async def list_keys(self, primary: str, secondary: str) -> list[str]:
        _validated(primary, secondary, "k")
        self._readable()
        return await anyio.to_thread.run_sync(self.store.list_keys, primary, secondary)

    # -- what the node tells about itself ----------------------------------------------------

    def info(self) -> dict:
        pubkey = self.store.get_setting(PUBKEY)
        store_ids = None
        if self.config.vss_enabled and pubkey is not None:
            store_ids = {"kv": pubkey.decode(), "wallet": pubkey.decode() + "_rgb"}
        progress = self.restore_progress
        return {
            "state": self._state.value,
            "network": self.config.network,
            "vss_enabled": self.config.vss_enabled,
            "store_ids": store_ids,
            "restore": {"keys_done": progress.keys_done, "bytes_done": progress.bytes_done, "finished": progress.finished},
        }

    async def backup_info(self) -> dict:
        """Backup lag and server state. Always answers; server fields are None when unreachable."""
        self._require_vss()
        pending, oldest = await anyio.to_thread.run_sync(self.store.pending_stats)
        session = self._session
        status = session.replicator.status if session is not None and session.replicator is not None else None
        info = {
            "backup_exists": None,
            "server_version": None,
            "backup_required": None,
            "pending_kv_writes": pending,
            "last_sync_at": status.last_sync_at if status else None,
            "oldest_pending_age_s": None if oldest is None else max(0.0, time.time() - oldest),
            "server_error": status.last_error if status else None,
            "fenced": self._state is NodeState.FENCED,
        }
        info.update(await self._wallet_backup_info(session))
        return info

    def metrics(self) -> dict[str, float]:
        """Figures for /metrics, named as exported (without the `vssnode_` prefix)."""
        pending, oldest = self.store.pending_stats()
        session = self._session
        figures: dict[str, float] = {
            "running": float(self._state is NodeState.RUNNING),
            "fenced": float(self._state is NodeState.FENCED),
            "pending_kv_writes": pending,
            "replication_lag_seconds": 0.0 if oldest is None else max(0.0, time.time() - oldest),
            "restore_keys_done": self.restore_progress.keys_done,
            "restore_bytes_done": self.restore_progress.bytes_done,
            "restore_finished": float(self.restore_progress.finished),
        }
        if session is not None:
            figures["local_commits_total"] = session.writer.commits
        if session is not None and session.replicator is not None and session.retry_queue is not None:
            status = session.replicator.status
            figures["replicated_keys_total"] = status.keys_sent
            figures["replication_batches_total"] = status.batches_sent
            figures["replication_failures_total"] = status.failures
            figures["retry_queue_keys"] = len(session.retry_queue)
            figures["retry_queue_dropped_total"] = session.retry_queue.dropped
            if status.last_sync_at is not None:
                figures["last_sync_timestamp_seconds"] = status.last_sync_at
        if session is not None and session.wallet is not None:
            wallet = session.wallet.status
            figures["wallet_backups_total"] = wallet.uploads
            figures["wallet_backup_failures_total"] = wallet.failures
        return figures


def _validated(primary: str, secondary: str, key: str) -> Triple:
    try:
        kv_keys.validate(primary, secondary, key)
    except kv_keys.InvalidNamespace as exc:
        raise errors.InvalidNamespace(str(exc)) from None
    except kv_keys.InvalidKey as exc:
        raise errors.InvalidKey(str(exc)) from None
    return (primary, secondary, key)
