"""The wallet stream end to end: wallet files → coalesced encrypted backups on the
bundled VSS server → restore onto a fresh data dir, plus the faults in between.

Each test uses a fresh mnemonic, so it has its own VSS stores on the shared server.
Waits are on conditions with deadlines, never fixed sleeps. "The server's copy" is
always read back and decrypted independently of the node, then compared with the
node's directory byte for byte.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest

from actors import Node, NodeState, WalletFile, wallet_upload
from actors.wallet_restorer import DEFAULT_CONCURRENCY
from node import crypto, errors
from node.config import NodeConfig
from node.keys import NodeKeys, derive_keys, generate_mnemonic
from node.wallet_files import WalletHome
from node.wallet_format import (
    CHUNK_KEY_PREFIX,
    DATA_KEY,
    FINGERPRINT_KEY,
    MANIFEST_KEY,
    METADATA_KEY,
    chunk_key,
    parse_manifest,
    parse_metadata,
)
from nodeutil import FAST_LIMITS, SwitchableTransport, client_for, local_items, snapshot, unlocked_node, wait_for
from vss.proto import vss_pb2
from vssnode.http_api import create_app
from walletutil import restore_backup

pytestmark = pytest.mark.anyio
PASSWORD = "correct horse"
MiB = 1024 * 1024


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def config(data_dir: Path, url: str | None, **kwargs: object) -> NodeConfig:
    return NodeConfig(data_dir=data_dir, vss_url=url, vault_limits=FAST_LIMITS, **kwargs)


def home_of(node: Node, keys: NodeKeys) -> WalletHome:
    return WalletHome(node.config.data_dir, keys.fingerprint)


async def write_all(node: Node, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        await node.wallet_write(path, data)


async def server_keys(url: str, keys: NodeKeys) -> dict[str, int]:
    async with client_for(url, keys) as client:
        return {kv.key: kv.version async for kv in client.iter_key_versions(keys.wallet_store_id, key_prefix="backup/")}


async def server_wallet(url: str, keys: NodeKeys, scratch: Path) -> dict[str, bytes | None]:
    """The server's backup, fetched and decrypted without the node, as a snapshot."""
    store = keys.wallet_store_id
    async with client_for(url, keys) as client:
        manifest = parse_manifest((await client.get_object(store, MANIFEST_KEY)).value)
        chunk_count, total_size = manifest.chunk_count, manifest.total_size
        salt, prefix = parse_metadata((await client.get_object(store, METADATA_KEY)).value)
        assert (await client.get_object(store, FINGERPRINT_KEY)).value == keys.fingerprint.encode()
        pieces = [(await client.get_object(store, chunk_key(i, chunk_count))).value for i in range(chunk_count)]
    dest = scratch / f"server-copy-{os.urandom(4).hex()}"
    restore_backup(pieces, salt, prefix, keys.signing_key, keys.fingerprint, dest, scratch / "work", total_size=total_size)
    return snapshot(dest)


async def backup_required(node: Node) -> bool:
    return (await node.backup_info())["backup_required"]


async def settled(node: Node) -> bool:
    return not await backup_required(node)


# Requests the hooks see decoded; any other call's request reaches them as None.
_REQUESTS = {"putObjects": vss_pb2.PutObjectRequest, "getObject": vss_pb2.GetObjectRequest}


