"""wallet-keeper: the only writer of the wallet directory, and the uploader of its backups.

Owns: the wallet directory (`DATA_DIR/wallet/<fingerprint>/`), its durable markers
(backup required, remote unreadable; the uploader sets "remote incomplete"), the upload
rounds, what it knows of the server's backup, and the figures it publishes
(`WalletStatus`).
Receives: WalletChange and BackupNow (api), OweWallet (ownership-guard), CheckRemote
(auditor), and UploadDone / RemoteSeen from its own tasks.
Sends: the wallet store's writes through WalletUploader (so through the guard), one
upload at a time; reads of the server's manifest.

Guarantees:
- a change is answered once it is durable; the "backup required" marker is made
  durable just before the change, so it survives a crash at any point;
- changes and builds take turns in one loop, so a build never sees half a change; the
  upload (network) runs in a task of its own, so changes carry on meanwhile;
- coalescing: changes made while an upload runs only leave the wallet dirty, and one
  more upload follows, built after all of them, so the last change always reaches the
  server; the marker is cleared only by an upload built after the latest change;
- BackupNow is answered with the manifest version of an upload *built after it
  arrived* (so it holds every change made before), or with the reason it failed;
- a failed automatic upload is retried with backoff (1 s doubling up to 60 s) without
  waiting for another change; a BackupNow does not wait for the backoff; an outage logs
  one line when the failures start and one when a backup lands again, not one per try;
- a server backup this node could not read (a failed restore the operator allowed to
  start empty) is never uploaded over automatically: only a BackupNow with
  `replace_unreadable` does, or the server turning out to hold no backup at all;
- once the store is fenced or diverged nothing more is uploaded; changes go on (while
  diverged the node still takes them) and stay marked. Requests still queued at the
  end are answered, never left hanging.
With VSS off there is no uploader: the actor still serializes the wallet's changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from actors.messages import BackupNow, CheckRemote, OweWallet, RemoteSeen, Reply, UploadDone, WalletChange, WalletMessage
from actors.metrics import NodeMetrics
from actors.ownership_guard import DivergenceFound, FenceLost
from actors.vss_port import VssPort
from actors.wallet_upload import WalletUploader
from node import errors, wallet_files
from node.keys import NodeKeys
from node.wallet_archive import WalletBackup, build_backup
from node.wallet_files import BACKUP_REQUIRED, REMOTE_UNREADABLE, WalletHome
from node.wallet_format import MANIFEST_KEY
from vss.backoff import Backoff
from vss.errors import NoSuchKeyError, VssError, one_line
from vss.wording import counted

log = logging.getLogger(__name__)

UPLOAD_BACKOFF = Backoff(base_s=1.0, max_s=60.0, jitter=0.0)
UNREADABLE_HINT = (
    "the VSS server holds a wallet backup this node could not read when it restored; nothing is uploaded over it "
    'until you ask with POST /vssbackup {"replace_unreadable": true}'
)


@dataclass(frozen=True)
class WalletStatus:
    """What the wallet keeper last saw; replaced whole, never mutated, so readers are safe."""

    uploads: int = 0
    failures: int = 0
    last_error: str | None = None
    remote_known: bool = False  # the fields below are from the server (or our uploads)
    backup_exists: bool | None = None
    server_version: int | None = None
    stopped: str | None = None


class WalletKeeper:
    def __init__(
        self,
        home: WalletHome,
        signing_key: bytes,
        inbox: MemoryObjectReceiveStream[WalletMessage],
        to_self: MemoryObjectSendStream[WalletMessage],
        metrics: NodeMetrics,
        *,
        port: VssPort | None = None,
        keys: NodeKeys | None = None,
        uploader: WalletUploader | None = None,
    ) -> None:
        self._home = home
        self._signing_key = signing_key
        self._inbox = inbox
        self._to_self = to_self
        self._metrics = metrics
        self._port = port
        self._keys = keys
        self._uploader = uploader
        self._seq = 0  # changes applied this session
        self._dirty = False  # mirrors the "backup required" marker
        self._unreadable = False  # mirrors the "remote unreadable" marker
        self._rounds = 0  # builds started
        self._uploading = False
        self._checking = False
        self._waiters: list[tuple[int, Reply[int]]] = []  # (round it needs, reply)
        self._failures_in_a_row = 0
        self._failing_since: float | None = None  # anyio clock, while uploads fail
        self._retry_at: float | None = None
        self._stopped: BaseException | None = None
        self._initially_seen: RemoteSeen | None = None
        self.status = WalletStatus()

    def knows(self, seen: RemoteSeen) -> None:
        """What unlock learned of the server's backup, before the keeper runs: published
        at once, so the node can say it as soon as unlock returns."""
        self._initially_seen = seen
        self.status = replace(self.status, remote_known=True, backup_exists=seen.version is not None,
                              server_version=seen.version)

    async def run(self) -> None:
        """Serve until cancelled (lock)."""
        try:
            self._dirty = await anyio.to_thread.run_sync(self._home.flag, BACKUP_REQUIRED)
            self._unreadable = await anyio.to_thread.run_sync(self._home.flag, REMOTE_UNREADABLE)
            async with anyio.create_task_group() as tg:
                if self._initially_seen is not None:
                    await self._seen(self._initially_seen)
                else:
                    self._check_remote(tg)
                while True:
                    if self._round_due():
                        await self._start_round(tg)
                    message = await self._next_message()
                    if message is not None:
                        await self._handle(message, tg)
        finally:
            self._close()

    # -- the loop ------------------------------------------------------------------

    def _round_due(self) -> bool:
        if self._uploader is None or self._uploading or self._stopped is not None:
            return False
        if self._waiters:
            return True
        if self._unreadable:
            return False
        return self._dirty and (self._retry_at is None or anyio.current_time() >= self._retry_at)

    async def _next_message(self) -> WalletMessage | None:
        """The next message; None when a scheduled retry is due first."""
        if self._retry_at is not None and self._dirty and not self._uploading:
            with anyio.move_on_after(max(0.0, self._retry_at - anyio.current_time())):
                return await self._inbox.receive()
            return None
        return await self._inbox.receive()

    async def _handle(self, message: WalletMessage, tg: TaskGroup) -> None:
        if isinstance(message, WalletChange):
            await self._apply(message)
        elif isinstance(message, BackupNow):
            self._ask_backup(message)
        elif isinstance(message, OweWallet):
            await self._mark_dirty()
            self._retry_at = None
        elif isinstance(message, CheckRemote):
            self._check_remote(tg)
        elif isinstance(message, UploadDone):
            await self._settle(message)
        elif isinstance(message, RemoteSeen):
            await self._seen(message)

    def _ask_backup(self, request: BackupNow) -> None:
        if self._uploader is None:
            request.reply.fail(errors.VssNotEnabled("VSS is not enabled on this node; start it with --vss-url"))
        elif self._stopped is not None:
            request.reply.fail(_stopped_error(self._stopped))
        elif self._unreadable and not request.replace_unreadable:
            request.reply.fail(errors.WalletBackupUnreadable(UNREADABLE_HINT))
        else:
            self._waiters.append((self._rounds + 1, request.reply))

    async def _apply(self, change: WalletChange) -> None:
        marked = []

        def mark() -> None:  # in the worker thread, right before the directory changes
            if not self._dirty:
                self._home.set_flag(BACKUP_REQUIRED, True)
            marked.append(True)

        def apply() -> None:
            if change.data is None:
                wallet_files.delete_file(self._home.root, change.path, before_commit=mark)
            else:
                wallet_files.write_file(self._home.root, change.path, change.data, before_commit=mark)

        failure: BaseException | None = None
        try:
            with anyio.CancelScope(shield=True):  # a lock waits for a change under way: it is answered
                await anyio.to_thread.run_sync(apply)
        except Exception as exc:
            failure = exc
            if not isinstance(exc, errors.NodeError):
                log.error("wallet change of %r failed: %s", change.path, exc)
        if marked:
            self._dirty = True
            self._seq += 1
        if failure is None:
            change.reply.set(None)
        else:
            change.reply.fail(failure)

    async def _mark_dirty(self) -> None:
        if not self._dirty:
            await anyio.to_thread.run_sync(self._home.set_flag, BACKUP_REQUIRED, True)
            self._dirty = True
        self._seq += 1  # what the server has is older than anything built from now on

    # -- what the server holds ------------------------------------------------------------

    def _check_remote(self, tg: TaskGroup) -> None:
        if self._port is None or self._keys is None or self._checking:
            return
        self._checking = True
        tg.start_soon(self._read_manifest, self._port, self._keys.wallet_store_id)

    async def _read_manifest(self, port: VssPort, store_id: str) -> None:
        try:
            seen = RemoteSeen(version=(await port.get_object(store_id, MANIFEST_KEY)).version)
        except NoSuchKeyError:
            seen = RemoteSeen(version=None)
        except VssError as exc:
            seen = RemoteSeen(error=one_line(exc))
        await self._to_self.send(seen)

    async def _seen(self, seen: RemoteSeen) -> None:
        self._checking = False
        if seen.error is not None:
            log.debug("could not read the wallet manifest: %s", seen.error)
            return
        if seen.version is None and self._unreadable:
            # Nothing on the server to protect (the restore failed for another reason).
            await anyio.to_thread.run_sync(self._home.set_flag, REMOTE_UNREADABLE, False)
            self._unreadable = False
            log.info("the VSS server holds no wallet backup after all: the wallet is uploaded as usual")
        self.status = replace(self.status, remote_known=True, backup_exists=seen.version is not None,
                              server_version=seen.version)

    # -- upload rounds -----------------------------------------------------------------

    async def _start_round(self, tg: TaskGroup) -> None:
        self._rounds += 1
        number, seq = self._rounds, self._seq
        home = self._home
        try:
            backup = await anyio.to_thread.run_sync(build_backup, home.root, home.fingerprint, self._signing_key, home.work_dir)
        except Exception as exc:  # a symlink or special file planted in the wallet, a disk error
            await self._settle(UploadDone(number, seq, error=f"building the wallet backup failed: {one_line(exc)}"))
            return
        self._uploading = True
        tg.start_soon(self._upload, number, seq, backup)

    async def _upload(self, number: int, seq: int, backup: WalletBackup) -> None:
        assert self._uploader is not None
        try:
            done = UploadDone(number, seq, version=await self._uploader.upload(backup))
        except (FenceLost, DivergenceFound) as exc:
            done = UploadDone(number, seq, stopped=exc)
        except Exception as exc:
            if not isinstance(exc, (VssError, OSError)):
                log.exception("unexpected failure of a wallet backup upload")
            done = UploadDone(number, seq, error=one_line(exc))
        finally:
            backup.discard()
        await self._to_self.send(done)

    async def _settle(self, done: UploadDone) -> None:
        self._uploading = False
        stopped = done.stopped
        if stopped is not None:
            self._stopped = stopped
            self.status = replace(self.status, stopped=one_line(stopped), last_error=one_line(stopped))
            for _, reply in self._waiters:  # later rounds never come: everyone waiting hears now
                reply.fail(_stopped_error(stopped))
            self._waiters = []
            return
        if done.error is not None:
            self._failures_in_a_row += 1
            delay = UPLOAD_BACKOFF.delay(self._failures_in_a_row)
            self._retry_at = anyio.current_time() + delay
            self._metrics.wallet_backup_failures.inc()
            self.status = replace(self.status, failures=self.status.failures + 1, last_error=done.error)
            if self._failing_since is None:
                self._failing_since = anyio.current_time()
                log.warning("wallet backups are failing (%s); retried with backoff until one lands, the changes "
                            "stay marked owed meanwhile", done.error)
            else:
                log.debug("wallet backup failed again (%s); next try in %.0f s", done.error, delay)
            reason = f"the wallet backup did not reach VSS: {done.error}"  # one error per waiter: each raises its own
            self._answer(done.number, lambda reply: reply.fail(errors.VssUnavailable(reason)))
            return
        failed, self._failures_in_a_row = self._failures_in_a_row, 0
        failing_since, self._failing_since = self._failing_since, None
        self._retry_at = None
        with anyio.CancelScope(shield=True):
            if done.seq == self._seq and self._dirty:
                await anyio.to_thread.run_sync(self._home.set_flag, BACKUP_REQUIRED, False)
                self._dirty = False
            if self._unreadable:
                await anyio.to_thread.run_sync(self._home.set_flag, REMOTE_UNREADABLE, False)
                self._unreadable = False
                log.warning("uploaded over the wallet backup this node could not read, as the operator asked")
        self._metrics.wallet_backups.inc()
        self.status = replace(
            self.status,
            uploads=self.status.uploads + 1,
            last_error=None,
            remote_known=True,
            backup_exists=True,
            server_version=done.version,
        )
        if failing_since is None:
            log.info("wallet backup uploaded: manifest version %s", done.version)
        else:
            log.info("wallet backups work again: manifest version %s uploaded after %s in %.1f s",
                     done.version, counted(failed, "failed attempt"), anyio.current_time() - failing_since)
        version = done.version
        assert version is not None, "an upload that neither failed nor stopped landed at a version"
        self._answer(done.number, lambda reply: reply.set(version))

    def _answer(self, number: int, answer: Callable[[Reply[int]], None]) -> None:
        """Answer the BackupNow requests that round `number` satisfies."""
        waiting = []
        for needed, reply in self._waiters:
            if needed > number:
                waiting.append((needed, reply))
            else:
                answer(reply)
        self._waiters = waiting

    def _close(self) -> None:
        """Answer everything still waiting, and refuse what comes later."""
        for _, reply in self._waiters:
            reply.fail(_locked())
        self._waiters = []
        while True:
            try:
                message = self._inbox.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
            if isinstance(message, (WalletChange, BackupNow)):
                message.reply.fail(_locked())
        self._inbox.close()


def _stopped_error(reason: BaseException) -> errors.NodeError:
    if isinstance(reason, FenceLost):
        return errors.OwnershipLost("this node lost ownership of its VSS store to another node; it no longer writes")
    return errors.StoreDiverged(f"wallet backups stopped: {reason}")


def _locked() -> errors.NodeError:
    return errors.NodeLocked("the node was locked before this wallet operation ran; unlock it and try again")
