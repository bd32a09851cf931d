"""What the node benchmarks run against: a VSS server, injected latency, nodes, the run's
scratch directory and time budget, and the `__main__` every bench module shares.

A bench module exposes `async def run(ctx: BenchContext) -> Figure | list[Figure]`
(`Figure` and the statistics are in bench/figures.py); `bench/run_all.py` runs them in
order, prints each figure and appends them to bench/RESULTS.md. Every module also runs
alone: `.venv/bin/python bench/bench_restore.py --quick` (no budget, nothing recorded).

Injected latency comes from one of two places (`--latency-via auto|proxy|transport`):
- `proxy`: the fault proxy of tests/faults (`python -m tests.faults.proxy --listen ...
  --upstream ... --latency-ms N`) as a subprocess between the node and the VSS server;
  it works whatever carries the node's requests;
- `transport`: `LatencyTransport`, an httpx transport that waits N ms before each
  request and then sends it on the engine the node's VssClient would pick itself
  (`NodeEngine`: aiohttp on asyncio, httpcore on trio), put under an in-process node's
  VSS client (`Node(..., vss_transport=...)`).
`auto` picks the proxy when its CLI answers `--help`, except for traffic of hundreds of
requests/s with many in flight, where on a small machine the proxy's own CPU per
request would be what is measured; the transport is used there. Each figure says which
one produced it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import anyio  # noqa: E402
import httpx  # noqa: E402
from figures import Figure  # noqa: E402

from actors import Node  # noqa: E402
from node.config import NodeConfig  # noqa: E402
from node.keys import NodeKeys, derive_keys, generate_mnemonic  # noqa: E402
from tests.conftest import (  # noqa: E402
    RunningVssServer,
    free_loopback_port,
    start_vss_server,
    stop_vss_server,
)
from tests.nodeutil import FAST_LIMITS  # noqa: E402
from vss.client import SignatureAuth, VssClient  # noqa: E402
from vss.transport import Connections, unused_tls_context  # noqa: E402

PASSWORD = "bench password"
VALUE_1K = 1024
PROXY_START_TIMEOUT_S = 20.0
QUIESCE_TIMEOUT_S = 120.0
NODE_CONNECTIONS = 64  # what actors.node.Node._new_port gives the node's VssClient


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout_s: float, poll_s: float = 0.02) -> float:
    """Poll until `predicate()` is true; return the seconds it took. TimeoutError after `timeout_s`."""
    start = time.perf_counter()
    with anyio.fail_after(timeout_s):
        while not await predicate():
            await anyio.sleep(poll_s)
    return time.perf_counter() - start


@contextlib.contextmanager
def patched(owner: object, name: str, value: object) -> Iterator[None]:
    """Set `owner.name` to `value` for the duration of the block (a module constant the
    node reads at use time); what was there before is put back, whatever happens."""
    if not hasattr(owner, name):
        raise AttributeError(f"{getattr(owner, '__name__', owner)!s} has no {name} any more: update the bench")
    before = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, before)


# --------------------------------------------------------------------- injected latency


class NodeEngine(httpx.AsyncBaseTransport):
    """The transport a node's VssClient would make for itself (vss.transport.Connections:
    aiohttp on asyncio, httpcore in small pools on trio), picked at the first request,
    for wrappers that must add something under the client and still cost what the
    node's own requests cost. A node closes its client's transport with the client
    (clear_fence, then unlock, each build one): a closed NodeEngine opens new
    connections at its next request."""

    def __init__(self, max_connections: int = NODE_CONNECTIONS) -> None:
        self._max_connections = max_connections
        self._connections: Connections | None = None
        self.engine = "not chosen yet"

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._connections is None:
            self._connections = Connections(
                transport=None, backend="auto", max_connections=self._max_connections, tls=unused_tls_context()
            )
        transport = self._connections.get()
        self.engine = self._connections.engine
        return await transport.handle_async_request(request)

    async def aclose(self) -> None:
        connections, self._connections = self._connections, None
        if connections is not None:
            await connections.aclose()


class LatencyTransport(httpx.AsyncBaseTransport):
    """A real HTTP transport that waits `latency_s` before sending each request: a
    round trip that costs that much more, without burning CPU on a proxy. The request
    then goes out on `NodeEngine`, the engine the node's client would use itself."""

    def __init__(self, latency_s: float, max_connections: int = NODE_CONNECTIONS) -> None:
        self._inner = NodeEngine(max_connections)
        self.latency_s = latency_s

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.latency_s > 0:
            await anyio.sleep(self.latency_s)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def proxy_available() -> bool:
    """Whether the fault proxy's CLI exists (`python -m tests.faults.proxy --help`)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tests.faults.proxy", "--help"],
            cwd=REPO_ROOT, capture_output=True, timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@dataclass
class LatencyPath:
    """How one consumer reaches the VSS server with `latency_ms` added: a URL, and an
    httpx transport to put under the client (None for a plain connection)."""

    url: str
    latency_ms: float
    via: str  # "none", "proxy" or "transport"
    transport_factory: Callable[[], httpx.AsyncBaseTransport | None]
    pid: int | None = None  # the proxy process, whose CPU time a figure may report

    def transport(self) -> httpx.AsyncBaseTransport | None:
        return self.transport_factory()


def latency_method(via: str) -> str:
    """How a figure's latency was injected, for its method note."""
    if via == "proxy":
        return "latency injected by the fault proxy subprocess (python -m tests.faults.proxy --latency-ms N)"
    if via == "transport":
        return (
            "latency injected in-process by bench/harness.py LatencyTransport (a sleep before each VSS request, "
            "then the engine the node's VssClient picks itself: aiohttp on asyncio)"
        )
    return "no latency injected"


