"""Figures 1 and 2: local write latency with VSS off, on, slow and down; and write-through.

Figure 1 — one writer puts 1 KiB values one after another and times each put until it
returns (durable locally), through the Python API (`await node.put(...)`) and through
HTTP (`PUT /kv/{key}` to a node process, driven by httpx). Four nodes, one per mode:
VSS off; VSS on with a healthy server; VSS on with 50 ms added to every VSS request;
VSS on with the server down (connection refused). Over HTTP the nodes are processes of
their own and the modes are interleaved write by write (each write goes to every node
in turn, in a rotating order), so noise from elsewhere on the machine falls on all of
them alike. Through the API the nodes share this process's event loop, where one
node's replication would slow the others' writes down: there the modes take turns in
rounds (a few hundred writes each, in a rotating order), and after each round a node
with VSS on is left to drain (untimed), so no node pays for another's replication. A concurrent variant (16 writers) runs through
the API. Ratios are to VSS off; the target is <= 1.10. The node's replicator lets a
first pending key wait up to `actors.replicator.BATCH_WINDOW_S` for company; one more
API node, shown for comparison and not held to the target, runs with that window at 0
(the replicator as it was before the window). The constant is read at use time and
shared by every in-process node, so it is patched only around that node's own turns
(its writes and its drain), while no other node is being measured.

Figure 2 — write-through, as rgb-lightning-node does it: the write path itself awaits
the remote write. A node with VSS off commits locally, then the same call encrypts
the value and awaits `putObjects` of it before returning. Measured in the same rounds
as figure 1 at 0 and 50 ms, and compared with our node at the same latency.

`python bench/bench_write_latency.py serve-node DATA_DIR --listen H:P --vss-url URL
--latency-ms N` serves one node over HTTP with `LatencyTransport` under its VSS client:
the node process for the 50 ms HTTP mode when the fault proxy is not available.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import anyio
import httpx
from figures import Figure, cores, ms, percentile, ratio
from harness import (
    PASSWORD,
    REPO_ROOT,
    VALUE_1K,
    BenchContext,
    LatencyTransport,
    free_loopback_port,
    latency_method,
    new_identity,
    patched,
    quiesce,
    running_node,
    standalone,
    stop_process,
    vss_client,
    wait_for_port,
    wait_until,
)

import actors.replicator as replicator
from node import crypto, kv_keys
from vss.proto.vss_pb2 import KeyValue

TARGET = 1.10
SLOW_MS = 50
CONCURRENT_WRITERS = 16
NAMESPACE = "bench"

MODE_LABELS = {
    "off": "VSS off",
    "on": "VSS on, healthy server",
    "nowindow": "VSS on, healthy, no batch window (BATCH_WINDOW_S=0, bench-patched)",
    "slow": f"VSS on, +{SLOW_MS} ms per request",
    "down": "VSS on, server down",
    "wt0": "write-through, 0 ms",
    "wt50": f"write-through, +{SLOW_MS} ms",
}


def _values(count: int = 64) -> list[bytes]:
    return [os.urandom(VALUE_1K) for _ in range(count)]


VALUES = _values()


# ---------------------------------------------------------------------------- targets


@dataclass
class Target:
    """One thing to write to: `put(key, value)` returns once the write is acknowledged;
    `settle()` waits (untimed) until its replication has caught up; `scope()` is held
    around each of its turns (writes and settle), e.g. to patch a node constant."""

    mode: str
    put: Callable[[str, bytes], Awaitable[None]]
    settle: Callable[[], Awaitable[None]]
    samples: list[float] = field(default_factory=list)
    scope: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext
    sent: Callable[[], tuple[int, int]] | None = None  # the node's (keys, putObjects) sent so far
    keys_sent: int = 0  # over the timed sequential writes and their drains
    batches_sent: int = 0

    @property
    def keys_per_batch(self) -> float:
        return self.keys_sent / self.batches_sent if self.batches_sent else math.nan


async def _nothing() -> None:
    return None


def quiesce_node(node) -> Callable[[], Awaitable[None]]:
    async def settle() -> None:
        await quiesce(node)

    return settle


def api_target(mode: str, node) -> Target:
    async def put(key: str, value: bytes) -> None:
        await node.put(NAMESPACE, "", key, value)

    def sent() -> tuple[int, int]:
        keys = node.metrics.value("replicated_keys_total") or 0
        batches = node.metrics.value("replication_batches_total") or 0
        return int(keys), int(batches)

    replicating = mode in ("on", "slow", "nowindow")
    target = Target(mode, put, quiesce_node(node) if replicating else _nothing, sent=sent if replicating else None)
    if mode == "nowindow":
        # The replicator reads BATCH_WINDOW_S each time a first key arrives, which may be
        # after put() returned: the patch covers the writes and the drain behind them.
        target.scope = lambda: patched(replicator, "BATCH_WINDOW_S", 0)
    return target


def write_through_target(mode: str, node, client, keys) -> Target:
    """Local commit, then encrypt and await putObjects inside the same call."""

    async def put(key: str, value: bytes) -> None:
        await node.put(NAMESPACE, "", key, value)
        sealed = crypto.encrypt_value(keys.signing_key, value)
        item = KeyValue(key=kv_keys.to_vss_key(NAMESPACE, "", key), version=-1, value=sealed)
        await client.put_objects(keys.kv_store_id, [item])

    return Target(mode, put, _nothing)


def http_target(mode: str, http: httpx.AsyncClient) -> Target:
    async def put(key: str, value: bytes) -> None:
        response = await http.put(f"/kv/{key}", params={"primary": NAMESPACE}, content=value)
        if response.status_code != 204:
            raise RuntimeError(f"PUT /kv/{key} answered {response.status_code}: {response.text}")

    async def settle() -> None:
        async def idle() -> bool:
            info = (await http.get("/vssbackupinfo")).json()
            return info.get("pending_kv_writes") == 0

        await wait_until(idle, 120.0, poll_s=0.05)

    return Target(mode, put, settle if mode in ("on", "slow") else _nothing)


# ------------------------------------------------------------------------ node processes


@dataclass
class NodeProcess:
    process: subprocess.Popen
    base_url: str


def start_node_process(ctx: BenchContext, mode: str, vss_url: str | None, transport_latency_ms: float = 0) -> NodeProcess:
    """A node serving HTTP in its own process: `vssnode run` itself, or, to inject
    latency in-process, this module's serve-node (the same app under hypercorn)."""
    data_dir = ctx.scratch(f"node-{mode}")
    port = free_loopback_port()
    listen = f"127.0.0.1:{port}"
    if transport_latency_ms > 0:
        command = [sys.executable, str(Path(__file__).resolve()), "serve-node", str(data_dir / "data"),
                   "--listen", listen, "--vss-url", str(vss_url), "--latency-ms", f"{transport_latency_ms:g}"]
    else:
        command = [sys.executable, "-m", "vssnode", "run", str(data_dir / "data"), "--listen", listen]
        if vss_url is not None:
            command += ["--vss-url", vss_url, "--vss-allow-empty-restore"]
    log_path = data_dir / "node.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    ctx.stack.callback(stop_process, process)
    wait_for_port(port, process, log_path, 30.0)
    return NodeProcess(process, f"http://{listen}")