class HookedTransport(httpx.AsyncBaseTransport):
    """A real transport with a fault script.

    `before(method, request)` runs before each request is sent: it may act on the
    server meanwhile, or raise to fail the request. `break_after(predicate)` makes every
    request after the first one matching `predicate` (and answered) fail as a refused
    connection, until `heal()`. Also counts requests in flight per method.
    """

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.before: Callable[[str, object], Awaitable[None]] | None = None
        self._break_when: Callable[[str, object], bool] | None = None
        self.broken = False
        self.in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}

    def break_after(self, predicate: Callable[[str, object], bool]) -> None:
        self._break_when = predicate

    def heal(self) -> None:
        self._break_when, self.broken = None, False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        method = request.url.path.rsplit("/", 1)[-1]
        if self.broken:
            raise httpx.ConnectError("injected: server unreachable", request=request)
        body = await request.aread()
        decoded = _REQUESTS[method].FromString(body) if method in _REQUESTS else None
        if self.before is not None:
            await self.before(method, decoded)
        self.in_flight[method] = self.in_flight.get(method, 0) + 1
        self.max_in_flight[method] = max(self.max_in_flight.get(method, 0), self.in_flight[method])
        try:
            response = await self._inner.handle_async_request(request)
            await response.aread()
        finally:
            self.in_flight[method] -= 1
        if self._break_when is not None and self._break_when(method, decoded):
            self.broken = True
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def is_chunk_put(method: str, request: object) -> bool:
    return isinstance(request, vss_pb2.PutObjectRequest) and any(
        item.key.startswith(CHUNK_KEY_PREFIX) for item in request.transaction_items
    )


@asynccontextmanager
async def new_owner(tmp_path: Path, url: str, mnemonic: str, name: str, **kwargs: object) -> AsyncIterator[Node]:
    """A fresh data dir about to take the store over: initialised, fence cleared (the
    old node is gone for good); unlocking it restores."""
    async with Node.open(config(tmp_path / name, url, **kwargs)) as node:
        await node.init(PASSWORD, mnemonic)
        await node.clear_fence(PASSWORD)
        yield node


# ------------------------------------------------------------------------- round trips


async def test_small_wallet_round_trips_onto_a_fresh_data_dir(tmp_path, vss_server):
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    files = {
        "wallet.sqlite": os.urandom(5000),
        "db/nested/state.json": b'{"a": 1}',
        "db/empty": b"",
        "media/file one.bin": b"\x00" * 10_000,
    }
    async with unlocked_node(config(tmp_path / "old", vss_server.url), mnemonic, PASSWORD) as old:
        assert await old.wallet_list() == []
        await write_all(old, files)
        await old.wallet_delete("db/empty")
        del files["db/empty"]
        version = await old.backup_now()
        local = snapshot(home_of(old, keys).root)
        assert local == {"db": None, "db/nested": None, "media": None, **files}
        stored = await server_keys(vss_server.url, keys)
        assert stored[MANIFEST_KEY] == version
        assert DATA_KEY in stored and not any(k.startswith(CHUNK_KEY_PREFIX) for k in stored)

    async with Node.open(config(tmp_path / "new", vss_server.url)) as new:
        await new.init(PASSWORD, mnemonic)
        await new.clear_fence(PASSWORD)
        await new.unlock(PASSWORD)
        assert snapshot(home_of(new, keys).root) == local
        assert await new.wallet_read("db/nested/state.json") == b'{"a": 1}'
        info = await new.backup_info()
        assert (info["backup_exists"], info["server_version"], info["backup_required"]) == (True, version, False)


async def test_multi_chunk_wallet_round_trips_and_pieces_follow_its_size(tmp_path, vss_server):
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    big = os.urandom(3 * MiB)  # incompressible: 4 pieces once sealed
    async with unlocked_node(config(tmp_path / "old", vss_server.url), mnemonic, PASSWORD) as old:
        await write_all(old, {"small.txt": b"small", "big/blob.bin": big})
        first = await old.backup_now()
        stored = await server_keys(vss_server.url, keys)
        pieces = sorted(k for k in stored if k.startswith(CHUNK_KEY_PREFIX))
        assert pieces == [f"{CHUNK_KEY_PREFIX}{i}" for i in range(4)] and DATA_KEY not in stored
        assert await server_wallet(vss_server.url, keys, tmp_path) == snapshot(home_of(old, keys).root)

        # shrink to one piece and grow again: the manifest only ever names what is there
        await old.wallet_delete("big/blob.bin")
        second = await old.backup_now()
        assert second > first
        stored = await server_keys(vss_server.url, keys)
        assert DATA_KEY in stored and not any(k.startswith(CHUNK_KEY_PREFIX) for k in stored)
        await old.wallet_write("big/blob.bin", big[: 2 * MiB])
        await old.backup_now()
        stored = await server_keys(vss_server.url, keys)
        assert DATA_KEY not in stored and sum(k.startswith(CHUNK_KEY_PREFIX) for k in stored) == 3
        local = snapshot(home_of(old, keys).root)

    transport = HookedTransport()
    async with Node.open(config(tmp_path / "new", vss_server.url), vss_transport=transport) as new:
        await new.init(PASSWORD, mnemonic)
        await new.clear_fence(PASSWORD)
        await new.unlock(PASSWORD)
        assert snapshot(home_of(new, keys).root) == local
        # the pieces were fetched concurrently, and never more than the bound at once
        assert 2 <= transport.max_in_flight["getObject"] <= DEFAULT_CONCURRENCY


