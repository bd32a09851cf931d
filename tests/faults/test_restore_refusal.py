"""Scenario 8: a backup that cannot be trusted is refused, and nothing is written.

Each fault is put on the server directly (the node's own format, damaged on purpose);
a node on a new data dir then unlocks against it. Both streams are covered: the KV
values, and the wallet stream's chunks.
"""

from __future__ import annotations

import random

import pytest
import trio

from node import crypto, kv_keys
from node.keys import NodeKeys, derive_keys, generate_mnemonic
from node.store import Triple
from nodeutil import client_for, wait_for
from vss.proto.vss_pb2 import KeyValue

from .checker import DB_NAME, assert_same, local_copy, server_copy
from .harness import PASSWORD, populate_server, stamp
from .nodeproc import NodeProcess, node_fleet

pytestmark = [pytest.mark.trio, pytest.mark.faults]

DEADLINE_S = 180
WALLET_CHUNK = 1024 * 1024


def _kv_corruptions(keys: NodeKeys, good: bytes, rng: random.Random) -> dict[str, bytes]:
    """Ways a stored KV value can be wrong, each as the bytes the server would hold."""
    other = derive_keys(generate_mnemonic())
    sealed = crypto.encrypt_value(keys.signing_key, good)
    header = 1 + 32 + 19
    flipped = bytearray(sealed)
    flipped[header + rng.randrange(len(sealed) - header)] ^= 0x40
    return {
        "wrong mnemonic (sealed under another key)": crypto.encrypt_value(other.signing_key, good),
        "one byte flipped": bytes(flipped),
        "truncated to whole segments (no final segment)": sealed[: header + 255],
        "unknown format version": b"\x02" + sealed[1:],
        "garbage": rng.randbytes(40),
        "empty": b"",
    }


async def _key_versions(url: str, keys: NodeKeys, store_id: str) -> dict[str, int]:
    """Every key of a store with its version: any write to a key changes its version."""
    async with client_for(url, keys) as client:
        return {item.key: item.version async for item in client.iter_key_versions(store_id)}


def _staged_keys(node: NodeProcess) -> set[Triple]:
    import sqlite3

    conn = sqlite3.connect(f"file:{node.data_dir / DB_NAME}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT primary_ns, secondary_ns, key FROM restore_staging").fetchall()
    finally:
        conn.close()
    return {tuple(row) for row in rows}  # type: ignore[misc]


async def test_restore_refuses_bad_kv_values(tmp_path, vss_server, report):
    """Fault: the KV store holds 200 good values and one bad one, in turn: sealed
    under another mnemonic's key, a flipped byte, truncated to whole segments (no
    final segment), an unknown format version, garbage, empty.

    Expected: every unlock of a new node fails with 502 RestoreFailed naming the key
    and saying "wrong mnemonic or corrupted"; the node stays locked and keeps serving;
    nothing is live locally (the bad value is written nowhere, not even staged); the
    server's data is untouched (only the fence appears). Once the value is repaired,
    the next unlock restores everything.
    """
    rng = random.Random(report.seed)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    items = {("refuse", "", f"k{i:04d}"): stamp(f"k{i:04d}", 1, rng.randint(8, 600)) for i in range(200)}
    bad_triple = ("refuse", "", "k0100")
    # Longer than one 239-byte segment, so that "truncated to whole segments" cuts something
    # off: a shorter value is a single final segment, which that truncation leaves whole.
    items[bad_triple] = stamp("k0100", 1, rng.randint(2 * 239 + 1, 1200))
    bad_key = kv_keys.to_vss_key(*bad_triple)
    refusals = 0
    with trio.fail_after(DEADLINE_S):
        await populate_server(vss_server.url, keys, items)
        async with node_fleet(tmp_path) as fleet:
            node = fleet.node("new", vss_server.url)
            await node.start()
            await node.init(PASSWORD, mnemonic)
            for name, stored in _kv_corruptions(keys, items[bad_triple], rng).items():
                async with client_for(vss_server.url, keys) as client:
                    await client.put_objects(keys.kv_store_id, [KeyValue(key=bad_key, version=-1, value=stored)])
                before = await _key_versions(vss_server.url, keys, keys.kv_store_id)
                answer = await node.try_unlock(PASSWORD)
                body = answer.json()
                assert answer.status_code == 502 and body["name"] == "RestoreFailed", \
                    f"{name}: {answer.status_code} {answer.text}"
                assert bad_key in body["error"] and "wrong mnemonic or corrupted" in body["error"], f"{name}: {body['error']}"
                assert (await node.nodeinfo())["state"] == "locked", name
                assert (await node.request("GET", "/kv/k0001", params={"primary": "refuse"})).status_code == 409
                assert local_copy(node.data_dir) == {}, f"{name}: state went live although the restore failed"
                assert bad_triple not in _staged_keys(node), f"{name}: the bad value was staged"
                after = await _key_versions(vss_server.url, keys, keys.kv_store_id)
                after.pop("__rln_instance__", None)
                before.pop("__rln_instance__", None)
                assert after == before, f"{name}: the failed restore changed the server's data"
                refusals += 1
            await populate_server(vss_server.url, keys, {bad_triple: items[bad_triple]})
            await node.unlock(PASSWORD)
            await node.lock()
            assert_same(items, local_copy(node.data_dir), "after the repair")
            assert_same(await server_copy(vss_server.url, keys), local_copy(node.data_dir), "after the repair")
            report.set(good_keys=len(items), refused_unlocks=refusals, corruption_kinds=refusals)


