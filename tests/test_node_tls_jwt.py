"""The node against a VSS server that speaks https with a private CA, and against one
that wants JWT bearer tokens: both through the real processes (`vssnode run`, `vssnode
vss-server`), the server's copy read back and decrypted independently of the node."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import jwt
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from node.keys import derive_keys, generate_mnemonic
from noderun import REPO, running_node
from nodeutil import remote_kv
from vss.client import FixedHeaders, SignatureAuth, VssClient

SERVER_START_S = 30


@contextmanager
def vss_server(workdir: Path, *args: str) -> Iterator[str]:
    """`python -m vss.server` on a free port; yields the URL it announced once listening."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "vss.server", "--listen", "127.0.0.1:0", "--db", f"sqlite:///{workdir / 'vss.sqlite3'}",
             *args], stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
        )
    try:
        deadline = time.monotonic() + SERVER_START_S
        while not (found := re.search(r"listening on (\S+/vss)", log.read_text(errors="replace"))):
            assert process.poll() is None, f"the server exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the server did not listen:\n{log.read_text()}"
            time.sleep(0.05)  # poll interval, bounded by the deadline
        yield found.group(1)
    finally:
        process.terminate()
        process.wait(timeout=30)


def unlock_and_write(node_url: str, mnemonic: str, count: int) -> None:
    assert httpx.post(f"{node_url}/init", json={"password": "pw", "mnemonic": mnemonic}).status_code == 200
    assert httpx.post(f"{node_url}/unlock", json={"password": "pw"}, timeout=60).status_code == 200, (
        httpx.get(f"{node_url}/nodeinfo").text)
    for i in range(count):
        assert httpx.put(f"{node_url}/kv/k{i}?primary=ns", content=b"value %d" % i).status_code == 204


def wait_settled(node_url: str, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        info = httpx.get(f"{node_url}/vssbackupinfo").json()
        if info["pending_kv_writes"] == 0:
            return dict(info)
        assert time.monotonic() < deadline, f"replication did not settle: {info}"
        time.sleep(0.05)  # poll interval, bounded by the deadline


def test_a_node_replicates_over_https_to_a_server_with_a_private_ca(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_pem, key_pem, ca_pem = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    with vss_server(tmp_path / "server", "--tls-cert", str(cert_pem), "--tls-key", str(key_pem)) as url:
        assert url.startswith("https://")
        with running_node(tmp_path / "untrusting", "--vss-url", url) as node:  # without the CA: refused
            assert httpx.post(f"{node.url}/init", json={"password": "pw", "mnemonic": mnemonic}).status_code == 200
            answer = httpx.post(f"{node.url}/unlock", json={"password": "pw"}, timeout=60)
            assert answer.status_code == 502 and answer.json()["name"] == "RestoreFailed", answer.text
            assert "CERTIFICATE_VERIFY_FAILED" in answer.json()["error"], answer.text  # the cause, named
            assert answer.json()["error"].endswith("trusted with --vss-ca-file"), answer.text
            assert "CERTIFICATE_VERIFY_FAILED" in next(
                line for line in node.log_text().splitlines() if "unlock failed" in line)
        with running_node(tmp_path / "n", "--vss-url", url, "--vss-ca-file", str(ca_pem)) as node:
            unlock_and_write(node.url, mnemonic, 5)
            wait_settled(node.url)

        async def server_copy() -> dict:
            async with VssClient(url, SignatureAuth(keys.signing_key), ca_file=ca_pem) as client:
                return await remote_kv(client, keys)

        assert anyio.run(server_copy) == {("ns", "", f"k{i}"): b"value %d" % i for i in range(5)}


def test_a_node_sends_jwt_tokens_from_a_header_file_and_picks_up_a_new_one(tmp_path):
    """A JWT-fronted server (the user is the token's sub): the node sends the token from
    --vss-header-file instead of signing. An expired token is refused (the node says so
    in kv_error and keeps the writes owed); writing a fresh token into the file is
    enough for replication to resume."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = tmp_path / "jwt.pem"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))

    def token(lifetime_s: int) -> str:
        return jwt.encode({"sub": "node-operator", "exp": int(time.time()) + lifetime_s}, key, algorithm="RS256")

    headers = tmp_path / "vss-headers"
    headers.write_text(f"# the VSS server's token\nAuthorization: Bearer {token(600)}\n")
    os.chmod(headers, 0o600)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    with vss_server(tmp_path / "server", "--auth", "jwt", "--jwt-public-key", str(public)) as url:
        with running_node(tmp_path / "n", "--vss-url", url, "--vss-header-file", str(headers)) as node:
            unlock_and_write(node.url, mnemonic, 3)
            wait_settled(node.url)
            headers.write_text(f"Authorization: Bearer {token(-3600)}\n")  # expired an hour ago
            assert httpx.put(f"{node.url}/kv/late?primary=ns", content=b"owed").status_code == 204
            deadline = time.monotonic() + 30
            while "AuthError" not in str(httpx.get(f"{node.url}/vssbackupinfo").json()["kv_error"]):
                assert time.monotonic() < deadline, "the refused token was not reported"
                time.sleep(0.05)  # poll interval, bounded by the deadline
            assert httpx.get(f"{node.url}/vssbackupinfo").json()["pending_kv_writes"] == 1
            headers.write_text(f"Authorization: Bearer {token(600)}\n")
            info = wait_settled(node.url, timeout=60)
            assert info["kv_error"] is None

        async def server_copy() -> dict:
            async with VssClient(url, FixedHeaders({"Authorization": f"Bearer {token(600)}"})) as client:
                return await remote_kv(client, keys)

        expected = {("ns", "", f"k{i}"): b"value %d" % i for i in range(3)} | {("ns", "", "late"): b"owed"}
        assert anyio.run(server_copy) == expected
