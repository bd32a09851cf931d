"""The node against the bundled VSS server, end to end, in-process.

Each test uses a fresh mnemonic, so it has its own VSS user and stores on the shared
server. Waits are on conditions with deadlines, never fixed sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from actors import Node, NodeState, restorer
from node import crypto, errors
from node.config import NodeConfig
from node.keys import derive_keys, generate_mnemonic
from nodeutil import FAST_LIMITS, SwitchableTransport, client_for, local_items, remote_kv, unlocked_node, wait_for
from vss.errors import NoSuchKeyError
from vss.proto.vss_pb2 import GetObjectRequest, KeyValue

pytestmark = pytest.mark.anyio
PASSWORD = "correct horse"
MiB = 1024 * 1024


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def config(data_dir: Path, url: str, **kwargs: object) -> NodeConfig:
    return NodeConfig(data_dir=data_dir, vss_url=url, vault_limits=FAST_LIMITS, **kwargs)


async def pending(node: Node) -> int:
    return (await node.backup_info())["pending_kv_writes"]


async def test_write_is_local_at_once_and_reaches_the_server_encrypted(tmp_path, vss_server):
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    async with unlocked_node(config(tmp_path / "a", vss_server.url), mnemonic, PASSWORD) as node:
        await node.put("payments", "inbound", "k1", b"hello")
        await node.put("", "", "manager", b"")
        assert await node.get("payments", "inbound", "k1") == b"hello"
        await wait_for(lambda: _zero(node), what="replication")
        async with client_for(vss_server.url, keys) as client:
            stored = await client.get_object(keys.kv_store_id, "payments/inbound/k1")
            assert stored.value[0] == 1 and b"hello" not in stored.value
            assert crypto.decrypt_value(keys.signing_key, stored.value) == b"hello"
            empty = await client.get_object(keys.kv_store_id, "_/_/manager")
            assert crypto.decrypt_value(keys.signing_key, empty.value) == b""
            assert await remote_kv(client, keys) == local_items(node.store)


async def _zero(node: Node) -> bool:
    return await pending(node) == 0


async def test_delete_reaches_the_server(tmp_path, vss_server):
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    async with unlocked_node(config(tmp_path / "a", vss_server.url), mnemonic, PASSWORD) as node:
        await node.put("ns", "", "gone", b"1")
        await node.put("ns", "", "kept", b"2")
        await wait_for(lambda: _zero(node))
        await node.delete("ns", "", "gone")
        await node.delete("ns", "", "never-existed")  # a delete the server never had
        await wait_for(lambda: _zero(node))
        async with client_for(vss_server.url, keys) as client:
            with pytest.raises(NoSuchKeyError):
                await client.get_object(keys.kv_store_id, "ns/_/gone")
            assert await remote_kv(client, keys) == {("ns", "", "kept"): b"2"}


async def test_fresh_data_dir_restores_every_key(tmp_path, vss_server):
    mnemonic = generate_mnemonic()
    written = {("ns", "", f"k{i}"): bytes([i % 256]) * (i * 7) for i in range(250)}
    written[("big", "", "blob")] = bytes(range(256)) * 4096  # 1 MiB
    async with unlocked_node(config(tmp_path / "old", vss_server.url), mnemonic, PASSWORD) as old:
        for (p, s, k), v in written.items():
            await old.put(p, s, k, v)
        await wait_for(lambda: _zero(old))

    async with Node.open(config(tmp_path / "new", vss_server.url)) as new:
        await new.init("another password", mnemonic)
        with pytest.raises(errors.OwnershipConflict, match="vssclearfence"):
            await new.unlock("another password")
        assert new.state is NodeState.LOCKED and local_items(new.store) == {}
        assert await new.clear_fence("another password") is True
        await new.unlock("another password")
        assert local_items(new.store) == written
        info = new.info()
        assert info["restore"] == {
            "keys_listed": len(written), "listing_done": True,
            "keys_done": len(written), "bytes_done": sum(map(len, written.values())), "finished": True,
        }
        # the restored node replicates its new writes
        await new.put("ns", "", "after", b"x")
        await wait_for(lambda: _zero(new))


async def test_second_node_on_the_same_store_is_refused(tmp_path, vss_server):
    mnemonic = generate_mnemonic()
    async with unlocked_node(config(tmp_path / "a", vss_server.url), mnemonic, PASSWORD) as first:
        await first.put("ns", "", "k", b"v")
        async with Node.open(config(tmp_path / "b", vss_server.url)) as second:
            await second.init(PASSWORD, mnemonic)
            with pytest.raises(errors.OwnershipConflict):
                await second.unlock(PASSWORD)
            assert second.state is NodeState.LOCKED


async def test_same_data_dir_restarts_without_clearing(tmp_path, vss_server):
    mnemonic = generate_mnemonic()
    async with unlocked_node(config(tmp_path / "a", vss_server.url), mnemonic, PASSWORD) as node:
        await node.put("ns", "", "k", b"1")
    async with Node.open(config(tmp_path / "a", vss_server.url)) as node:
        await node.unlock(PASSWORD)
        assert node.state is NodeState.RUNNING
        assert await node.get("ns", "", "k") == b"1"
        await node.put("ns", "", "k", b"2")
        await wait_for(lambda: _zero(node))
        keys = derive_keys(mnemonic)
        async with client_for(vss_server.url, keys) as client:
            assert await remote_kv(client, keys) == {("ns", "", "k"): b"2"}


async def test_writes_succeed_with_the_server_down_and_catch_up(tmp_path, vss_server):
    """Fault: every VSS request fails as a refused connection. Expected: writes are
    acknowledged at once, pending grows; once the server is back, pending returns to 0
    without any new write and the server's copy equals the local one."""
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    transport = SwitchableTransport()
    async with unlocked_node(config(tmp_path / "a", vss_server.url), mnemonic, PASSWORD, vss_transport=transport) as node:
        transport.down = True
        for i in range(300):
            await node.put("ns", "", f"k{i % 120}", b"v%d" % i)
        await node.delete("ns", "", "k3")
        assert await pending(node) == 120
        info = await node.backup_info()
        assert info["oldest_pending_age_s"] is not None
        await wait_for(lambda: node.metrics.value("replication_failures_total") >= 1)
        transport.down = False
        await wait_for(lambda: _zero(node), timeout=30, what="catch-up without new writes")
        async with client_for(vss_server.url, keys) as client:
            assert await remote_kv(client, keys) == local_items(node.store)
        assert ("ns", "", "k3") not in local_items(node.store)


