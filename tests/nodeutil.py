"""Helpers shared by the node's tests: condition waits, a switchable transport, and
a checker that compares the server's copy (decrypted) with the node's local store."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, closing
from pathlib import Path

import anyio
import httpx
from nacl.pwhash import argon2id

from actors import Node
from actors.ownership_guard import FENCE_KEY
from node import crypto, kv_keys
from node.config import NodeConfig
from node.keys import NodeKeys
from node.store import LocalStore, Triple
from vss.client import SignatureAuth, VssClient

# Cheaper argon2id limits than a real vault's (NodeConfig.vault_limits), so that the
# suites and benchmarks do not spend a second on every init and unlock.
FAST_LIMITS = (argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE)

MNEMONIC_A = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"


async def wait_for(predicate: Callable[[], Awaitable[bool] | bool], timeout: float = 15.0, what: str = "condition") -> None:
    """Poll `predicate` until true; fail the test after `timeout` seconds."""
    with anyio.fail_after(timeout):
        while True:
            result = predicate()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(0.02)


class SwitchableTransport(httpx.AsyncBaseTransport):
    """A real HTTP transport that can be switched 'down': then every request fails as a
    refused connection would, without reaching the server."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.down = False
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.down:
            raise httpx.ConnectError("injected: server down", request=request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@asynccontextmanager
async def unlocked_node(config: NodeConfig, mnemonic: str, password: str, **kwargs: object) -> AsyncIterator[Node]:
    """A node initialised with `mnemonic` and unlocked, for the duration of the block."""
    async with Node.open(config, **kwargs) as node:
        await node.init(password, mnemonic)
        await node.unlock(password)
        yield node


def client_for(url: str, keys: NodeKeys) -> VssClient:
    return VssClient(url, SignatureAuth(keys.signing_key))


async def remote_kv(client: VssClient, keys: NodeKeys) -> dict[Triple, bytes]:
    """The server's copy of the KV stream, decrypted with the node's key."""
    out: dict[Triple, bytes] = {}
    async for item in client.iter_key_versions(keys.kv_store_id):
        if item.key == FENCE_KEY:
            continue
        stored = (await client.get_object(keys.kv_store_id, item.key)).value
        out[kv_keys.from_vss_key(item.key)] = crypto.decrypt_value(keys.signing_key, stored)
    return out


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry under root: files map to their bytes, directories to None."""
    entries: dict[str, bytes | None] = {}
    for current, dirs, files in os.walk(root):
        for name in dirs:
            entries[(Path(current) / name).relative_to(root).as_posix()] = None
        for name in files:
            path = Path(current) / name
            entries[path.relative_to(root).as_posix()] = path.read_bytes()
    return entries


__all__ = ["MNEMONIC_A", "wait_for", "SwitchableTransport", "unlocked_node", "client_for", "remote_kv", "snapshot"]


def local_items(store: LocalStore) -> dict[Triple, bytes]:
    """Every key and value of a node's local store, read over a connection of the test's
    own (what a restore, a write or a crash left committed)."""
    with closing(sqlite3.connect(store.path)) as conn:
        rows = conn.execute("SELECT primary_ns, secondary_ns, key, value FROM kv").fetchall()
    return {(p, s, k): bytes(v) for p, s, k, v in rows}
