"""Throughput of the bundled VSS server over loopback: SQLite and PostgreSQL side by side.

    .venv/bin/python bench/bench_vss_server.py [--duration 4] [--concurrency 32] [--no-record]

Starts `python -m vss.server` as a subprocess (signature auth, a fixed random key),
first on SQLite in a temp dir, then on PostgreSQL (127.0.0.1:5432/test, in a schema of
its own that is dropped afterwards; skipped if unreachable). For each it measures, with
`--concurrency` concurrent httpx clients for `--duration` seconds each:

- getObject of 1 KiB values,
- putObjects with 1 item of 1 KiB (unconditional),
- putObjects with 100 items of 1 KiB (unconditional),

and prints ops/s (items/s for the batch), median and p99 latency, and the server
process's CPU use. Results are appended to bench/RESULTS.md with the date and machine.
Client and server share the machine: on few cores the client's own CPU use caps the
figures, which the server CPU column shows.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from vss.auth import sign_header
from vss.proto import vss_pb2 as pb

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("RESULTS.md")
POSTGRES_DSN = os.environ.get("VSS_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
VALUE = os.urandom(1024)
KEYSPACE = 1000
STORE = "bench"


@dataclass
class Scenario:
    name: str
    items_per_op: int
    call: str


SCENARIOS = [
    Scenario("getObject 1 KiB", 1, "get"),
    Scenario("putObjects 1 x 1 KiB", 1, "put"),
    Scenario("putObjects 100 x 1 KiB", 100, "put"),
]


@dataclass
class Result:
    ops: int
    seconds: float
    latencies: list[float]
    server_cpu_s: float
    errors: int

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds

    def latency_ms(self, quantile: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


class Signer:
    """The Authorization header, re-signed at most once per second (signing is not free)."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.at = 0
        self.header = ""

    def __call__(self) -> str:
        now = int(time.time())
        if now != self.at:
            self.at, self.header = now, sign_header(self.key, now)
        return self.header


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(db: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "vss.server", "--listen", f"127.0.0.1:{port}", "--db", db, "--auth", "sigs"],
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/vss"
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text(errors='replace')}")
        try:
            httpx.post(f"{url}/getObject", content=b"", timeout=1)
            return process, url
        except httpx.TransportError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("server did not answer within 30 s") from None
            time.sleep(0.05)


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def put_body(keys: list[str]) -> bytes:
    return pb.PutObjectRequest(
        store_id=STORE, transaction_items=[pb.KeyValue(key=k, version=-1, value=VALUE) for k in keys]
    ).SerializeToString()


async def run_scenario(
    url: str, pid: int, scenario: Scenario, signer: Signer, duration: float, concurrency: int
) -> Result:
    # One client (one keep-alive connection) per worker: a single httpx pool shared by
    # dozens of tasks spends its time on pool bookkeeping, not on requests.
    clients = [httpx.AsyncClient(timeout=30) for _ in range(concurrency)]
    latencies: list[float] = []
    errors = 0
    rng = random.Random(7)
    get_bodies = [pb.GetObjectRequest(store_id=STORE, key=f"key-{i}").SerializeToString() for i in range(KEYSPACE)]

    async def one_call(client: httpx.AsyncClient) -> None:
        nonlocal errors
        if scenario.call == "get":
            path, body = "getObject", get_bodies[rng.randrange(KEYSPACE)]
        else:
            start = rng.randrange(KEYSPACE)
            keys = [f"key-{(start + i) % KEYSPACE}" for i in range(scenario.items_per_op)]
            path, body = "putObjects", put_body(keys)
        began = time.perf_counter()
        reply = await client.post(f"{url}/{path}", content=body, headers={"Authorization": signer()})
        latencies.append(time.perf_counter() - began)
        if reply.status_code != 200:
            errors += 1

    async def worker(client: httpx.AsyncClient, until: float) -> None:
        while time.perf_counter() < until:
            await one_call(client)

    try:
        # Warm up connections and caches, then measure.
        await asyncio.gather(*(worker(c, time.perf_counter() + 0.5) for c in clients))
        latencies.clear()
        errors = 0
        cpu_before = cpu_seconds(pid)
        began = time.perf_counter()
        await asyncio.gather(*(worker(c, began + duration) for c in clients))
        seconds = time.perf_counter() - began
        return Result(len(latencies), seconds, latencies, cpu_seconds(pid) - cpu_before, errors)
    finally:
        for client in clients:
            await client.aclose()


