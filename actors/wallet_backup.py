"""wallet-backup: the only writer of the wallet directory, and the uploader of its backups.

Owns: the wallet directory (`DATA_DIR/wallet/<fingerprint>/`), its durable "backup
required" marker, the upload rounds, and the figures it publishes (`WalletBackupStatus`).
Receives: WalletChange (api: write or delete one file), BackupNow (api: POST /vssbackup),
and _UploadDone from its own upload task.
Sends: the wallet store's putObjects, through WalletUploader, one upload at a time.

Guarantees:
- a change is answered once it is durable; the marker is made durable just before the
  change, so "backup required" survives a crash at any point;
- changes and builds take turns in one loop, so a build never sees half a change; the
  upload (network) runs in a task of its own, so changes carry on meanwhile;
- coalescing: changes made while an upload runs only leave the wallet dirty, and one
  more upload follows, built after all of them, so the last change always reaches the
  server; the marker is cleared only by an upload built after the latest change;
- BackupNow is answered with the manifest version of an upload *built after it
  arrived* (so it holds every change made before), or with the reason it failed;
- a failed automatic upload is retried with backoff (1 s doubling up to 60 s) without
  waiting for another change; a BackupNow does not wait for the backoff;
- after the fence is lost nothing more is uploaded: `run()` returns, and the node
  turns fenced. Requests still queued are answered, never left hanging.
With VSS off there is no uploader: the actor still serializes the wallet's changes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import anyio
from anyio.abc import TaskGroup

from actors.messages import Reply
from actors.ownership_guard import FenceLost
from actors.wallet_upload import WalletUploader
from node import errors, wallet_files
from node.wallet_archive import WalletBackup, build_backup
from node.wallet_files import WalletHome
from vss.errors import VssError

log = logging.getLogger(__name__)

INBOX = 256
RETRY_BASE_S = 1.0
RETRY_MAX_S = 60.0


@dataclass
class WalletChange:
    """api → wallet-backup: write `data` at `path` (None deletes it); answered once durable."""

    path: str
    data: bytes | None
    reply: Reply[None] = field(default_factory=Reply)


@dataclass
class BackupNow:
    """api → wallet-backup: answer with the manifest version of a backup holding every
    change made before this request."""

    reply: Reply[int] = field(default_factory=Reply)


@dataclass
class _UploadDone:
    """upload task → its loop: round `number`, built at change `seq`, ended so."""

    number: int
    seq: int
    version: int | None = None
    error: str | None = None
    fenced: bool = False


@dataclass(frozen=True)
class WalletBackupStatus:
    """What the wallet-backup last saw; replaced whole, never mutated, so readers are safe."""

    uploads: int = 0
    failures: int = 0
    last_version: int | None = None
    last_backup_at: float | None = None
    last_error: str | None = None
    fenced: bool = False


class WalletKeeper:
    def __init__(self, home: WalletHome, signing_key: bytes, uploader: WalletUploader | None) -> None:
        self._home = home
        self._signing_key = signing_key
        self._uploader = uploader
        self.inbox, self._inbox = anyio.create_memory_object_stream[object](INBOX)
        self._seq = 0  # changes applied this session
        self._dirty = False  # mirrors the marker on disk
        self._rounds = 0  # builds started
        self._uploading = False
        self._waiters: list[tuple[int, Reply[int]]] = []  # (round it needs, reply)
        self._failures_in_a_row = 0
        self._retry_at: float | None = None
        self.status = WalletBackupStatus()

    async def run(self) -> None:
        """Serve until cancelled (lock), or return once the fence is lost."""
        try:
            self._dirty = await anyio.to_thread.run_sync(self._home.backup_required)
            async with anyio.create_task_group() as tg:
                while not self.status.fenced:
                    if self._round_due():
                        await self._start_round(tg)
                    message = await self._next_message()
                    if message is not None:
                        await self._handle(message)
                tg.cancel_scope.cancel()
        finally:
            self._close()

    # -- the loop ------------------------------------------------------------------

    def _round_due(self) -> bool:
        if self._uploader is None or self._uploading:
            return False
        if self._waiters:
            return True
        return self._dirty and (self._retry_at is None or anyio.current_time() >= self._retry_at)

    async def _next_message(self) -> object | None:
        """The next message; None when a scheduled retry is due first."""
        if self._retry_at is not None and self._dirty and not self._uploading:
            with anyio.move_on_after(max(0.0, self._retry_at - anyio.current_time())):
                return await self._inbox.receive()
            return None
        return await self._inbox.receive()

    async def _handle(self, message: object) -> None:
        if isinstance(message, WalletChange):
            await self._apply(message)
        elif isinstance(message, BackupNow):
            if self._uploader is None:
                message.reply.fail(errors.VssNotEnabled("VSS is not enabled on this node; start it with --vss-url"))
            else:
                self._waiters.append((self._rounds + 1, message.reply))
        elif isinstance(message, _UploadDone):
            await self._settle(message)

    async def _apply(self, change: WalletChange) -> None:
        marked = []

        def mark() -> None:  # in the worker thread, right before the directory changes
            if not self._dirty:
                self._home.mark_backup_required()
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
            change.reply.set()
        else:
            change.reply.fail(failure)

    # -- upload rounds -----------------------------------------------------------------

    async def _start_round(self, tg: TaskGroup) -> None:
        self._rounds += 1
        number, seq = self._rounds, self._seq
        home = self._home
        try:
            backup = await anyio.to_thread.run_sync(
                build_backup, home.root, home.fingerprint, self._signing_key, home.work_dir
            )
        except Exception as exc:  # a symlink or special file planted in the wallet, a disk error
            await self._settle(_UploadDone(number, seq, error=f"building the wallet backup failed: {_describe(exc)}"))
            return
        self._uploading = True
        tg.start_soon(self._upload, number, seq, backup)

    async def _upload(self, number: int, seq: int, backup: WalletBackup) -> None:
        assert self._uploader is not None
        try:
            version = await self._uploader.upload(backup)
            done = _UploadDone(number, seq, version=version)
        except FenceLost:
            done = _UploadDone(number, seq, fenced=True)
        except Exception as exc:
            if not isinstance(exc, (VssError, OSError)):
                log.exception("unexpected failure of a wallet backup upload")
            done = _UploadDone(number, seq, error=_describe(exc))
        finally:
            backup.discard()
        await self.inbox.send(done)

    async def _settle(self, done: _UploadDone) -> None:
        self._uploading = False
        if done.fenced:
            self.status = replace(self.status, fenced=True, last_error="ownership lost to another node")
            self._answer(done.number, failure=_ownership_lost)
            return
        if done.error is not None:
            self._failures_in_a_row += 1
            delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (self._failures_in_a_row - 1))
            self._retry_at = anyio.current_time() + delay
            self.status = replace(self.status, failures=self.status.failures + 1, last_error=done.error)
            log.warning("wallet backup failed (%s); next try in %.0f s", done.error, delay)
            error = done.error
            self._answer(done.number, failure=lambda: errors.VssUnavailable(f"the wallet backup did not reach VSS: {error}"))
            return
        self._failures_in_a_row = 0
        self._retry_at = None
        if done.seq == self._seq and self._dirty:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._home.clear_backup_required)
            self._dirty = False
        self.status = replace(
            self.status,
            uploads=self.status.uploads + 1,
            last_version=done.version,
            last_backup_at=time.time(),
            last_error=None,
        )
        log.info("wallet backup uploaded: manifest version %s", done.version)
        self._answer(done.number, version=done.version)

    def _answer(self, number: int, version: int | None = None, failure: Callable[[], errors.NodeError] | None = None) -> None:
        """Answer the BackupNow requests that round `number` satisfies."""
        waiting = []
        for needed, reply in self._waiters:
            if needed > number:
                waiting.append((needed, reply))
            elif failure is not None:
                reply.fail(failure())
            else:
                reply.set(version)
        self._waiters = waiting

    def _close(self) -> None:
        """Answer everything still waiting, and refuse what comes later."""
        failure = _ownership_lost if self.status.fenced else _stopped
        for _, reply in self._waiters:
            reply.fail(failure())
        self._waiters = []
        while True:
            try:
                message = self._inbox.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
            if isinstance(message, (WalletChange, BackupNow)):
                message.reply.fail(failure())
        self._inbox.close()
        self.inbox.close()


def _ownership_lost() -> errors.NodeError:
    return errors.OwnershipLost("this node lost ownership of its VSS store to another node; it no longer writes")


def _stopped() -> errors.NodeError:
    return errors.NodeLocked("the node was locked before this wallet operation ran; unlock it and try again")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
