"""The VSS server as operators run it, beyond the protocol: start-up and exit codes,
TLS, JWT, /health and /metrics, several workers, hostile bodies against a real process.

Each test starts `python -m vss.server` and waits for its `listening on URL` line,
which the server prints only once its socket listens and its database is open.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import drop_postgres_schema
from vss.auth import sign_header
from vss.proto import vss_pb2 as pb

REPO_ROOT = Path(__file__).resolve().parents[1]
KEY = bytes.fromhex("66" * 32)
START_TIMEOUT_S = 30.0
LISTENING = re.compile(r"listening on (\S+)")


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(workdir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    log = (workdir / "server.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "vss.server", *args],
        cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
    )


def _wait_listening(process: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        found = LISTENING.search(log_path.read_text(errors="replace"))
        if found:
            return found.group(1)
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no 'listening on' within {START_TIMEOUT_S} s:\n{log_path.read_text()}")
        time.sleep(0.02)  # polling a file, bounded by the deadline


def _run_to_exit(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vss.server", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def launch(tmp_path: Path) -> Iterator:
    started: list[Server] = []

    def launch(*args: str, db: str | None = None, env: dict[str, str] | None = None) -> Server:
        workdir = tmp_path / f"server-{len(started)}"
        db = db or f"sqlite:///{workdir / 'vss.sqlite3'}"
        listen = [] if any(a == "--listen" for a in args) else ["--listen", f"127.0.0.1:{_free_port()}"]
        process = _start(workdir, *listen, "--db", db, *args, env=env)
        try:
            server = Server(_wait_listening(process, workdir / "server.log"), process, workdir / "server.log")
        except BaseException:
            process.kill()
            process.wait()
            raise
        started.append(server)
        return server

    yield launch
    for server in started:
        if server.process.poll() is None:
            server.process.terminate()
            try:
                server.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()


def _post(base: str, call: str, message: object, *, headers: dict[str, str] | None = None, **kwargs: object) -> httpx.Response:
    body = message if isinstance(message, bytes) else message.SerializeToString()  # type: ignore[attr-defined]
    headers = {"Authorization": sign_header(KEY), **(headers or {})}
    return httpx.post(f"{base}/{call}", content=body, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


def _put(store: str = "ops", key: str = "k") -> pb.PutObjectRequest:
    return pb.PutObjectRequest(store_id=store, transaction_items=[pb.KeyValue(key=key, version=-1, value=b"v")])


# -- start-up and exit codes ---------------------------------------------------------------


def test_a_taken_port_is_exit_1_with_one_line_and_nothing_announced(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = _run_to_exit("--listen", f"127.0.0.1:{port}", "--db", f"sqlite:///{tmp_path / 'x.sqlite3'}")
    assert result.returncode == 1, result
    assert "listening on" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot listen on" in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_an_unreachable_database_is_exit_1_with_one_line_and_no_password(tmp_path: Path) -> None:
    dead = f"postgresql://vss:hunter2@127.0.0.1:{_free_port()}/vss"
    result = _run_to_exit("--listen", f"127.0.0.1:{_free_port()}", "--db", dead)
    assert result.returncode == 1, result
    assert "listening on" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot open the database" in lines[0], result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


def test_debug_log_level_adds_the_traceback(tmp_path: Path) -> None:
    dead = f"postgresql://127.0.0.1:{_free_port()}/vss"
    result = _run_to_exit("--listen", f"127.0.0.1:{_free_port()}", "--db", dead, "--log-level", "debug")
    assert result.returncode == 1
    assert "Traceback" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"],
        ["--tls-cert", __file__, "--tls-key", __file__],
        ["--tls-cert", __file__],
        ["--auth", "jwt"],
        ["--auth", "jwt", "--jwt-public-key", "/nonexistent/key.pem"],
        ["--auth", "jwt", "--jwt-public-key", __file__],
        ["--jwt-public-key", __file__],
        ["--auth", "none", "--listen", "0.0.0.0:8081"],
        ["--auth", "none", "--listen", "[::]:8081"],
        ["--auth", "none", "--listen", "example.com:8081"],
        ["--workers", "2", "--db", "sqlite:///:memory:"],
        ["--listen", "[nope]:1"],
    ],
)
def test_configuration_errors_are_exit_2_with_one_line(args: list[str]) -> None:
    result = _run_to_exit(*args)
    assert result.returncode == 2, (args, result)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr and "listening on" not in result.stdout


def test_malformed_flags_are_exit_2_with_argparse_usage() -> None:
    result = _run_to_exit("--workers", "0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith("--workers: 0 is not positive")


def test_auth_none_off_loopback_starts_only_when_allowed_explicitly(launch) -> None:
    server = launch("--auth", "none", "--listen", f"0.0.0.0:{_free_port()}", "--allow-unauthenticated-remote")
    port = server.url.removesuffix("/vss").rsplit(":", 1)[1]
    reply = httpx.post(f"http://127.0.0.1:{port}/vss/putObjects", content=_put().SerializeToString(), timeout=10)
    assert reply.status_code == 200
    assert "NO AUTHORIZATION" in server.log()


def test_port_zero_announces_the_port_chosen(launch) -> None:
    server = launch("--listen", "127.0.0.1:0")
    assert not server.url.endswith(":0/vss")
    assert _post(server.url, "putObjects", _put()).status_code == 200


def test_both_event_loops_serve(launch) -> None:
    loops = ["asyncio", "auto"]  # auto: uvloop when installed (the `fast` extra), else asyncio
    try:
        import uvloop  # noqa: F401

        loops.append("uvloop")
    except ImportError:
        result = _run_to_exit("--loop", "uvloop")
        assert result.returncode == 2 and "uvloop is not installed" in result.stderr
    for loop in loops:
        server = launch("--loop", loop)
        assert _post(server.url, "putObjects", _put()).status_code == 200, loop


# -- TLS ----------------------------------------------------------------------------------------


def test_tls_serves_https_and_announces_it(launch, tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    server = launch("--tls-cert", str(cert_path), "--tls-key", str(key_path))
    assert server.url.startswith("https://127.0.0.1:") and server.url.endswith("/vss")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    assert _post(server.url, "putObjects", _put(), verify=context).status_code == 200
    got = _post(server.url, "getObject", pb.GetObjectRequest(store_id="ops", key="k"), verify=context)
    assert pb.GetObjectResponse.FromString(got.content).value.value == b"v"
    with pytest.raises(httpx.TransportError):  # plain http is not served on that port
        httpx.post(server.url.replace("https://", "http://") + "/getObject", content=b"", timeout=5)


# -- JWT ----------------------------------------------------------------------------------------


def test_jwt_server_process(launch, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "jwt.pem"
    pem.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    server = launch("--auth", "jwt", "--jwt-public-key", str(pem))
    token = jwt.encode({"sub": "carol", "exp": int(time.time()) + 600}, key, algorithm="RS256")
    assert _post(server.url, "putObjects", _put(), headers={"Authorization": f"Bearer {token}"}).status_code == 200
    refused = _post(server.url, "putObjects", _put())  # a signature header is no bearer token
    assert refused.status_code == 401
    assert pb.ErrorResponse.FromString(refused.content).error_code == pb.AUTH_EXCEPTION
    assert token not in server.log()


# -- health and metrics ---------------------------------------------------------------------------


class TcpRelay:
    """Forwards TCP connections from a loopback port to `target`, until `cut()`: then
    the listener and every connection close, as a database host that went away would;
    `reopen()` listens on the same port again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.reopen()

    def reopen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, []
        for sock in [listener, *sockets] if listener is not None else sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the threads blocked on it
            except OSError:
                pass
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            upstream = socket.create_connection(self.target)
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            try:
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass


