"""Helpers for the actor tests: a MockClock that waits for worker threads, a stand-in
ownership-guard, and rigs that wire real actors together on one SQLite file and the
in-memory server.

Time. The actors do their SQLite and file work in worker threads. trio's MockClock
with `autojump_threshold=0` jumps to the next deadline as soon as every task is
blocked, and a task waiting on a thread is blocked: timers would fire while a commit
is still on the disk. `thread_aware_clock(monkeypatch)` wraps `anyio.to_thread.run_sync`
so the clock never jumps while a worker thread runs (the threshold is infinite then,
and 0 again once the last thread is back). Virtual time then passes only when the
actors are idle, exactly from one deadline to the next: backoffs and sweeps can be
asserted to the millisecond, and a test's own `fail_after` cannot fire early. A
watchdog turns an actor that loops without ever blocking (virtual time stands still)
into a timeout after WATCHDOG_S of real time, rather than a hung suite.

Stand-ins. `StubGuard` serves FencedPuts straight onto a FakePort (no fence key, no
tokens: the ownership-guard has its own tests) and can be told the fence was lost.
`KvRig` runs a real local-writer and replicator, with the retry-queue real or recorded.
`WalletRig` runs a real wallet keeper and uploader.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from trio.testing import MockClock

from actors.local_writer import LocalWriter
from actors.messages import (
    BackupNow,
    FencedPut,
    Flush,
    GuardMessage,
    ReplicatorMessage,
    RetryMessage,
    StoreKind,
    WalletChange,
    WriteRequest,
)
from actors.metrics import NodeMetrics
from actors.ownership_guard import FENCE_KEY
from actors.replicator import Replicator
from actors.retry_queue import RetryQueue
from actors.wallet_keeper import WalletKeeper
from actors.wallet_restorer import restore_wallet
from actors.wallet_upload import WalletUploader
from fakevss import FakePort, FakeVssServer
from guardutil import keys
from node import crypto, kv_keys, wallet_files
from node.keys import NodeKeys
from node.store import LocalChange, LocalStore, Triple
from node.wallet_files import WalletHome
from vss.proto.vss_pb2 import KeyValue

WATCHDOG_S = 30.0  # real seconds: far more than any of these tests takes


def thread_aware_clock(monkeypatch: pytest.MonkeyPatch) -> MockClock:
    """A MockClock with autojump_threshold=0 that never jumps while a worker thread runs
    (see the module docstring; it wraps `anyio.to_thread.run_sync` for the test).

    With a watchdog for an actor that loops without ever blocking: such a loop stops
    virtual time, so no `fail_after` could fire and the test would hang. After
    WATCHDOG_S of real time the watchdog makes virtual time run a billion times faster
    than real time, so every pending deadline expires and the test fails with a timeout.
    """
    clock = MockClock(autojump_threshold=0)
    start_clock = clock.start_clock

    def start_with_watchdog() -> None:  # MockClock is final: hooked on the instance
        start_clock()
        token = trio.lowlevel.current_trio_token()
        started = time.monotonic()

        def fly() -> None:
            print(f"watchdog: the test still runs after {time.monotonic() - started:.0f} s of real time; "
                  "letting virtual time fly so its deadlines expire", file=sys.stderr)
            clock.rate = 1e9

        def wake() -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(fly)

        timer = threading.Timer(WATCHDOG_S, wake)
        timer.daemon = True
        timer.start()

    clock.start_clock = start_with_watchdog  # type: ignore[method-assign]
    original = anyio.to_thread.run_sync
    busy = 0

    async def run_sync(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        nonlocal busy
        busy += 1
        clock.autojump_threshold = math.inf
        try:
            return await original(func, *args, **kwargs)
        finally:
            busy -= 1
            if busy == 0:
                clock.autojump_threshold = 0

    monkeypatch.setattr(anyio.to_thread, "run_sync", run_sync)
    return clock


async def eventually(predicate: Callable[[], bool], what: str = "condition", *, step: float = 0.001,
                     max_step: float = 0.25, timeout: float = 600.0) -> None:
    """Wait until `predicate()` holds, checking after `step` virtual seconds, then after
    twice as long each time up to `max_step`; fail after `timeout` virtual seconds.
    Costs next to no real time with the clock above, even when it fails."""
    with anyio.move_on_after(timeout):
        while not predicate():
            await anyio.sleep(step)
            step = min(max_step, step * 2)
        return
    raise AssertionError(f"{what}: still not true after {timeout} s")


async def none_within(seconds: float, happens: Callable[[], Awaitable[object]], what: str) -> None:
    """Fail as soon as `happens()` returns; pass once `seconds` (virtual) went by without.

    Better than sleeping and counting afterwards: an actor that wrongly loops (and so
    never lets virtual time pass) fails the test at once instead of hanging it.
    """
    with anyio.move_on_after(seconds):
        await happens()
        raise AssertionError(f"{what} within {seconds} s")


def stream(size: float) -> tuple[MemoryObjectSendStream[Any], MemoryObjectReceiveStream[Any]]:
    return anyio.create_memory_object_stream[Any](size)


def t(key: str) -> Triple:
    """A triple in the empty namespaces: its VSS key is `_/_/<key>`."""
    return ("", "", key)


def vss_key(key: str) -> str:
    return kv_keys.to_vss_key(*t(key))


def encrypted(value: bytes, node_keys: NodeKeys | None = None) -> bytes:
    return crypto.encrypt_value((node_keys or keys()).signing_key, value)


def seed_kv(server: FakeVssServer, values: dict[str, bytes], node_keys: NodeKeys | None = None) -> None:
    """Put these plaintext values (by short key) on the server's KV store, encrypted."""
    node_keys = node_keys or keys()
    items = [KeyValue(key=vss_key(k), version=-1, value=encrypted(v, node_keys)) for k, v in values.items()]
    for start in range(0, len(items), 1000):
        server.apply_put(node_keys.kv_store_id, items[start : start + 1000], [], None)


