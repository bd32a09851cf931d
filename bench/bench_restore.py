"""Figure 5: restore throughput — a fresh data dir pulling the KV stream back at unlock.

Two data sets, each in its own VSS store, populated straight through putObjects of
pre-encrypted values in batches of 1000 (not through a node): 10,000 keys of 1 KiB and
100,000 keys of 256 B (quick mode: fewer). For each added latency (0 and 50 ms):

- restore: a fresh node (`init`, `clear_fence`, then `unlock`) restores the store at
  unlock with its pipelined restorer: list pages while up to
  `actors.restorer.DEFAULT_CONCURRENCY` fetches run over the node's VssClient (its
  connections in small pools used in turn), decrypt, stage, make live in one
  transaction. Two times are taken: the whole `unlock`, which also builds the node's
  VssClient, checks the password (argon2id), holds the fence and checks the wallet
  stream, and the restore alone: the bench wraps the `restore_kv` that
  actors.unlock calls and takes its start, end and the CPU used in between. Keys/s
  comes from the restore alone. The time to build the VssClient (`Node._new_client`)
  is taken too, being most of what the unlock adds;
- for the 1 KiB set, the same restore with DEFAULT_CONCURRENCY patched to
  COMPARED_CONCURRENCY (the default before) for that one unlock; the two restores take
  turns at going first;
- plain fetch: the same keys (names known in advance) fetched with httpx by as many
  concurrent workers over pools of the node's size, with a signature reused as the
  node's client does, each response read and dropped: no listing, no protobuf decoding,
  no decryption, no local writes — what the network and server allow;
- page at a time: list a page, fetch its keys concurrently, decrypt, stage, then the
  next page — the restore without the pipeline;
- listing floor: walking the pages one after another (the restore needs every page,
  and a page's token comes from the previous one), measured on up to FLOOR_PAGES pages
  and scaled to the whole store.

The comparisons run on a prefix of the keys (`subset`) and are compared as keys/s. When
the run has a time budget (`run_all.py`), each case is cut to what fits in its share of
the time left, judged by the rates seen so far, and the figure says so.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import anyio

import actors.restorer as restorer
import actors.unlock as unlock
from actors.ownership_guard import FENCE_KEY
from actors import Node
from figures import Figure, cores, ratio
from harness import (
    CONNECTIONS_PER_POOL,
    NODE_CONNECTIONS,
    PASSWORD,
    BenchContext,
    Identity,
    LatencyPath,
    ShardedHttp,
    cpu_seconds,
    latency_method,
    new_identity,
    patched,
    standalone,
    vss_client,
)
from node import crypto, kv_keys
from node.config import NodeConfig
from node.store import LocalStore
from vss.client import SIGNATURE_REUSE_S, SignatureAuth
from vss.proto import vss_pb2
from vss.proto.vss_pb2 import KeyValue

LATENCIES_MS = (0, 50)
COMPARED_CONCURRENCY = 64  # DEFAULT_CONCURRENCY before the client's pools were split
POPULATE_BATCH = 1000
POPULATE_RATE_ESTIMATE = 5_000  # keys/s, to plan the budget; measured is ~10,000
PAGE_SIZE = 100  # the bundled server's page size (vss.server.backend.MAX_PAGE_SIZE)
FLOOR_PAGES = 40
MIN_BUDGETED_KEYS = 300
ASSUMED_RATE = 300.0  # restore keys/s, to plan the first case; 400-800 measured on 2 shared cores
ASSUMED_UNLOCK_OVERHEAD_S = 1.0  # unlock around the restore: VssClient, argon2id, fence, wallet check


@dataclass
class DataSet:
    label: str
    count: int
    value_size: int
    subset: int  # keys the comparisons fetch
    identity: Identity

    def vss_key(self, i: int) -> str:
        return kv_keys.to_vss_key("restore", "", f"k{i:07d}")


@dataclass
class Cpu:
    """CPU seconds over one measurement: this process, the server, the proxy (if any)."""

    own: float
    server: float
    proxy: float | None

    def text(self) -> str:
        return f"{self.own:.1f}/{self.server:.1f}" + ("" if self.proxy is None else f"/{self.proxy:.1f}")


@dataclass
class Run:
    keys: int
    bytes: int
    seconds: float
    cpu: Cpu
    unlock_s: float | None = None  # for a restore at unlock: the whole unlock around it
    client_build_s: float = 0.0  # of which building the node's VssClient

    @property
    def keys_per_s(self) -> float:
        return self.keys / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6


async def populate(url: str, data: DataSet) -> float:
    """Write the data set's encrypted values straight to the server; returns seconds."""
    keys = data.identity.keys
    start = time.perf_counter()
    async with vss_client(url, keys) as client:
        for first in range(0, data.count, POPULATE_BATCH):
            last = min(first + POPULATE_BATCH, data.count)
            items = await anyio.to_thread.run_sync(
                lambda: [
                    KeyValue(key=data.vss_key(i), version=-1,
                             value=crypto.encrypt_value(keys.signing_key, os.urandom(data.value_size)))
                    for i in range(first, last)
                ]
            )
            await client.put_objects(keys.kv_store_id, items)
    return time.perf_counter() - start