@pytest.mark.postgres
def test_health_is_503_while_the_database_is_unreachable_and_200_once_it_is_back(launch, postgres_dsn) -> None:
    """Fault: the PostgreSQL server goes away under a running server process (a relay
    in between closes every connection and stops listening). Expected: /health answers
    503 {"status": "unavailable"} saying the database does not answer, and logs it; once
    the database is reachable again /health is 200 without a restart."""
    import urllib.parse


    dsn = urllib.parse.urlsplit(postgres_dsn)
    relay = TcpRelay((dsn.hostname or "127.0.0.1", dsn.port or 5432))
    schema = f"vss_test_health_{os.getpid()}_{relay.port}"
    userinfo = dsn.netloc.rpartition("@")[0]
    via_relay = dsn._replace(netloc=f"{userinfo}@127.0.0.1:{relay.port}" if userinfo else f"127.0.0.1:{relay.port}")
    query = "&".join(filter(None, [dsn.query, f"schema={schema}"]))
    try:
        server = launch(db=urllib.parse.urlunsplit(via_relay._replace(query=query)))
        root = server.url.removesuffix("/vss")
        assert httpx.get(f"{root}/health", timeout=10).json() == {"status": "ok"}
        relay.cut()
        down = httpx.get(f"{root}/health", timeout=30)
        assert down.status_code == 503, down.text
        assert down.json()["status"] == "unavailable" and "the database" in down.json()["error"], down.text
        assert "health check: the database does not answer" in server.log()
        relay.reopen()
        deadline = time.monotonic() + 30
        while (back := httpx.get(f"{root}/health", timeout=30)).status_code != 200:
            assert time.monotonic() < deadline, back.text  # the pool reconnects on its next use
            time.sleep(0.05)  # poll interval, bounded by the deadline
        assert back.json() == {"status": "ok"}
    finally:
        relay.cut()
        drop_postgres_schema(postgres_dsn, schema)


