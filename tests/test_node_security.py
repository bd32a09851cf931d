"""The node API under hostile neighbours, through the real process (`vssnode run`,
hypercorn): cross-site requests and DNS rebinding, secrets off the command line,
private files, one process per data dir. Every refusal is checked to have stored
nothing and to leave the process serving.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import sqlite3
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import nacl.pwhash.argon2id as argon2id
import pytest
from werkzeug.datastructures import Headers

from conftest import free_loopback_port
from node import errors, settings
from noderun import JSON, RunningNode, running_node, vssnode
from nodeutil import MNEMONIC_A
from vssnode.api_guard import check_caller


def state(node: RunningNode, **headers: str) -> str:
    return httpx.get(f"{node.url}/nodeinfo", headers=headers, timeout=10).json()["state"]


def refused(response: httpx.Response, status: int, name: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["name"] == name


def raw_status(port: int, request: bytes) -> int:
    """The status code of one raw HTTP/1.1 request (for what httpx refuses to send)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def test_cross_site_requests_and_dns_rebinding_are_refused(tmp_path):
    """Attack: a page in the operator's browser posts to the loopback node (a text/plain
    form post with another Origin, a fetch marked cross-site), or a rebinding page sends
    its own Host. Expected: 403 or 415 with nothing run (the node stays uninitialized, no
    mnemonic comes back), and the node still answers its own origin."""
    with running_node(tmp_path / "n") as node:
        init = f"{node.url}/init"
        body = b'{"password": "pw"}'
        refused(httpx.post(init, content=body, headers={"Content-Type": "text/plain", "Origin": "http://evil.example"}),
                403, "ForbiddenOrigin")
        refused(httpx.post(init, content=body, headers={**JSON, "Origin": "http://evil.example"}), 403, "ForbiddenOrigin")
        refused(httpx.post(init, content=body, headers={**JSON, "Sec-Fetch-Site": "cross-site"}), 403, "ForbiddenOrigin")
        refused(httpx.post(init, content=body, headers={**JSON, "Host": f"evil.example:{node.port}"}), 403,
                "ForbiddenOrigin")
        refused(httpx.get(f"{node.url}/kv?primary=p", headers={"Host": "evil.example"}), 403, "ForbiddenOrigin")
        # this node's address with another port is another server (another node, a rebinding page's listener)
        refused(httpx.post(init, content=body, headers={**JSON, "Host": f"127.0.0.1:{node.port + 1}"}), 403,
                "ForbiddenOrigin")
        # every Origin counts, not the first one only
        for origins in ([node.url, "http://evil.example"], ["http://evil.example", node.url]):
            headers = [("Content-Type", "application/json"), *(("Origin", origin) for origin in origins)]
            refused(httpx.post(init, content=body, headers=headers), 403, "ForbiddenOrigin")
        refused(httpx.post(init, content=body, headers=[*JSON.items(), ("Sec-Fetch-Site", "same-origin"),
                                                        ("Sec-Fetch-Site", "cross-site")]), 403, "ForbiddenOrigin")
        assert raw_status(node.port, f"POST /init HTTP/1.1\r\nHost: 127.0.0.1:{node.port}\r\nHost: evil.example\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
                          ) in (400, 403)  # two Hosts: the HTTP parser's refusal or the guard's
        refused(httpx.post(init, content=body, headers={"Content-Type": "text/plain"}), 415, "UnsupportedMediaType")
        refused(httpx.post(init, content=body), 415, "UnsupportedMediaType")
        assert state(node) == "uninitialized" and node.process.poll() is None
        # the node's own origin, in each spelling of loopback, is fine
        assert httpx.get(f"http://localhost:{node.port}/nodeinfo").status_code == 200
        same_origin = {**JSON, "Origin": node.url, "Sec-Fetch-Site": "same-origin"}
        answer = httpx.post(init, content=body, headers=same_origin)
        assert answer.status_code == 200 and len(answer.json()["mnemonic"].split()) == 24


def test_a_lone_surrogate_password_is_400_not_500(tmp_path):
    with running_node(tmp_path / "n") as node:
        answer = httpx.post(f"{node.url}/init", content=b'{"password": "\\ud800"}', headers=JSON)
        refused(answer, 400, "InvalidRequest")
        assert state(node) == "uninitialized"


def test_deeply_nested_json_is_400_not_500(tmp_path):
    """Attack: a JSON body nested 200,000 levels deep, which Python's parser gives up on
    with a RecursionError. Expected: 400 like any other unreadable body, nothing run,
    no traceback in the log, and the node still serving."""
    with running_node(tmp_path / "n") as node:
        depth = 200_000
        nested = b'{"password": ' + b"[" * depth + b"]" * depth + b"}"
        refused(httpx.post(f"{node.url}/init", content=nested, headers=JSON), 400, "InvalidRequest")
        assert state(node) == "uninitialized" and node.process.poll() is None
        assert "Traceback" not in node.log_text() and "ERROR" not in node.log_text()


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine other than loopback, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))  # TEST-NET-2: only asks the routing table
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