async def test_vss_off_the_wallet_works_and_backup_routes_say_so(tmp_path):
    async with Node.open(config(tmp_path / "a", None)) as node:
        await node.init(PASSWORD, generate_mnemonic())
        await node.unlock(PASSWORD)
        await node.wallet_write("x/y", b"1")
        assert await node.wallet_list() == [WalletFile("x/y", 1)]
        with pytest.raises(errors.VssNotEnabled):
            await node.backup_now()
        with pytest.raises(errors.VssNotEnabled):
            await node.backup_info()
    async with Node.open(config(tmp_path / "a", None)) as node:  # kept across restarts
        await node.unlock(PASSWORD)
        assert await node.wallet_read("x/y") == b"1"


# ----------------------------------------------------------------- coalescing, markers


async def test_a_burst_of_writes_ends_with_the_server_holding_the_final_directory(tmp_path, vss_server):
    """100 wallet changes sent at once, while uploads run. Expected: every change is
    answered, backups coalesce, and once settled the server's copy (decrypted) equals
    the local directory and backup_required is false."""
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    async with unlocked_node(config(tmp_path / "a", vss_server.url), mnemonic, PASSWORD) as node:

        async def change(i: int) -> None:
            if i % 10 == 9:
                await node.wallet_delete(f"dir{i % 3}/file{(i - 5) % 20}")
            else:
                await node.wallet_write(f"dir{i % 3}/file{i % 20}", os.urandom(1000 + i * 997))

        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(change, i)
        await wait_for(lambda: settled(node), timeout=30, what="the last change uploaded")
        assert await server_wallet(vss_server.url, keys, tmp_path) == snapshot(home_of(node, keys).root)
        info = await node.backup_info()
        assert info["backup_required"] is False and info["wallet_error"] is None
        assert info["server_version"] == (await server_keys(vss_server.url, keys))[MANIFEST_KEY]


async def test_backup_required_survives_a_restart_and_is_then_uploaded(tmp_path, vss_server):
    """Fault: the server is down while the wallet changes, and the node stops. Expected:
    backup_required is reported (running and locked), and the next session uploads the
    change without any new write."""
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    transport = SwitchableTransport()
    async with unlocked_node(config(tmp_path / "a", vss_server.url), mnemonic, PASSWORD, vss_transport=transport) as node:
        transport.down = True
        await node.wallet_write("owed", b"not yet on the server")
        assert await backup_required(node) is True
        await wait_for(lambda: _has_error(node), what="a failed backup")
        info = await node.backup_info()
        assert info["backup_exists"] is False and info["server_version"] is None and info["server_error"]  # as last seen
        assert "VssUnavailableError" in info["wallet_error"]
        await node.lock()
        assert await backup_required(node) is True  # known while locked, from the disk
    transport = SwitchableTransport()
    async with Node.open(config(tmp_path / "a", vss_server.url), vss_transport=transport) as node:
        await node.unlock(PASSWORD)
        await wait_for(lambda: settled(node), what="the owed change uploaded at unlock")
        assert await server_wallet(vss_server.url, keys, tmp_path) == {"owed": b"not yet on the server"}