async def test_server_down_at_restart_does_not_block_unlock(tmp_path, vss_server):
    mnemonic = generate_mnemonic()
    transport = SwitchableTransport()
    async with unlocked_node(config(tmp_path / "a", vss_server.url), mnemonic, PASSWORD, vss_transport=transport) as node:
        await node.put("ns", "", "k", b"1")
    transport = SwitchableTransport()
    transport.down = True
    async with Node.open(config(tmp_path / "a", vss_server.url), vss_transport=transport) as node:
        await node.unlock(PASSWORD)  # local state exists: no restore needed, unlock goes on
        await node.put("ns", "", "k", b"2")
        assert await pending(node) >= 1
        transport.down = False
        await wait_for(lambda: _zero(node), timeout=30)
        keys = derive_keys(mnemonic)
        async with client_for(vss_server.url, keys) as client:
            assert await remote_kv(client, keys) == {("ns", "", "k"): b"2"}


async def test_restore_refuses_values_it_cannot_decrypt(tmp_path, vss_server):
    """Fault: a value on the server encrypted under another key (a wrong mnemonic, or
    corruption). Expected: unlock fails with RestoreFailed, nothing is made live."""
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    other = derive_keys(generate_mnemonic())
    async with client_for(vss_server.url, keys) as client:
        good = crypto.encrypt_value(keys.signing_key, b"fine")
        bad = crypto.encrypt_value(other.signing_key, b"secret")
        await client.put_objects(
            keys.kv_store_id, [KeyValue(key="ns/_/good", version=-1, value=good), KeyValue(key="ns/_/bad", version=-1, value=bad)]
        )
    async with Node.open(config(tmp_path / "a", vss_server.url)) as node:
        await node.init(PASSWORD, mnemonic)
        with pytest.raises(errors.RestoreFailed, match="wrong mnemonic or corrupted"):
            await node.unlock(PASSWORD)
        assert node.state is NodeState.LOCKED
        assert local_items(node.store) == {}


