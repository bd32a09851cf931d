"""Figure 5: restore at unlock — the node against the lean reference client, on one server.

For each storage engine of the bundled VSS server — SQLite always, PostgreSQL when it
answers at 127.0.0.1:5432 (database `test`, a schema of the run's own, dropped
afterwards) — one store of 10,000 values of 256 B (quick: 1,000) is populated straight
through putObjects of pre-encrypted values, then restored ROUNDS times by each of two
clients, taking turns at going first:

- node: a fresh data dir (`init`, `clear_fence`, then `unlock`), which restores the store
  with actors.restorer. The bench wraps the `restore_kv` that actors.unlock calls and
  takes its wall time and, in between, the CPU time (user + sys) of this process (the
  node and its worker threads; nothing else runs in it meanwhile) and of the server
  process (from /proc/PID/stat). The unlock around it (argon2id, the fence, the wallet
  stream's check) is timed too, and shown apart;
- lean: bench/lean_client.py's `lean_restore` of the same store (raw keep-alive
  HTTP/1.1 over 32 connections, every value decrypted), timed the same way.

Per engine the figure gives the medians: each client's keys/s and their ratio (goal >=
0.8), the node's CPU ms per key (goal <= 0.5), the lean client's, and the server's under
each; on SQLite the node's keys/s (goal >= 2,000). Then, on SQLite, the large case:
100,000 x 256 B (quick: 5,000), node once and lean once; goal: the whole restore in
under a minute. Last, the round trip: the 10,000-key SQLite store restored by a node
whose every VSS call waits 50 ms first (`DelayedPort` around the node's own VssClient,
or the fault proxy with `--latency-via proxy`), against what DEFAULT_CONCURRENCY
fetches in flight allow and the listing floor (pages walked one after another, as the
restore must: each page's token comes from the one before). The delay wraps the port rather than the transport: under a
caller's transport the client sends getObject through httpx, which is not the path a
node takes on its own.

CPU per key is the robust figure on a shared machine (it hardly moves with other load);
keys/s is wall clock, node and server sharing the cores with whatever else runs, so the
load average is recorded with each case. When the run has a time budget (run_all.py) the
large case is cut to what fits, judged by the rates seen so far, and the figure says so.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import anyio
from figures import Figure, cores, ratio
from harness import (
    PASSWORD,
    BenchContext,
    Identity,
    LatencyPath,
    cpu_seconds,
    latency_method,
    new_identity,
    patched,
    standalone,
    vss_client,
)
from lean_client import lean_restore

import actors.restorer as restorer
import actors.unlock as unlock
from actors import Node
from actors.vss_port import VssPort
from node import crypto, kv_keys
from node.config import NodeConfig
from node.keys import NodeKeys
from tests.conftest import POSTGRES_DEFAULT_DSNS, RunningVssServer, start_vss_server, stop_vss_server
from tests.nodeutil import FAST_LIMITS
from vss.proto.vss_pb2 import KeyValue, ListKeyVersionsResponse

VALUE_SIZE = 256
POPULATE_BATCH = 1000
PAGE_SIZE = 100  # the bundled server's page size (vss.server.backend.MAX_PAGE_SIZE)
FLOOR_PAGES = 40
SLOW_MS = 50
LEAN_CONNECTIONS = 32
# The goals this figure is held to.
GOAL_NODE_CPU_MS = 0.5
GOAL_LEAN_RATIO = 0.8
GOAL_KEYS_PER_S = 2_000
GOAL_LARGE_S = 60.0
MIN_LARGE_KEYS = 5_000
POPULATE_RATE = 8_000  # keys/s, to plan the large case's budget


@dataclass
class Store:
    """One populated store on one server."""

    engine: str  # "SQLite" or "PostgreSQL"
    server: RunningVssServer
    count: int
    identity: Identity = field(default_factory=new_identity)

    def vss_key(self, i: int) -> str:
        return kv_keys.to_vss_key("restore", "", f"k{i:07d}")


@dataclass
class Run:
    """One restore of a whole store: what came back, wall time, CPU of client and server."""

    client: str  # "node" or "lean"
    keys: int
    seconds: float
    cpu_s: float  # this process: the node with its threads, or the lean client
    server_cpu_s: float
    unlock_s: float | None = None  # the node's whole unlock around its restore

    @property
    def keys_per_s(self) -> float:
        return self.keys / self.seconds

    @property
    def cpu_ms(self) -> float:
        return self.cpu_s / self.keys * 1000

    @property
    def server_cpu_ms(self) -> float:
        return self.server_cpu_s / self.keys * 1000


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def populate(store: Store) -> float:
    """Write the store's encrypted values straight to the server; returns seconds."""
    keys = store.identity.keys
    start = time.perf_counter()

    def sealed(first: int, last: int) -> list[KeyValue]:
        return [
            KeyValue(key=store.vss_key(i), version=-1, value=crypto.encrypt_value(keys.signing_key, os.urandom(VALUE_SIZE)))
            for i in range(first, last)
        ]

    async with vss_client(store.server.url, keys) as client:
        for first in range(0, store.count, POPULATE_BATCH):
            items = await anyio.to_thread.run_sync(sealed, first, min(first + POPULATE_BATCH, store.count))
            await client.put_objects(keys.kv_store_id, items)
    return time.perf_counter() - start


