"""bench/lean_client.py, the lean reference restore, reads back exactly what was stored:
every page listed, every value fetched and decrypted, the fence key left out."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path

import pytest

from conftest import RunningVssServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from lean_client import lean_restore  # noqa: E402

from actors.ownership_guard import FENCE_KEY  # noqa: E402
from node.crypto import encrypt_value  # noqa: E402
from node.keys import derive_keys, generate_mnemonic  # noqa: E402
from vss.client import SignatureAuth, VssClient  # noqa: E402
from vss.proto import vss_pb2  # noqa: E402

KEYS = 350  # four pages of the bundled server's 100


async def fill(url: str, signing_key: bytes, store_id: str) -> dict[str, bytes]:
    # Sizes around the STREAM segment (239 bytes) and empty values included.
    plaintexts = {f"_/_/k{i:04d}": os.urandom((i * 37) % 1200) for i in range(KEYS)}
    items = [vss_pb2.KeyValue(key=key, version=0, value=encrypt_value(signing_key, value)) for key, value in plaintexts.items()]
    items.append(vss_pb2.KeyValue(key=FENCE_KEY, version=0, value=b"instance-id, not encrypted"))
    async with VssClient(url, SignatureAuth(signing_key)) as client:
        await client.put_objects(store_id, items)
    return plaintexts


@pytest.mark.parametrize("connections", [1, 32])
def test_lean_restore_returns_exactly_the_stored_plaintexts(vss_server: RunningVssServer, connections: int) -> None:
    signing_key = derive_keys(generate_mnemonic()).signing_key
    store_id = f"lean-{uuid.uuid4().hex}"
    expected = asyncio.run(fill(vss_server.url, signing_key, store_id))
    result = asyncio.run(lean_restore(vss_server.url, signing_key, store_id, connections=connections))
    assert result.values == expected
    assert result.keys == KEYS
    assert result.bytes == sum(len(value) for value in expected.values())
    assert result.keys_per_s > 0 and result.cpu_ms_per_key > 0


def test_lean_restore_of_another_users_store_is_empty(vss_server: RunningVssServer) -> None:
    # The server names users by their key: another key sees nothing, and says so by an empty listing.
    signing_key = derive_keys(generate_mnemonic()).signing_key
    store_id = f"lean-{uuid.uuid4().hex}"
    asyncio.run(fill(vss_server.url, signing_key, store_id))
    other = derive_keys(generate_mnemonic()).signing_key
    result = asyncio.run(lean_restore(vss_server.url, other, store_id, connections=4))
    assert result.keys == 0 and result.values == {}
