"""The check every fault scenario ends with: the server's copy against the local one.

The server's copy is read straight from the VSS server (never through the fault
proxy) and decrypted with the mnemonic's key (`nodeutil.remote_kv`). The local copy
is read from the node's SQLite file once the node is stopped or locked
(`local_items(LocalStore)`), or over the running node's HTTP API. The two are compared
key by key; a mismatch fails with a diff that names the keys missing on either side
and the values that differ.

The wallet stream is checked the same way: `server_wallet` restores the server's backup
with the node's own restore code (`actors.wallet_restorer.restore_wallet`, what unlock
runs on a fresh data dir) into a scratch directory and reads its files; `local_wallet`
reads the node's wallet directory from disk, `api_wallet` over the running node's API.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

from actors.ownership_guard import FENCE_KEY
from actors.wallet_restorer import restore_wallet
from node import crypto, kv_keys, wallet_files
from node.durable import make_private_dirs
from node.keys import NodeKeys
from node.store import LocalStore, Triple
from node.wallet_files import WalletHome
from nodeutil import client_for, local_items, remote_kv
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
        return local_items(store)
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


# -- the wallet stream ---------------------------------------------------------------------------

_scratch_numbers = itertools.count()


def read_wallet_dir(root: Path) -> dict[str, bytes]:
    """Every file under a wallet directory, by its wallet path."""
    return {path: (root / path).read_bytes() for path, _ in wallet_files.list_files(root)}


def local_wallet(data_dir: Path, keys: NodeKeys) -> dict[str, bytes]:
    """The node's wallet directory as it is on disk (stop or lock the node first)."""
    return read_wallet_dir(WalletHome(data_dir, keys.fingerprint).root)


async def server_wallet(server_url: str, keys: NodeKeys, scratch: Path) -> dict[str, bytes] | None:
    """The server's wallet backup restored as a fresh data dir's unlock restores it:
    its files, or None when the server holds no backup. Raises RestoreFailed when it
    does not restore (a mix of two backups, a missing piece). `scratch` is a directory
    for the throw-away data dirs; each call uses a new one and removes it after."""
    data_dir = scratch / f"restore-{next(_scratch_numbers)}"
    home = WalletHome(data_dir, keys.fingerprint)
    make_private_dirs(home.work_dir)
    try:
        async with client_for(server_url, keys) as client:
            if not await restore_wallet(client, keys, home):
                return None
        return read_wallet_dir(home.root)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


async def api_wallet(node: NodeProcess) -> dict[str, bytes]:
    """The running node's wallet files, read over its API."""
    listing = (await node.expect(200, "GET", "/wallet/files")).json()["files"]
    return {f["path"]: (await node.expect(200, "GET", f"/wallet/files/{f['path']}")).content for f in listing}


def wallet_name(wallet: dict[str, bytes] | None, named: dict[str, dict[str, bytes]]) -> str:
    """Which of the `named` wallets `wallet` is, byte for byte, or "none of them"."""
    if wallet is None:
        return "no backup"
    for name, files in named.items():
        if wallet == files:
            return name
    return "none of them"