class RestoreTimer:
    """While `wrapping()`, the `restore_kv` that actors.unlock calls is wrapped to take
    its wall time and the CPU of this process and of the server in between."""

    def __init__(self, server_pid: int) -> None:
        self._server_pid = server_pid
        self.seconds: float | None = None
        self.cpu_s = self.server_cpu_s = 0.0

    @contextlib.contextmanager
    def wrapping(self) -> Iterator[None]:
        original = unlock.restore_kv

        async def timed(*args: object, **kwargs: object) -> int:
            cpu, server, start = time.process_time(), cpu_seconds(self._server_pid), time.perf_counter()
            try:
                return await original(*args, **kwargs)  # type: ignore[arg-type]
            finally:
                self.seconds = time.perf_counter() - start
                self.cpu_s = time.process_time() - cpu
                self.server_cpu_s = cpu_seconds(self._server_pid) - server

        with patched(unlock, "restore_kv", timed):
            yield


class DelayedPort:
    """A VssPort (the node's own VssClient) whose every call waits `latency_s` first: a
    longer round trip that leaves the client, its engine and its paths as they are."""

    def __init__(self, inner: VssPort, latency_s: float) -> None:
        self._inner = inner
        self._latency_s = latency_s

    async def get_object(self, store_id: str, key: str) -> KeyValue:
        await anyio.sleep(self._latency_s)
        return await self._inner.get_object(store_id, key)

    async def put_objects(self, store_id: str, transaction_items: Sequence[KeyValue] = (),
                          delete_items: Sequence[KeyValue] = (), global_version: int | None = None) -> None:
        await anyio.sleep(self._latency_s)
        await self._inner.put_objects(store_id, transaction_items, delete_items, global_version)

    async def list_key_versions(self, store_id: str, key_prefix: str | None = None, page_size: int | None = None,
                                page_token: str | None = None) -> ListKeyVersionsResponse:
        await anyio.sleep(self._latency_s)
        return await self._inner.list_key_versions(store_id, key_prefix, page_size, page_token)

    async def iter_key_versions(self, store_id: str, key_prefix: str | None = None,
                                page_size: int | None = None) -> AsyncIterator[KeyValue]:
        token: str | None = None
        while True:
            page = await self.list_key_versions(store_id, key_prefix, page_size, token)
            for item in page.key_versions:
                yield item
            token = page.next_page_token or None
            if token is None:
                return

    async def get_global_version(self, store_id: str) -> int:
        await anyio.sleep(self._latency_s)
        return await self._inner.get_global_version(store_id)

    async def aclose(self) -> None:
        await self._inner.aclose()