async def _wallet_files(node: NodeProcess) -> dict[str, bytes]:
    listing = (await node.expect(200, "GET", "/wallet/files")).json()["files"]
    return {f["path"]: (await node.expect(200, "GET", f"/wallet/files/{f['path']}")).content for f in listing}


async def _backed_up_wallet(fleet, url: str, mnemonic: str, rng: random.Random) -> tuple[dict[str, bytes], int]:
    """Node A writes a wallet of three 1 MiB chunks and some KV state, backs both up,
    and stops; returns the wallet's files and the backup's version."""
    wallet = {"db/big.bin": rng.randbytes(2 * WALLET_CHUNK + 300_000), "state.json": b'{"height": 7}'}
    a = fleet.node("a", url)
    await a.start()
    await a.init(PASSWORD, mnemonic)
    await a.unlock(PASSWORD)
    for path, data in wallet.items():
        await a.expect(204, "PUT", f"/wallet/files/{path}", content=data)
    for i in range(20):
        await a.expect(204, "PUT", f"/kv/k{i}", params={"primary": "w"}, content=b"v%d" % i)
    version = (await a.expect(200, "POST", "/vssbackup")).json()["version"]
    await wait_for(lambda: _pending_zero(a), timeout=60, what="A's KV replicated")
    await a.lock()
    await a.stop()
    return wallet, version


async def _new_device(fleet, url: str, mnemonic: str) -> NodeProcess:
    b = fleet.node("b", url)
    await b.start()
    await b.init(PASSWORD, mnemonic)
    await b.clear_fence(PASSWORD)
    return b


async def test_restore_refuses_truncated_wallet_chunks(tmp_path, vss_server, report):
    """Fault: node A backs up a wallet of three 1 MiB chunks (and some KV state); then
    a chunk on the server is truncated to half: first a middle one, then the last one.

    Expected: each unlock of a new node (after /vssclearfence) fails with 502
    RestoreFailed naming the wallet backup; no wallet directory is written; the node
    stays locked and keeps serving. Once the chunk is repaired, the next unlock
    restores the wallet and the KV state exactly. (That the refused unlock also writes
    no KV state is checked by the next test.)
    """
    rng = random.Random(report.seed)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    refusals = 0
    with trio.fail_after(DEADLINE_S):
        async with node_fleet(tmp_path) as fleet:
            wallet, version = await _backed_up_wallet(fleet, vss_server.url, mnemonic, rng)
            store_id = keys.wallet_store_id
            chunks = sorted(k for k in await _key_versions(vss_server.url, keys, store_id) if k.startswith("backup/chunk/"))
            assert len(chunks) == 3, f"expected a backup in 3 chunks, the server has {chunks}"
            b = await _new_device(fleet, vss_server.url, mnemonic)
            async with client_for(vss_server.url, keys) as client:
                for chunk in (chunks[1], chunks[-1]):
                    original = (await client.get_object(store_id, chunk)).value
                    await client.put_objects(store_id, [KeyValue(key=chunk, version=-1, value=original[: len(original) // 2])])
                    answer = await b.try_unlock(PASSWORD)
                    body = answer.json()
                    assert answer.status_code == 502 and body["name"] == "RestoreFailed", \
                        f"{chunk}: {answer.status_code} {answer.text}"
                    assert "wallet backup" in body["error"], body["error"]
                    assert (await b.nodeinfo())["state"] == "locked"
                    assert not (b.data_dir / "wallet" / keys.fingerprint).exists(), f"{chunk}: a wallet directory appeared"
                    refusals += 1
                    await client.put_objects(store_id, [KeyValue(key=chunk, version=-1, value=original)])
            await b.unlock(PASSWORD)
            assert await _wallet_files(b) == wallet
            await b.lock()
            assert_same(await server_copy(vss_server.url, keys), local_copy(b.data_dir), "after the repair")
            report.set(wallet_bytes=sum(map(len, wallet.values())), wallet_chunks=len(chunks), backup_version=version,
                       refused_unlocks=refusals)


async def test_unlock_refused_for_the_wallet_writes_no_kv_state(tmp_path, vss_server, report):
    """Fault: as above, the wallet backup's middle chunk is truncated; the KV stream is
    intact.

    Expected: the unlock is refused (502 RestoreFailed) and writes nothing at all:
    the new node's kv table stays empty too, as docs/ARCHITECTURE.md says of a failed restore
    without --vss-allow-empty-restore ("unlock fails and writes nothing").
    """
    rng = random.Random(report.seed)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    with trio.fail_after(DEADLINE_S):
        async with node_fleet(tmp_path) as fleet:
            await _backed_up_wallet(fleet, vss_server.url, mnemonic, rng)
            async with client_for(vss_server.url, keys) as client:
                original = (await client.get_object(keys.wallet_store_id, "backup/chunk/1")).value
                cut = KeyValue(key="backup/chunk/1", version=-1, value=original[:1000])
                await client.put_objects(keys.wallet_store_id, [cut])
            b = await _new_device(fleet, vss_server.url, mnemonic)
            answer = await b.try_unlock(PASSWORD)
            assert answer.status_code == 502 and answer.json()["name"] == "RestoreFailed", answer.text
            await b.stop()
            written = local_copy(b.data_dir)
            report.set(kv_keys_written_by_refused_unlock=len(written))
            assert written == {}, f"the refused unlock wrote {len(written)} KV keys"


async def _pending_zero(node: NodeProcess) -> bool:
    return await node.pending() == 0
