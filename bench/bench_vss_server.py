"""CPU per request and throughput of the bundled VSS server, lever by lever, in one run.

    .venv/bin/python bench/bench_vss_server.py [--duration 3] [--concurrency 16]
        [--baseline REV] [--variants a,b,...] [--no-record]

Starts the server as a subprocess once per variant, on SQLite (a temp dir) and then
on PostgreSQL (127.0.0.1:5432/test, a schema of its own, dropped afterwards; skipped
if it does not answer), and drives it over loopback with a raw HTTP/1.1 client (a
few microseconds per request, so the client is not what is measured) on
`--concurrency` keep-alive connections:

- getObject of 1 KiB values,
- putObjects with 1 item of 1 KiB, and with 100 items of 1 KiB (unconditional).

The figure that matters is the server's own CPU time per request: user + system
time of the server process and its children (the workers) from /proc, before and
after each scenario. It does not depend on what else the machine runs, unlike
requests per second (also printed). The variants stack one lever at a time, so each
ratio is what that lever bought:

    baseline   the server as of --baseline (default 74ea5c7: Quart, a signature check
               per request, every read in a worker thread), run from `git archive`
    asgi       this tree's raw ASGI app, with the cache and inline reads turned off
               (bench-only patches, see LAUNCHER), on asyncio
    cache      + the cache of verified Authorization headers
    inline     + SQLite point reads on the event loop
    uvloop     + uvloop (the default when installed)
    workers2   + --workers 2

Results replace the bench_vss_server.py section of bench/RESULTS.md unless --no-record.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import os
import platform
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.conftest import drop_postgres_schema  # noqa: E402
from vss.auth import sign_header  # noqa: E402
from vss.proto import vss_pb2 as pb  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")
POSTGRES_DSN = os.environ.get("VSS_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
DEFAULT_BASELINE = "74ea5c7"
VALUE = os.urandom(1024)
KEYSPACE = 1000
STORE = "bench"
SECTION = "## bench_vss_server.py"

# Runs the server of this tree with levers turned off, for the "asgi" and "cache"
# variants. Only the bench does this: the server itself has no switches for them.
LAUNCHER = """
import sys
args = sys.argv[1:]
if "--bench-no-auth-cache" in args:
    args.remove("--bench-no-auth-cache")
    import vss.server.authorizers as authorizers
    authorizers.VerifiedCache.get = lambda self, header: None
if "--bench-no-inline-reads" in args:
    args.remove("--bench-no-inline-reads")
    from vss.server.sqlite import SqliteBackend
    async def in_a_thread(self, query):
        return await self._read(query)
    SqliteBackend._read_short = in_a_thread