# ---------------------------------------------------------------------------- processes


def wait_for_port(port: int, process: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on port {port} after {timeout_s} s:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.05)


def stop_process(process: subprocess.Popen, timeout_s: float = 15.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far (0 when unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- context


@dataclass
class BenchContext:
    """One benchmark run: its size, its scratch directory, its time budget and the
    processes it started (stopped by `close`)."""

    quick: bool
    workdir: Path
    latency_choice: str  # what was asked: "auto", "proxy" or "transport"
    proxy_ok: bool  # whether the fault proxy's CLI exists
    deadline: float | None = None  # time.monotonic() by which the last figure should be done
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _count: int = 0

    def scratch(self, name: str) -> Path:
        self._count += 1
        path = self.workdir / f"{self._count:03d}-{name}"
        path.mkdir(parents=True)
        return path

    def pick(self, quick: int, full: int) -> int:
        return quick if self.quick else full

    def remaining_s(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def vss_server(self) -> RunningVssServer:
        """A fresh VSS server subprocess (SQLite, signature auth), stopped with the context."""
        server = start_vss_server(self.scratch("vss-server"), "--auth", "sigs")
        self.stack.callback(stop_vss_server, server)
        return server

    def latency_via(self, high_rate: bool = False) -> str:
        """"proxy" or "transport". `high_rate`: hundreds of requests/s with many in flight,
        where on a small machine the proxy's own CPU per request would be the bottleneck
        being measured; `auto` then uses the transport."""
        if self.latency_choice == "transport" or not self.proxy_ok:
            return "transport"
        if self.latency_choice == "proxy":
            return "proxy"
        return "transport" if high_rate else "proxy"

    def latency(self, server: RunningVssServer, latency_ms: float, *, high_rate: bool = False) -> LatencyPath:
        """A way to `server` that adds `latency_ms` per request (see the module doc)."""
        if latency_ms <= 0:
            return LatencyPath(server.url, 0, "none", lambda: None)
        if self.latency_via(high_rate) == "transport":
            return LatencyPath(server.url, latency_ms, "transport", lambda: LatencyTransport(latency_ms / 1000))
        port = free_loopback_port()
        upstream = server.url.removesuffix("/vss")
        log_path = self.scratch(f"proxy-{latency_ms:g}ms") / "proxy.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.faults.proxy", "--listen", f"127.0.0.1:{port}",
                 "--upstream", upstream, "--latency-ms", f"{latency_ms:g}"],
                cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT,
            )
        self.stack.callback(stop_process, process)
        wait_for_port(port, process, log_path, PROXY_START_TIMEOUT_S)
        return LatencyPath(f"http://127.0.0.1:{port}/vss", latency_ms, "proxy", lambda: None, process.pid)

    def dead_url(self) -> str:
        """A VSS URL where nothing listens: every request is refused (the server is down)."""
        return f"http://127.0.0.1:{free_loopback_port()}/vss"

    def close(self) -> None:
        self.stack.close()


@contextlib.contextmanager
def bench_context(
    quick: bool, latency_choice: str = "auto", keep: bool = False, proxy_ok: bool | None = None
) -> Iterator[BenchContext]:
    """A context for one or more figures; `proxy_ok` skips probing for the proxy again."""
    if proxy_ok is None:
        proxy_ok = latency_choice != "transport" and proxy_available()
    if latency_choice == "proxy" and not proxy_ok:
        raise SystemExit("--latency-via proxy: `python -m tests.faults.proxy --help` does not answer")
    # Under the repo's filesystem (not a tmpfs), so fsync costs what it costs on disk.
    workdir = Path(tempfile.mkdtemp(prefix="vssnode-bench-", dir=os.environ.get("VSSNODE_BENCH_DIR")))
    ctx = BenchContext(quick=quick, workdir=workdir, latency_choice=latency_choice, proxy_ok=proxy_ok)
    # The node's warnings (a server down on purpose, retries) go to a file, not the figures.
    handler = logging.FileHandler(workdir / "bench.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        yield ctx
    finally:
        ctx.close()
        root.removeHandler(handler)
        handler.close()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------------------ nodes


@dataclass
class Identity:
    mnemonic: str
    keys: NodeKeys


def new_identity() -> Identity:
    mnemonic = generate_mnemonic()
    return Identity(mnemonic, derive_keys(mnemonic))


@contextlib.asynccontextmanager
async def running_node(
    data_dir: Path,
    vss_url: str | None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    identity: Identity | None = None,
    allow_empty_restore: bool = False,
) -> AsyncIterator[Node]:
    """An in-process node, initialised and unlocked, locked again on the way out."""
    identity = identity or new_identity()
    config = NodeConfig(
        data_dir=data_dir, vss_url=vss_url, vss_allow_empty_restore=allow_empty_restore, vault_limits=FAST_LIMITS
    )
    async with Node.open(config, vss_transport=transport) as node:
        await node.init(PASSWORD, identity.mnemonic)
        await node.unlock(PASSWORD)
        yield node


async def pending_writes(node: Node) -> int:
    return (await node.backup_info())["pending_kv_writes"]


async def quiesce(node: Node, timeout_s: float = QUIESCE_TIMEOUT_S) -> float:
    """Wait until nothing is owed to the server; returns the seconds waited."""

    async def idle() -> bool:
        return await pending_writes(node) == 0

    return await wait_until(idle, timeout_s)


def vss_client(
    url: str, keys: NodeKeys, transport: httpx.AsyncBaseTransport | None = None, connections: int = NODE_CONNECTIONS
) -> VssClient:
    """A VssClient as the node builds one (by default with as many connections)."""
    return VssClient(url, SignatureAuth(keys.signing_key), transport=transport, max_connections=connections)


# ----------------------------------------------------------------------------- main


def standalone(run: Callable[[BenchContext], Awaitable[Figure | list[Figure]]], description: str) -> None:
    """The `__main__` of a bench module: parse --quick/--latency-via, run, print."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small counts (seconds, not minutes)")
    parser.add_argument("--latency-via", choices=("auto", "proxy", "transport"), default="auto",
                        help="auto: the fault proxy where it exists, except for high-rate traffic")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    with bench_context(args.quick, args.latency_via, args.keep) as ctx:
        start = time.perf_counter()
        result = anyio.run(run, ctx)
        figures = result if isinstance(result, list) else [result]
        for figure in figures:
            figure.seconds = time.perf_counter() - start
            print(figure.text())
