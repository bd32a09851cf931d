"""Real node processes for the fault scenarios: start, drive over HTTP, SIGKILL, restart.

`NodeProcess` is one data dir served by `vssnode run DATA --listen 127.0.0.1:PORT
--vss-url URL` (a fresh free port on every start). `start()` returns once the API
answers; `kill()` is a SIGKILL at whatever moment the test chooses; `start()` again
on the same data dir is a restart. The process's output goes to one log file per
node (every start appends to it), and every failure message carries its tail.

`NodeFleet` owns the processes of one test and kills whatever is still running when
the test ends, so no process outlives its test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
API_TIMEOUT_S = 60.0
UNLOCK_TIMEOUT_S = 300.0  # a restore of many keys happens inside the unlock call
_POLL_S = 0.05


def vssnode_command() -> list[str]:
    script = Path(sys.executable).parent / "vssnode"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vssnode"]


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class NodeApiError(AssertionError):
    """The node answered something other than what the caller expected."""


class NodeProcess:
    def __init__(
        self, name: str, data_dir: Path, vss_url: str | None, log_dir: Path, *extra_args: str, api_token: str | None = None
    ) -> None:
        self.name = name
        self.api_token = api_token
        self.data_dir = data_dir
        self.vss_url = vss_url
        self.extra_args = extra_args
        self.log_path = log_dir / f"{name}.log"
        self.port: int | None = None
        self.starts = 0
        self.kills = 0
        self._process: trio.Process | None = None
        self._killed = False
        self._http: httpx.AsyncClient | None = None

    # -- the process -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self.port is not None, f"{self.name} was never started"
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and not self._killed and self._process.returncode is None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Start the process on the data dir and return once its API answers."""
        assert not self.running, f"{self.name} is already running"
        self.starts += 1
        self._killed = False
        self.port = free_loopback_port()
        command = [*vssnode_command(), "run", str(self.data_dir), "--listen", f"127.0.0.1:{self.port}"]
        if self.vss_url is not None:
            command += ["--vss-url", self.vss_url]
        if self.api_token is not None:
            command += ["--api-token", self.api_token]
        command += list(self.extra_args)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            log_file.write(f"\n=== start {self.starts}: {' '.join(command)}\n".encode())
            log_file.flush()
            self._process = await trio.lowlevel.open_process(
                command, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )
        headers = {"Authorization": f"Bearer {self.api_token}"} if self.api_token is not None else {}
        self._http = httpx.AsyncClient(base_url=self.url, timeout=API_TIMEOUT_S, headers=headers)
        await self._wait_until_answering(timeout_s)

    async def _wait_until_answering(self, timeout_s: float) -> None:
        assert self._process is not None and self._http is not None
        with trio.move_on_after(timeout_s):
            for _ in range(int(timeout_s / _POLL_S) + 1):  # each turn waits at least _POLL_S
                if self._process.returncode is not None:
                    status = self._process.returncode
                    raise NodeApiError(f"{self.name} exited with status {status} while starting\n{self.log_tail()}")
                try:
                    response = await self._http.get("/nodeinfo", timeout=2.0)
                except httpx.TransportError:
                    await trio.sleep(_POLL_S)
                    continue
                if response.status_code == 200:
                    return
                await trio.sleep(_POLL_S)
        raise NodeApiError(f"{self.name} did not answer within {timeout_s} s\n{self.log_tail()}")

    async def kill(self, *, count: bool = True) -> None:
        """SIGKILL the process (no chance to flush anything) and reap it; `count`
        says whether it is one of the test's kills (cleanup is not)."""
        if self._process is None:
            return
        if self._process.returncode is None:
            self._killed = True  # from now on writers see it as gone, before it is reaped
            self._process.send_signal(signal.SIGKILL)
            self.kills += int(count)
        with trio.CancelScope(shield=True):
            await self._process.wait()
            await self._close_http()

    async def stop(self) -> int | None:
        """SIGTERM, wait (SIGKILL if it hangs); returns the exit status."""
        if self._process is None:
            return None
        if self._process.returncode is None:
            self._process.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_TIMEOUT_S):
                await self._process.wait()
        if self._process.returncode is None:
            await self.kill()
        with trio.CancelScope(shield=True):
            await self._close_http()
        return self._process.returncode

    async def _close_http(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last {lines} lines of {self.log_path} ---\n{tail}"

    # -- the HTTP API --------------------------------------------------------------------------

    async def request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        """One raw API call; transport errors propagate (the process may be dead)."""
        if self._http is None:
            raise httpx.ConnectError(f"{self.name} is not running")
        return await self._http.request(method, path, **kwargs)  # type: ignore[arg-type]

    async def expect(self, status: int, method: str, path: str, **kwargs: object) -> httpx.Response:
        response = await self.request(method, path, **kwargs)
        if response.status_code != status:
            raise NodeApiError(
                f"{self.name}: {method} {path} answered {response.status_code} {response.text[:500]!r}, "
                f"expected {status}\n{self.log_tail()}"
            )
        return response

    async def init(self, password: str, mnemonic: str | None = None) -> dict:
        body: dict[str, str] = {"password": password}
        if mnemonic is not None:
            body["mnemonic"] = mnemonic
        return (await self.expect(200, "POST", "/init", json=body)).json()

    async def unlock(self, password: str) -> dict:
        return (await self.expect(200, "POST", "/unlock", json={"password": password}, timeout=UNLOCK_TIMEOUT_S)).json()

    async def try_unlock(self, password: str) -> httpx.Response:
        return await self.request("POST", "/unlock", json={"password": password}, timeout=UNLOCK_TIMEOUT_S)

    async def lock(self) -> dict:
        return (await self.expect(200, "POST", "/lock")).json()

    async def nodeinfo(self) -> dict:
        return (await self.expect(200, "GET", "/nodeinfo")).json()

    async def backup_info(self) -> dict:
        return (await self.expect(200, "GET", "/vssbackupinfo")).json()

    async def pending(self) -> int:
        return int((await self.backup_info())["pending_kv_writes"])

    async def clear_fence(self, password: str) -> dict:
        return (await self.expect(200, "POST", "/vssclearfence", json={"password": password})).json()

    async def metrics(self) -> dict[str, float]:
        text = (await self.expect(200, "GET", "/metrics")).text
        figures = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.partition(" ")
                figures[name] = float(value)
        return figures

    async def put(self, key: str, value: bytes, primary: str = "", secondary: str = "") -> httpx.Response:
        return await self.request("PUT", f"/kv/{key}", params={"primary": primary, "secondary": secondary}, content=value)

    async def delete(self, key: str, primary: str = "", secondary: str = "") -> httpx.Response:
        return await self.request("DELETE", f"/kv/{key}", params={"primary": primary, "secondary": secondary})

    async def get(self, key: str, primary: str = "", secondary: str = "") -> httpx.Response:
        return await self.request("GET", f"/kv/{key}", params={"primary": primary, "secondary": secondary})

    async def list_keys(self, primary: str = "", secondary: str = "") -> list[str]:
        response = await self.expect(200, "GET", "/kv", params={"primary": primary, "secondary": secondary})
        return list(response.json()["keys"])


class NodeFleet:
    """The node processes of one test; anything still running at the end is killed."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.nodes: list[NodeProcess] = []

    def node(
        self, name: str, vss_url: str | None, *extra_args: str, data_dir: Path | None = None, api_token: str | None = None
    ) -> NodeProcess:
        logs = self.workdir / "logs"
        proc = NodeProcess(name, data_dir or self.workdir / name, vss_url, logs, *extra_args, api_token=api_token)
        self.nodes.append(proc)
        return proc

    @property
    def kills(self) -> int:
        return sum(n.kills for n in self.nodes)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for proc in self.nodes:
                await proc.kill(count=False)


@asynccontextmanager
async def node_fleet(workdir: Path) -> AsyncIterator[NodeFleet]:
    fleet = NodeFleet(workdir)
    try:
        yield fleet
    finally:
        await fleet.aclose()