async def _has_error(node: Node) -> bool:
    return (await node.backup_info())["wallet_error"] is not None


async def test_backup_info_fields(tmp_path, vss_server):
    mnemonic = generate_mnemonic()
    async with unlocked_node(config(tmp_path / "a", vss_server.url), mnemonic, PASSWORD) as node:
        info = await node.backup_info()
        assert (info["backup_exists"], info["server_version"], info["backup_required"]) == (False, None, False)
        assert info["wallet_error"] is None and info["server_error"] is None
        for key in ("pending_kv_writes", "last_sync_at", "oldest_pending_age_s"):
            assert key in info
        v1 = await node.backup_now()
        v2 = await node.backup_now()  # nothing changed: still a new upload, a new version
        assert v2 == v1 + 1
        info = await node.backup_info()
        assert (info["backup_exists"], info["server_version"], info["backup_required"]) == (True, v2, False)


async def test_wallet_vss_enabled_later_is_uploaded_whole(tmp_path, vss_server):
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    async with unlocked_node(config(tmp_path / "a", None), mnemonic, PASSWORD) as node:
        await node.wallet_write("before/vss", b"1")
    async with Node.open(config(tmp_path / "a", vss_server.url)) as node:
        await node.unlock(PASSWORD)
        await wait_for(lambda: settled(node), what="the existing wallet uploaded")
        assert await server_wallet(vss_server.url, keys, tmp_path) == {"before": None, "before/vss": b"1"}


# --------------------------------------------------------------------- interrupted uploads


async def test_an_atomic_upload_cut_off_leaves_the_previous_chunked_backup_whole(tmp_path, vss_server):
    """Fault: the link is cut during the upload of a 3 MiB wallet over a previous 3 MiB
    (chunked) backup. It fits one request, so it is written in one putObjects, and the
    cut request never commits. Expected: the server still holds the whole previous
    backup (restorable, byte for byte); once the link is back the new one lands whole.
    (Before, the pieces went out one by one and the first overwrote the old piece 0:
    the only backup no longer decrypted.)"""
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    transport = HookedTransport()
    async with unlocked_node(config(tmp_path / "a", vss_server.url), mnemonic, PASSWORD, vss_transport=transport) as node:
        await node.wallet_write("big", os.urandom(3 * MiB))
        old_version = await node.backup_now()
        old_copy = snapshot(home_of(node, keys).root)

        async def cut_wallet_puts(method: str, request: object) -> None:
            if isinstance(request, vss_pb2.PutObjectRequest) and request.store_id == keys.wallet_store_id:
                raise httpx.ConnectError("injected: link cut before the request reached the server")

        transport.before = cut_wallet_puts
        await node.wallet_write("big", os.urandom(3 * MiB))
        with pytest.raises(errors.VssUnavailable):
            await node.backup_now()
        info = await node.backup_info()
        assert info["backup_required"] is True and info["backup_restorable"] is True
        assert info["server_version"] == old_version
        assert await server_wallet(vss_server.url, keys, tmp_path) == old_copy

        transport.before = None
        await wait_for(lambda: settled(node), timeout=30, what="the automatic retry")
        assert await server_wallet(vss_server.url, keys, tmp_path) == snapshot(home_of(node, keys).root)


