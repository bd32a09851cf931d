"""Scenario 9: malformed requests against the node's API and the VSS server.

Two tables of bad requests, each row with the 4xx it must get. After every row:
nothing was stored, and the process still serves. At the end the node's local copy
and the server's copy are compared with what was there before the table ran.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx
import pytest
import trio

from node.keys import derive_keys, generate_mnemonic
from nodeutil import client_for, wait_for
from vss.auth import sign_header
from vss.proto import vss_pb2

from .checker import assert_same, local_copy, server_copy
from .harness import PASSWORD
from .nodeproc import node_fleet

pytestmark = [pytest.mark.trio, pytest.mark.faults]

DEADLINE_S = 180
TOKEN = "fault-suite-token"
MAX_VALUE = 32 * 1024 * 1024
SERVER_MAX_BODY = 64 * 1024
JSON = {"Content-Type": "application/json"}


@dataclass
class Row:
    what: str
    method: str
    path: str
    status: int
    name: str | None = None  # the node's error name, when it has a stable one
    kwargs: dict = field(default_factory=dict)
    auth: str | None = f"Bearer {TOKEN}"


def _node_rows() -> list[Row]:
    ns = {"primary": "bad"}
    return [
        Row("no API token", "PUT", "/kv/k", 401, "Unauthorized", {"params": ns, "content": b"x"}, auth=None),
        Row("wrong API token", "PUT", "/kv/k", 401, "Unauthorized", {"params": ns, "content": b"x"}, auth="Bearer nope"),
        Row("token without Bearer", "GET", "/nodeinfo", 401, "Unauthorized", auth=TOKEN),
        Row("init: body is not JSON", "POST", "/init", 400, "InvalidRequest", {"content": b"{not json", "headers": JSON}),
        Row("init: JSON sent as text/plain", "POST", "/init", 415, "UnsupportedMediaType",
            {"content": b'{"password": "p"}', "headers": {"Content-Type": "text/plain"}}),
        Row("init: JSON but not an object", "POST", "/init", 400, "InvalidRequest", {"json": ["password"]}),
        Row("init: mnemonic of the wrong type", "POST", "/init", 400, "InvalidRequest",
            {"json": {"password": "p", "mnemonic": 12}}),
        Row("unlock: body is not JSON", "POST", "/unlock", 400, "InvalidRequest", {"content": b"password", "headers": JSON}),
        Row("unlock: no Content-Type", "POST", "/unlock", 415, "UnsupportedMediaType", {"content": b'{"password": "p"}'}),
        Row("unlock while running", "POST", "/unlock", 409, "NodeNotLocked", {"json": {"password": 5}}),
        Row("clear fence while running", "POST", "/vssclearfence", 409, "NodeNotLocked", {"json": {"password": PASSWORD}}),
        Row("clear fence: body is not JSON", "POST", "/vssclearfence", 400, "InvalidRequest", {"content": b"password",
            "headers": JSON}),
        Row("durability of an unknown kind", "PUT", "/kv/k", 400, "InvalidRequest",
            {"params": {**ns, "durability": "eventually"}, "content": b"x"}),
        Row("namespace exactly _", "PUT", "/kv/k", 400, "InvalidNamespace", {"params": {"primary": "_"}, "content": b"x"}),
        Row("secondary without primary", "PUT", "/kv/k", 400, "InvalidNamespace",
            {"params": {"secondary": "s"}, "content": b"x"}),
        Row("namespace outside the alphabet", "PUT", "/kv/k", 400, "InvalidNamespace",
            {"params": {"primary": "a.b"}, "content": b"x"}),
        Row("namespace of 121 characters", "PUT", "/kv/k", 400, "InvalidNamespace",
            {"params": {"primary": "p" * 121}, "content": b"x"}),
        Row("key outside the alphabet", "PUT", "/kv/bad.key", 400, "InvalidKey", {"params": ns, "content": b"x"}),
        Row("key of 121 characters", "PUT", "/kv/" + "k" * 121, 400, "InvalidKey", {"params": ns, "content": b"x"}),
        Row("delete in namespace _", "DELETE", "/kv/k", 400, "InvalidNamespace", {"params": {"primary": "_"}}),
        Row("list namespace _", "GET", "/kv", 400, "InvalidNamespace", {"params": {"primary": "_"}}),
        Row("value over 32 MiB", "PUT", "/kv/huge", 413, "ValueTooLarge", {"params": ns, "content": b"\0" * (MAX_VALUE + 1)}),
        Row("PATCH a key", "PATCH", "/kv/k", 405, "MethodNotAllowed", {"params": ns, "content": b"x"}),
        Row("POST a key", "POST", "/kv/k", 405, "MethodNotAllowed", {"params": ns, "content": b"x"}),
        Row("GET /vssbackup", "GET", "/vssbackup", 405, "MethodNotAllowed"),
        Row("unknown route", "GET", "/no/such/route", 404, "NotFound"),
        Row("wallet path escaping the directory", "PUT", "/wallet/files/%2E%2E/escape", 400, "InvalidPath", {"content": b"x"}),
        Row("wallet path with a backslash", "PUT", "/wallet/files/a\\..\\b", 400, "InvalidPath", {"content": b"x"}),
        Row("wallet path that is absolute", "PUT", "/wallet/files//etc/passwd", 400, "InvalidPath", {"content": b"x"}),
    ]


async def test_bad_requests_to_the_node(tmp_path, vss_server, report):
    """Fault: a table of malformed requests to a running node's API (started with
    --api-token): missing or wrong token, bodies that are not JSON or of the wrong
    type, lifecycle calls in the wrong state, bad namespaces and keys, a value over
    32 MiB, wrong methods, unknown routes, wallet paths that escape the directory.

    Expected: each gets its 4xx with the stable error name in the JSON error body;
    nothing is stored (the node's keys and wallet files do not change); the process
    keeps serving after every row; at the end the server's copy equals the local one,
    which is exactly the state written before the table ran.
    """
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    rows = _node_rows()
    with trio.fail_after(DEADLINE_S):
        async with node_fleet(tmp_path) as fleet:
            node = fleet.node("a", vss_server.url, api_token=TOKEN)
            await node.start()
            await node.init(PASSWORD, mnemonic)
            await node.unlock(PASSWORD)
            for i in range(5):
                await node.expect(204, "PUT", f"/kv/k{i}", params={"primary": "bad"}, content=b"good %d" % i)
            before = await _visible_state(node)
            async with httpx.AsyncClient(base_url=node.url, timeout=60) as raw:
                for row in rows:
                    kwargs = dict(row.kwargs)
                    headers = {**kwargs.pop("headers", {}), **({"Authorization": row.auth} if row.auth is not None else {})}
                    response = await raw.request(row.method, row.path, headers=headers, **kwargs)
                    assert response.status_code == row.status, f"{row.what}: {response.status_code} {response.text[:300]}"
                    if row.name is not None:
                        body = response.json()
                        assert body["name"] == row.name and body["code"] == row.status and body["error"], f"{row.what}: {body}"
                    assert node.running, f"{row.what}: the node exited\n{node.log_tail()}"
                    assert await _visible_state(node) == before, f"{row.what}: the node's state changed"
            await wait_for(lambda: _pending_zero(node), timeout=60, what="replication")
            await node.lock()
            local = local_copy(node.data_dir)
            assert_same({("bad", "", f"k{i}"): b"good %d" % i for i in range(5)}, local, "local state after the table")
            assert_same(await server_copy(vss_server.url, keys), local, "server vs local after the table")
            report.set(bad_requests=len(rows), node_still_serving=1)


async def test_non_utf8_json_bodies_are_400(tmp_path, vss_server, report):
    """Fault: the lifecycle calls that take JSON get a body that is not UTF-8.

    Expected: 400 InvalidRequest, like any other body that is not a JSON object;
    the node keeps serving and its state does not change.
    """
    with trio.fail_after(DEADLINE_S):
        async with node_fleet(tmp_path) as fleet:
            node = fleet.node("a", vss_server.url)
            await node.start()
            answers = {}
            for path in ("/init", "/unlock", "/vssclearfence"):
                response = await node.request("POST", path, content=b"\xff\xfe{}", headers=JSON)
                answers[path] = (response.status_code, response.json().get("name"))
            assert node.running and (await node.nodeinfo())["state"] == "uninitialized"
            report.set(bad_requests=len(answers), answered_500=sum(1 for status, _ in answers.values() if status == 500))
            assert answers == {path: (400, "InvalidRequest") for path in answers}, answers


async def _visible_state(node) -> tuple:
    keys = tuple(await node.list_keys("bad"))
    files = tuple(sorted(f["path"] for f in (await node.expect(200, "GET", "/wallet/files")).json()["files"]))
    return keys, files


async def _pending_zero(node) -> bool:
    return await node.pending() == 0


def _vss_rows(signing_key: bytes, store_id: str) -> list[Row]:
    good_auth = sign_header(signing_key)
    other = derive_keys(generate_mnemonic())
    forged = sign_header(other.signing_key)  # a valid signature by another key...
    forged = good_auth[:66] + forged[66:]  # ...claimed for our public key
    stale = sign_header(signing_key, int(time.time()) - 25 * 3600)
    put = vss_pb2.PutObjectRequest

    def body(message) -> dict:
        return {"content": message.SerializeToString()}

    one_item = put(store_id=store_id, transaction_items=[vss_pb2.KeyValue(key="k", version=-1, value=b"v")])
    return [
        Row("putObjects: garbage body", "POST", "/vss/putObjects", 400, kwargs={"content": b"\xff\xff\xff\xff\xff"},
            auth=good_auth),
        Row("getObject: garbage body", "POST", "/vss/getObject", 400, kwargs={"content": b"\x0f\x00garbage"}, auth=good_auth),
        Row("listKeyVersions: bad page token", "POST", "/vss/listKeyVersions", 400,
            kwargs=body(vss_pb2.ListKeyVersionsRequest(store_id=store_id, page_token="not-a-token")), auth=good_auth),
        Row("deleteObject without key_value", "POST", "/vss/deleteObject", 400,
            kwargs=body(vss_pb2.DeleteObjectRequest(store_id=store_id)), auth=good_auth),
        Row("putObjects: 1001 items", "POST", "/vss/putObjects", 400, kwargs=body(
            put(store_id=store_id,
                transaction_items=[vss_pb2.KeyValue(key=f"k{i}", version=-1, value=b"") for i in range(1001)])),
            auth=good_auth),
        Row("putObjects: key of 601 characters", "POST", "/vss/putObjects", 400, kwargs=body(
            put(store_id=store_id, transaction_items=[vss_pb2.KeyValue(key="k" * 601, version=-1, value=b"v")])), auth=good_auth),
        Row("putObjects: store id of 121 characters", "POST", "/vss/putObjects", 400, kwargs=body(
            put(store_id="s" * 121, transaction_items=[vss_pb2.KeyValue(key="k", version=-1, value=b"v")])), auth=good_auth),
        Row("putObjects: the same key twice", "POST", "/vss/putObjects", 400, kwargs=body(
            put(store_id=store_id, transaction_items=[vss_pb2.KeyValue(key="k", version=-1, value=b"v")] * 2)), auth=good_auth),
        Row("putObjects: body over the server's limit", "POST", "/vss/putObjects", 413, kwargs=body(
            put(store_id=store_id,
                transaction_items=[vss_pb2.KeyValue(key="k", version=-1, value=b"v" * (SERVER_MAX_BODY + 1))])),
            auth=good_auth),
        Row("GET instead of POST", "GET", "/vss/getObject", 400, auth=good_auth),
        Row("PUT instead of POST", "PUT", "/vss/putObjects", 400, kwargs=body(one_item), auth=good_auth),
        Row("unknown call", "POST", "/vss/dropEverything", 400, kwargs=body(one_item), auth=good_auth),
        Row("path outside /vss", "POST", "/putObjects", 400, kwargs=body(one_item), auth=good_auth),
        Row("no Authorization", "POST", "/vss/putObjects", 401, kwargs=body(one_item), auth=None),
        Row("Authorization too short", "POST", "/vss/putObjects", 401, kwargs=body(one_item), auth="abc"),
        Row("Authorization not hex", "POST", "/vss/putObjects", 401, kwargs=body(one_item), auth="zz" * 97 + "1700000000"),
        Row("signature by another key", "POST", "/vss/putObjects", 401, kwargs=body(one_item), auth=forged),
        Row("signature 25 hours old", "POST", "/vss/putObjects", 401, kwargs=body(one_item), auth=stale),
    ]


async def test_bad_requests_to_the_vss_server(tmp_path, spawn_vss_server, report):
    """Fault: a table of malformed calls to the bundled VSS server (its own process,
    signature auth, a 64 KiB body limit): undecodable protobuf, a malformed page
    token, a delete without its key, too many items, keys and store ids over the
    limits, duplicate keys, a body over the limit, wrong methods and paths, and
    missing, malformed, forged or stale Authorization headers.

    Expected: each gets its 4xx with an ErrorResponse body (code INVALID_REQUEST or
    AUTH where one applies); nothing is stored (the store stays empty at global
    version 0); the server keeps serving after every row.
    """
    server = spawn_vss_server("--auth", "sigs", "--max-body-bytes", str(SERVER_MAX_BODY))
    keys = derive_keys(generate_mnemonic())
    store_id = keys.kv_store_id
    rows = _vss_rows(keys.signing_key, store_id)
    codes = {400: vss_pb2.INVALID_REQUEST_EXCEPTION, 401: vss_pb2.AUTH_EXCEPTION}
    with trio.fail_after(DEADLINE_S):
        base = server.url.removesuffix("/vss")
        async with httpx.AsyncClient(base_url=base, timeout=30) as raw, client_for(server.url, keys) as client:
            for row in rows:
                headers = {"Content-Type": "application/octet-stream"}
                if row.auth is not None:
                    headers["Authorization"] = row.auth
                response = await raw.request(row.method, row.path, headers=headers, **row.kwargs)
                assert response.status_code == row.status, f"{row.what}: {response.status_code} {response.content[:200]!r}"
                error = vss_pb2.ErrorResponse.FromString(response.content)
                if row.status in codes:
                    assert error.error_code == codes[row.status], f"{row.what}: {error}"
                assert server.process.poll() is None, f"{row.what}: the server exited\n{server.log()}"
                assert [kv.key async for kv in client.iter_key_versions(store_id)] == [], f"{row.what}: something was stored"
                assert await client.get_global_version(store_id) == 0, f"{row.what}: the global version moved"
                assert [kv.key async for kv in client.iter_key_versions("s" * 120)] == []
    report.set(bad_requests=len(rows), server_still_serving=1)
