"""The operator's commands through the real CLI: status, verify, clear-fence, --version,
and the exit codes each promises (0 done, 1 a run-time failure or a difference found,
2 configuration or cannot run)."""

from __future__ import annotations

import os
import re
import socket
import time

import anyio
import httpx

from conftest import free_loopback_port
from node import config as node_config
from node import crypto
from node.keys import derive_keys, generate_mnemonic
from noderun import running_node, vssnode
from nodeutil import client_for, remote_kv
from vss.proto.vss_pb2 import KeyValue


def _unlock(url: str, mnemonic: str) -> None:
    assert httpx.post(f"{url}/init", json={"password": "pw", "mnemonic": mnemonic}).status_code == 200
    assert httpx.post(f"{url}/unlock", json={"password": "pw"}, timeout=60).status_code == 200


def _settle(url: str) -> None:
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/vssbackupinfo").json()["pending_kv_writes"]:
        assert time.monotonic() < deadline, "replication did not settle"
        time.sleep(0.05)  # poll interval, bounded by the deadline


def test_version_prints_the_version():
    result = vssnode("--version")
    assert result.returncode == 0 and result.stdout.startswith("vssnode ")


def test_status_and_verify_against_a_running_node(tmp_path, vss_server):
    """status prints one screen and exits 0; verify exits 0 while the backup would restore
    exactly and 1 once a value on the server was replaced behind the node's back."""
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    with running_node(tmp_path / "n", "--vss-url", vss_server.url) as node:
        _unlock(node.url, mnemonic)
        for i in range(5):
            assert httpx.put(f"{node.url}/kv/k{i}?primary=ns", content=b"v%d" % i).status_code == 204
        backup = httpx.post(f"{node.url}/vssbackup", timeout=60)
        assert backup.status_code == 200
        _settle(node.url)
        status = vssnode("status", "--node", node.url)
        assert status.returncode == 0, status.stderr
        lines = status.stdout.splitlines()
        assert "state        running (network regtest)" in lines and "pending      0 keys" in lines, lines
        assert f"wallet       version {backup.json()['version']}, restorable" in lines, lines
        verify = vssnode("verify", "--node", node.url)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "0 missing on the server" in verify.stdout and "0 different" in verify.stdout

        async def tamper() -> None:
            async with client_for(vss_server.url, keys) as client:
                other = crypto.encrypt_value(keys.signing_key, b"not what the node wrote")
                await client.put_objects(keys.kv_store_id, [KeyValue(key="ns/_/k3", version=-1, value=other)])

        anyio.run(tamper)
        verify = vssnode("verify", "--node", node.url)
        assert verify.returncode == 1 and "1 different" in verify.stdout, verify.stdout + verify.stderr


def test_status_and_verify_take_the_api_token_from_a_file_or_the_environment(tmp_path, vss_server, monkeypatch):
    """Against a node that wants an API token: status and verify send the one in
    --api-token-file, or else VSSNODE_API_TOKEN, and work; without one, or with a wrong
    one, the node refuses them (status 1, verify 2, one line); a token file that cannot
    be read is configuration (2) for both."""
    monkeypatch.delenv("VSSNODE_API_TOKEN", raising=False)
    token = "t0ken-" + os.urandom(8).hex()
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    auth = {"Authorization": f"Bearer {token}"}
    with running_node(tmp_path / "n", "--vss-url", vss_server.url, "--api-token-file", str(token_file),
                      token=token) as node:
        init = httpx.post(f"{node.url}/init", json={"password": "pw", "mnemonic": generate_mnemonic()}, headers=auth)
        assert init.status_code == 200
        assert httpx.post(f"{node.url}/unlock", json={"password": "pw"}, headers=auth, timeout=60).status_code == 200
        for how in ({"args": ("--api-token-file", str(token_file))}, {"env": {"VSSNODE_API_TOKEN": token}}):
            args, env = how.get("args", ()), how.get("env")
            status = vssnode("status", "--node", node.url, *args, env=env)
            assert status.returncode == 0 and status.stdout.startswith("state        running"), (how, status)
            verify = vssnode("verify", "--node", node.url, *args, env=env)
            assert verify.returncode == 0 and "0 different" in verify.stdout, (how, verify)
        for env in (None, {"VSSNODE_API_TOKEN": "not-the-token"}):
            status = vssnode("status", "--node", node.url, env=env)
            assert status.returncode == 1 and status.stdout == "", (env, status)
            assert status.stderr.strip() == "vssnode status: missing or wrong API token (Authorization: Bearer ...)"
            verify = vssnode("verify", "--node", node.url, env=env)
            assert verify.returncode == 2 and verify.stdout == "", (env, verify)
            assert verify.stderr.strip() == "vssnode verify: missing or wrong API token (Authorization: Bearer ...)"
        for command in ("status", "verify"):
            unreadable = vssnode(command, "--node", node.url, "--api-token-file", str(tmp_path / "absent"))
            assert unreadable.returncode == 2 and "cannot read the API token file" in unreadable.stderr, unreadable