async def test_a_piece_by_piece_upload_says_not_restorable_until_it_is_whole(tmp_path, vss_server, monkeypatch):
    """Fault: a wallet too large for one request (here: over a lowered limit) is written
    piece by piece over a previous chunked backup, and the link dies after the first
    piece. Expected: while the new pieces replace the old ones, /vssbackupinfo says
    backup_restorable false, durably (a restart still says so); once a whole backup
    landed it says true again and a fresh node restores it."""
    monkeypatch.setattr(wallet_upload, "ATOMIC_MAX_BYTES", 1 * MiB)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    transport = HookedTransport()
    async with unlocked_node(config(tmp_path / "a", vss_server.url), mnemonic, PASSWORD, vss_transport=transport) as node:
        await node.wallet_write("big", os.urandom(3 * MiB))
        await node.backup_now()
        assert (await node.backup_info())["backup_restorable"] is True
        transport.break_after(is_chunk_put)
        await node.wallet_write("big", os.urandom(3 * MiB))
        with pytest.raises(errors.VssUnavailable):
            await node.backup_now()
        assert transport.broken
        info = await node.backup_info()
        assert info["backup_restorable"] is False and info["backup_required"] is True
    async with Node.open(config(tmp_path / "a", vss_server.url), vss_transport=SwitchableTransport()) as node:
        assert (await node.backup_info())["backup_restorable"] is None  # locked: nothing known of the server
        await node.unlock(PASSWORD)
        await wait_for(lambda: settled(node), timeout=30, what="the next upload")
        assert (await node.backup_info())["backup_restorable"] is True
        local = snapshot(home_of(node, keys).root)
    async with new_owner(tmp_path, vss_server.url, mnemonic, "fresh") as fresh:
        await fresh.unlock(PASSWORD)
        assert snapshot(home_of(fresh, keys).root) == local


async def test_a_413_on_the_atomic_upload_falls_back_to_pieces(tmp_path, spawn_vss_server):
    """A server (or a proxy) whose body limit is below the wallet's size refuses the
    one-request upload with 413; the upload then goes piece by piece and lands."""
    server = spawn_vss_server("--auth", "sigs", "--max-body-bytes", str(MiB + 64 * 1024))
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    async with unlocked_node(config(tmp_path / "a", server.url), mnemonic, PASSWORD) as node:
        await node.wallet_write("big", os.urandom(2 * MiB + 10))
        version = await node.backup_now()
        assert (await node.backup_info())["backup_restorable"] is True
        assert await server_wallet(server.url, keys, tmp_path) == snapshot(home_of(node, keys).root)
        assert (await server_keys(server.url, keys))[MANIFEST_KEY] == version


async def test_conflict_is_retried_once_with_fresh_versions_then_reported(tmp_path, vss_server):
    """Fault: another writer changes backup/manifest right before our write. Expected:
    once, the upload re-reads versions and succeeds; when it happens every time, the
    backup fails with the conflict named."""
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    transport = HookedTransport()
    intrusions, budget = 0, 0

    async def intrude(method: str, request: object) -> None:
        nonlocal intrusions
        if not isinstance(request, vss_pb2.PutObjectRequest) or request.store_id != keys.wallet_store_id:
            return
        if intrusions >= budget:
            return
        intrusions += 1
        async with client_for(vss_server.url, keys) as other:  # a conditional write moves the version
            current = await other.get_object(keys.wallet_store_id, MANIFEST_KEY)
            bumped = vss_pb2.KeyValue(key=MANIFEST_KEY, version=current.version, value=current.value)
            await other.put_objects(keys.wallet_store_id, [bumped])

    async with unlocked_node(config(tmp_path / "a", vss_server.url), mnemonic, PASSWORD, vss_transport=transport) as node:
        await node.wallet_write("f", b"1")
        await node.backup_now()
        before = (await server_keys(vss_server.url, keys))[MANIFEST_KEY]
        transport.before = intrude
        budget = 1
        version = await node.backup_now()
        assert intrusions == 1 and version == before + 2  # theirs, then ours
        assert (await server_keys(vss_server.url, keys))[MANIFEST_KEY] == version
        assert await server_wallet(vss_server.url, keys, tmp_path) == {"f": b"1"}

        budget = 10**6
        with pytest.raises(errors.VssUnavailable, match="ConflictError"):
            await node.backup_now()
        assert (await node.backup_info())["wallet_error"] is not None


# ------------------------------------------------------------------------------ restore