from vss.server.cli import main
sys.exit(main(args))
"""


@dataclass(frozen=True)
class Variant:
    name: str
    what: str
    flags: tuple[str, ...] = ()
    baseline: bool = False


VARIANTS = [
    Variant("baseline", "the server before this work (Quart)", baseline=True),
    Variant("asgi", "raw ASGI app, no header cache, reads in threads, asyncio",
            ("--bench-no-auth-cache", "--bench-no-inline-reads", "--loop", "asyncio")),
    Variant("cache", "+ cache of verified headers", ("--bench-no-inline-reads", "--loop", "asyncio")),
    Variant("inline", "+ SQLite point reads on the loop", ("--loop", "asyncio")),
    Variant("uvloop", "+ uvloop", ("--loop", "uvloop")),
    Variant("workers2", "+ --workers 2", ("--loop", "uvloop", "--workers", "2")),
]


@dataclass(frozen=True)
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
    server_cpu_s: float
    errors: int
    latencies: list[float]

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds

    @property
    def cpu_ms_per_op(self) -> float:
        return 1000 * self.server_cpu_s / self.ops if self.ops else float("nan")

    def latency_ms(self, quantile: float) -> float:
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(quantile * len(ordered)))] if ordered else float("nan")


# -- the server ---------------------------------------------------------------------------------


class ServerProcess:
    def __init__(self, variant: Variant, db: str, code_dir: Path, log_path: Path) -> None:
        self.port = _free_port()
        listen = ["--listen", f"127.0.0.1:{self.port}", "--db", db, "--auth", "sigs"]
        if variant.baseline:
            command = [sys.executable, "-m", "vss.server", *listen]
        else:
            command = [sys.executable, "-c", LAUNCHER, *listen, *variant.flags]
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=code_dir, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(code_dir)},
            )
        self._wait_answering()

    def _wait_answering(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if sock.recv(64):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not answer: {self.log_path.read_text(errors='replace')}")
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and every process below it (its workers)."""
        return sum(_cpu_of(pid) for pid in _tree(self.process.pid))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _tree(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found += _tree(int(child))
    return found


def _cpu_of(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- a raw HTTP/1.1 client -------------------------------------------------------------------------


class Connection:
    """One keep-alive connection; requests built from bytes, responses read by Content-Length."""

    def __init__(self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.port, self.reader, self.writer = port, reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(port, *await _open(port))

    async def post(self, path: bytes, body: bytes, authorization: bytes) -> int:
        self.writer.write(
            b"POST %s HTTP/1.1\r\nHost: bench\r\nAuthorization: %s\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path, authorization, len(body), body)
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        match = re.search(rb"content-length:\s*(\d+)", head, re.IGNORECASE)
        if match is None:
            raise RuntimeError(f"response without Content-Length: {head!r}")
        await self.reader.readexactly(int(match.group(1)))
        if re.search(rb"connection:\s*close", head, re.IGNORECASE):
            # hypercorn closes a connection after 1000 requests (keep_alive_max_requests).
            await self.close()
            self.reader, self.writer = await _open(self.port)
        return status

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


def put_body(keys: list[str]) -> bytes:
    return pb.PutObjectRequest(
        store_id=STORE, transaction_items=[pb.KeyValue(key=k, version=-1, value=VALUE) for k in keys]
    ).SerializeToString()


async def seed(port: int, authorization: bytes) -> None:
    conn = await Connection.open(port)
    try:
        for start in range(0, KEYSPACE, 500):
            keys = [f"key-{i}" for i in range(start, min(KEYSPACE, start + 500))]
            status = await conn.post(b"/vss/putObjects", put_body(keys), authorization)
            if status != 200:
                raise RuntimeError(f"seeding failed with HTTP {status}")
    finally:
        await conn.close()


async def run_scenario(
    server: ServerProcess, scenario: Scenario, authorization: bytes, duration: float, concurrency: int
) -> Result:
    rng = random.Random(7)
    gets = [pb.GetObjectRequest(store_id=STORE, key=f"key-{i}").SerializeToString() for i in range(KEYSPACE)]
    # Bodies built before the clock starts: the client should cost as little as it can.
    puts = [
        put_body([f"key-{(start + i) % KEYSPACE}" for i in range(scenario.items_per_op)])
        for start in range(0, KEYSPACE, max(1, KEYSPACE // 200))
    ]
    latencies: list[float] = []
    errors = 0
    conns = [await Connection.open(server.port) for _ in range(concurrency)]

    async def worker(conn: Connection, until: float, record: bool) -> None:
        nonlocal errors
        while time.perf_counter() < until:
            if scenario.call == "get":
                path, body = b"/vss/getObject", gets[rng.randrange(KEYSPACE)]
            else:
                path, body = b"/vss/putObjects", puts[rng.randrange(len(puts))]
            began = time.perf_counter()
            status = await conn.post(path, body, authorization)
            if record:
                latencies.append(time.perf_counter() - began)
                errors += status != 200

    try:
        await asyncio.gather(*(worker(c, time.perf_counter() + 0.5, False) for c in conns))  # warm up
        cpu_before = server.cpu_seconds()
        began = time.perf_counter()
        await asyncio.gather(*(worker(c, began + duration, True) for c in conns))
        seconds = time.perf_counter() - began
        cpu = server.cpu_seconds() - cpu_before
    finally:
        for conn in conns:
            await conn.close()
    return Result(len(latencies), seconds, cpu, errors, latencies)


def bench_variant(variant: Variant, db: str, code_dir: Path, workdir: Path, args: argparse.Namespace) -> dict[str, Result]:
    authorization = sign_header(os.urandom(32)).encode()  # one header, reused, as clients do
    server = ServerProcess(variant, db, code_dir, workdir / f"server-{variant.name}-{uuid.uuid4().hex[:6]}.log")
    try:
        asyncio.run(seed(server.port, authorization))
        return {
            s.name: asyncio.run(run_scenario(server, s, authorization, args.duration, args.concurrency))
            for s in SCENARIOS
        }
    finally:
        server.stop()


# -- databases, machine, output ----------------------------------------------------------------------


def postgres_reachable() -> bool:
    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
        return True
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        print(f"!!! PostgreSQL unreachable at {POSTGRES_DSN}: {exc!r}; skipping it", file=sys.stderr)
        return False


def extract_baseline(rev: str, into: Path) -> Path:
    """The tree at `rev`, from git, in a directory of its own (nothing is checked out here)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs (nproc), {cpu}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def table(backend: str, results: dict[str, dict[str, Result]]) -> str:
    """One row per variant: for each scenario CPU ms per request (and the ratio to the
    variant before it) and requests (items) per second."""
    names = list(results)
    head = ["variant"]
    for s in SCENARIOS:
        short = s.name.replace(" 1 KiB", "").replace(" x 1 KiB", "x")
        head += [f"{short} CPU ms/req", "vs prev", "vs baseline", f"{short} {'items' if s.items_per_op > 1 else 'req'}/s"]
    lines = [f"{backend}:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for index, name in enumerate(names):
        cells = [name]
        for s in SCENARIOS:
            r = results[name][s.name]
            prev = results[names[index - 1]][s.name] if index else None
            base = results[names[0]][s.name]
            cells += [
                f"{r.cpu_ms_per_op:.3f}" + (f" ({r.errors} errors)" if r.errors else ""),
                f"{r.cpu_ms_per_op / prev.cpu_ms_per_op:.2f}x" if prev else "",
                f"{r.cpu_ms_per_op / base.cpu_ms_per_op:.2f}x" if index else "",
                f"{r.ops_per_s * s.items_per_op:,.0f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def record(text: str) -> None:
    """Replace the bench_vss_server.py sections of RESULTS.md with `text`, keeping the rest."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    kept: list[str] = []
    skipping = False
    for line in old.splitlines():
        if line.startswith("## "):
            skipping = line.startswith(SECTION)
        if not skipping:
            kept.append(line)
    body = "\n".join(kept).rstrip() + "\n"
    # The server section goes right after the file's preamble (before the first "## ").
    first = body.find("\n## ")
    if first == -1:
        RESULTS.write_text(body + "\n" + text + "\n")
    else:
        RESULTS.write_text(body[: first + 1] + text + "\n" + body[first:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per scenario (default 3)")
    parser.add_argument("--concurrency", type=int, default=16, help="keep-alive connections (default 16)")
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help=f"git revision of the baseline (default {DEFAULT_BASELINE})")
    parser.add_argument("--variants", default=",".join(v.name for v in VARIANTS), help="comma-separated subset")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--no-record", action="store_true", help="do not write bench/RESULTS.md")
    parser.add_argument("--note", default="", help="a line recorded with the figures (e.g. what else ran)")
    args = parser.parse_args()
    wanted = set(args.variants.split(","))
    variants = [v for v in VARIANTS if v.name in wanted]
    if importlib.util.find_spec("uvloop") is None:
        # uvloop is the optional `fast` extra; `make install` does not bring it.
        skipped = [v.name for v in variants if "uvloop" in v.flags]
        variants = [v for v in variants if "uvloop" not in v.flags]
        if skipped:
            note = f"uvloop is not installed (pip install 'vssnode[fast]'): {', '.join(skipped)} not run"
            print(note, file=sys.stderr)
            args.note = f"{args.note}; {note}" if args.note else note

    started = dt.datetime.now(dt.UTC)
    load_before = load()
    sections: list[str] = []
    with tempfile.TemporaryDirectory(prefix="vss-bench-") as tmp:
        workdir = Path(tmp)
        baseline_dir = extract_baseline(args.baseline, workdir / "baseline") if any(v.baseline for v in variants) else None
        backends = [("SQLite", lambda: f"sqlite:///{workdir / uuid.uuid4().hex}.sqlite3", None)]
        if not args.no_postgres and postgres_reachable():
            backends.append(("PostgreSQL", None, None))
        for backend, make_db, _ in backends:
            results: dict[str, dict[str, Result]] = {}
            for variant in variants:
                if backend == "PostgreSQL" and variant.name == "inline":
                    continue  # a SQLite lever: on PostgreSQL it would repeat the row above
                schema = None
                if make_db is not None:
                    db = make_db()
                else:
                    schema = f"vss_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
                    db = f"{POSTGRES_DSN}{'&' if '?' in POSTGRES_DSN else '?'}schema={schema}"
                code_dir = baseline_dir if variant.baseline and baseline_dir else REPO_ROOT
                print(f"{backend}: {variant.name} ...", file=sys.stderr, flush=True)
                try:
                    results[variant.name] = bench_variant(variant, db, code_dir, workdir, args)
                finally:
                    if schema is not None:
                        drop_postgres_schema(POSTGRES_DSN, schema)
            sections.append(table(backend, results))
    figures = "\n\n".join(sections)
    legend = "\n".join(f"- `{v.name}`: {v.what}" for v in variants)
    text = (
        f"{SECTION} — {started.strftime('%Y-%m-%d %H:%M UTC')}\n\n"
        f"Machine: {machine()}; load average {load_before} at the start, {load()} at the end.\n"
        + (f"Note: {args.note}\n" if args.note else "")
        + f"\nSettings: {args.concurrency} keep-alive connections from a raw HTTP/1.1 client in one process, "
        f"{args.duration:g} s per scenario after 0.5 s of warm-up, 1 KiB values over {KEYSPACE} keys, signature "
        "auth with one header reused (as clients do), loopback. CPU ms/req = user+system CPU of the server "
        "process and its workers (from /proc) per request; req/s and items/s are wall-clock, with client and "
        "server on the same cores.\n\nVariants, each adding one lever to the row above it:\n\n"
        f"{legend}\n\n{figures}\n"
    )
    print(text)
    if not args.no_record:
        record(text)
        print(f"recorded in {RESULTS.relative_to(REPO_ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
