"""One unlocked period of a node: its channels and actors, their start and their stop.

Built by unlock, dropped by lock. `prepare()` does the VSS work that must finish before
the node runs (take the stores, restore); `run()` starts the actors and returns only
when they have stopped. Stopping is ordered: the VSS side first (guard, replicator,
retry-queue, auditor, wallet keeper), so nothing more is sent; then the local-writer
commits what it was handed (the stores' versions the guard recorded included) and stops.

The session hands out frozen snapshots of what its actors last saw (`status()`), and
passes the guard's one report (fenced, diverged) on to the node, whose state machine
decides what it means. No actor reads another's fields, and none touches the node's
lifecycle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from actors import unlock
from actors.auditor import Auditor, AuditStatus
from actors.local_writer import LocalWriter
from actors.messages import (
    AuditorMessage,
    Flush,
    GuardMessage,
    ReplicatorMessage,
    RetryMessage,
    WalletMessage,
    WriterMessage,
)
from actors.metrics import NodeMetrics
from actors.ownership_guard import OwnershipGuard, StoreEvent, load_or_create_instance_id, recorded_versions
from actors.replicator import ReplicationStatus, Replicator
from actors.restorer import RestoreStatus
from actors.retry_queue import RetryQueue
from actors.vss_port import VssPort
from actors.wallet_keeper import WalletKeeper, WalletStatus
from actors.wallet_restorer import install_wallet, stage_wallet
from actors.wallet_upload import WalletUploader
from node import errors
from node.config import NodeConfig
from node.keys import NodeKeys
from node.store import LocalStore
from node.wallet_files import WalletHome

log = logging.getLogger(__name__)

WRITER_INBOX = 4096
REPLICATOR_INBOX = 1024
RETRY_INBOX = 1024
GUARD_INBOX = 64
WALLET_INBOX = 256
AUDIT_INBOX = 8
LOCK_FLUSH_S = 5.0


@dataclass(frozen=True)
class SessionStatus:
    """What the actors of one session last saw, each part a frozen snapshot."""

    replication: ReplicationStatus | None
    wallet: WalletStatus
    audit: AuditStatus | None


@dataclass
class VssActors:
    """The actors that talk to the VSS server, and the inboxes the node sends them;
    a session without VSS has none of them."""

    guard: OwnershipGuard
    guard_in: MemoryObjectReceiveStream[GuardMessage]
    replicator: Replicator
    retry_queue: RetryQueue
    auditor: Auditor
    replicator_inbox: MemoryObjectSendStream[ReplicatorMessage]
    audit_inbox: MemoryObjectSendStream[AuditorMessage]


class Session:
    def __init__(
        self,
        store: LocalStore,
        config: NodeConfig,
        keys: NodeKeys,
        metrics: NodeMetrics,
        port: VssPort | None,
        report: Callable[[BaseException], None],
    ) -> None:
        self._store = store
        self._config = config
        self._keys = keys
        self._port = port
        self._report = report
        self.home = WalletHome(config.data_dir, keys.fingerprint)
        self._stop = anyio.Event()
        self.started = False  # the actors run (before: unlock can still fail)
        self.writer_inbox, writer_in = anyio.create_memory_object_stream[WriterMessage](WRITER_INBOX)
        self.wallet_inbox, wallet_in = anyio.create_memory_object_stream[WalletMessage](WALLET_INBOX)
        self._vss: VssActors | None = None
        if port is None:
            self.writer = LocalWriter(store, writer_in, metrics)
            self.wallet = WalletKeeper(self.home, keys.signing_key, wallet_in, self.wallet_inbox.clone(), metrics)
            return
        replicator_inbox, replicator_in = anyio.create_memory_object_stream[ReplicatorMessage](REPLICATOR_INBOX)
        retry_inbox, retry_in = anyio.create_memory_object_stream[RetryMessage](RETRY_INBOX)
        guard_inbox, guard_in = anyio.create_memory_object_stream[GuardMessage](GUARD_INBOX)
        audit_inbox, audit_in = anyio.create_memory_object_stream[AuditorMessage](AUDIT_INBOX)
        self.writer = LocalWriter(store, writer_in, metrics, replicator_inbox.clone(), retry_inbox.clone())
        uploader = WalletUploader(port, keys, guard_inbox.clone(), self.home)
        self.wallet = WalletKeeper(
            self.home, keys.signing_key, wallet_in, self.wallet_inbox.clone(), metrics, port=port, keys=keys, uploader=uploader
        )
        self._vss = VssActors(
            guard=OwnershipGuard(
                port,
                keys,
                load_or_create_instance_id(store),
                recorded_versions(store),
                store,
                accept_divergence=config.vss_accept_divergence,
                metrics=metrics,
            ),
            guard_in=guard_in,
            replicator=Replicator(
                store, keys.signing_key, replicator_in, guard_inbox.clone(), self.writer_inbox.clone(), retry_inbox.clone(),
                metrics,
            ),
            retry_queue=RetryQueue(store, retry_in, replicator_inbox.clone(), metrics, capacity=config.retry_queue_capacity),
            auditor=Auditor(
                port, keys, store, self.home, audit_in, self.writer_inbox.clone(), self.wallet_inbox.clone(),
                interval_s=config.vss_verify_interval_s,
            ),
            replicator_inbox=replicator_inbox,
            audit_inbox=audit_inbox,
        )
        self._auditor_scope = anyio.CancelScope()

    @property
    def vss(self) -> VssActors:
        """The VSS side of the session; raises VssNotEnabled for a node without VSS."""
        if self._vss is None:
            raise errors.VssNotEnabled("VSS is not enabled on this node; start it with --vss-url")
        return self._vss

    async def prepare(self, publish_restore: Callable[[RestoreStatus], None]) -> None:
        """Before the node runs: take the stores and restore (VSS on), or put the wallet
        directory in place (VSS off). Raises the NodeError that refuses the unlock."""
        if self._port is None or self._vss is None:
            stage = await stage_wallet(None, self._keys, self.home, allow_empty_restore=False)
            await install_wallet(stage, self.home, owed_to_server=False)
            return
        guard = self._vss.guard
        seen = await unlock.prepare(self._store, self._config, self._port, self._keys, guard, self.home, publish_restore)
        if seen is not None:
            self.wallet.knows(seen)

    async def run(self, *, task_status: TaskStatus[Session]) -> None:
        """Run the actors until `stop()`; an actor's failure ends the session with it."""
        async with anyio.create_task_group() as outer:
            outer.start_soon(self.writer.run)
            async with anyio.create_task_group() as vss:
                vss.start_soon(self.wallet.run)
                if self._vss is not None:
                    actors = self._vss
                    vss.start_soon(actors.guard.run, actors.guard_in, self.writer_inbox.clone(), self.wallet_inbox.clone(),
                                   self._on_store_event)
                    vss.start_soon(actors.replicator.run)
                    vss.start_soon(actors.retry_queue.run)
                    vss.start_soon(self._run_auditor, actors.auditor)
                self.started = True
                task_status.started(self)
                await self._stop.wait()
                vss.cancel_scope.cancel()
            with anyio.move_on_after(LOCK_FLUSH_S, shield=True):
                flush = Flush()
                await self.writer_inbox.send(flush)
                await flush.reply.wait()
            outer.cancel_scope.cancel()

    async def _run_auditor(self, auditor: Auditor) -> None:
        with self._auditor_scope:
            await auditor.run()

    def _on_store_event(self, event: StoreEvent) -> None:
        """The guard stopped both streams for good: no more comparisons either."""
        self._auditor_scope.cancel()
        self._report(event.reason)

    def stop(self) -> None:
        self._stop.set()

    def status(self) -> SessionStatus:
        return SessionStatus(
            replication=self._vss.replicator.status if self._vss else None,
            wallet=self.wallet.status,
            audit=self._vss.auditor.status if self._vss else None,
        )


__all__ = ["Session", "SessionStatus"]