class EndlessGetObject(httpx.AsyncBaseTransport):
    """The real transport, except that getObject of `key` is answered 200 with an endless
    body (up to 64 MiB, so a client that reads it all fails the test, not the machine);
    `pulled` records what the client read of each such answer."""

    def __init__(self, key: str) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._key = key
        self.pulled: list[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/getObject"):
            if GetObjectRequest.FromString(await request.aread()).key == self._key:
                self.pulled.append(0)
                return httpx.Response(200, stream=self._endless(len(self.pulled) - 1))
        return await self._inner.handle_async_request(request)

    def _endless(self, index: int) -> httpx.AsyncByteStream:
        pulled = self.pulled

        class Endless(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                while pulled[index] < 64 * MiB:
                    pulled[index] += 64 * 1024
                    yield b"\x00" * (64 * 1024)

        return Endless()

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_restore_refuses_a_response_larger_than_any_value_can_be(tmp_path, vss_server, monkeypatch):
    """Fault: the server (or a proxy) answers one getObject of the restore with a body far
    larger than the node's largest value. Expected: the node reads no more than that value
    plus headroom (never the client's 65 MiB default), unlock fails with RestoreFailed,
    and nothing is stored."""
    monkeypatch.setattr(restorer, "RETRY_ATTEMPTS", 1)  # the client's own quick retries suffice here
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    async with client_for(vss_server.url, keys) as client:
        value = crypto.encrypt_value(keys.signing_key, b"fine")
        await client.put_objects(keys.kv_store_id, [KeyValue(key="ns/_/k", version=-1, value=value)])
    transport = EndlessGetObject("ns/_/k")
    max_value = 64 * 1024
    async with Node.open(config(tmp_path / "a", vss_server.url, max_value_bytes=max_value),
                         vss_transport=transport) as node:
        await node.init(PASSWORD, mnemonic)
        with pytest.raises(errors.RestoreFailed, match="more than"):
            await node.unlock(PASSWORD)
        assert node.state is NodeState.LOCKED
        assert local_items(node.store) == {}
    assert transport.pulled, "the restore never fetched the value"
    headroom = 2 * MiB  # the node's cap is the largest value, an eighth more, and 1 MiB
    assert all(pulled <= max_value + headroom for pulled in transport.pulled), transport.pulled


async def test_allow_empty_restore_starts_empty_when_restore_fails(tmp_path, vss_server):
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    other = derive_keys(generate_mnemonic())
    async with client_for(vss_server.url, keys) as client:
        bad = crypto.encrypt_value(other.signing_key, b"secret")
        await client.put_objects(keys.kv_store_id, [KeyValue(key="ns/_/bad", version=-1, value=bad)])
    async with unlocked_node(config(tmp_path / "a", vss_server.url, vss_allow_empty_restore=True), mnemonic, PASSWORD) as node:
        assert node.state is NodeState.RUNNING
        assert local_items(node.store) == {}


async def test_another_mnemonic_sees_nothing_of_this_backup(tmp_path, vss_server):
    mnemonic = generate_mnemonic()
    async with unlocked_node(config(tmp_path / "a", vss_server.url), mnemonic, PASSWORD) as node:
        await node.put("ns", "", "k", b"secret")
        await wait_for(lambda: _zero(node))
    async with Node.open(config(tmp_path / "b", vss_server.url)) as stranger:
        await stranger.init(PASSWORD, generate_mnemonic())
        await stranger.unlock(PASSWORD)
        assert local_items(stranger.store) == {}


async def test_takeover_fences_out_the_old_owner(tmp_path, vss_server):
    """Fault: node B clears the fence and takes over while node A runs. Expected: A's
    later writes never land on the server; A reports it lost ownership."""
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    async with unlocked_node(config(tmp_path / "a", vss_server.url), mnemonic, PASSWORD) as a:
        await a.put("ns", "", "k", b"from A")
        await wait_for(lambda: _zero(a))
        async with Node.open(config(tmp_path / "b", vss_server.url)) as b:
            await b.init(PASSWORD, mnemonic)
            assert await b.clear_fence(PASSWORD) is True
            await b.unlock(PASSWORD)
            await b.put("ns", "", "k", b"from B")
            await wait_for(lambda: _zero(b))
            await a.put("ns", "", "k", b"stale A")  # committed locally; must not land
            await wait_for(lambda: a.state is NodeState.FENCED, what="A notices it lost the fence")
            with pytest.raises(errors.OwnershipLost):
                await a.put("ns", "", "k", b"refused")
            assert a.info()["state"] == "fenced"
            async with client_for(vss_server.url, keys) as client:
                assert (await remote_kv(client, keys))[("ns", "", "k")] == b"from B"


async def test_vss_enabled_later_uploads_existing_state(tmp_path, vss_server):
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    async with unlocked_node(NodeConfig(data_dir=tmp_path / "a", vault_limits=FAST_LIMITS), mnemonic, PASSWORD) as node:
        await node.put("ns", "", "before", b"1")
    async with Node.open(config(tmp_path / "a", vss_server.url)) as node:
        await node.unlock(PASSWORD)
        await wait_for(lambda: _zero(node))
        async with client_for(vss_server.url, keys) as client:
            assert await remote_kv(client, keys) == {("ns", "", "before"): b"1"}


async def test_recovery_is_not_postponed_by_steady_writes(tmp_path, vss_server):
    """Fault: the server is down while writes keep coming, and comes back while they
    still do. Expected: the backlog reaches the server during the writes (the retry
    timer is a deadline that new deferred keys do not push back)."""
    import anyio

    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    transport = SwitchableTransport()
    async with unlocked_node(config(tmp_path / "a", vss_server.url), mnemonic, PASSWORD, vss_transport=transport) as node:
        transport.down = True
        for i in range(50):
            await node.put("backlog", "", f"k{i}", b"v")
        await wait_for(lambda: node.metrics.value("replication_failures_total") >= 1)
        stop = anyio.Event()

        async def steady_writes() -> None:
            i = 0
            while not stop.is_set():
                await node.put("steady", "", f"k{i}", b"v")
                i += 1
                await anyio.sleep(0.005)  # a write every few ms: the pace of the workload, not a wait

        async with client_for(vss_server.url, keys) as client:

            async def backlog_landed() -> bool:
                listing = await client.list_key_versions(keys.kv_store_id, key_prefix="backlog/")
                return len(listing.key_versions) == 50

            async with anyio.create_task_group() as tg:
                tg.start_soon(steady_writes)
                transport.down = False
                await wait_for(backlog_landed, timeout=30, what="backlog while writes go on")
                stop.set()
            await wait_for(lambda: _zero(node), timeout=30)
            assert await remote_kv(client, keys) == local_items(node.store)