def test_health_and_metrics_need_no_authorization(launch) -> None:
    server = launch()
    root = server.url.removesuffix("/vss")
    health = httpx.get(f"{root}/health", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    for _ in range(3):
        assert _post(server.url, "putObjects", _put()).status_code == 200
    assert _post(server.url, "getObject", pb.GetObjectRequest(store_id="ops", key="k")).status_code == 200
    bad_auth = {"Authorization": "x"}
    assert _post(server.url, "getObject", pb.GetObjectRequest(store_id="ops", key="k"), headers=bad_auth).status_code == 401
    text = httpx.get(f"{root}/metrics", timeout=10).text
    assert 'vss_requests_total{route="putObjects",status="200"} 3.0' in text
    assert 'vss_requests_total{route="getObject",status="401"} 1.0' in text
    assert "vss_items_written_total 3.0" in text and "vss_items_read_total 1.0" in text
    assert "vss_auth_failures_total 1.0" in text
    assert 'vss_request_duration_seconds_count{route="getObject"} 2.0' in text


def test_several_workers_share_one_address_and_aggregate_metrics(launch) -> None:
    server = launch("--workers", "2")
    assert "2 workers" in server.log()
    root = server.url.removesuffix("/vss")
    with httpx.Client(timeout=30) as client:  # new connections, so both workers get some
        for i in range(20):
            reply = client.post(
                f"{server.url}/putObjects", content=_put(key=f"k{i}").SerializeToString(),
                headers={"Authorization": sign_header(KEY), "Connection": "close"},
            )
            assert reply.status_code == 200
    text = httpx.get(f"{root}/metrics", timeout=10).text
    assert 'vss_requests_total{route="putObjects",status="200"} 20.0' in text, text
    listed = _post(server.url, "listKeyVersions", pb.ListKeyVersionsRequest(store_id="ops"))
    assert len(pb.ListKeyVersionsResponse.FromString(listed.content).key_versions) == 20
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
    assert "Traceback" not in server.log()


# -- hostile bodies against a real process ---------------------------------------------------------


def _peak_rss_bytes(pid: int) -> int:
    """The process's high-water mark of resident memory (VmHWM), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


HOSTILE_PEAK_GROWTH = 50 * 1024 * 1024
"""How much the server's peak memory may grow across one hostile putObjects: the 9.5 MiB
body and a copy or two of it (about 20 MiB measured). Decoding its five million items,
which the wire scan spares, grew it by about 600 MiB."""


def test_a_body_of_millions_of_items_is_400_and_the_server_keeps_serving(launch) -> None:
    server = launch()
    assert _post(server.url, "putObjects", _put(key="before")).status_code == 200
    # a real item first, so a server that decoded the body and wrote what it could would show it
    hostile = _put(key="smuggled").SerializeToString() + b"\x22\x00" * 5_000_000  # 9.5 MiB
    answers: list[int] = []

    def reader() -> None:  # a getObject alongside the hostile call
        answers.append(_post(server.url, "getObject", pb.GetObjectRequest(store_id="ops", key="before")).status_code)

    peak_before = _peak_rss_bytes(server.process.pid)
    thread = threading.Thread(target=reader)
    thread.start()
    refused = _post(server.url, "putObjects", hostile)
    thread.join(timeout=30)
    peak_growth = _peak_rss_bytes(server.process.pid) - peak_before
    assert refused.status_code == 400
    assert pb.ErrorResponse.FromString(refused.content).error_code == pb.INVALID_REQUEST_EXCEPTION
    assert peak_growth < HOSTILE_PEAK_GROWTH, f"the server's peak memory grew by {peak_growth / 2**20:.0f} MiB"
    assert answers == [200]
    assert _post(server.url, "getObject", pb.GetObjectRequest(store_id="ops", key="before")).status_code == 200
    smuggled = _post(server.url, "getObject", pb.GetObjectRequest(store_id="ops", key="smuggled"))
    assert smuggled.status_code == 404
    assert pb.ErrorResponse.FromString(smuggled.content).error_code == pb.NO_SUCH_KEY_EXCEPTION
    assert "Traceback" not in server.log()


def test_deeply_nested_bodies_are_400(launch) -> None:
    """The VSS messages have no recursive fields; the only nesting a parser walks is an
    unknown group's, which protobuf stops at its depth limit (putObjects refuses groups
    in its wire scan already)."""
    server = launch()
    depth = 200_000
    nested = b"\x7b" * depth + b"\x7c" * depth  # start and end of group field 15, nested
    for call in ("getObject", "putObjects", "deleteObject", "listKeyVersions"):
        reply = _post(server.url, call, nested)
        assert reply.status_code == 400, call
        assert pb.ErrorResponse.FromString(reply.content).error_code == pb.INVALID_REQUEST_EXCEPTION
    listed = _post(server.url, "listKeyVersions", pb.ListKeyVersionsRequest(store_id="ops"))
    assert not pb.ListKeyVersionsResponse.FromString(listed.content).key_versions  # nothing stored
    assert _post(server.url, "putObjects", _put()).status_code == 200  # still serving
    assert "Traceback" not in server.log()


def test_bad_numbers_are_4xx_and_leave_no_traceback(launch) -> None:
    server = launch()
    huge_token = "OTk5" * 2000  # base64 of thousands of 9s
    past_int64 = base64.urlsafe_b64encode(str(2**63).encode()).rstrip(b"=").decode()  # as short as our tokens
    for token in (huge_token, past_int64):
        reply = _post(server.url, "listKeyVersions", pb.ListKeyVersionsRequest(store_id="ops", page_token=token))
        assert reply.status_code == 400, token
        assert pb.ErrorResponse.FromString(reply.content).error_code == pb.INVALID_REQUEST_EXCEPTION
    long_time = sign_header(KEY)[:194] + "9" * 5000
    reply = _post(server.url, "getObject", pb.GetObjectRequest(store_id="ops", key="k"), headers={"Authorization": long_time})
    assert reply.status_code == 401
    assert _post(server.url, "putObjects", _put()).status_code == 200  # still serving
    assert "Traceback" not in server.log() and "ERROR" not in server.log()