async def unlock_over_http(http: httpx.AsyncClient, mnemonic: str) -> None:
    for path, body in (("/init", {"password": PASSWORD, "mnemonic": mnemonic}), ("/unlock", {"password": PASSWORD})):
        response = await http.post(path, json=body)
        if response.status_code != 200:
            raise RuntimeError(f"POST {path} answered {response.status_code}: {response.text}")


def serve_node_main(argv: list[str]) -> int:
    """serve-node: one node over HTTP, with `latency_ms` added to each of its VSS requests."""
    from harness import FAST_LIMITS
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    from node.config import NodeConfig
    from vssnode.http_api import create_app

    parser = argparse.ArgumentParser(prog="bench_write_latency.py serve-node")
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--vss-url", required=True)
    parser.add_argument("--latency-ms", type=float, required=True)
    args = parser.parse_args(argv)
    config = NodeConfig(data_dir=args.data_dir, vss_url=args.vss_url, vss_allow_empty_restore=True, listen=args.listen,
                        vault_limits=FAST_LIMITS)
    app = create_app(config, vss_transport=LatencyTransport(args.latency_ms / 1000))
    hyper = Config()
    hyper.bind = [args.listen]
    hyper.accesslog = None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(app, hyper, shutdown_trigger=stop.wait)

    asyncio.run(main())
    return 0


