"""auditor: compares what the server holds with the local store (anti-entropy, verify).

Owns: the figures of the last comparison (`AuditStatus`): when, how many local keys the
server lacked, how many keys only the server has.
Receives: AuditNow (the node: `POST /vssverify`), and its own timer.
Sends: OweKeys to the local-writer (keys the server lacks are re-sent); CheckRemote to
the wallet-keeper (so it learns whether the wallet backup is still there).

Two depths:
- the periodic pass (after each unlock, in the background, then every
  `--vss-verify-interval`) lists the remote KV store and compares key sets;
- a full verify also fetches and decrypts every remote value and compares it with the
  local one, and checks that the wallet backup decrypts and unzips.
Keys still owed (unsynced markers) are left out of every count: they are expected to
differ. Keys only the server has are counted and reported, never deleted: they may be
another node's newer data. The remote listing is taken before the local snapshot, so a
key written meanwhile is owed (left out) rather than counted missing.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from actors.messages import AuditorMessage, AuditReport, CheckRemote, OweKeys, WalletMessage, WriterMessage
from actors.ownership_guard import FENCE_KEY
from actors.progress import Throttle
from actors.tasks import first_cause
from actors.vss_port import VssPort
from actors.wallet_restorer import restore_wallet
from node import crypto, errors, kv_keys, wallet_files
from node.durable import make_private_dirs
from node.keys import NodeKeys
from node.store import LocalStore, Triple
from node.wallet_files import WalletHome
from vss.errors import NoSuchKeyError, VssError, one_line
from vss.wording import counted

log = logging.getLogger(__name__)

FETCH_CONCURRENCY = 32
RETRY_AFTER_FAILURE_S = 300.0


@dataclass(frozen=True)
class AuditStatus:
    """The last comparison's figures; replaced whole, never mutated."""

    last_verified_at: float | None = None
    verify_missing: int | None = None
    verify_extra: int | None = None
    last_error: str | None = None