async def test_interrupted_restore_leaves_nothing_and_is_run_again(tmp_path, vss_server):
    """Fault: the server becomes unreachable after the first piece of a restore. Expected:
    unlock fails with RestoreFailed, no wallet directory (or leftover) exists, and the
    next unlock restores it whole."""
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    async with unlocked_node(config(tmp_path / "old", vss_server.url), mnemonic, PASSWORD) as old:
        await old.wallet_write("big", os.urandom(3 * MiB))
        await old.backup_now()
        local = snapshot(home_of(old, keys).root)

    transport = HookedTransport()
    async with Node.open(config(tmp_path / "new", vss_server.url), vss_transport=transport) as new:
        await new.init(PASSWORD, mnemonic)
        await new.clear_fence(PASSWORD)

        async def lose_piece_2(method: str, request: object) -> None:
            if isinstance(request, vss_pb2.GetObjectRequest) and request.key == f"{CHUNK_KEY_PREFIX}2":
                raise httpx.ConnectError("injected: connection lost")

        transport.before = lose_piece_2
        with pytest.raises(errors.RestoreFailed, match="fetching the wallet backup"):
            await new.unlock(PASSWORD)
        home = home_of(new, keys)
        assert new.state is NodeState.LOCKED and not home.root.exists()
        # what a killed restore would leave behind is swept at the next unlock
        home.work_dir.mkdir(parents=True, exist_ok=True)
        (home.work_dir / "wallet-restore-dead.zip").write_bytes(b"half")
        (home.parent / f".{keys.fingerprint}.restore-dead").mkdir()
        transport.before = None
        await new.unlock(PASSWORD)
        assert snapshot(home.root) == local
        assert sorted(p.name for p in home.parent.iterdir()) == [".work", keys.fingerprint]
        assert list(home.work_dir.iterdir()) == []


async def test_a_restored_wallet_is_private_under_a_permissive_umask(tmp_path, vss_server, umask_022):
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    files = {"wallet.sqlite": os.urandom(5000), "db/nested/state.json": b"{}", "keys/seed": b"secret"}
    async with unlocked_node(config(tmp_path / "old", vss_server.url), mnemonic, PASSWORD) as old:
        await write_all(old, files)
        await old.backup_now()
    async with new_owner(tmp_path, vss_server.url, mnemonic, "new") as new:
        await new.unlock(PASSWORD)
        home = home_of(new, keys)
        assert {path: home.root.joinpath(path).read_bytes() for path in files} == files  # restored
        data_dir = new.config.data_dir
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        for path in data_dir.rglob("*"):
            mode = stat.S_IMODE(path.lstat().st_mode)
            assert mode == (0o700 if path.is_dir() else 0o600), f"{path.relative_to(data_dir)} is {mode:o}"


async def test_restore_refuses_a_backup_of_another_wallet(tmp_path, vss_server):
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    async with unlocked_node(config(tmp_path / "old", vss_server.url), mnemonic, PASSWORD) as old:
        await old.wallet_write("f", b"1")
        version = await old.backup_now()
    async with client_for(vss_server.url, keys) as client:
        stored = await client.get_object(keys.wallet_store_id, FINGERPRINT_KEY)
        await client.put_objects(
            keys.wallet_store_id, [vss_pb2.KeyValue(key=FINGERPRINT_KEY, version=stored.version, value=b"00000000")]
        )
    async with new_owner(tmp_path, vss_server.url, mnemonic, "fresh") as fresh:
        with pytest.raises(errors.RestoreFailed, match="belongs to wallet 00000000"):
            await fresh.unlock(PASSWORD)
        assert not home_of(fresh, keys).root.exists()
    async with new_owner(tmp_path, vss_server.url, mnemonic, "lenient", vss_allow_empty_restore=True) as lenient:
        await lenient.unlock(PASSWORD)
        assert lenient.state is NodeState.RUNNING and await lenient.wallet_list() == []
        await lenient.wallet_write("new", b"not uploaded over the unreadable backup")
        await wait_for(lambda: _server_version_known(lenient), what="the keeper's look at the server")
        info = await lenient.backup_info()
        assert info["server_version"] == version and info["backup_restorable"] is False  # nothing was overwritten
        assert "could not read" in info["wallet_error"] and info["backup_required"] is True
        with pytest.raises(errors.WalletBackupUnreadable):
            await lenient.backup_now()
        assert (await server_keys(vss_server.url, keys))[MANIFEST_KEY] == version
        replaced = await lenient.backup_now(replace_unreadable=True)  # the operator's word
        assert replaced == version + 1
        info = await lenient.backup_info()
        assert info["backup_restorable"] is True and info["wallet_error"] is None