class CpuMeter:
    """CPU seconds of this process, the server and the proxy from its creation on."""

    def __init__(self, server_pid: int, proxy_pid: int | None) -> None:
        self._pids = (server_pid, proxy_pid)
        self._start = self._now()

    def _now(self) -> tuple[float, float, float]:
        return time.process_time(), cpu_seconds(self._pids[0]), cpu_seconds(self._pids[1])

    def used(self) -> Cpu:
        own, server, proxy = (b - a for a, b in zip(self._start, self._now()))
        return Cpu(own, server, proxy if self._pids[1] is not None else None)


class RestoreTimer:
    """Times the node's own restore inside `unlock`: while `wrapping()`, the `restore_kv`
    that actors.unlock calls is wrapped to take its start, end and CPU, and
    `Node._new_client` to take the time it takes to build the node's VssClient."""

    def __init__(self, server_pid: int, proxy_pid: int | None) -> None:
        self._pids = (server_pid, proxy_pid)
        self.seconds: float | None = None
        self.cpu: Cpu | None = None
        self.client_build_s = 0.0

    @contextlib.contextmanager
    def wrapping(self) -> Iterator[None]:
        original = unlock.restore_kv
        new_client = Node._new_client

        def timed_client(node: Node, *args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            try:
                return new_client(node, *args, **kwargs)
            finally:
                self.client_build_s += time.perf_counter() - start

        async def timed(*args: object, **kwargs: object) -> int:
            meter = CpuMeter(*self._pids)
            start = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                self.seconds = time.perf_counter() - start
                self.cpu = meter.used()

        with patched(unlock, "restore_kv", timed), patched(Node, "_new_client", timed_client):
            yield


async def node_restore(ctx: BenchContext, path: LatencyPath, data: DataSet, server_pid: int,
                       concurrency: int | None = None) -> Run:
    """A fresh node restores `data` at unlock; `concurrency` replaces DEFAULT_CONCURRENCY
    for this unlock only (restore_kv reads it when it is called)."""
    data_dir = ctx.scratch(f"restore-{data.count}-{path.latency_ms:g}ms-{concurrency or 'default'}")
    config = NodeConfig(data_dir=data_dir, vss_url=path.url)
    timer = RestoreTimer(server_pid, path.pid)
    setting = patched(restorer, "DEFAULT_CONCURRENCY", concurrency) if concurrency else contextlib.nullcontext()
    async with Node.open(config, vss_transport=path.transport()) as node:
        await node.init(PASSWORD, data.identity.mnemonic)
        await node.clear_fence(PASSWORD)  # the previous restore's node holds it
        with timer.wrapping(), setting:
            start = time.perf_counter()
            await node.unlock(PASSWORD)
            unlock_s = time.perf_counter() - start
        progress = node.restore_progress
    if timer.seconds is None or timer.cpu is None:
        raise RuntimeError("unlock did not call actors.unlock.restore_kv: the bench's restore timer needs updating")
    if progress.keys_done != data.count:
        raise RuntimeError(f"restore brought back {progress.keys_done} keys, expected {data.count}")
    return Run(progress.keys_done, progress.bytes_done, timer.seconds, timer.cpu, unlock_s, timer.client_build_s)


async def plain_fetch(path: LatencyPath, data: DataSet, count: int, server_pid: int) -> Run:
    """getObject of `count` known keys by DEFAULT_CONCURRENCY httpx workers over pools of
    CONNECTIONS_PER_POOL (as VssClient), each response read and dropped."""
    store_id = data.identity.keys.kv_store_id
    auth = SignatureAuth(data.identity.keys.signing_key)  # reuses a signature, as the node's client
    bodies = [vss_pb2.GetObjectRequest(store_id=store_id, key=data.vss_key(i)).SerializeToString() for i in range(count)]
    workers = restorer.DEFAULT_CONCURRENCY
    next_index = 0
    http = ShardedHttp(path.transport, -(-workers // CONNECTIONS_PER_POOL), CONNECTIONS_PER_POOL)
    try:

        async def worker(w: int) -> None:
            nonlocal next_index
            client = http.client(w)
            while next_index < count:
                body = bodies[next_index]
                next_index += 1
                headers = {**auth.headers(), "Content-Type": "application/octet-stream"}
                response = await client.post(f"{path.url}/getObject", content=body, headers=headers)
                if response.status_code != 200:
                    raise RuntimeError(f"getObject answered {response.status_code}")

        meter = CpuMeter(server_pid, path.pid)
        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for w in range(workers):
                tg.start_soon(worker, w)
        return Run(count, count * data.value_size, time.perf_counter() - start, meter.used())
    finally:
        await http.aclose()


async def page_at_a_time(ctx: BenchContext, path: LatencyPath, data: DataSet, count: int, server_pid: int) -> Run:
    """List a page, fetch and decrypt its keys concurrently, stage them; then the next page."""
    keys = data.identity.keys
    store = LocalStore(ctx.scratch(f"pages-{data.count}-{path.latency_ms:g}ms") / "node.sqlite3")
    limit = anyio.Semaphore(restorer.DEFAULT_CONCURRENCY)
    done = size = 0
    try:
        async with vss_client(path.url, keys, transport=path.transport()) as client:
            meter = CpuMeter(server_pid, path.pid)
            start = time.perf_counter()
            token: str | None = None
            while done < count:
                page = await client.list_key_versions(keys.kv_store_id, page_token=token)
                rows: list = []

                async def fetch(vss_key: str) -> None:
                    async with limit:
                        stored = (await client.get_object(keys.kv_store_id, vss_key)).value
                    rows.append((kv_keys.from_vss_key(vss_key), crypto.decrypt_value(keys.signing_key, stored)))

                async with anyio.create_task_group() as tg:
                    for item in page.key_versions:
                        if item.key != FENCE_KEY:
                            tg.start_soon(fetch, item.key)
                await anyio.to_thread.run_sync(store.stage, rows)
                done += len(rows)
                size += sum(len(v) for _, v in rows)
                token = page.next_page_token or None
                if token is None:
                    break
            await anyio.to_thread.run_sync(store.make_restore_live, {})
            return Run(done, size, time.perf_counter() - start, meter.used())
    finally:
        store.close()


async def listing_floor(path: LatencyPath, data: DataSet) -> tuple[float, int]:
    """(seconds per page walked in sequence, pages in the store)."""
    keys = data.identity.keys
    pages = -(-(data.count + 1) // PAGE_SIZE)  # + the fence key
    walked = 0
    async with vss_client(path.url, keys, transport=path.transport(), connections=1) as client:
        start = time.perf_counter()
        token: str | None = None
        while walked < min(pages, FLOOR_PAGES):
            page = await client.list_key_versions(keys.kv_store_id, page_token=token)
            walked += 1
            token = page.next_page_token or None
            if token is None:
                break
        return (time.perf_counter() - start) / walked, pages


@dataclass
class Case:
    data: DataSet
    latency_ms: float
    concurrency: int  # DEFAULT_CONCURRENCY as built
    restored: Run
    compared: Run | None  # the same restore at COMPARED_CONCURRENCY
    plain: Run
    paged: Run
    per_page_s: float
    pages: int
    note: str = ""

    @property
    def floor_s(self) -> float:
        return self.per_page_s * self.pages

    @property
    def tag(self) -> str:
        return f"{self.data.count} x {self.data.label} +{self.latency_ms:g} ms"


async def measure(ctx: BenchContext, server, path: LatencyPath, data: DataSet, *, compare: bool, compared_first: bool,
                  note: str = "") -> Case:
    pid = server.process.pid
    compared = None
    if compare and compared_first:
        compared = await node_restore(ctx, path, data, pid, COMPARED_CONCURRENCY)
    restored = await node_restore(ctx, path, data, pid)
    if compare and not compared_first:
        compared = await node_restore(ctx, path, data, pid, COMPARED_CONCURRENCY)
    subset = min(data.subset, data.count)
    plain = await plain_fetch(path, data, subset, pid)
    paged = await page_at_a_time(ctx, path, data, subset, pid)
    per_page, pages = await listing_floor(path, data)
    return Case(data, path.latency_ms, restorer.DEFAULT_CONCURRENCY, restored, compared, plain, paged, per_page, pages, note)


def estimate_s(count: int, subset: int, rate: float, overhead_s: float, latency_ms: float, compare: bool) -> float:
    """Seconds a case of `count` keys should take at `rate` restore keys/s: populate, the
    restore (twice with the comparison) with its unlock around it, the plain fetch and
    page at a time on the subset (each taken at the restore's rate) and the listing floor."""
    subset = min(subset, count)
    restores = 2 if compare else 1
    return (count / POPULATE_RATE_ESTIMATE + restores * (overhead_s + count / rate) + 2 * subset / rate
            + FLOOR_PAGES * (latency_ms / 1000 + 0.01))


def budgeted_count(ctx: BenchContext, wanted: int, subset: int, latency_ms: float, rate: float, overhead_s: float,
                   compare: bool, cases_left: int) -> tuple[int, str]:
    """How many keys a case can restore in its share of the time left in the run's
    budget, at the rate seen so far; (count, a note when it is fewer than wanted)."""
    remaining = ctx.remaining_s()
    if remaining is None:
        return wanted, ""
    share = remaining / cases_left
    projected = estimate_s(wanted, subset, rate, overhead_s, latency_ms, compare)
    if projected <= share:
        return wanted, ""
    count = wanted
    while count > MIN_BUDGETED_KEYS and estimate_s(count, subset, rate, overhead_s, latency_ms, compare) > share * 0.8:
        count = max(MIN_BUDGETED_KEYS, int(count * 0.8) // 100 * 100)
    return count, (
        f"{wanted} keys were projected at {projected:.0f} s (at {rate:.0f} keys/s) against {share:.0f} s "
        f"left for this case in the run's time budget: ran {count} keys instead"
    )


async def run(ctx: BenchContext) -> Figure:
    server = ctx.vss_server()
    paths = {ms_: ctx.latency(server, ms_, high_rate=True) for ms_ in LATENCIES_MS}
    subset = ctx.pick(150, 2_000)
    plan = [  # (the data set wanted, latency, with the concurrency comparison)
        *((("1 KiB", ctx.pick(200, 10_000), 1024), ms_, True) for ms_ in LATENCIES_MS),
        *((("256 B", ctx.pick(400, 100_000), 256), ms_, False) for ms_ in LATENCIES_MS),
    ]
    stores: dict[tuple[str, int], DataSet] = {}
    populate_s: dict[int, float] = {}
    rates: dict[float, float] = {}
    overhead_s = 0.0
    cases: list[Case] = []
    for i, ((label, wanted, size), latency_ms, compare) in enumerate(plan):
        rate = rates.get(latency_ms) or min(rates.values(), default=ASSUMED_RATE)
        count, note = budgeted_count(ctx, wanted, subset, latency_ms, rate, overhead_s or ASSUMED_UNLOCK_OVERHEAD_S,
                                     compare, len(plan) - i)
        if (label, count) not in stores:
            stores[(label, count)] = DataSet(label, count, size, subset, new_identity())
            populate_s[count] = await populate(server.url, stores[(label, count)])
        case = await measure(ctx, server, paths[latency_ms], stores[(label, count)], compare=compare,
                             compared_first=i % 2 == 1, note=note)
        for restored in (case.restored, case.compared):
            if restored is not None:
                rates[latency_ms] = min(rates.get(latency_ms, math.inf), restored.keys_per_s)
                overhead_s = max(overhead_s, (restored.unlock_s or 0.0) - restored.seconds)
        cases.append(case)
    return _figure(cases, paths, populate_s)


def _figure(cases: list[Case], paths: dict[float, LatencyPath], populate_s: dict[int, float]) -> Figure:
    built = cases[0].concurrency
    fig = Figure(5, "restore at unlock on a fresh data dir",
                 ["keys x size", "latency", "unlock", "of which VssClient built", "restore", "keys/s", "MB/s",
                  "CPU s node/server",
                  f"restore at {COMPARED_CONCURRENCY} fetches", f"{built} / {COMPARED_CONCURRENCY} fetches",
                  "plain fetch keys/s", "restore / plain", "page-at-a-time keys/s", "restore / page-at-a-time",
                  "listing floor", "floor / restore"])
    notes = []
    for case in cases:
        r, c = case.restored, case.compared
        compared = "" if c is None else f"{c.seconds:.1f} s, {c.keys_per_s:.0f} keys/s (CPU {c.cpu.text()})"
        gain = math.nan if c is None else ratio(r.keys_per_s, c.keys_per_s)
        fig.add(f"{case.data.count} x {case.data.label}", f"+{case.latency_ms:g} ms", f"{r.unlock_s:.2f} s",
                f"{r.client_build_s:.2f} s", f"{r.seconds:.2f} s", f"{r.keys_per_s:.0f}", f"{r.mb_per_s:.2f}", r.cpu.text(),
                compared, "" if c is None else f"{gain:.2f}",
                f"{case.plain.keys_per_s:.0f}", f"{ratio(r.keys_per_s, case.plain.keys_per_s):.2f}",
                f"{case.paged.keys_per_s:.0f}", f"{ratio(r.keys_per_s, case.paged.keys_per_s):.2f}",
                f"{case.floor_s:.1f} s ({case.pages} pages)", f"{ratio(case.floor_s, r.seconds):.2f}")
        fig.ratio(f"{case.tag}: restore keys/s / plain fetch keys/s", ratio(r.keys_per_s, case.plain.keys_per_s))
        fig.ratio(f"{case.tag}: restore keys/s / page-at-a-time keys/s", ratio(r.keys_per_s, case.paged.keys_per_s))
        fig.ratio(f"{case.tag}: listing floor / restore time (1.00 = at the floor)", ratio(case.floor_s, r.seconds))
        if c is not None:
            fig.ratio(f"{case.tag}: restore keys/s at {built} / at {COMPARED_CONCURRENCY} fetches in flight", gain)
        if case.note:
            notes.append(f"{case.tag}: {case.note}")
    subsets = ", ".join(sorted({f"{min(c.data.subset, c.data.count)} of {c.data.count}" for c in cases}))
    vias = sorted({p.via for p in paths.values() if p.via != "none"})
    pools = -(-NODE_CONNECTIONS // CONNECTIONS_PER_POOL)
    fig.method = (
        "in-process nodes; unlock = the whole `unlock` of a fresh data dir (building the node's VssClient, "
        "argon2id password check, fence, wallet stream check, restore, make live); VssClient built = the "
        "node's Node._new_client call (wrapped by the bench; near 0 where latency is injected by a transport, "
        "which the client takes as its one pool); restore = the node's restore_kv call alone "
        "(wrapped by the bench), from which keys/s, MB/s and CPU s come; CPU s = CPU seconds of the bench process (the node and "
        f"its threads) / the VSS server during the restore; DEFAULT_CONCURRENCY={built} fetches in flight, "
        f"over the node's VssClient of {NODE_CONNECTIONS} connections in {pools} pools of {CONNECTIONS_PER_POOL} "
        f"used in turn; restore at {COMPARED_CONCURRENCY} = another fresh node with DEFAULT_CONCURRENCY patched to "
        f"{COMPARED_CONCURRENCY} for its unlock (1 KiB sets only; the two take turns at going first); plain fetch "
        f"= {built} raw httpx workers over pools of {CONNECTIONS_PER_POOL}, a signature reused as VssClient does "
        f"(SIGNATURE_REUSE_S={SIGNATURE_REUSE_S:g}); page at a time = the same VssClient, {built} fetches at most, "
        f"decrypt, stage per page; comparisons on {subsets} keys; listing floor = time per page over up to "
        f"{FLOOR_PAGES} pages walked in sequence x pages; populated with putObjects of {POPULATE_BATCH} "
        f"pre-encrypted values ({', '.join(f'{n} keys in {t:.0f} s' for n, t in populate_s.items())}); "
        + "; ".join(latency_method(v) for v in vias)
        + (f" (the fault proxy is not used here: at hundreds of requests/s with {built} in flight its own CPU per "
           "request would be the bottleneck measured)" if "transport" in vias else "")
        + ("; " + "; ".join(notes) if notes else "")
    )
    fig.reading = _reading(cases)
    return fig


def _pace(case: Case) -> str:
    """How busy the node and the server kept the machine's cores during a restore."""
    busy = (case.restored.cpu.own + case.restored.cpu.server) / case.restored.seconds
    if busy >= 0.75 * cores():
        return f"node and server using {busy:.1f} of {cores()} cores: CPU sets the pace"
    return (
        f"node and server using {busy:.1f} of {cores()} cores: the rest went to waits (round trips, and at "
        "small counts the start of the pipeline: the first page, new connections) or to other work on the machine"
    )


def _reading(cases: list[Case]) -> str:
    built = cases[0].concurrency
    out = [
        "the protocol has no batched get: every key is one getObject, signed with a header the client reuses "
        f"for {SIGNATURE_REUSE_S:g} s, over small pools so httpcore's per-request bookkeeping stays flat."
    ]
    local = [c for c in cases if c.latency_ms == 0]
    if local:
        node_ms = sum(c.restored.cpu.own for c in local) / sum(c.restored.keys for c in local) * 1000
        server_ms = sum(c.restored.cpu.server for c in local) / sum(c.restored.keys for c in local) * 1000
        largest = max(local, key=lambda c: c.restored.keys)
        out.append(
            f"At 0 ms each key costs {node_ms:.2f} ms of node CPU (protobuf, decryption, httpx, staging) and "
            f"{server_ms:.2f} ms of server CPU (Quart, signature check, SQLite); the largest case ran at "
            f"{largest.restored.keys_per_s:.0f} keys/s with {_pace(largest)}."
        )
    far = [c for c in cases if c.latency_ms > 0]
    if far:
        rtt_s = far[0].latency_ms / 1000
        largest = max(far, key=lambda c: c.restored.keys)
        out.append(
            f"At +{far[0].latency_ms:g} ms, {built} fetches in flight allow at most {built / rtt_s:,.0f} keys/s and "
            f"the listing (one page of {PAGE_SIZE} keys per round trip, the listing floor) {PAGE_SIZE / rtt_s:,.0f} "
            f"keys/s; the largest case ran at {largest.restored.keys_per_s:.0f} keys/s with {_pace(largest)}."
        )
    compared = [c for c in cases if c.compared is not None]
    if compared:
        out.append(
            f"{built} against {COMPARED_CONCURRENCY} fetches in flight: "
            + ", ".join(f"{ratio(c.restored.keys_per_s, c.compared.keys_per_s):.2f}x at +{c.latency_ms:g} ms"
                        for c in compared if c.compared is not None)
            + "; more fetches in flight only help where the round trip, not CPU, is the limit."
        )
    overheads = [(c.restored.unlock_s - c.restored.seconds, c) for c in cases if c.restored.unlock_s is not None]
    if overheads:
        low, high = min(o for o, _ in overheads), max(o for o, _ in overheads)
        dominated = [c for o, c in overheads if o > c.restored.seconds]
        builds = [c.restored.client_build_s for c in cases]
        out.append(
            f"The unlock adds {low:.2f}-{high:.2f} s around the restore, of which building the node's VssClient "
            f"takes up to {max(builds):.2f} s"
            + (" (each of its httpx pools loads an SSL context of its own; not where an injected transport is "
               "its one pool)" if max(builds) > 0.1 else "")
            + ", the rest being the argon2id password check, the fence and the wallet stream's check"
            + (f": in {len(dominated)} of {len(overheads)} cases more than the restore itself, which is why keys/s "
               "is taken from the restore alone." if dominated else ".")
        )
    out.append("Page at a time adds a listing round trip and the slowest fetch of each page, serially.")
    return " ".join(out)


if __name__ == "__main__":
    standalone(run, "Figure 5: restore throughput")