@contextlib.contextmanager
def delayed_ports(latency_s: float) -> Iterator[None]:
    """While inside, every VssPort a node builds (Node._new_port) is a DelayedPort."""
    original = Node._new_port

    def new_port(node: Node, keys: NodeKeys) -> VssPort:
        return DelayedPort(original(node, keys), latency_s)

    with patched(Node, "_new_port", new_port):
        yield


async def node_restore(ctx: BenchContext, store: Store, path: LatencyPath | None = None) -> Run:
    """A fresh node restores the whole store at unlock (through `path` if given)."""
    url = path.url if path is not None else store.server.url
    transport = path.transport() if path is not None else None
    data_dir = ctx.scratch(f"restore-{store.engine}-{store.count}")
    config = NodeConfig(data_dir=data_dir, vss_url=url, vault_limits=FAST_LIMITS)
    timer = RestoreTimer(store.server.process.pid)
    async with Node.open(config, vss_transport=transport) as node:
        await node.init(PASSWORD, store.identity.mnemonic)
        await node.clear_fence(PASSWORD)  # the previous restore's node holds it
        with timer.wrapping():
            start = time.perf_counter()
            await node.unlock(PASSWORD)
            unlock_s = time.perf_counter() - start
        status = node.restore_status
    if timer.seconds is None:
        raise RuntimeError("unlock did not call actors.unlock.restore_kv: the bench's restore timer needs updating")
    if not status.finished or status.keys_done != store.count:
        raise RuntimeError(f"the node restored {status.keys_done} keys, expected {store.count}")
    return Run("node", status.keys_done, timer.seconds, timer.cpu_s, timer.server_cpu_s, unlock_s)


async def lean(store: Store) -> Run:
    keys = store.identity.keys
    pid = store.server.process.pid
    server = cpu_seconds(pid)
    result = await lean_restore(store.server.url, keys.signing_key, keys.kv_store_id, LEAN_CONNECTIONS, keep_values=False)
    server_cpu = cpu_seconds(pid) - server
    if result.keys != store.count:
        raise RuntimeError(f"the lean client restored {result.keys} keys, expected {store.count}")
    return Run("lean", result.keys, result.seconds, result.cpu_seconds, server_cpu)