# ---------------------------------------------------------------------------- driving


async def sequential(target: Target, count: int, tag: str) -> list[float]:
    samples = []
    for i in range(count):
        value = VALUES[i % len(VALUES)]
        start = time.perf_counter()
        await target.put(f"{tag}-{i}", value)
        samples.append(time.perf_counter() - start)
    return samples


async def concurrent(target: Target, writers: int, per_writer: int, tag: str) -> tuple[list[float], float]:
    """`writers` tasks each writing `per_writer` values in turn; (latencies, elapsed)."""
    samples: list[float] = []

    async def writer(w: int) -> None:
        for i in range(per_writer):
            value = VALUES[(w + i) % len(VALUES)]
            start = time.perf_counter()
            await target.put(f"{tag}-{w}-{i}", value)
            samples.append(time.perf_counter() - start)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for w in range(writers):
            tg.start_soon(writer, w)
    return samples, time.perf_counter() - start


async def interleaved(targets: list[Target], rounds: int, count: int, warmup: int, prefix: str) -> None:
    """Sequential writes, write by write across the targets: write i goes to every target
    in turn (the order rotating with i), so whatever else the machine does at that
    moment falls on all of them alike. Each round ends with every target settled
    (untimed); a target's replication thus runs while the others are written, as it
    would beside any other process."""
    for target in targets:
        await sequential(target, warmup, f"{prefix}-warm")
    for target in targets:
        await target.settle()
    for r in range(rounds):
        for i in range(count):
            turn = (i + r) % len(targets)
            for target in targets[turn:] + targets[:turn]:
                start = time.perf_counter()
                await target.put(f"{prefix}-r{r}-{i}", VALUES[i % len(VALUES)])
                target.samples.append(time.perf_counter() - start)
        for target in targets:
            await target.settle()


async def in_rounds(targets: list[Target], rounds: int, counts: dict[str, int], warmup: int, prefix: str) -> None:
    """Sequential writes, mode after mode in a rotating order; samples go to each target."""
    for target in targets:
        with target.scope():
            await sequential(target, warmup, f"{prefix}-warm")
            await target.settle()
    for r in range(rounds):
        order = targets[r % len(targets):] + targets[: r % len(targets)]
        for target in order:
            before = target.sent() if target.sent else (0, 0)
            with target.scope():
                target.samples += await sequential(target, counts[target.mode], f"{prefix}-r{r}")
                await target.settle()
            after = target.sent() if target.sent else (0, 0)
            target.keys_sent += after[0] - before[0]
            target.batches_sent += after[1] - before[1]


# ----------------------------------------------------------------------------- figures