async def seed(url: str, signer: Signer) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        for start in range(0, KEYSPACE, 500):
            keys = [f"key-{i}" for i in range(start, min(KEYSPACE, start + 500))]
            reply = await client.post(
                f"{url}/putObjects", content=put_body(keys), headers={"Authorization": signer()}
            )
            reply.raise_for_status()


def bench_backend(db: str, workdir: Path, args: argparse.Namespace, signer: Signer) -> dict[str, Result]:
    process, url = start_server(db, workdir / f"server-{uuid.uuid4().hex[:6]}.log")
    try:
        asyncio.run(seed(url, signer))
        results = {}
        for scenario in SCENARIOS:
            results[scenario.name] = asyncio.run(
                run_scenario(url, process.pid, scenario, signer, args.duration, args.concurrency)
            )
        return results
    finally:
        stop_server(process)


def postgres_reachable() -> bool:
    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
        return True
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as exc:
        print(f"!!! PostgreSQL unreachable at {POSTGRES_DSN}: {exc!r}; skipping it", file=sys.stderr)
        return False


def drop_schema(schema: str) -> None:
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(POSTGRES_DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = f"{int(line.split()[1]) / 1024 / 1024:.1f}"
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs (nproc), {cpu}, {ram_gib} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def table(columns: dict[str, dict[str, Result]]) -> str:
    names = list(columns)
    head = "| scenario | " + " | ".join(
        f"{n} ops/s | {n} items/s | {n} p50/p99 ms | {n} server CPU" for n in names
    )
    if len(names) == 2:
        head += f" | {names[1]}/{names[0]}"
    head += " |"
    rule = "|" + "---|" * (head.count("|") - 1)
    lines = [head, rule]
    for scenario in SCENARIOS:
        cells = [scenario.name]
        for name in names:
            r = columns[name][scenario.name]
            cells += [
                f"{r.ops_per_s:,.0f}" + (f" ({r.errors} errors)" if r.errors else ""),
                f"{r.ops_per_s * scenario.items_per_op:,.0f}",
                f"{r.latency_ms(0.5):.1f} / {r.latency_ms(0.99):.1f}",
                f"{100 * r.server_cpu_s / r.seconds:.0f}%",
            ]
        if len(names) == 2:
            a, b = (columns[n][scenario.name].ops_per_s for n in names)
            cells.append(f"{b / a:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per scenario (default 4)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = parser.parse_args()

    signer = Signer(os.urandom(32))
    columns: dict[str, dict[str, Result]] = {}
    with tempfile.TemporaryDirectory(prefix="vss-bench-") as tmp:
        workdir = Path(tmp)
        print("SQLite ...", file=sys.stderr)
        columns["SQLite"] = bench_backend(f"sqlite:///{workdir / 'vss.sqlite3'}", workdir, args, signer)
        if postgres_reachable():
            schema = f"vss_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
            print("PostgreSQL ...", file=sys.stderr)
            try:
                sep = "&" if "?" in POSTGRES_DSN else "?"
                columns["PostgreSQL"] = bench_backend(f"{POSTGRES_DSN}{sep}schema={schema}", workdir, args, signer)
            finally:
                drop_schema(schema)

    figures = table(columns)
    settings = (
        f"{args.concurrency} concurrent httpx clients (one connection each) in one process, {args.duration:g} s per scenario, "
        f"1 KiB values over {KEYSPACE} keys, signature auth (re-signed once per second), "
        "one server process (`python -m vss.server`), loopback"
    )
    print(figures)
    if not args.no_record:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        with RESULTS.open("a") as out:
            if RESULTS.stat().st_size == 0:
                out.write("# Benchmark results\n\nAppended by the scripts in bench/; newest last.\n")
            out.write(
                f"\n## bench_vss_server.py — {stamp}\n\n"
                f"Machine: {machine()}.\n\nSettings: {settings}.\n\n{figures}\n"
            )
        print(f"appended to {RESULTS.relative_to(REPO_ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
