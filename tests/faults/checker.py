"""The check every fault scenario ends with: the server's copy against the local one.

The server's copy is read straight from the VSS server (never through the fault
proxy) and decrypted with the mnemonic's key (`nodeutil.remote_kv`). The local copy
is read from the node's SQLite file once the node is stopped or locked
(`LocalStore.all_items()`), or over the running node's HTTP API. The two are compared
key by key; a mismatch fails with a diff that names the keys missing on either side
and the values that differ.
"""

from __future__ import annotations

from pathlib import Path

from actors.ownership_guard import FENCE_KEY
from node import crypto, kv_keys
from node.keys import NodeKeys
from node.store import LocalStore, Triple
from nodeutil import client_for, remote_kv
from vss.errors import NoSuchKeyError

from .nodeproc import NodeProcess

DB_NAME = "node.sqlite3"
_SHOWN = 12


async def server_copy(server_url: str, keys: NodeKeys) -> dict[Triple, bytes]:
    """The KV stream as the server holds it, decrypted; `server_url` must be the
    server itself (ending in /vss), not the proxy."""
    async with client_for(server_url, keys) as client:
        return await remote_kv(client, keys)


async def server_snapshot(server_url: str, keys: NodeKeys) -> dict[Triple, bytes]:
    """Like `server_copy`, while the node may still be writing: a key deleted between
    the listing and its read is left out."""
    out: dict[Triple, bytes] = {}
    async with client_for(server_url, keys) as client:
        listed = [item.key async for item in client.iter_key_versions(keys.kv_store_id) if item.key != FENCE_KEY]
        for vss_key in listed:
            try:
                stored = (await client.get_object(keys.kv_store_id, vss_key)).value
            except NoSuchKeyError:
                continue
            out[kv_keys.from_vss_key(vss_key)] = crypto.decrypt_value(keys.signing_key, stored)
    return out


def _open(data_dir: Path) -> LocalStore:
    path = data_dir / DB_NAME
    if not path.exists():
        raise AssertionError(f"no node database at {path}")
    return LocalStore(path)


def local_copy(data_dir: Path) -> dict[Triple, bytes]:
    """Every key and value of the node's `kv` table; the node must be stopped or locked."""
    store = _open(data_dir)
    try:
        return store.all_items()
    finally:
        store.close()


def local_pending(data_dir: Path) -> int:
    """How many keys the node's durable markers still owe to the server."""
    store = _open(data_dir)
    try:
        return store.pending_stats()[0]
    finally:
        store.close()


async def api_copy(node: NodeProcess, namespaces: list[tuple[str, str]]) -> dict[Triple, bytes]:
    """The running node's state in `namespaces`, read over its API (GET /kv, /kv/{key})."""
    out: dict[Triple, bytes] = {}
    for primary, secondary in namespaces:
        for key in await node.list_keys(primary, secondary):
            response = await node.expect(200, "GET", f"/kv/{key}", params={"primary": primary, "secondary": secondary})
            out[(primary, secondary, key)] = response.content
    return out


def _short(value: bytes | None) -> str:
    if value is None:
        return "(absent)"
    text = repr(value[:48])
    return text + (f"... ({len(value)} bytes)" if len(value) > 48 else "")


def describe_diff(remote: dict[Triple, bytes], local: dict[Triple, bytes]) -> str | None:
    """None if the copies are equal, else a readable diff (server vs local)."""
    if remote == local:
        return None
    missing = sorted(set(local) - set(remote))
    extra = sorted(set(remote) - set(local))
    differ = sorted(k for k in set(local) & set(remote) if local[k] != remote[k])
    lines = [f"server copy ({len(remote)} keys) differs from local copy ({len(local)} keys):"]
    for title, keys in (("missing on the server", missing), ("only on the server", extra), ("different values", differ)):
        if not keys:
            continue
        lines.append(f"  {title}: {len(keys)}")
        for key in keys[:_SHOWN]:
            lines.append(f"    {'/'.join(key)}: server {_short(remote.get(key))}, local {_short(local.get(key))}")
        if len(keys) > _SHOWN:
            lines.append(f"    ... and {len(keys) - _SHOWN} more")
    return "\n".join(lines)


def assert_same(remote: dict[Triple, bytes], local: dict[Triple, bytes], context: str = "") -> None:
    diff = describe_diff(remote, local)
    if diff is not None:
        raise AssertionError(f"{context}\n{diff}" if context else diff)