async def _server_version_known(node: Node) -> bool:
    return (await node.backup_info())["server_version"] is not None


async def test_an_unlock_refused_for_the_kv_stream_leaves_no_wallet_either(tmp_path, vss_server):
    """Fault: one KV value on the server does not decrypt; the wallet backup is fine.
    Expected: unlock fails with RestoreFailed and neither stream is made live (the
    wallet is restored to a staged place first, and put in place only after the KV
    state); once the bad value is gone, the next unlock restores both."""
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    other = derive_keys(generate_mnemonic())
    async with unlocked_node(config(tmp_path / "old", vss_server.url), mnemonic, PASSWORD) as old:
        await old.put("ns", "", "k", b"v")
        await old.wallet_write("w", os.urandom(2 * MiB))
        await old.backup_now()
        await wait_for(lambda: _kv_settled(old))
        local = snapshot(home_of(old, keys).root)
    async with client_for(vss_server.url, keys) as client:
        bad = crypto.encrypt_value(other.signing_key, b"secret")
        await client.put_objects(keys.kv_store_id, [vss_pb2.KeyValue(key="ns/_/bad", version=-1, value=bad)])
    async with new_owner(tmp_path, vss_server.url, mnemonic, "fresh") as fresh:
        with pytest.raises(errors.RestoreFailed, match="does not decrypt"):
            await fresh.unlock(PASSWORD)
        home = home_of(fresh, keys)
        assert local_items(fresh.store) == {} and not home.root.exists()
        async with client_for(vss_server.url, keys) as client:
            await client.delete_object(keys.kv_store_id, vss_pb2.KeyValue(key="ns/_/bad", version=-1))
        await fresh.unlock(PASSWORD)
        assert local_items(fresh.store) == {("ns", "", "k"): b"v"} and snapshot(home.root) == local
        assert not home.staged.exists()


async def _kv_settled(node: Node) -> bool:
    return (await node.backup_info())["pending_kv_writes"] == 0


async def test_server_down_at_unlock_fails_a_wallet_restore(tmp_path, vss_server):
    transport = SwitchableTransport()
    transport.down = True
    async with Node.open(config(tmp_path / "a", vss_server.url), vss_transport=transport) as node:
        await node.init(PASSWORD, generate_mnemonic())
        with pytest.raises(errors.RestoreFailed):
            await node.unlock(PASSWORD)
        assert node.state is NodeState.LOCKED


# ------------------------------------------------------------------------- ownership


async def test_fenced_node_keeps_reading_but_never_uploads_the_wallet(tmp_path, vss_server):
    """Fault: node B takes the store over while A runs. Expected: A's next wallet change
    is not uploaded, A turns fenced, refuses wallet changes, still serves reads; the
    server keeps B's backup."""
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    async with unlocked_node(config(tmp_path / "a", vss_server.url), mnemonic, PASSWORD) as a:
        await a.wallet_write("f", b"from A")
        await a.backup_now()
        async with new_owner(tmp_path, vss_server.url, mnemonic, "b") as b:
            await b.unlock(PASSWORD)
            await b.wallet_write("f", b"from B")
            b_version = await b.backup_now()
            await a.wallet_write("f", b"stale A")  # durable locally; must not land
            await wait_for(lambda: a.state is NodeState.FENCED, what="A notices it lost the fence")
            with pytest.raises(errors.OwnershipLost):
                await a.wallet_write("g", b"refused")
            with pytest.raises(errors.OwnershipLost):
                await a.backup_now()
            assert await a.wallet_read("f") == b"stale A"
            assert (await server_keys(vss_server.url, keys))[MANIFEST_KEY] == b_version
            assert await server_wallet(vss_server.url, keys, tmp_path) == {"f": b"from B"}