def test_plain_hypercorn_on_all_addresses_without_a_token_answers_loopback_only(tmp_path):
    """Attack: the operator serves `hypercorn vssnode.asgi:app --bind 0.0.0.0:P` without a
    token (`vssnode run` would refuse that --listen; plain hypercorn cannot), and a
    machine on the network posts /init naming the node's address as Host. Expected: 403
    ApiTokenRequired, nothing run, while the same process answers on loopback."""
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no address but loopback; test_check_caller_refuses_... covers the guard")
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "VSSNODE_DATA_DIR": str(tmp_path / "n")}
    env.pop("VSSNODE_API_TOKEN", None)
    log = tmp_path / "hypercorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(Path(sys.executable).with_name("hypercorn")), "vssnode.asgi:app",
                                    "--bind", f"0.0.0.0:{port}"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        local = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{local}/nodeinfo", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.05)  # poll interval, bounded by the deadline
        remote = f"http://{address}:{port}"
        refused(httpx.post(f"{remote}/init", json={"password": "pw"}), 403, "ApiTokenRequired")
        answer = httpx.get(f"{remote}/nodeinfo")
        refused(answer, 403, "ApiTokenRequired")
        assert "API token" in answer.json()["error"]
        assert httpx.get(f"{local}/nodeinfo").json()["state"] == "uninitialized"  # nothing ran, still serving
        assert process.poll() is None and "Traceback" not in log.read_text(errors="replace")
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_check_caller_refuses_a_non_loopback_server_address_without_a_token():
    """The guard itself, for machines without a non-loopback address: the ASGI scope's
    `server` is where the request came in."""
    def request(server: tuple[str, int] | None, host: str) -> SimpleNamespace:
        return SimpleNamespace(scope={"server": server}, headers=Headers({"Host": host}))

    for server in (("192.0.2.2", 3001), ("::", 3001), ("fd00::2", 3001), ("::ffff:192.0.2.2", 3001)):
        host = f"[{server[0]}]:3001" if ":" in server[0] else f"{server[0]}:3001"
        with pytest.raises(errors.ApiTokenRequired):
            check_caller(request(server, host), None)
        check_caller(SimpleNamespace(scope={"server": server}, headers=Headers({"Authorization": "Bearer t"})), "t")
    for server in (("127.0.0.1", 3001), ("::1", 3001), ("::ffff:127.0.0.1", 3001)):
        check_caller(request(server, "localhost:3001"), None)
    check_caller(request(None, "localhost"), None)  # no TCP address: a Unix socket, an in-process client


def test_the_api_token_comes_from_a_file_or_the_environment_never_the_command_line(tmp_path):
    token = "t0ken-" + os.urandom(8).hex()
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    with running_node(tmp_path / "a", "--api-token-file", str(token_file), token=token) as node:
        assert token not in Path(f"/proc/{node.process.pid}/cmdline").read_bytes().decode(errors="replace")
        refused(httpx.get(f"{node.url}/nodeinfo"), 401, "Unauthorized")
        assert state(node, Authorization=f"Bearer {token}") == "uninitialized"
        # with a token, the Host of a reverse proxy in front is fine
        assert httpx.get(f"{node.url}/nodeinfo", headers={"Authorization": f"Bearer {token}", "Host": "node.example"}
                         ).status_code == 200
    with running_node(tmp_path / "b", env={"VSSNODE_API_TOKEN": token}, token=token) as node:
        refused(httpx.get(f"{node.url}/nodeinfo"), 401, "Unauthorized")
        assert state(node, Authorization=f"Bearer {token}") == "uninitialized"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--listen", "0.0.0.0:3999"], "not a loopback address"),
        (["--vss-url", "http://127.0.0.1:8081"], "did you mean http://127.0.0.1:8081/vss"),
        (["--api-token-file", "/nonexistent/token"], "cannot read the API token file"),
        (["--api-token", "a", "--api-token-file", "/etc/hostname"], "not both"),
        (["--vss-ca-file", "/nonexistent.pem", "--vss-url", "https://vss.example/vss"], "no such file"),
    ],
)
def test_refused_configurations_exit_2_with_one_line(tmp_path, args, expected):
    result = vssnode("run", str(tmp_path / "d"), *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vssnode: ") and expected in lines[0], result.stderr
    assert not (tmp_path / "d").exists()


def sealed_vault_limits(data_dir: Path) -> tuple[int, int]:
    """(opslimit, memlimit) of the vault that init stored, read from the database file:
    the blob starts with version (1 byte), opslimit (uint32 BE), memlimit (uint64 BE)."""
    with contextlib.closing(sqlite3.connect(data_dir / "node.sqlite3")) as db:
        (blob,) = db.execute("SELECT value FROM settings WHERE name = ?", (settings.SEALED_MNEMONIC,)).fetchone()
    version, opslimit, memlimit = struct.unpack_from(">BIQ", blob)
    assert version == 1
    return opslimit, memlimit


def test_files_are_private_the_vault_costly_and_a_readable_data_dir_is_tightened(tmp_path, umask_022):
    data = tmp_path / "n"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    with running_node(data) as node:
        assert httpx.post(f"{node.url}/init", json={"password": "pw", "mnemonic": MNEMONIC_A}).status_code == 200
        assert httpx.post(f"{node.url}/unlock", json={"password": "pw"}).status_code == 200
        assert httpx.put(f"{node.url}/kv/k", content=b"secret").status_code == 204
        assert httpx.put(f"{node.url}/wallet/files/dir/f", content=b"wallet").status_code == 204
        assert "made it 700" in node.log_text()
    opslimit, memlimit = sealed_vault_limits(data)  # what `vssnode run` seals with, not a test's cheap limits
    assert opslimit >= argon2id.OPSLIMIT_MODERATE and memlimit >= argon2id.MEMLIMIT_MODERATE
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for path in data.rglob("*"):
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {mode:o}"


def test_a_second_process_on_the_same_data_dir_exits_2(tmp_path):
    with running_node(tmp_path / "n") as node:
        second = vssnode("run", str(tmp_path / "n"), "--listen", f"127.0.0.1:{free_loopback_port()}")
        assert second.returncode == 2
        assert "in use by another vssnode process" in second.stderr and len(second.stderr.strip().splitlines()) == 1
        assert state(node) == "uninitialized" and node.process.poll() is None