class Auditor:
    def __init__(
        self,
        port: VssPort,
        keys: NodeKeys,
        store: LocalStore,
        home: WalletHome,
        inbox: MemoryObjectReceiveStream[AuditorMessage],
        writer: MemoryObjectSendStream[WriterMessage],
        wallet_keeper: MemoryObjectSendStream[WalletMessage],
        *,
        interval_s: float,
    ) -> None:
        self._port = port
        self._keys = keys
        self._store = store
        self._home = home
        self._inbox = inbox
        self._writer = writer
        self._wallet_keeper = wallet_keeper
        self._interval = interval_s
        self.status = AuditStatus()

    async def run(self) -> None:
        """A first pass at once (unlock does not wait for it), then one per interval."""
        next_pass = anyio.current_time() if self._interval > 0 else None
        async with self._inbox:
            try:
                await self._serve(next_pass)
            finally:
                self._refuse_queued()

    def _refuse_queued(self) -> None:
        """Stopping (lock, or the store was lost): a verification still queued hears it."""
        while True:
            try:
                request = self._inbox.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return
            request.reply.fail(errors.NodeLocked("the comparison was stopped before it ran"))

    async def _serve(self, next_pass: float | None) -> None:
        while True:
            request = None
            with anyio.move_on_after(float("inf") if next_pass is None else max(0.0, next_pass - anyio.current_time())):
                request = await self._inbox.receive()
            try:
                report = await self.compare(full=request.full if request is not None else False)
                if request is not None:
                    request.reply.set(report)
            except (VssError, errors.NodeError) as exc:
                self.status = replace(self.status, last_error=one_line(exc))
                log.warning("comparing the VSS store with the local one failed: %s", one_line(exc))
                if request is not None:
                    request.reply.fail(exc)
                if next_pass is not None:
                    next_pass = anyio.current_time() + min(self._interval, RETRY_AFTER_FAILURE_S)
                continue
            finally:
                if request is not None:  # stopped half-way: answered all the same (no-op once answered)
                    request.reply.fail(errors.NodeLocked("the comparison was stopped before it finished"))
            if request is None and next_pass is not None:
                next_pass = anyio.current_time() + self._interval

    async def compare(self, *, full: bool) -> AuditReport:
        started = time.monotonic()
        remote = await self._remote_keys()
        local, owed = await anyio.to_thread.run_sync(self._store.key_sets)
        missing = sorted(local - remote.keys() - owed)
        extra = remote.keys() - local - owed
        mismatched = wallet_ok = None
        if full:
            log.info("verify: fetching and decrypting %s from VSS", counted(len(remote.keys() - owed), "key"))
            mismatched = await self._mismatched({t: k for t, k in remote.items() if t in local and t not in owed})
            wallet_ok = await self._wallet_restorable()
        if missing:
            log.warning("the VSS server lacks %s that it should have; re-sending them", counted(len(missing), "local key"))
            await self._writer.send(OweKeys(missing))
        if extra:
            log.warning("the VSS server holds %s that this node does not have (left alone)", counted(len(extra), "key"))
        await self._wallet_keeper.send(CheckRemote())
        self.status = AuditStatus(last_verified_at=time.time(), verify_missing=len(missing), verify_extra=len(extra))
        return AuditReport(
            keys_checked=len(remote) + len(local - remote.keys()),
            missing_on_server=len(missing),
            extra_on_server=len(extra),
            pending=len(owed),
            mismatched=mismatched,
            wallet_restorable=wallet_ok,
            took_s=round(time.monotonic() - started, 3),
        )

    async def _remote_keys(self) -> dict[Triple, str]:
        found: dict[Triple, str] = {}
        async for item in self._port.iter_key_versions(self._keys.kv_store_id):
            if item.key == FENCE_KEY:
                continue
            try:
                found[kv_keys.from_vss_key(item.key)] = item.key
            except errors.InvalidKey:
                continue  # not a key of the KV format: not ours to judge
        return found

    async def _mismatched(self, common: dict[Triple, str]) -> int:
        """How many remote values do not decrypt to the local value."""
        differing = compared = 0
        pending = list(common.items())
        slots = anyio.Semaphore(FETCH_CONCURRENCY)
        progress = Throttle()

        async def check(batch: list[tuple[Triple, str]]) -> None:
            nonlocal differing, compared
            local = await anyio.to_thread.run_sync(self._store.get_many, [t for t, _ in batch])
            for triple, vss_key in batch:
                async with slots:
                    try:
                        stored = (await self._port.get_object(self._keys.kv_store_id, vss_key)).value
                        same = crypto.decrypt_value(self._keys.signing_key, stored) == local.get(triple)
                    except NoSuchKeyError:
                        same = triple not in local  # deleted meanwhile
                    except crypto.DecryptionError:
                        same = False
                if not same:
                    differing += 1
                compared += 1
                if progress.due() is not None:
                    log.info("verify: %s of %s compared, %s different so far", f"{compared:,}",
                             counted(len(pending), "value"), f"{differing:,}")

        try:
            async with anyio.create_task_group() as tg:
                for start in range(0, len(pending), 256):
                    tg.start_soon(check, pending[start : start + 256])
        except BaseExceptionGroup as group:
            raise first_cause(group) from None
        return differing

    async def _wallet_restorable(self) -> bool:
        """Whether the wallet backup restores (into a scratch folder, removed after);
        with no backup on the server, whether the local wallet is empty too."""
        scratch = Path(await anyio.to_thread.run_sync(self._scratch_dir))
        try:
            restored = await restore_wallet(self._port, self._keys, self._home, dest=scratch / "wallet")
        except errors.RestoreFailed as exc:
            log.warning("verify: the wallet backup does not restore: %s", exc)
            return False
        finally:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(scratch, ignore_errors=True))
        if restored:
            return True
        return not await anyio.to_thread.run_sync(wallet_files.list_files, self._home.root)

    def _scratch_dir(self) -> str:
        make_private_dirs(self._home.work_dir)
        return tempfile.mkdtemp(prefix="verify-", dir=self._home.work_dir)