# ------------------------------------------------------------------------------ HTTP


ESCAPES = [
    "/wallet/files/../outside",
    "/wallet/files/a/../../outside",
    "/wallet/files/%2e%2e/outside",
    "/wallet/files//etc/passwd",
    "/wallet/files/%2Fetc%2Fpasswd",
    "/wallet/files/",
    "/wallet/files/a//b",
    "/wallet/files/a%00b",
    "/wallet/files/..%5Coutside",
    "/wallet/files/link/x",
    "/wallet/files/file_link",
    "/wallet/files/.vssnode-tmp-x",
]


async def test_http_wallet_routes_and_path_escapes(tmp_path, vss_server):
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    app = create_app(config(tmp_path / "node", vss_server.url))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/init", json={"password": "pw", "mnemonic": mnemonic})
        assert (await client.put("/wallet/files/a", data=b"x")).status_code == 409  # locked
        assert (await client.get("/wallet/files")).status_code == 409
        assert (await client.post("/unlock", json={"password": "pw"})).status_code == 200

        assert (await client.put("/wallet/files/db/state.bin", data=b"\x00\x01")).status_code == 204
        assert (await client.put("/wallet/files/caf%C3%A9.txt", data=b"")).status_code == 204
        got = await client.get("/wallet/files/db/state.bin")
        assert got.status_code == 200 and await got.get_data() == b"\x00\x01"
        listing = await (await client.get("/wallet/files")).get_json()
        assert listing == {"files": [{"path": "café.txt", "size": 0}, {"path": "db/state.bin", "size": 2}]}
        missing = await client.get("/wallet/files/nope")
        assert missing.status_code == 404 and (await missing.get_json())["name"] == "NotFound"
        assert (await client.delete("/wallet/files/caf%C3%A9.txt")).status_code == 204
        assert (await client.delete("/wallet/files/caf%C3%A9.txt")).status_code == 204  # idempotent

        backup = await client.post("/vssbackup")
        assert backup.status_code == 200
        version = (await backup.get_json())["version"]
        assert (await server_keys(vss_server.url, keys))[MANIFEST_KEY] == version
        info = await (await client.get("/vssbackupinfo")).get_json()
        assert info["backup_exists"] is True and info["server_version"] == version
        assert info["backup_required"] is False and info["wallet_error"] is None

        wallet = tmp_path / "node" / "wallet" / keys.fingerprint
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "secret").write_bytes(b"keep")
        (wallet / "link").symlink_to(outside)
        (wallet / "file_link").symlink_to(outside / "secret")
        before = snapshot(tmp_path / "node" / "wallet"), snapshot(outside)
        for url in ESCAPES:
            for method in (client.put, client.get, client.delete):
                response = await method(url, data=b"evil") if method is client.put else await method(url)
                assert response.status_code == 400, (method, url)
                body = await response.get_json()
                assert body["name"] == "InvalidPath" and body["code"] == 400
        assert (snapshot(tmp_path / "node" / "wallet"), snapshot(outside)) == before
        assert (await (await client.get("/vssbackupinfo")).get_json())["backup_required"] is False

        assert (await client.post("/lock")).status_code == 200
        response = await client.post("/vssbackup")
        assert response.status_code == 409 and (await response.get_json())["name"] == "NodeLocked"


async def test_http_vssbackup_without_vss(tmp_path):
    app = create_app(config(tmp_path / "node", None))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/init", json={"password": "pw", "mnemonic": generate_mnemonic()})
        await client.post("/unlock", json={"password": "pw"})
        assert (await client.put("/wallet/files/x", data=b"1")).status_code == 204
        response = await client.post("/vssbackup")
        assert response.status_code == 400 and (await response.get_json())["name"] == "VssNotEnabled"
        assert await (await client.get("/wallet/files/x")).get_data() == b"1"
