"""VssClient's own CPU per getObject: its asyncio engine's bare path, aiohttp under httpx, httpcore.

    .venv/bin/python bench/bench_client_cpu.py [--requests N] [--rounds R] [--all]

Starts the bundled VSS server as a subprocess (SQLite, signature auth), stores KEYS
values of 1 KiB (encrypted as the node stores them), then for each concurrency (1, 16,
64 workers sharing one client of as many connections) fetches them round-robin with
getObject. What is measured is this process's CPU time (user + sys,
`time.process_time()`) over N requests, divided by N: the server's CPU is another
process's, so other load on the machine changes wall time but hardly this figure.

Variants (each in a fresh event loop; every round runs them all, in rotating order;
the table shows each one's median over the rounds):
- httpx: VssClient(http_backend="httpx"): httpx's own transport (httpcore) in pools of 8;
- aiohttp: VssClient(http_backend="aiohttp"), as a node builds it on asyncio: getObject
  goes bare on the engine's own keep-alive HTTP/1.1 pool (vss.transport.KeepAlivePool);
- aiohttp via httpx: VssClient over the same engine given as a caller's transport, so
  getObject goes the way every other call does: httpx's Request and Response over
  httpx-aiohttp's transport, one aiohttp pool;
- aiohttp alone: the same requests straight on aiohttp, no httpx objects, no VssClient:
  what the aiohttp engine itself costs;
- with --all, the alternatives the client's design was chosen against: httpx's
  transport in one pool, aiohttp's in pools of 8, and the client before it sent
  requests straight to the transport (httpx.AsyncClient in pools of 8, over httpcore
  or over aiohttp).

Also reported: node.crypto.decrypt_value of one stored value, the other half of the
node's CPU per restored key.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
for path in (REPO_ROOT, REPO_ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import aiohttp  # noqa: E402
import httpx  # noqa: E402
from figures import machine_summary  # noqa: E402

from node import crypto  # noqa: E402
from tests.conftest import start_vss_server, stop_vss_server  # noqa: E402
from vss import transport as vss_transport  # noqa: E402
from vss.client import CONTENT_TYPE, USER_AGENT, SignatureAuth, VssClient  # noqa: E402
from vss.proto import vss_pb2  # noqa: E402

SIGNING_KEY = bytes.fromhex("4b78cf03b10fe46e63552fccc1217d62d654542969f0d994d91440cdbb5f0ee2")
STORE = "bench-client-cpu"
KEYS = 256
VALUE_SIZE = 1024
CONCURRENCIES = (1, 16, 64)
WARMUP_PER_WORKER = 5  # opens every connection before the clock starts

Fetch = Callable[[str], Awaitable[bytes]]
# A variant: given (base URL, concurrency), an async context that yields a fetch.
Variant = Callable[[str, int], "VariantRun"]


class VariantRun:
    """What one variant sets up for one measurement: `fetch(key)` and `aclose()`."""

    async def start(self) -> Fetch:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


class ClientRun(VariantRun):
    def __init__(self, make: Callable[[], VssClient]) -> None:
        self._make = make
        self._client: VssClient | None = None

    async def start(self) -> Fetch:
        client = self._client = self._make()

        async def fetch(key: str) -> bytes:
            return (await client.get_object(STORE, key)).value

        return fetch

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class AiohttpAloneRun(VariantRun):
    """getObject on a bare aiohttp session: the same headers, body and decoding."""

    def __init__(self, url: str, connections: int) -> None:
        self._url = f"{url}/getObject"
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> Fetch:
        connector = aiohttp.TCPConnector(limit=self._connections)
        session = self._session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
        )
        auth = SignatureAuth(SIGNING_KEY)
        base = {"Content-Type": CONTENT_TYPE, "User-Agent": USER_AGENT, "Accept-Encoding": "identity"}

        async def fetch(key: str) -> bytes:
            body = vss_pb2.GetObjectRequest(store_id=STORE, key=key).SerializeToString()
            async with session.post(self._url, data=body, headers={**base, **auth.headers()}) as response:
                data = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"getObject answered {response.status}")
            return vss_pb2.GetObjectResponse.FromString(data).value.value

        return fetch

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class AsyncClientRun(VariantRun):
    """The client's request path before it went straight to the transport:
    httpx.AsyncClient.post in pools of 8 used in turn, reading `response.content`."""

    def __init__(self, url: str, connections: int, engine: str) -> None:
        self._url = f"{url}/getObject"
        self._connections = connections
        self._engine = engine
        self._clients: list[httpx.AsyncClient] = []

    async def start(self) -> Fetch:
        tls = vss_transport.unused_tls_context()
        per = vss_transport.CONNECTIONS_PER_POOL
        limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
        for _ in range(max(1, -(-self._connections // per))):
            transport = (
                vss_transport.aiohttp_transport(per, tls)
                if self._engine == "aiohttp"
                else httpx.AsyncHTTPTransport(verify=tls, limits=limits)
            )
            self._clients.append(httpx.AsyncClient(transport=transport, timeout=10.0, headers={"User-Agent": USER_AGENT}))
        pools = itertools.cycle(self._clients)
        auth = SignatureAuth(SIGNING_KEY)

        async def fetch(key: str) -> bytes:
            body = vss_pb2.GetObjectRequest(store_id=STORE, key=key).SerializeToString()
            headers = {"Content-Type": CONTENT_TYPE, **auth.headers()}
            response = await next(pools).post(self._url, content=body, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"getObject answered {response.status_code}")
            return vss_pb2.GetObjectResponse.FromString(response.content).value.value

        return fetch

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


def client_variant(**kwargs: object) -> Variant:
    def make(url: str, connections: int) -> VariantRun:
        return ClientRun(lambda: VssClient(url, SignatureAuth(SIGNING_KEY), max_connections=connections, **kwargs))  # type: ignore[arg-type]

    return make


def transport_variant(build: Callable[[int], httpx.AsyncBaseTransport]) -> Variant:
    def make(url: str, connections: int) -> VariantRun:
        return ClientRun(lambda: VssClient(url, SignatureAuth(SIGNING_KEY), transport=build(connections)))

    return make


def one_httpcore_pool(connections: int) -> httpx.AsyncBaseTransport:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncHTTPTransport(verify=vss_transport.unused_tls_context(), limits=limits)


def aiohttp_pools_of_8(connections: int) -> httpx.AsyncBaseTransport:
    per = vss_transport.CONNECTIONS_PER_POOL
    tls = vss_transport.unused_tls_context()
    return vss_transport.ShardedTransport(
        [vss_transport.aiohttp_transport(per, tls) for _ in range(max(1, -(-connections // per)))]
    )


MAIN_VARIANTS: dict[str, Variant] = {
    "httpx": client_variant(http_backend="httpx"),
    "aiohttp": client_variant(http_backend="aiohttp"),
    "aiohttp via httpx": transport_variant(lambda connections: vss_transport.aiohttp_transport(
        connections, vss_transport.unused_tls_context())),
    "aiohttp alone": lambda url, connections: AiohttpAloneRun(url, connections),
}
MORE_VARIANTS: dict[str, Variant] = {
    "httpx, one pool": transport_variant(one_httpcore_pool),
    "aiohttp, pools of 8": transport_variant(aiohttp_pools_of_8),
    "old path: AsyncClient, httpx": lambda url, connections: AsyncClientRun(url, connections, "httpx"),
    "old path: AsyncClient, aiohttp": lambda url, connections: AsyncClientRun(url, connections, "aiohttp"),
}


@dataclass
class Sample:
    cpu_ms: float  # per request
    rate: float  # requests per second of wall time


async def measure(run: VariantRun, concurrency: int, requests: int, keys: list[str]) -> Sample:
    fetch = await run.start()
    try:
        async def drive(count: int) -> None:
            order = itertools.cycle(keys)
            remaining = count

            async def worker() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    if len(await fetch(next(order))) <= VALUE_SIZE:
                        raise RuntimeError("getObject returned a value shorter than the one stored")

            await asyncio.gather(*(worker() for _ in range(concurrency)))

        await drive(concurrency * WARMUP_PER_WORKER)
        cpu, wall = time.process_time(), time.perf_counter()
        await drive(requests)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        return Sample(cpu / requests * 1000, requests / wall)
    finally:
        await run.aclose()


async def populate(url: str) -> list[str]:
    keys = [f"k{i:05d}" for i in range(KEYS)]
    items = [
        vss_pb2.KeyValue(key=key, version=-1, value=crypto.encrypt_value(SIGNING_KEY, os.urandom(VALUE_SIZE)))
        for key in keys
    ]
    async with VssClient(url, SignatureAuth(SIGNING_KEY)) as client:
        await client.put_objects(STORE, items)
    return keys


def decrypt_ms(url: str, keys: list[str], repeats: int = 2000) -> float:
    async def one_value() -> bytes:
        async with VssClient(url, SignatureAuth(SIGNING_KEY)) as client:
            return (await client.get_object(STORE, keys[0])).value

    stored = asyncio.run(one_value())
    start = time.process_time()
    for _ in range(repeats):
        crypto.decrypt_value(SIGNING_KEY, stored)
    return (time.process_time() - start) / repeats * 1000


def versions() -> str:
    names = ("httpx", "httpcore", "aiohttp", "httpx-aiohttp")
    return ", ".join(f"{name} {metadata.version(name)}" for name in names)


def table(results: dict[tuple[str, int], list[Sample]], variants: list[str]) -> str:
    """One row per variant: median CPU ms per getObject and req/s at each concurrency;
    then httpx's over aiohttp's CPU, the ratio the transport choice rests on, and the
    bare path's against aiohttp under httpx."""

    def median(name: str, concurrency: int) -> Sample:
        samples = results[(name, concurrency)]
        return Sample(statistics.median(s.cpu_ms for s in samples), statistics.median(s.rate for s in samples))

    columns = ["variant", *(f"CPU ms, {c} workers" for c in CONCURRENCIES), *(f"req/s, {c}" for c in CONCURRENCIES)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name in variants:
        cells = [median(name, c) for c in CONCURRENCIES]
        lines.append("| " + " | ".join([name, *(f"{m.cpu_ms:.3f}" for m in cells), *(f"{m.rate:.0f}" for m in cells)]) + " |")
    for top, bottom in (("httpx", "aiohttp via httpx"), ("aiohttp", "aiohttp via httpx")):
        ratios = [median(top, c).cpu_ms / median(bottom, c).cpu_ms for c in CONCURRENCIES]
        lines.append("| " + " | ".join([f"**{top} / {bottom}**", *(f"**{r:.2f}x**" for r in ratios), "", "", ""]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="getObject calls per measurement (default 3000)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per variant and concurrency (default 3)")
    parser.add_argument("--all", action="store_true", help="also the pool layouts and request paths not chosen")
    args = parser.parse_args()
    variants = {**MAIN_VARIANTS, **(MORE_VARIANTS if args.all else {})}
    started = dt.datetime.now(dt.UTC)
    machine = machine_summary()
    server = start_vss_server(Path(tempfile.mkdtemp(prefix="bench-client-cpu-")), "--auth", "sigs")
    try:
        keys = asyncio.run(populate(server.url))
        results: dict[tuple[str, int], list[Sample]] = {}
        names = list(variants)
        for round_number in range(args.rounds):
            order = names[round_number % len(names):] + names[: round_number % len(names)]
            for concurrency in CONCURRENCIES:
                for name in order:
                    run = variants[name](server.url, concurrency)
                    sample = asyncio.run(measure(run, concurrency, args.requests, keys))
                    results.setdefault((name, concurrency), []).append(sample)
                    print(f"  round {round_number + 1}, {concurrency:2d} workers, {name}: "
                          f"{sample.cpu_ms:.3f} ms CPU per getObject, {sample.rate:.0f}/s", file=sys.stderr, flush=True)
        decrypt = decrypt_ms(server.url, keys)
    finally:
        stop_vss_server(server)
    load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"## bench/bench_client_cpu.py — {started:%Y-%m-%d %H:%M} UTC\n")
    print(f"Machine: {machine}; load average at the end {load_end}. {versions()}.\n")
    print("CPU ms per getObject of a 1 KiB value (client process, user+sys), median of "
          f"{args.rounds} rounds of {args.requests} requests; one client of as many connections as workers.\n")
    print(table(results, list(variants)))
    print(f"\ndecrypt_value of one stored 1 KiB value: {decrypt:.3f} ms CPU.")


if __name__ == "__main__":
    main()