def remote_kv(server: FakeVssServer) -> dict[str, bytes]:
    """The server's KV store decrypted, by short key (the fence left out)."""
    out = {}
    for key, value in server.values(keys().kv_store_id).items():
        if key != FENCE_KEY:
            out[kv_keys.from_vss_key(key)[2]] = crypto.decrypt_value(keys().signing_key, value)
    return out


def markers(store: LocalStore) -> dict[str, int]:
    """The unsynced markers, short key → seq."""
    return {triple[2]: seq for triple, seq in store.owed_keys(1_000_000)}


def commit_directly(store: LocalStore, values: dict[str, bytes | None], *, owed: bool) -> None:
    """Write to the store without the actors (seqs after the existing markers)."""
    store.apply_writes([LocalChange(t(k), v) for k, v in values.items()], store.next_seq(), track_unsynced=owed)


@dataclass
class GuardPut:
    """One FencedPut the stub guard served (or refused)."""

    kind: StoreKind
    keys: list[str]
    deletes: list[str]
    at: float
    error: BaseException | None = None


class StubGuard:
    """Serves FencedPuts on the fake server, one at a time, like the real guard's worker.

    `lose(exc)`: from now on every put fails with `exc` (FenceLost, DivergenceFound),
    as the real guard does once stopped. `before_put(put)` runs as each put arrives.
    """

    def __init__(self, port: FakePort, inbox: MemoryObjectReceiveStream[GuardMessage],
                 node_keys: NodeKeys | None = None) -> None:
        self.port = port
        self._inbox = inbox
        self._keys = node_keys or keys()
        self.puts: list[GuardPut] = []
        self.stopped: BaseException | None = None
        self.before_put: Callable[[FencedPut], None] | None = None
        self._versions = {StoreKind.KV: 0, StoreKind.WALLET: 0}
        self._arrived: anyio.Event | None = None

    def lose(self, reason: BaseException) -> None:
        self.stopped = reason

    def of(self, kind: StoreKind) -> list[GuardPut]:
        return [put for put in self.puts if put.kind is kind]

    async def wait_puts(self, count: int) -> None:
        """Return once `count` puts (of any kind, whatever their outcome) arrived."""
        while len(self.puts) < count:
            if self._arrived is None:
                self._arrived = anyio.Event()
            await self._arrived.wait()

    async def run(self) -> None:
        async with self._inbox:
            async for put in self._inbox:
                await self._serve(put)

    async def _serve(self, put: FencedPut) -> None:
        if self.before_put is not None:
            self.before_put(put)
        record = GuardPut(put.kind, [i.key for i in put.items], [d.key for d in put.deletes], anyio.current_time())
        self.puts.append(record)
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None
        if self.stopped is not None:
            record.error = self.stopped
            put.reply.fail(self.stopped)
            return
        store_id = self._keys.kv_store_id if put.kind is StoreKind.KV else self._keys.wallet_store_id
        try:
            await self.port.put_objects(store_id, put.items, put.deletes)
        except Exception as exc:
            record.error = exc
            put.reply.fail(exc)
            return
        self._versions[put.kind] += 1
        put.reply.set(self._versions[put.kind])