async def listing_floor(url: str, store: Store, latency_s: float = 0.0) -> float:
    """Seconds to walk every page of the store one after another (measured on up to
    FLOOR_PAGES pages, scaled to the whole store), each call delayed by `latency_s`."""
    keys = store.identity.keys
    pages = -(-(store.count + 1) // PAGE_SIZE)  # + the fence key
    walked = 0
    async with vss_client(url, keys, connections=1) as client:
        port = DelayedPort(client, latency_s)
        start = time.perf_counter()
        token: str | None = None
        while walked < min(pages, FLOOR_PAGES):
            page = await port.list_key_versions(keys.kv_store_id, page_token=token)
            walked += 1
            token = page.next_page_token or None
            if token is None:
                break
        return (time.perf_counter() - start) / walked * pages


# ------------------------------------------------------------------------- the engines


def postgres_dsn() -> str | None:
    """The first DSN of the test suite's defaults that PostgreSQL accepts, or None."""
    import asyncio

    import asyncpg

    async def probe(dsn: str) -> bool:
        try:
            conn = await asyncpg.connect(dsn, timeout=3)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            return False
        await conn.close()
        return True

    for dsn in POSTGRES_DEFAULT_DSNS:
        if asyncio.run(probe(dsn)):
            return dsn
    return None


def drop_schema(dsn: str, schema: str) -> None:
    import asyncio

    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


def postgres_server(ctx: BenchContext, dsn: str) -> RunningVssServer:
    """The bundled server on PostgreSQL, in a schema of this run's own (dropped after)."""
    schema = f"bench_restore_{os.getpid()}_{int(time.time())}"
    server = start_vss_server(ctx.scratch("vss-server-pg"), "--auth", "sigs", db=f"{dsn}?schema={schema}")
    ctx.stack.callback(drop_schema, dsn, schema)  # runs after the server is stopped
    ctx.stack.callback(stop_vss_server, server)
    return server


# ---------------------------------------------------------------------------- the cases


@dataclass
class Compared:
    """One store restored by the node and by the lean client, in turns."""

    store: Store
    node: list[Run]
    lean: list[Run]
    load_start: str
    load_end: str
    note: str = ""

    def median(self, runs: list[Run], attribute: str) -> float:
        return statistics.median(getattr(run, attribute) for run in runs)


async def compare(ctx: BenchContext, store: Store, rounds: int) -> Compared:
    started = load()
    node_runs: list[Run] = []
    lean_runs: list[Run] = []
    for r in range(rounds):
        order = ("node", "lean") if r % 2 == 0 else ("lean", "node")
        for client in order:
            if client == "node":
                node_runs.append(await node_restore(ctx, store))
            else:
                lean_runs.append(await lean(store))
    return Compared(store, node_runs, lean_runs, started, load())


def large_count(ctx: BenchContext, wanted: int, rate: float, lean_rate: float) -> tuple[int, str]:
    """How many keys the large case can restore (node and lean once each, plus
    populating) in the time left of the run's budget, at the rates seen so far."""
    remaining = ctx.remaining_s()
    if remaining is None:
        return wanted, ""
    share = remaining * 0.6  # the round trip case comes after it

    def cost(n: int) -> float:
        return n / POPULATE_RATE + n / rate + n / lean_rate + 2.0

    if cost(wanted) <= share:
        return wanted, ""
    count = wanted
    while count > MIN_LARGE_KEYS and cost(count) > share:
        count = max(MIN_LARGE_KEYS, int(count * 0.8) // 1000 * 1000)
    return count, (
        f"{wanted:,} keys were projected at {cost(wanted):.0f} s (node {rate:.0f}, lean {lean_rate:.0f} keys/s) "
        f"against {share:.0f} s left for the case in the run's time budget: ran {count:,} keys instead"
    )


@dataclass
class RoundTrip:
    store: Store
    latency_ms: float
    via: str
    run: Run
    floor_s: float


async def run(ctx: BenchContext) -> Figure:
    rounds = ctx.pick(1, 3)
    count = ctx.pick(1_000, 10_000)
    engines: list[tuple[str, RunningVssServer]] = [("SQLite", ctx.vss_server())]
    dsn = await anyio.to_thread.run_sync(postgres_dsn)
    if dsn is not None:
        engines.append(("PostgreSQL", postgres_server(ctx, dsn)))
    compared: list[Compared] = []
    populate_s: list[str] = []
    for engine, server in engines:
        store = Store(engine, server, count)
        populate_s.append(f"{engine} {count:,} keys in {await populate(store):.1f} s")
        compared.append(await compare(ctx, store, rounds))

    sqlite = compared[0]
    rate = sqlite.median(sqlite.node, "keys_per_s")
    lean_rate = sqlite.median(sqlite.lean, "keys_per_s")
    large_wanted = ctx.pick(5_000, 100_000)
    large_n, note = large_count(ctx, large_wanted, rate, lean_rate)
    large_store = Store("SQLite", sqlite.store.server, large_n)
    populate_s.append(f"SQLite {large_n:,} keys in {await populate(large_store):.1f} s")
    large = await compare(ctx, large_store, 1)
    large.note = note

    if ctx.latency_via(high_rate=True) == "proxy":
        path = ctx.latency(sqlite.store.server, SLOW_MS)
        slow_run = await node_restore(ctx, sqlite.store, path)
        floor_s = await listing_floor(path.url, sqlite.store)
        via = "proxy"
    else:
        with delayed_ports(SLOW_MS / 1000):
            slow_run = await node_restore(ctx, sqlite.store)
        floor_s = await listing_floor(sqlite.store.server.url, sqlite.store, SLOW_MS / 1000)
        via = "port"
    trip = RoundTrip(sqlite.store, SLOW_MS, via, slow_run, floor_s)
    return _figure(compared, large, trip, populate_s)


# ----------------------------------------------------------------------------- the figure


def _figure(compared: list[Compared], large: Compared, trip: RoundTrip, populate_s: list[str]) -> Figure:
    fig = Figure(5, "restore at unlock: the node against the lean reference client, same server",
                 ["engine", "keys x 256 B", "runs", "node keys/s", "lean keys/s", "node / lean", "node CPU ms/key",
                  "lean CPU ms/key", "server CPU ms/key (node / lean)", "node restore s (unlock s)", "load average"])
    for case in [*compared, large]:
        node_rate, lean_rate = case.median(case.node, "keys_per_s"), case.median(case.lean, "keys_per_s")
        fig.add(case.store.engine, f"{case.store.count:,}", len(case.node), f"{node_rate:,.0f}", f"{lean_rate:,.0f}",
                f"{ratio(node_rate, lean_rate):.2f}", f"{case.median(case.node, 'cpu_ms'):.3f}",
                f"{case.median(case.lean, 'cpu_ms'):.3f}",
                f"{case.median(case.node, 'server_cpu_ms'):.3f} / {case.median(case.lean, 'server_cpu_ms'):.3f}",
                f"{case.median(case.node, 'seconds'):.1f} ({case.median(case.node, 'unlock_s'):.1f})",
                f"{case.load_start} → {case.load_end}")
    for case in compared:
        tag = f"{case.store.engine} {case.store.count:,} x 256 B"
        node_rate, lean_rate = case.median(case.node, "keys_per_s"), case.median(case.lean, "keys_per_s")
        fig.ratio(f"{tag}: node keys/s / lean keys/s", ratio(node_rate, lean_rate), GOAL_LEAN_RATIO, at_least=True)
        fig.ratio(f"{tag}: node CPU per key / {GOAL_NODE_CPU_MS} ms", case.median(case.node, "cpu_ms") / GOAL_NODE_CPU_MS,
                  1.0)
        if case.store.engine == "SQLite":
            fig.ratio(f"{tag}: node keys/s / {GOAL_KEYS_PER_S:,}", node_rate / GOAL_KEYS_PER_S, 1.0, at_least=True)
    big = large.node[0]
    large_tag = f"SQLite {large.store.count:,} x 256 B"
    fig.ratio(f"{large_tag}: node keys/s / lean keys/s", ratio(big.keys_per_s, large.lean[0].keys_per_s), GOAL_LEAN_RATIO,
              at_least=True)
    scaled_s = big.seconds * (100_000 / large.store.count)
    scaled = "" if large.store.count == 100_000 else f" for {large.store.count:,} keys, {scaled_s:.1f} s scaled to 100,000"
    fig.ratio(f"{large_tag}: node restore time of 100,000 keys / {GOAL_LARGE_S:g} s ({big.seconds:.1f} s{scaled})",
              scaled_s / GOAL_LARGE_S, 1.0)
    bound = restorer.DEFAULT_CONCURRENCY / (trip.latency_ms / 1000)
    fig.add(f"SQLite, +{trip.latency_ms:g} ms per request", f"{trip.store.count:,}", 1, f"{trip.run.keys_per_s:,.0f}",
            "", "", f"{trip.run.cpu_ms:.3f}", "", f"{trip.run.server_cpu_ms:.3f} / ", f"{trip.run.seconds:.1f} "
            f"({trip.run.unlock_s or 0:.1f})", "")
    fig.ratio(f"+{trip.latency_ms:g} ms: node keys/s / what {restorer.DEFAULT_CONCURRENCY} fetches in flight allow "
              f"({bound:,.0f} keys/s)", ratio(trip.run.keys_per_s, bound))
    fig.ratio(f"+{trip.latency_ms:g} ms: listing floor / restore time (1.00 = at the floor)",
              ratio(trip.floor_s, trip.run.seconds))
    notes = [f"{large.store.engine} large case: {large.note}"] if large.note else []
    fig.method = (
        "node = a fresh data dir's unlock (init, clear_fence, unlock), in this process; its restore is the "
        "restore_kv call that actors.unlock makes, wrapped by the bench for wall time and CPU; CPU ms/key = "
        "user+sys CPU time of the process per key restored (this process for the node, its worker threads "
        "included, and for the lean client; the server's from /proc/PID/stat); lean = bench/lean_client.py "
        f"lean_restore, {LEAN_CONNECTIONS} raw keep-alive HTTP/1.1 connections, every value decrypted; the "
        f"node with DEFAULT_CONCURRENCY={restorer.DEFAULT_CONCURRENCY} fetches in flight; one bundled server "
        "per engine (signature auth, one process, as `vssnode vss-server` starts it), PostgreSQL in a schema "
        "of its own; medians of the runs, node and lean taking turns at going first; values of 256 B "
        f"populated by putObjects of {POPULATE_BATCH} pre-encrypted values ({'; '.join(populate_s)}); "
        f"+{trip.latency_ms:g} ms: {_latency_method(trip.via)}; listing floor = time per page over up to "
        f"{FLOOR_PAGES} pages walked in sequence x pages ({trip.floor_s:.1f} s for the store)"
        + ("; " + "; ".join(notes) if notes else "")
    )
    fig.reading = _reading(compared, large, trip)
    return fig


def _latency_method(via: str) -> str:
    if via == "port":
        return ("latency injected in-process by DelayedPort: the node's own VssClient, each call made after a sleep "
                "of that long (its engine and bare getObject path unchanged)")
    return latency_method(via)


def _reading(compared: list[Compared], large: Compared, trip: RoundTrip) -> str:
    out = []
    for case in compared:
        node_cpu, lean_cpu = case.median(case.node, "cpu_ms"), case.median(case.lean, "cpu_ms")
        server_node, server_lean = case.median(case.node, "server_cpu_ms"), case.median(case.lean, "server_cpu_ms")
        busy = (node_cpu + server_node) * case.median(case.node, "keys_per_s") / 1000
        out.append(
            f"{case.store.engine}: the node spends {node_cpu:.3f} ms of CPU per key against the lean client's "
            f"{lean_cpu:.3f} ms ({node_cpu - lean_cpu:+.3f} ms: the node's own layers), the server "
            f"{server_node:.3f} ms per key under the node and {server_lean:.3f} ms under the lean client; node and "
            f"server kept {busy:.1f} of {cores()} cores busy during the node's restore."
        )
    big = large.node[0]
    out.append(f"The large case restored {big.keys:,} keys in {big.seconds:.1f} s ({big.keys_per_s:,.0f} keys/s).")
    bound = restorer.DEFAULT_CONCURRENCY / (trip.latency_ms / 1000)
    out.append(
        f"At +{trip.latency_ms:g} ms the round trip sets the pace: {restorer.DEFAULT_CONCURRENCY} fetches in flight "
        f"allow {bound:,.0f} keys/s and the listing ({PAGE_SIZE} keys per round trip) "
        f"{PAGE_SIZE / (trip.latency_ms / 1000):,.0f} keys/s; the node ran at {trip.run.keys_per_s:,.0f} keys/s."
    )
    return " ".join(out)


if __name__ == "__main__":
    standalone(run, "Figure 5: restore, the node against the lean reference client")
