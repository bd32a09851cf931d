"""The VSS server as operators run it: a subprocess answering raw HTTP on loopback.

Covers `python -m vss.server` (what `vssnode vss-server` runs), its flags, its clean
stop on SIGTERM, the loud `--auth none` warning, a PostgreSQL-backed process, and
`hypercorn vss.server.asgi:app` configured from the environment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import httpx
import pytest

from asgiutil import serving
from conftest import drop_postgres_schema
from vss.auth import sign_header
from vss.proto import vss_pb2 as pb
from vss.serve import parse_listen
from vss.server.cli import app_from_env

KEY = bytes.fromhex("33" * 32)


def _post(base: str, call: str, message, *, key: bytes | None = KEY) -> httpx.Response:
    headers = {"Content-Type": "application/octet-stream"}
    if key is not None:
        headers["Authorization"] = sign_header(key)
    return httpx.post(f"{base}/{call}", content=message.SerializeToString(), headers=headers, timeout=10)


def _put_then_get(base: str, *, key: bytes | None = KEY, store: str = "proc-store") -> None:
    put = pb.PutObjectRequest(
        store_id=store,
        global_version=0,
        transaction_items=[pb.KeyValue(key="_/_/manager", version=0, value=b"\x00state")],
    )
    reply = _post(base, "putObjects", put, key=key)
    assert reply.status_code == 200, reply.content
    assert reply.headers["content-type"] == "application/octet-stream"
    got = _post(base, "getObject", pb.GetObjectRequest(store_id=store, key="_/_/manager"), key=key)
    assert got.status_code == 200
    kv = pb.GetObjectResponse.FromString(got.content).value
    assert (kv.key, kv.version, kv.value) == ("_/_/manager", 1, b"\x00state")
    listed = _post(base, "listKeyVersions", pb.ListKeyVersionsRequest(store_id=store), key=key)
    page = pb.ListKeyVersionsResponse.FromString(listed.content)
    assert [kv.key for kv in page.key_versions] == ["_/_/manager"]
    assert page.global_version == 1


def test_server_process_answers_raw_http(vss_server) -> None:
    assert vss_server.url.endswith("/vss")
    _put_then_get(vss_server.url)
    # Same key again with version 0: the stored state is what the server reports.
    again = _post(
        vss_server.url,
        "putObjects",
        pb.PutObjectRequest(store_id="proc-store", transaction_items=[pb.KeyValue(key="_/_/manager", version=0)]),
    )
    assert again.status_code == 409
    assert pb.ErrorResponse.FromString(again.content).error_code == pb.CONFLICT_EXCEPTION

    unauthorized = _post(vss_server.url, "getObject", pb.GetObjectRequest(store_id="s", key="k"), key=None)
    assert unauthorized.status_code == 401
    assert pb.ErrorResponse.FromString(unauthorized.content).error_code == pb.AUTH_EXCEPTION

    wrong_method = httpx.get(f"{vss_server.url}/getObject", timeout=10)
    assert wrong_method.status_code == 400
    assert pb.ErrorResponse.FromString(wrong_method.content).error_code == pb.INVALID_REQUEST_EXCEPTION
    assert vss_server.process.poll() is None


def test_chunked_body_over_the_limit_is_413(spawn_vss_server) -> None:
    server = spawn_vss_server("--max-body-bytes", "2048")

    def chunks():  # no Content-Length: the server must count what arrives
        for _ in range(8):
            yield b"\x00" * 1024

    reply = httpx.post(
        f"{server.url}/putObjects", content=chunks(), headers={"Authorization": sign_header(KEY)}, timeout=10
    )
    assert reply.status_code == 413
    declared = httpx.post(
        f"{server.url}/putObjects", content=b"\x00" * 4096, headers={"Authorization": sign_header(KEY)}, timeout=10
    )
    assert declared.status_code == 413
    assert "Content-Length" not in reply.request.headers


def test_auth_none_warns_loudly_and_sigterm_stops_cleanly(spawn_vss_server) -> None:
    server = spawn_vss_server("--auth", "none")
    _put_then_get(server.url, key=None)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=15) == 0
    log = server.log()
    assert "WARNING" in log and "NO AUTHORIZATION" in log
    assert f"listening on {server.url}" in log
    assert "Traceback" not in log


def test_sigint_stops_cleanly_and_data_persists(spawn_vss_server, tmp_path) -> None:
    db = f"sqlite:///{tmp_path / 'kept.sqlite3'}"
    first = spawn_vss_server(db=db)
    _put_then_get(first.url)
    first.process.send_signal(signal.SIGINT)
    assert first.process.wait(timeout=15) == 0
    second = spawn_vss_server(db=db)
    got = _post(second.url, "getObject", pb.GetObjectRequest(store_id="proc-store", key="global_version"))
    assert pb.GetObjectResponse.FromString(got.content).value.version == 1


@pytest.mark.postgres
def test_server_process_on_postgres(spawn_vss_server, postgres_dsn) -> None:


    schema = f"vss_test_proc_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    separator = "&" if "?" in postgres_dsn else "?"
    try:
        server = spawn_vss_server(db=f"{postgres_dsn}{separator}schema={schema}")
        _put_then_get(server.url)
    finally:
        drop_postgres_schema(postgres_dsn, schema)


def test_hypercorn_serves_the_asgi_app_from_environment(spawn_vss_server, tmp_path) -> None:
    server = spawn_vss_server(
        command=[sys.executable, "-m", "hypercorn", "vss.server.asgi:app", "--bind", "127.0.0.1:{port}"],
        env={
            "VSS_SERVER_DB": f"sqlite:///{tmp_path / 'asgi.sqlite3'}",
            "VSS_SERVER_AUTH": "sigs",
            "VSS_SERVER_MAX_BODY_BYTES": "1000",
        },
    )
    _put_then_get(server.url)
    too_big = httpx.post(
        f"{server.url}/putObjects", content=b"\x00" * 1001, headers={"Authorization": sign_header(KEY)}, timeout=10
    )
    assert too_big.status_code == 413


@pytest.mark.parametrize("level, debug_shown", [("debug", True), ("info", False)])
def test_hypercorn_logs_at_the_level_of_vss_server_log_level(tmp_path, level, debug_shown) -> None:
    """Under hypercorn's own command line the app logs at VSS_SERVER_LOG_LEVEL: at debug,
    a database that cannot be opened is logged with the backend's traceback."""
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("the database path goes through this file")
    result = subprocess.run(
        [sys.executable, "-m", "hypercorn", "vss.server.asgi:app", "--bind", "127.0.0.1:0"],
        env={**os.environ, "VSS_SERVER_DB": f"sqlite:///{not_a_dir / 'vss.sqlite3'}", "VSS_SERVER_LOG_LEVEL": level},
        capture_output=True, text=True, timeout=60,
    )
    assert ("DEBUG vss.server.app: the backend failed to open" in result.stderr) is debug_shown, result.stderr


