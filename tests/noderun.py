"""A real `vssnode` process for tests that need one: `running_node(...)` serves a data
dir on a free loopback port until the block ends; `vssnode(...)` runs one command."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from conftest import free_loopback_port

REPO = Path(__file__).resolve().parents[1]
JSON = {"Content-Type": "application/json"}


class RunningNode:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def vssnode(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vssnode", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=None if env is None else {**os.environ, **env})


@contextmanager
def running_node(data_dir: Path, *args: str, env: dict[str, str] | None = None, token: str | None = None,
                 ) -> Iterator[RunningNode]:
    port = free_loopback_port()
    log = data_dir.parent / f"{data_dir.name}-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "vssnode", "run", str(data_dir), "--listen", f"127.0.0.1:{port}", *args],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=None if env is None else {**os.environ, **env},
        )
    node = RunningNode(process, port, log)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{node.url}/nodeinfo", headers=headers, timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, f"the node exited:\n{node.log_text()}"
                assert time.monotonic() < deadline, f"the node did not answer:\n{node.log_text()}"
                time.sleep(0.05)  # poll interval, bounded by the deadline
        yield node
    finally:
        process.terminate()
        process.wait(timeout=30)


