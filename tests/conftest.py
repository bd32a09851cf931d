"""Fixtures shared by the whole suite.

- `vss_server` (session): the bundled VSS server as a real subprocess
  (`python -m vss.server`, SQLite in a temp dir, signature auth) on a free loopback
  port; `.url` is its base URL ending in /vss, `.process` the Popen.
- `spawn_vss_server`: starts further server subprocesses for one test, stops them after.
- `umask_022`: the process umask set to 022 for one test (and the processes it starts),
  so a file meant to be private is checked to be so by the code's own doing.
- `postgres_dsn` (session): a DSN for the PostgreSQL test database
  (postgresql://127.0.0.1:5432/test, user from PGUSER or the current user, falling
  back to `postgres`; VSS_TEST_POSTGRES_DSN overrides). Skips, loudly, only when no
  PostgreSQL answers at all. The database is shared: tests must isolate themselves
  (their own schema, unique names).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVER_START_TIMEOUT_S = 30.0
POSTGRES_DEFAULT_DSNS = (
    "postgresql://127.0.0.1:5432/test",
    "postgresql://postgres@127.0.0.1:5432/test",
)


@dataclass
class RunningVssServer:
    """A VSS server subprocess: `url` is the base URL (ending in /vss)."""

    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_vss_server(
    workdir: Path,
    *extra_args: str,
    db: str | None = None,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> RunningVssServer:
    """Start `python -m vss.server` on a free port (or `port`) and return once it answers HTTP.

    `command` replaces the whole command line; `{port}` in it is the chosen port.
    Raises RuntimeError (with the server's output) if it exits or does not answer in time.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_loopback_port()
    if command is None:
        db = db or f"sqlite:///{workdir / 'vss.sqlite3'}"
        command = [sys.executable, "-m", "vss.server", "--listen", f"127.0.0.1:{port}", "--db", db, *extra_args]
    else:
        command = [part.replace("{port}", str(port)) for part in command]
    log_path = workdir / f"vss-server-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=None if env is None else {**os.environ, **env},
        )
    server = RunningVssServer(f"http://127.0.0.1:{port}/vss", process, log_path)
    try:
        wait_until_answering(server)
    except BaseException:
        stop_vss_server(server)
        raise
    return server


def wait_until_answering(server: RunningVssServer, timeout_s: float = SERVER_START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"VSS server exited with status {server.process.returncode}:\n{server.log()}"
            )
        try:
            # Any HTTP answer (401 without a signature) means it is serving.
            httpx.post(f"{server.url}/getObject", content=b"", timeout=1.0)
            return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"VSS server did not answer within {timeout_s} s:\n{server.log()}")
        time.sleep(0.05)  # poll interval, bounded by the deadline above


def stop_vss_server(server: RunningVssServer, timeout_s: float = 15.0) -> int:
    """SIGTERM, wait (kill if it hangs), return the exit status."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode


@pytest.fixture(scope="session")
def vss_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningVssServer]:
    server = start_vss_server(tmp_path_factory.mktemp("vss-server"), "--auth", "sigs")
    try:
        yield server
    finally:
        stop_vss_server(server)


@pytest.fixture
def spawn_vss_server(tmp_path: Path) -> Iterator[Callable[..., RunningVssServer]]:
    """A starter of extra server subprocesses (same arguments as `start_vss_server`
    minus the workdir), all stopped at the end of the test."""
    started: list[RunningVssServer] = []

    def spawn(*args: str, **kwargs: object) -> RunningVssServer:
        server = start_vss_server(tmp_path / f"server-{len(started)}", *args, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    try:
        yield spawn
    finally:
        for server in started:
            stop_vss_server(server)


def _probe_postgres(dsn: str) -> None:
    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        await conn.close()

    # A thread of its own: no event loop of the test runner is disturbed.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, probe()).result()


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common default umask, which lets group and others read: a file the node
    creates is private only because the node asks for 0600, not by the runner's luck."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    import asyncpg

    explicit = os.environ.get("VSS_TEST_POSTGRES_DSN")
    candidates = (explicit,) if explicit else POSTGRES_DEFAULT_DSNS
    refused: list[str] = []
    auth_error: Exception | None = None
    for dsn in candidates:
        try:
            _probe_postgres(dsn)
            return dsn
        except (TimeoutError, OSError, asyncpg.CannotConnectNowError) as exc:
            refused.append(f"{dsn}: {exc!r}")
        except asyncpg.InvalidAuthorizationSpecificationError as exc:
            # The server answers but does not know this role: try the next candidate.
            auth_error = exc
    if auth_error is not None:
        raise auth_error  # reachable but unusable: a failure, not a skip
    pytest.skip("!!! PostgreSQL IS UNREACHABLE: PostgreSQL tests skipped !!! " + "; ".join(refused))


def drop_postgres_schema(dsn: str, schema: str) -> None:
    """Remove a schema a test made on the PostgreSQL server, with everything in it."""
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())