@pytest.mark.parametrize("workers", ["1", "0"])  # hypercorn's default worker process, and its own process
def test_hypercorn_refuses_auth_none_without_the_confirmation_in_one_line(tmp_path, workers: str) -> None:
    db = tmp_path / "none.sqlite3"
    env = {**os.environ, "VSS_SERVER_DB": f"sqlite:///{db}", "VSS_SERVER_AUTH": "none"}
    env.pop("VSS_SERVER_ALLOW_UNAUTHENTICATED", None)
    result = subprocess.run(
        [sys.executable, "-m", "hypercorn", "vss.server.asgi:app", "--bind", "127.0.0.1:0", "--workers", workers],
        env=env, capture_output=True, text=True, timeout=60,
    )
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vss-server: "), result.stderr
    assert "VSS_SERVER_ALLOW_UNAUTHENTICATED=1" in lines[0] and "Traceback" not in result.stderr
    assert not db.exists()  # nothing was opened, let alone stored
    if workers == "0":
        assert result.returncode == 2
    # With a worker process hypercorn 0.18 exits 0 whatever the worker's status: run()
    # records it, then joins the (emptied) worker list again and keeps that 0, the cause
    # of pgjones/hypercorn#269 too. The worker itself exits 2.


def test_bad_flags_exit_2_with_one_line_reason() -> None:
    for args in (["--listen", "8081"], ["--listen", "host:99999"], ["--db", "mysql://x/y"], ["--max-body-bytes", "0"]):
        result = subprocess.run(
            [sys.executable, "-m", "vss.server", *args], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.strip(), args


def test_vssnode_cli_offers_the_server_flags() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vssnode", "vss-server", "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    for flag in (
        "--listen", "--db", "--auth", "--max-body-bytes", "--jwt-public-key", "--tls-cert", "--tls-key",
        "--workers", "--loop", "--allow-unauthenticated-remote", "--log-level",
    ):
        assert flag in result.stdout


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:8081") == ("127.0.0.1", 8081)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    assert parse_listen("localhost:0") == ("localhost", 0)
    for bad in ("8081", ":8081", "host:", "host:http", "::1:8081", "h:70000", "[nope]:80", "[]:80", "h:\uff18\uff10"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_app_from_env_validates_variables() -> None:
    with pytest.raises(ValueError, match="VSS_SERVER_AUTH"):
        app_from_env({"VSS_SERVER_AUTH": "password"})
    with pytest.raises(ValueError, match="VSS_SERVER_MAX_BODY_BYTES"):
        app_from_env({"VSS_SERVER_MAX_BODY_BYTES": "lots"})
    with pytest.raises(ValueError, match="VSS_SERVER_DB"):
        app_from_env({"VSS_SERVER_DB": "redis://x"})
    # The app cannot see its bind address: no authorization needs an explicit yes.
    with pytest.raises(ValueError, match="VSS_SERVER_ALLOW_UNAUTHENTICATED"):
        app_from_env({"VSS_SERVER_DB": "sqlite:///:memory:", "VSS_SERVER_AUTH": "none"})
    with pytest.raises(ValueError, match="VSS_SERVER_JWT_PUBLIC_KEY"):
        app_from_env({"VSS_SERVER_DB": "sqlite:///:memory:", "VSS_SERVER_AUTH": "jwt"})


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_app_from_env_in_memory_sqlite_with_auth_none(anyio_backend) -> None:
    app = app_from_env(
        {"VSS_SERVER_DB": "sqlite:///:memory:", "VSS_SERVER_AUTH": "none", "VSS_SERVER_ALLOW_UNAUTHENTICATED": "1"}
    )
    async with serving(app) as client:
        put = pb.PutObjectRequest(store_id="s", transaction_items=[pb.KeyValue(key="k", version=-1, value=b"v")])
        assert (await client.post("/vss/putObjects", content=put.SerializeToString())).status_code == 200
        listed = await client.post(
            "/vss/listKeyVersions", content=pb.ListKeyVersionsRequest(store_id="s").SerializeToString()
        )
        page = pb.ListKeyVersionsResponse.FromString(listed.content)
        assert [kv.key for kv in page.key_versions] == ["k"]