class KvRig:
    """A real local-writer and replicator on one LocalStore, a stub guard on a fake server.

    The retry-queue is real (`real_retry_queue=True`, with `retry_kwargs`) or a recorder
    whose messages land in `retry_messages`.
    """

    def __init__(self, path: Path, *, real_retry_queue: bool = False, replicator_inbox: int = 1024,
                 **retry_kwargs: Any) -> None:
        self.server = FakeVssServer()
        self.port = self.server.port()
        self.store = LocalStore(path / "node.sqlite3")
        self.metrics = NodeMetrics()
        self.writer_inbox, writer_in = stream(4096)
        self.replicator_inbox, replicator_in = stream(replicator_inbox)
        self.retry_inbox, retry_in = stream(1024)
        guard_inbox, guard_in = stream(64)
        self.writer = LocalWriter(self.store, writer_in, self.metrics, self.replicator_inbox.clone(),
                                  self.retry_inbox.clone())
        self.replicator = Replicator(self.store, keys().signing_key, replicator_in, guard_inbox,
                                     self.writer_inbox.clone(), self.retry_inbox.clone(), self.metrics)
        self.guard = StubGuard(self.port, guard_in)
        self.retry_queue: RetryQueue | None = None
        self.retry_messages: list[RetryMessage] = []
        self._retry_in = retry_in
        if real_retry_queue:
            self.retry_queue = RetryQueue(self.store, retry_in, self.replicator_inbox.clone(), self.metrics,
                                          **retry_kwargs)

    def start(self, tg: TaskGroup) -> None:
        tg.start_soon(self.writer.run)
        tg.start_soon(self.replicator.run)
        tg.start_soon(self.guard.run)
        if self.retry_queue is not None:
            tg.start_soon(self.retry_queue.run)
        else:
            tg.start_soon(self._record_retries)

    async def _record_retries(self) -> None:
        async for message in self._retry_in:
            self.retry_messages.append(message)

    def retries(self, kind: type) -> list[Any]:
        return [m for m in self.retry_messages if isinstance(m, kind)]

    async def put(self, key: str, value: bytes | None) -> int:
        """Commit through the local-writer; returns the change's seq."""
        request = WriteRequest(LocalChange(t(key), value))
        await self.writer_inbox.send(request)
        seq = await request.reply.wait()
        assert seq is not None
        return seq

    async def send(self, message: ReplicatorMessage) -> None:
        await self.replicator_inbox.send(message)

    async def flush(self) -> None:
        """Return once the local-writer handled everything sent to it before."""
        flush = Flush()
        await self.writer_inbox.send(flush)
        await flush.reply.wait()

    def kv_puts(self) -> int:
        return len(self.port.call_times.get("put_objects", []))

    def close(self) -> None:
        self.store.close()


class WalletRig:
    """A real wallet keeper and uploader on `DATA_DIR/wallet/<fingerprint>/`, a stub guard
    on a fake server."""

    def __init__(self, path: Path, *, flags: tuple[str, ...] = ()) -> None:
        self.server = FakeVssServer()
        self.port = self.server.port()
        self.scratch = path / "scratch"
        self._restores = 0
        self.home = WalletHome(path / "data", keys().fingerprint)
        self.home.create_empty()
        for flag in flags:
            self.home.set_flag(flag, True)
        self.metrics = NodeMetrics()
        self.inbox, inbox_in = stream(256)
        guard_inbox, guard_in = stream(64)
        self.guard = StubGuard(self.port, guard_in)
        uploader = WalletUploader(self.port, keys(), guard_inbox, self.home)
        self.keeper = WalletKeeper(self.home, keys().signing_key, inbox_in, self.inbox.clone(), self.metrics,
                                   port=self.port, keys=keys(), uploader=uploader)

    def start(self, tg: TaskGroup) -> None:
        tg.start_soon(self.keeper.run)
        tg.start_soon(self.guard.run)

    async def change(self, path: str, data: bytes | None) -> None:
        request = WalletChange(path, data)
        await self.inbox.send(request)
        await request.reply.wait()

    async def backup_now(self, *, replace_unreadable: bool = False) -> int | None:
        request = BackupNow(replace_unreadable=replace_unreadable)
        await self.inbox.send(request)
        return await request.reply.wait()

    def uploads(self) -> list[GuardPut]:
        """The wallet puts that carried a manifest: one per completed or attempted upload."""
        return [put for put in self.guard.of(StoreKind.WALLET) if "backup/manifest" in put.keys]

    def marked(self, flag: str) -> bool:
        return self.home.flag(flag)

    async def server_files(self) -> dict[str, bytes]:
        """The server's backup restored into a scratch folder: path → content."""
        self._restores += 1
        dest = self.scratch / f"restored-{self._restores}"
        assert await restore_wallet(self.port, keys(), self.home, dest=dest)
        return {path: (dest / path).read_bytes() for path, _ in wallet_files.list_files(dest)}

    def local_files(self) -> dict[str, bytes]:
        return {path: (self.home.root / path).read_bytes() for path, _ in wallet_files.list_files(self.home.root)}

