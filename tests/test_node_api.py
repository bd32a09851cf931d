"""The node's HTTP API through the Quart test client: lifecycle, KV routes, error
shapes, and bad input that must change nothing (VSS routes against the in-memory
server)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.wallet_restorer import restore_wallet
from fakevss import FakePort, FakeVssServer
from node.config import NodeConfig
from node.keys import derive_keys
from node.wallet_files import WalletHome
from node.wallet_format import MANIFEST_KEY
from nodeutil import FAST_LIMITS, MNEMONIC_A, local_items
from vss.proto.vss_pb2 import KeyValue
from vssnode.http_api import create_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


JSON = {"Content-Type": "application/json"}


def make_app(tmp_path: Path, **kwargs: object):
    return create_app(NodeConfig(data_dir=tmp_path / "node", vault_limits=FAST_LIMITS, **kwargs))


async def assert_error(response, status: int, name: str) -> dict:
    assert response.status_code == status, await response.get_data()
    body = await response.get_json()
    assert body["code"] == status and body["name"] == name and body["error"]
    return body


async def unlocked(client) -> None:
    assert (await client.post("/init", json={"password": "pw", "mnemonic": MNEMONIC_A})).status_code == 200
    assert (await client.post("/unlock", json={"password": "pw"})).status_code == 200


async def test_lifecycle_and_kv_round_trip(tmp_path):
    app = make_app(tmp_path)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await (await client.get("/nodeinfo")).get_json())["state"] == "uninitialized"
        init = await client.post("/init", json={"password": "pw"})
        words = (await init.get_json())["mnemonic"].split()
        assert len(words) == 24
        await assert_error(await client.post("/init", json={"password": "pw"}), 409, "AlreadyInitialized")
        await assert_error(await client.put("/kv/k", data=b"v"), 409, "NodeLocked")
        await assert_error(await client.post("/unlock", json={"password": "nope"}), 401, "WrongPassword")
        unlock = await client.post("/unlock", json={"password": "pw"})
        assert (await unlock.get_json())["state"] == "running"
        assert (await client.put("/kv/k1?primary=p&secondary=s", data=b"\x00bytes")).status_code == 204
        assert (await client.put("/kv/empty", data=b"")).status_code == 204
        got = await client.get("/kv/k1?primary=p&secondary=s")
        assert got.status_code == 200 and await got.get_data() == b"\x00bytes"
        assert await (await client.get("/kv/empty")).get_data() == b""
        await assert_error(await client.get("/kv/k1"), 404, "NotFound")  # other namespace
        await client.put("/kv/a0?primary=p&secondary=s", data=b"1")
        listing = await client.get("/kv?primary=p&secondary=s")
        assert await listing.get_json() == {"keys": ["a0", "k1"]}
        assert (await client.delete("/kv/k1?primary=p&secondary=s")).status_code == 204
        assert (await client.delete("/kv/k1?primary=p&secondary=s")).status_code == 204  # absent: still 204
        await assert_error(await client.get("/kv/k1?primary=p&secondary=s"), 404, "NotFound")
        lock = await client.post("/lock")
        assert (await lock.get_json())["state"] == "locked"
        await assert_error(await client.get("/kv/a0?primary=p&secondary=s"), 409, "NodeLocked")


async def test_init_response_never_echoes_a_given_mnemonic(tmp_path):
    app = make_app(tmp_path)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        response = await client.post("/init", json={"password": "pw", "mnemonic": MNEMONIC_A})
        assert await response.get_json() == {}
        for path in ("/nodeinfo", "/metrics"):
            text = (await (await client.get(path)).get_data()).decode()
            assert "abandon" not in text and "pw" not in text.split()


@pytest.mark.parametrize(
    "query, name",
    [
        ("?primary=_", "InvalidNamespace"),
        ("?primary=a&secondary=_", "InvalidNamespace"),
        ("?secondary=s", "InvalidNamespace"),
        ("?primary=" + "a" * 121, "InvalidNamespace"),
        ("?primary=bad%2Fslash", "InvalidNamespace"),
        ("?primary=sp%20ace", "InvalidNamespace"),
    ],
)
async def test_bad_namespaces_are_refused_and_nothing_is_stored(tmp_path, query, name):
    app = make_app(tmp_path)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await unlocked(client)
        await assert_error(await client.put("/kv/k" + query, data=b"v"), 400, name)
        node = app.extensions["vssnode"]["node"]
        assert local_items(node.store) == {}


@pytest.mark.parametrize("key", ["a" * 121, "bad.key", "%C3%A9"])
async def test_bad_keys_are_refused(tmp_path, key):
    app = make_app(tmp_path)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await unlocked(client)
        await assert_error(await client.put(f"/kv/{key}", data=b"v"), 400, "InvalidKey")
        assert local_items(app.extensions["vssnode"]["node"].store) == {}


async def test_oversized_value_is_413_and_not_stored(tmp_path):
    app = create_app(NodeConfig(data_dir=tmp_path / "node", max_value_bytes=1024, vault_limits=FAST_LIMITS))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await unlocked(client)
        await assert_error(await client.put("/kv/k", data=b"x" * 1025), 413, "ValueTooLarge")
        assert (await client.put("/kv/k", data=b"x" * 1024)).status_code == 204
        assert local_items(app.extensions["vssnode"]["node"].store) == {("", "", "k"): b"x" * 1024}


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'"pw"', json.dumps({"password": 5}).encode(), json.dumps({}).encode()],
)
async def test_malformed_lifecycle_bodies_are_400(tmp_path, body):
    app = make_app(tmp_path)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await assert_error(await client.post("/init", data=body, headers=JSON), 400, "InvalidRequest")
        assert (await (await client.get("/nodeinfo")).get_json())["state"] == "uninitialized"


async def test_bad_mnemonic_is_refused_and_nothing_stored(tmp_path):
    app = make_app(tmp_path)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        bad = " ".join(["abandon"] * 12)  # wrong checksum
        await assert_error(await client.post("/init", json={"password": "pw", "mnemonic": bad}), 400, "InvalidRequest")
        assert (await (await client.get("/nodeinfo")).get_json())["state"] == "uninitialized"


async def test_vss_routes_answer_vss_not_enabled_without_vss_url(tmp_path):
    app = make_app(tmp_path)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await unlocked(client)
        await assert_error(await client.get("/vssbackupinfo"), 400, "VssNotEnabled")
        await client.post("/lock")
        await assert_error(await client.post("/vssclearfence", json={"password": "pw"}), 400, "VssNotEnabled")
        info = await (await client.get("/nodeinfo")).get_json()
        assert info["vss_enabled"] is False and info["store_ids"] is None


async def test_api_token_is_required_when_set(tmp_path):
    app = make_app(tmp_path, api_token="s3cret")
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await assert_error(await client.get("/nodeinfo"), 401, "Unauthorized")
        await assert_error(await client.get("/nodeinfo", headers={"Authorization": "Bearer wrong"}), 401, "Unauthorized")
        ok = await client.get("/nodeinfo", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


async def test_unknown_route_and_method_get_json_errors(tmp_path):
    app = make_app(tmp_path)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await assert_error(await client.get("/nope"), 404, "NotFound")
        await assert_error(await client.post("/kv/k"), 405, "MethodNotAllowed")


async def test_metrics_and_openapi(tmp_path):
    app = make_app(tmp_path)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await unlocked(client)
        for i in range(5):
            await client.put(f"/kv/k{i}", data=b"v")
        text = (await (await client.get("/metrics")).get_data()).decode()
        assert "\nvssnode_running 1.0\n" in text and "# TYPE vssnode_local_commits_total counter" in text
        spec = await (await client.get("/openapi.json")).get_json()
        assert spec["openapi"].startswith("3.")


async def test_network_mismatch_is_refused(tmp_path):
    from actors import Node
    from node.config import ConfigError

    async with Node.open(NodeConfig(data_dir=tmp_path / "n", network="regtest", vault_limits=FAST_LIMITS)) as node:
        await node.init("pw", MNEMONIC_A)
    with pytest.raises(ConfigError, match="regtest"):
        Node(NodeConfig(data_dir=tmp_path / "n", network="mainnet"))


async def test_json_body_that_is_not_utf8_is_400(tmp_path):
    app = make_app(tmp_path)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await assert_error(await client.post("/init", data=b"\xff\xfe{}", headers=JSON), 400, "InvalidRequest")


def _routes(app) -> set[tuple[str, str]]:
    import re

    found = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z_]+:)?([a-z_]+)>", lambda m: "{" + ("path" if m.group(1) == "path" else m.group(1)) + "}",
                      rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            found.add((path, method.lower()))
    return found


async def test_the_openapi_document_lists_exactly_the_routes_the_app_serves(tmp_path):
    app = make_app(tmp_path)
    async with app.test_app() as test_app:
        spec = await (await test_app.test_client().get("/openapi.json")).get_json()
    documented = {(path, method) for path, item in spec["paths"].items() for method in item if method != "parameters"}
    assert documented == _routes(app)


async def test_the_documented_info_fields_are_the_fields_the_node_gives(tmp_path):
    app = make_app(tmp_path, vss_url="https://vss.invalid/vss")
    async with app.test_app() as test_app:
        client = test_app.test_client()
        spec = await (await client.get("/openapi.json")).get_json()
        info = await (await client.get("/nodeinfo")).get_json()
        backup = await (await client.get("/vssbackupinfo")).get_json()  # locked: from disk, no network
    schemas = spec["components"]["schemas"]
    assert set(info) == set(schemas["NodeInfo"]["properties"])
    assert set(info["restore"]) == set(schemas["NodeInfo"]["properties"]["restore"]["properties"])
    assert set(backup) == set(schemas["BackupInfo"]["properties"]) == set(schemas["BackupInfo"]["required"])


async def test_vssbackup_uploads_over_an_unreadable_backup_only_when_asked(tmp_path):
    """The server holds a wallet backup this node cannot read (a damaged manifest), and
    the node was allowed to start empty. Expected: a plain POST /vssbackup refuses
    (409, and /vssbackupinfo says why); a body that is not a boolean or not JSON changes
    nothing (400, 415); with {"replace_unreadable": true} the node's wallet goes up and
    the server's copy decrypts with this node's key."""
    server = FakeVssServer()
    keys = derive_keys(MNEMONIC_A)
    server.apply_put(keys.wallet_store_id, [KeyValue(key=MANIFEST_KEY, version=0, value=b"not a manifest")], [], None)
    config = NodeConfig(data_dir=tmp_path / "node", vault_limits=FAST_LIMITS, vss_url="https://vss.example/vss",
                        vss_allow_empty_restore=True)
    app = create_app(config, vss_port=lambda _: server.port())
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await unlocked(client)
        info = await (await client.get("/vssbackupinfo")).get_json()
        assert "replace_unreadable" in info["wallet_error"] and info["backup_restorable"] is False
        assert (await client.put("/wallet/files/w", data=b"the new wallet")).status_code == 204
        puts = server.puts
        await assert_error(await client.post("/vssbackup"), 409, "WalletBackupUnreadable")
        await assert_error(await client.post("/vssbackup", json={}), 409, "WalletBackupUnreadable")
        await assert_error(await client.post("/vssbackup", json={"replace_unreadable": "yes"}), 400, "InvalidRequest")
        await assert_error(await client.post("/vssbackup", data=b'{"replace_unreadable": true}',
                                             headers={"Content-Type": "text/plain"}), 415, "UnsupportedMediaType")
        assert server.puts == puts and server.values(keys.wallet_store_id)[MANIFEST_KEY] == b"not a manifest"
        assert "replace_unreadable" in (await (await client.get("/vssbackupinfo")).get_json())["wallet_error"]
        replaced = await client.post("/vssbackup", json={"replace_unreadable": True})
        assert replaced.status_code == 200, await replaced.get_data()
        assert isinstance((await replaced.get_json())["version"], int)
        info = await (await client.get("/vssbackupinfo")).get_json()
        assert info["wallet_error"] is None and info["backup_restorable"] is True
    restored = tmp_path / "restored"
    assert await restore_wallet(server.port(), keys, WalletHome(tmp_path / "node", keys.fingerprint), dest=restored)
    assert (restored / "w").read_bytes() == b"the new wallet"


async def test_a_second_verify_while_one_runs_is_409_and_the_first_completes(tmp_path):
    """One verify at a time: while the first is held at its first read of the server
    (the listing), a second POST /vssverify answers 409 VerifyInProgress at once; the
    first then completes, and a verify after it runs again."""
    port = FakePort(FakeVssServer())
    config = NodeConfig(data_dir=tmp_path / "node", vault_limits=FAST_LIMITS, vss_url="https://vss.invalid/vss",
                        vss_verify_interval_s=0)
    app = create_app(config, vss_port=lambda keys: port)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await unlocked(client)
        assert (await client.put("/kv/k", data=b"v")).status_code == 204
        held = port.pause_before("list_key_versions")
        first: list[Any] = []

        async def first_verify() -> None:
            first.append(await client.post("/vssverify"))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(first_verify)
                await held.reached.wait()
                await assert_error(await client.post("/vssverify"), 409, "VerifyInProgress")
                held.release()
        assert first[0].status_code == 200, await first[0].get_data()
        assert (await client.post("/vssverify")).status_code == 200


async def test_every_refused_unlock_is_logged_with_its_reason(tmp_path, caplog):
    """A body that is not JSON, a missing password, a wrong password: each refused
    unlock is one "unlock failed" line saying why."""
    caplog.set_level(logging.WARNING)
    app = make_app(tmp_path)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await client.post("/init", json={"password": "pw", "mnemonic": MNEMONIC_A})).status_code == 200
        await assert_error(await client.post("/unlock", data=b'{"password": "pw"}'), 415, "UnsupportedMediaType")
        await assert_error(await client.post("/unlock", json={}), 400, "InvalidRequest")
        await assert_error(await client.post("/unlock", json={"password": "wrong"}), 401, "WrongPassword")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("unlock failed: ")]
    assert [line.split(":")[1].strip() for line in lines] == ["UnsupportedMediaType", "InvalidRequest", "WrongPassword"]