def test_run_help_says_the_node_starts_locked_what_to_call_next_and_every_variable():
    result = vssnode("run", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps lines
    assert "The node starts locked." in text and "POST localhost:3001/init" in text, text
    assert "POST localhost:3001/unlock" in text and "Content-Type: application/json" in text, text
    for env in ("VSSNODE_DATA_DIR", "VSSNODE_API_TOKEN", *(option.env for option in node_config.OPTIONS)):
        assert env in text, env
    assert "--vss-url URL" in text and "--vss-ca-file PEM" in text, text  # placeholders named


def test_status_and_verify_when_they_cannot_run(tmp_path):
    nowhere = "http://127.0.0.1:9"  # discard port: nothing answers
    assert vssnode("status", "--node", nowhere).returncode == 1
    assert vssnode("verify", "--node", nowhere).returncode == 2
    with running_node(tmp_path / "off") as node:  # VSS off: verify cannot run
        result = vssnode("verify", "--node", node.url)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_clear_fence_offline(tmp_path, vss_server):
    """The old node's machine is gone: the tool shows whose fence is on the store, clears
    it only with --yes, and says so when there is none."""
    mnemonic = generate_mnemonic()
    words = tmp_path / "mnemonic"
    words.write_text(mnemonic)
    args = ("clear-fence", "--vss-url", vss_server.url, "--mnemonic-file", str(words))
    none = vssnode(*args)
    assert none.returncode == 0 and "no ownership fence" in none.stdout
    with running_node(tmp_path / "old", "--vss-url", vss_server.url) as node:
        _unlock(node.url, mnemonic)
    shown = vssnode(*args)
    assert shown.returncode == 1 and "fenced by node instance" in shown.stdout and "--yes" in shown.stdout
    cleared = vssnode(*args, "--yes")
    assert cleared.returncode == 0 and "fence cleared" in cleared.stdout
    assert "no ownership fence" in vssnode(*args).stdout
    bad = vssnode("clear-fence", "--vss-url", "http://vss.example.com/vss", "--mnemonic-file", str(words))
    assert bad.returncode == 2 and "plain http" in bad.stderr
    words.write_text("not a mnemonic at all")
    assert vssnode(*args).returncode == 2


def test_a_remote_durability_write_through_the_process_while_the_server_is_down(tmp_path, spawn_vss_server):
    """Fault: the VSS server is down. Expected: PUT ?durability=remote answers 504
    ReplicationTimeout after --remote-write-timeout, the value is committed locally and
    owed; once a server answers at that URL it lands and the next remote write returns
    204 at once. An unknown durability is 400, and with VSS off remote is 400."""
    port = free_loopback_port()
    url = f"http://127.0.0.1:{port}/vss"
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    with running_node(tmp_path / "n", "--vss-url", url, "--remote-write-timeout", "1") as node:
        assert httpx.post(f"{node.url}/init", json={"password": "pw", "mnemonic": mnemonic}).status_code == 200
        assert httpx.post(f"{node.url}/unlock", json={"password": "pw"}, timeout=60).status_code == 502  # restore needs it
        server = spawn_vss_server("--auth", "sigs", port=port)
        assert httpx.post(f"{node.url}/unlock", json={"password": "pw"}, timeout=60).status_code == 200
        server.process.terminate()
        server.process.wait(timeout=30)
        late = httpx.put(f"{node.url}/kv/late?primary=ns&durability=remote", content=b"owed", timeout=30)
        assert late.status_code == 504 and late.json()["name"] == "ReplicationTimeout"
        assert httpx.get(f"{node.url}/kv/late?primary=ns").content == b"owed"
        assert httpx.get(f"{node.url}/vssbackupinfo").json()["pending_kv_writes"] == 1
        spawn_vss_server("--auth", "sigs", port=port, db=f"sqlite:///{tmp_path / 'server-0' / 'vss.sqlite3'}")
        _settle(node.url)
        now = httpx.put(f"{node.url}/kv/now?primary=ns&durability=remote", content=b"at once", timeout=30)
        assert now.status_code == 204
        bad = httpx.put(f"{node.url}/kv/x?primary=ns&durability=soon", content=b"x")
        assert bad.status_code == 400 and httpx.get(f"{node.url}/kv/x?primary=ns").status_code == 404

        async def server_copy() -> dict:
            async with client_for(url, keys) as client:
                return await remote_kv(client, keys)

        assert anyio.run(server_copy) == {("ns", "", "late"): b"owed", ("ns", "", "now"): b"at once"}
    with running_node(tmp_path / "off") as plain:
        assert httpx.post(f"{plain.url}/init", json={"password": "pw", "mnemonic": mnemonic}).status_code == 200
        assert httpx.post(f"{plain.url}/unlock", json={"password": "pw"}, timeout=60).status_code == 200
        off = httpx.put(f"{plain.url}/kv/k?durability=remote", content=b"v")
        assert off.status_code == 400 and off.json()["name"] == "VssNotEnabled"


def test_an_unlock_at_a_wrong_base_path_names_the_path(tmp_path, vss_server):
    """Fault: --vss-url ends in /vss (so it passes the start-up check) but is not where
    the server serves VSS. Expected: the unlock that needs a restore is refused with the
    server's answer naming the path it got and a hint at the base URL, not "could not
    be reached"; the log says the same."""
    wrong = vss_server.url.removesuffix("/vss") + "/foo/vss"
    with running_node(tmp_path / "n", "--vss-url", wrong) as node:
        assert httpx.post(f"{node.url}/init", json={"password": "pw", "mnemonic": generate_mnemonic()}).status_code == 200
        answer = httpx.post(f"{node.url}/unlock", json={"password": "pw"}, timeout=60)
        assert answer.status_code == 502 and answer.json()["name"] == "RestoreFailed", answer.text
        error = answer.json()["error"]
        assert re.search(r"POST /foo/vss/\w+ is not a VSS call", error) and "is the base URL right?" in error, error
        assert "could not be reached" not in error
        logged = [line for line in node.log_text().splitlines() if "unlock failed" in line]
        assert len(logged) == 1 and "/foo/vss/" in logged[0] and "is the base URL right?" in logged[0], logged


def test_run_time_and_configuration_failures_of_vssnode_run(tmp_path):
    """A taken port is a run-time failure (1); a data dir of another network is
    configuration (2). Either way one line, no traceback."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        taken = vssnode("run", str(tmp_path / "a"), "--listen", f"127.0.0.1:{port}")
    assert taken.returncode == 1, taken.stderr
    lines = taken.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in taken.stderr, taken.stderr
    assert lines[0].startswith(f"vssnode: cannot listen on 127.0.0.1:{port}: ") and "--listen" in lines[0], lines
    with running_node(tmp_path / "b", "--network", "signet") as node:
        assert httpx.post(f"{node.url}/init", json={"password": "pw", "mnemonic": generate_mnemonic()}).status_code == 200
    other = vssnode("run", str(tmp_path / "b"), "--network", "mainnet", "--listen", f"127.0.0.1:{free_loopback_port()}")
    assert other.returncode == 2 and "initialised for signet" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
