"""`make run` (scripts/run-dev.sh) as an operator meets it: the VSS server and a node on
ports and a data dir of the test's choosing (VSS_PORT, NODE_PORT, DATA). A port that is
taken stops it with a clear line and nothing left running; Ctrl-C ends it with status 0
and nothing left running; the commands it suggests work on the ports it was given.

Every wait is on a condition (a line printed, the script's exit) with a deadline.
"""

from __future__ import annotations

import os
import queue
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx

from conftest import free_loopback_port
from noderun import REPO

SCRIPT = REPO / "scripts" / "run-dev.sh"
DEADLINE_S = 60


class Script:
    """run-dev.sh running in a session of its own, its stdout and stderr read line by line."""

    def __init__(self, data: Path, vss_port: int, node_port: int) -> None:
        self.data = data
        self.lines: queue.Queue[tuple[str, str | None]] = queue.Queue()  # None: that stream ended
        self.out: list[str] = []
        self.err: list[str] = []
        self.open = {"out", "err"}
        env = {**os.environ, "VSS_PORT": str(vss_port), "NODE_PORT": str(node_port), "DATA": str(data)}
        self.process = subprocess.Popen([str(SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env=env, start_new_session=True)
        assert self.process.stdout is not None and self.process.stderr is not None
        for name, stream in (("out", self.process.stdout), ("err", self.process.stderr)):
            threading.Thread(target=self._read, args=(name, stream), daemon=True).start()

    def _read(self, name: str, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put((name, line.rstrip("\n")))
        self.lines.put((name, None))

    def _take(self, deadline: float) -> None:
        try:
            name, line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"nothing more printed, and the deadline passed:\n{self.text()}") from None
        if line is None:
            self.open.discard(name)
        else:
            (self.out if name == "out" else self.err).append(line)

    def wait_for_line(self, text: str) -> str:
        """The first stdout line holding `text`; fails once stdout ends or the deadline passes without it."""
        deadline = time.monotonic() + DEADLINE_S
        seen = 0
        while True:
            for line in self.out[seen:]:
                if text in line:
                    return line
            seen = len(self.out)
            assert "out" in self.open, f"no line with {text!r} before the script ended:\n{self.text()}"
            self._take(deadline)

    def wait_exit(self) -> int:
        """The script's status, once it has ended and everything it (and its children) printed is read."""
        status = self.process.wait(timeout=DEADLINE_S)
        deadline = time.monotonic() + DEADLINE_S
        while self.open:  # both pipes close once every process holding them has ended
            self._take(deadline)
        return status

    def text(self) -> str:
        return "\n".join(["stdout:", *self.out, "stderr:", *self.err])


def leftovers(data: Path) -> list[str]:
    """Command lines of processes still running on `data` (the server's --db and the node's dir name it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # ended meanwhile
        if str(data) in command:
            found.append(command)
    return found


@contextmanager
def run_dev(tmp_path: Path, vss_port: int, node_port: int) -> Iterator[Script]:
    script = Script(tmp_path / "data", vss_port, node_port)
    try:
        yield script
    finally:
        if script.process.poll() is None or leftovers(script.data):
            try:
                os.killpg(script.process.pid, signal.SIGKILL)  # the test failed: take down what it started
            except ProcessLookupError:
                pass
        script.process.wait(timeout=DEADLINE_S)


@contextmanager
def held_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_ctrl_c_stops_both_with_status_0_and_the_suggested_status_command_works(tmp_path):
    vss_port, node_port = free_loopback_port(), free_loopback_port()
    with run_dev(tmp_path, vss_port, node_port) as script:
        script.wait_for_line("vssnode: node API on")
        hint = script.wait_for_line(".venv/bin/vssnode status").strip()
        assert hint.endswith(f"--node http://127.0.0.1:{node_port}"), hint
        status = subprocess.run(shlex.split(hint), cwd=REPO, capture_output=True, text=True, timeout=DEADLINE_S)
        assert status.returncode == 0 and status.stdout.startswith("state        uninitialized"), status
        assert httpx.post(f"http://127.0.0.1:{vss_port}/vss/getObject", content=b"").status_code == 401  # serving
        assert len(leftovers(script.data)) == 2, leftovers(script.data)
        os.kill(script.process.pid, signal.SIGINT)
        assert script.wait_exit() == 0, script.text()
        assert leftovers(script.data) == []


def test_a_taken_server_port_stops_it_with_a_clear_line_and_nothing_running(tmp_path):
    with held_port() as vss_port, run_dev(tmp_path, vss_port, free_loopback_port()) as script:
        status = script.wait_exit()
        assert status != 0, script.text()
        assert any(line.startswith("make run: the VSS server did not start") for line in script.err), script.text()
        assert any(f"cannot listen on 127.0.0.1:{vss_port}" in line for line in script.err), script.text()
        assert not any("node API on" in line for line in script.out), script.text()
        assert leftovers(script.data) == []


def test_a_taken_node_port_stops_the_server_too(tmp_path):
    with held_port() as node_port, run_dev(tmp_path, free_loopback_port(), node_port) as script:
        script.wait_for_line("VSS server: http://127.0.0.1:")  # it was up before the node failed
        status = script.wait_exit()
        assert status != 0, script.text()
        assert any(f"vssnode: cannot listen on 127.0.0.1:{node_port}" in line for line in script.err), script.text()
        assert any(line.startswith("make run: the node stopped") for line in script.err), script.text()
        assert leftovers(script.data) == []