async def run(ctx: BenchContext) -> list[Figure]:
    server = ctx.vss_server()
    slow = ctx.latency(server, SLOW_MS)
    rounds = ctx.pick(2, 5)
    seq_count = ctx.pick(80, 500)
    slow_wt_count = ctx.pick(10, 50)
    warmup = ctx.pick(20, 50)
    conc_rounds, conc_per_writer = ctx.pick(1, 3), ctx.pick(10, 50)

    api: dict[str, Target] = {}
    http: dict[str, Target] = {}
    concurrent_rows: list[tuple[str, list[float], float, int]] = []
    async with (
        running_node(ctx.scratch("api-off"), None) as n_off,
        running_node(ctx.scratch("api-on"), server.url) as n_on,
        running_node(ctx.scratch("api-nowindow"), server.url) as n_nowindow,
        running_node(ctx.scratch("api-slow"), slow.url, transport=slow.transport()) as n_slow,
        running_node(ctx.scratch("api-down"), ctx.dead_url(), allow_empty_restore=True) as n_down,
        running_node(ctx.scratch("api-wt0"), None) as n_wt0,
        running_node(ctx.scratch("api-wt50"), None) as n_wt50,
    ):
        wt_id0, wt_id50 = new_identity(), new_identity()
        async with (
            vss_client(server.url, wt_id0.keys) as c_wt0,
            vss_client(slow.url, wt_id50.keys, transport=slow.transport()) as c_wt50,
        ):
            for mode, node in (("off", n_off), ("on", n_on), ("slow", n_slow), ("down", n_down), ("nowindow", n_nowindow)):
                api[mode] = api_target(mode, node)
            api["wt0"] = write_through_target("wt0", n_wt0, c_wt0, wt_id0.keys)
            api["wt50"] = write_through_target("wt50", n_wt50, c_wt50, wt_id50.keys)
            counts = {mode: seq_count for mode in api} | {"wt50": slow_wt_count}
            await in_rounds(list(api.values()), rounds, counts, warmup, "api")

            # Concurrent variant: the node modes, in rounds as well.
            conc_targets = [api[m] for m in ("off", "on", "slow", "down", "nowindow")]
            gathered: dict[str, tuple[list[float], float, int]] = {t.mode: ([], 0.0, 0) for t in conc_targets}
            for r in range(conc_rounds):
                turn = r % len(conc_targets)
                for target in conc_targets[turn:] + conc_targets[:turn]:
                    with target.scope():
                        samples, elapsed = await concurrent(target, CONCURRENT_WRITERS, conc_per_writer, f"conc-r{r}")
                        await target.settle()
                    old = gathered[target.mode]
                    gathered[target.mode] = (old[0] + samples, old[1] + elapsed, old[2] + len(samples))
            concurrent_rows = [(mode, *gathered[mode]) for mode in gathered]

    # HTTP: one node process per mode.
    if slow.via == "transport":
        p_slow = start_node_process(ctx, "slow", server.url, transport_latency_ms=SLOW_MS)
    else:
        p_slow = start_node_process(ctx, "slow", slow.url)
    processes = {
        "off": start_node_process(ctx, "off", None),
        "on": start_node_process(ctx, "on", server.url),
        "slow": p_slow,
        "down": start_node_process(ctx, "down", ctx.dead_url()),
    }
    clients = {mode: httpx.AsyncClient(base_url=p.base_url, timeout=60.0) for mode, p in processes.items()}
    try:
        for mode, client in clients.items():
            await unlock_over_http(client, new_identity().mnemonic)
            http[mode] = http_target(mode, client)
        await interleaved(list(http.values()), rounds, seq_count, warmup, "http")
    finally:
        for client in clients.values():
            await client.aclose()
        for p in processes.values():
            stop_process(p.process)

    return [_figure_1(ctx, api, http, concurrent_rows, slow.via), _figure_2(ctx, api, slow.via)]


def _figure_1(ctx: BenchContext, api: dict[str, Target], http: dict[str, Target], conc, via: str) -> Figure:
    fig = Figure(1, "local write latency, 1 KiB values", ["interface", "mode", "writes", "p50", "p99", "p50 / off", "p99 / off"])
    for interface, targets in (("Python API", api), ("HTTP", http)):
        off = targets["off"].samples
        for mode in ("off", "on", "slow", "down", "nowindow"):
            if mode not in targets:
                continue
            s = targets[mode].samples
            r50, r99 = ratio(percentile(s, 50), percentile(off, 50)), ratio(percentile(s, 99), percentile(off, 99))
            fig.add(interface, MODE_LABELS[mode], len(s), ms(percentile(s, 50)), ms(percentile(s, 99)), f"{r50:.2f}",
                    f"{r99:.2f}")
            if mode != "off":
                # Without the window is not the node as built: shown, but not held to the target.
                target = None if mode == "nowindow" else TARGET
                fig.ratio(f"{interface} {MODE_LABELS[mode]} p50 / off", r50, target)
                fig.ratio(f"{interface} {MODE_LABELS[mode]} p99 / off", r99, target)
    off_c = next(samples for mode, samples, _, _ in conc if mode == "off")
    for mode, samples, elapsed, n in conc:
        r50, r99 = ratio(percentile(samples, 50), percentile(off_c, 50)), ratio(percentile(samples, 99), percentile(off_c, 99))
        fig.add(f"API, {CONCURRENT_WRITERS} writers ({n / elapsed:.0f} writes/s)", MODE_LABELS[mode], n,
                ms(percentile(samples, 50)), ms(percentile(samples, 99)), f"{r50:.2f}", f"{r99:.2f}")
    fig.method = (
        f"in-process nodes for the API; for HTTP, `vssnode run` processes driven by one httpx client "
        f"(the +{SLOW_MS} ms node: {'vssnode run behind the proxy' if via == 'proxy' else 'serve-node with LatencyTransport'}); "
        f"{latency_method(via)}; server down = nothing listens on the VSS port "
        "(connection refused, node started with --vss-allow-empty-restore); HTTP modes interleaved write by write "
        "(rotating order), API modes in rotating rounds; SQLite on ext4, synchronous=FULL"
    )
    fig.reading = _reading_1(api)
    return fig


def _reading_1(api: dict[str, Target]) -> str:
    off, on, bare = api["off"].samples, api["on"].samples, api["nowindow"].samples
    r50_on, r99_on = ratio(percentile(on, 50), percentile(off, 50)), ratio(percentile(on, 99), percentile(off, 99))
    r50_bare = ratio(percentile(bare, 50), percentile(off, 50))
    window_ms = replicator.BATCH_WINDOW_S * 1000
    if r99_on > TARGET:
        tail = (
            f"p99 stays above {TARGET:.2f} ({r99_on:.2f}x): a write that lands while a batch is being encrypted, "
            "sent as a signed HTTP call and its reply parsed waits for that work, which shares the node's one "
            f"event loop and GIL, and on this machine the VSS server runs on the same {cores()} cores."
        )
    else:
        tail = (
            f"p99 is within the target here ({r99_on:.2f}x), but a write that lands while a batch is being "
            "encrypted, sent and parsed still waits for that work on the node's one event loop and GIL "
            f"(and the VSS server shares the same {cores()} cores)."
        )
    return (
        "VSS off is one fsync'd transaction plus a worker-thread hop and the event loop. With VSS on the commit "
        "is the same plus one marker row; the rest is the replicator, on the same event loop and GIL: it reads "
        "the owed rows, encrypts, signs, sends and parses a putObjects, then clears the markers in a second "
        f"transaction through the same local-writer. A first pending key waits up to {window_ms:g} ms "
        f"(BATCH_WINDOW_S) for company, so one sequential writer's commits go out "
        f"{api['on'].keys_per_batch:.1f} keys per putObjects instead of "
        f"{api['nowindow'].keys_per_batch:.1f} with the window at 0 (the comparison row): that work is paid "
        f"once per batch, which puts the healthy-server p50 at {r50_on:.2f}x of VSS off ({r50_bare:.2f}x "
        f"without the window), at the cost of up to {window_ms:g} ms more replication lag. " + tail + " With +"
        f"{SLOW_MS} ms the round trip itself makes batches larger and rarer, and with the server down keys are "
        "only handed to the retry-queue, so both stay near VSS off at p50."
    )


def _figure_2(ctx: BenchContext, api: dict[str, Target], via: str) -> Figure:
    fig = Figure(2, "our write path vs write-through (awaits putObjects in the write)",
                 ["latency", "ours p50", "ours p99", "write-through p50", "write-through p99", "ours p99 / write-through p99"])
    for label, ours, wt in (("0 ms", "on", "wt0"), (f"+{SLOW_MS} ms", "slow", "wt50")):
        o, w = api[ours].samples, api[wt].samples
        r = ratio(percentile(o, 99), percentile(w, 99))
        fig.add(label, ms(percentile(o, 50)), ms(percentile(o, 99)), ms(percentile(w, 50)), ms(percentile(w, 99)), f"{r:.3f}")
        fig.ratio(f"ours p99 / write-through p99 at {label}", r)
    fig.method = (
        f"Python API, one sequential writer, 1 KiB values; write-through = a VSS-off node's put, then "
        f"encrypt_value and `await put_objects` of that one item (unconditional), in the same call; "
        f"{len(api['wt50'].samples)} samples at +{SLOW_MS} ms; {latency_method(via)}"
    )
    fig.reading = (
        "write-through pays a full VSS round trip (signing, HTTP, the server's own SQLite commit) on every write, "
        f"so at +{SLOW_MS} ms its floor is {SLOW_MS} ms per write; ours never waits on the network."
    )
    return fig


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve-node":
        sys.exit(serve_node_main(sys.argv[2:]))
    standalone(run, "Figures 1-2: local write latency, and write-through")
