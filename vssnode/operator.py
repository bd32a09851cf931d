"""The operator's commands: `vssnode status`, `vssnode verify`, `vssnode clear-fence`.

`status` and `verify` talk to a running node's API (`--node URL`, default
http://127.0.0.1:3001), with the API token from `--api-token-file` or
VSSNODE_API_TOKEN. `clear-fence` needs no node: for when the old node's machine is
gone, it reads the fence of the store that a mnemonic names and, with `--yes`, clears
it, so a new node can take the store over.

Exit codes: status 0 (it answered), 1 (it could not be asked, or refused the call),
2 (the token file cannot be read); verify 0 (the backup
would restore exactly: nothing missing, extra or different, the wallet restores),
1 (something is missing or differs), 2 (it cannot run); clear-fence 0 (cleared, or
there was none), 1 (a fence is there and `--yes` was not given, or the server failed),
2 (bad arguments).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from node import config as node_config
from vss.wording import counted
from vssnode.console import add_log_level, fail, setup_logging

DEFAULT_NODE = "http://127.0.0.1:3001"


def add_commands(commands: Any) -> None:
    for name, text in (("status", "one screen of the node's state and backup lag"),
                       ("verify", "compare the whole VSS backup with the node's local state")):
        sub = commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        sub.add_argument("--node", default=DEFAULT_NODE, metavar="URL", help=f"the node's API (default {DEFAULT_NODE})")
        sub.add_argument("--api-token-file", metavar="FILE", help="file holding the API token (or set VSSNODE_API_TOKEN)")
        add_log_level(sub)
    fence = commands.add_parser(
        "clear-fence",
        help="show (and with --yes clear) the ownership fence of a VSS store, without a node",
        description="Show whose ownership fence is on the VSS store of a mnemonic and, with --yes, clear it, "
        "so a new node can take the store over. Only when the old node is gone for good.",
    )
    fence.add_argument("--vss-url", required=True, metavar="URL", help="base URL of the VSS server, ending in /vss")
    fence.add_argument("--mnemonic-file", required=True, metavar="FILE", help="file holding the wallet mnemonic")
    fence.add_argument("--vss-allow-http", action="store_true", help="allow plain http to a non-loopback VSS server")
    fence.add_argument("--vss-ca-file", metavar="PEM", help="CA certificates to trust for https to the VSS server")
    fence.add_argument("--vss-header", action="append", metavar="'NAME: VALUE'", help="send this header (repeatable)")
    fence.add_argument("--vss-header-file", metavar="FILE", help="file of 'NAME: VALUE' lines to send")
    fence.add_argument("--yes", action="store_true", help="really clear the fence")
    add_log_level(fence)


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    if args.command == "clear-fence":
        from vssnode.fence_tool import clear_fence_offline

        return clear_fence_offline(args)
    try:
        token = _token(args.api_token_file)
    except node_config.ConfigError as exc:
        return fail(f"vssnode {args.command}", exc, 2)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=args.node, headers=headers, timeout=httpx.Timeout(10.0, read=None)) as client:
        try:
            if args.command == "status":
                return _status(client)
            return _verify(client)
        except httpx.TransportError as exc:
            return fail(f"vssnode {args.command}", ConnectionError(f"cannot reach the node at {args.node}: {exc}"),
                        1 if args.command == "status" else 2)


def _token(path: str | None) -> str | None:
    if path is not None:
        return node_config.read_token_file(Path(path))
    return os.environ.get("VSSNODE_API_TOKEN") or None


def _answer(client: httpx.Client, method: str, path: str) -> dict[str, Any]:
    response = client.request(method, path)
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.status_code != 200:
        raise _NodeSaid(body.get("error") or f"HTTP {response.status_code}", response.status_code)
    return dict(body)


class _NodeSaid(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _status(client: httpx.Client) -> int:
    try:
        info = _answer(client, "GET", "/nodeinfo")
        backup = _answer(client, "GET", "/vssbackupinfo") if info.get("vss_enabled") else None
    except _NodeSaid as exc:
        return fail("vssnode status", exc, 1)
    print(render_status(info, backup, now=time.time()))
    return 0


def render_status(info: dict[str, Any], backup: dict[str, Any] | None, *, now: float) -> str:
    """The one screen of `vssnode status`."""
    lines = [f"state        {info['state']} (network {info['network']})"]
    restore = info.get("restore") or {}
    if restore.get("keys_done") or restore.get("keys_listed"):
        done = "done" if restore.get("finished") else "under way"
        lines.append(f"restore      {counted(restore.get('keys_done', 0), 'key')} of {restore.get('keys_listed', 0):,} ({done})")
    if backup is None:
        lines.append("VSS          off (start the node with --vss-url to back it up)")
        return "\n".join(lines)
    lines.append(f"last sync    {_when(backup.get('last_sync_at'), now)}")
    age = backup.get("oldest_pending_age_s")
    oldest = "" if age is None else f", oldest {age:.1f} s old"
    lines.append(f"pending      {counted(backup.get('pending_kv_writes', 0), 'key')}{oldest}")
    lines.append(f"rejected     {counted(backup.get('rejected_kv_writes', 0), 'key')}")
    if backup.get("backup_exists") is None:
        wallet = "not known yet"
    elif backup.get("backup_exists"):
        restorable = "restorable" if backup.get("backup_restorable") else "NOT restorable"
        wallet = f"version {backup.get('server_version')}, {restorable}"
    else:
        wallet = "no backup on the server"
    required = " (changes not uploaded yet)" if backup.get("backup_required") else ""
    lines.append(f"wallet       {wallet}{required}")
    if backup.get("last_verified_at") is not None:
        lines.append(f"verified     {_when(backup['last_verified_at'], now)}: {backup.get('verify_missing')} missing, "
                     f"{backup.get('verify_extra')} only on the server")
    if backup.get("fenced"):
        lines.append("FENCED       another node took the store over; this node no longer writes")
    if backup.get("diverged"):
        lines.append("DIVERGED     another node wrote the store; nothing is sent until you lock and decide")
    lines.append(f"kv error     {backup.get('kv_error') or 'none'}")
    lines.append(f"wallet error {backup.get('wallet_error') or 'none'}")
    return "\n".join(lines)


def _when(stamp: float | None, now: float) -> str:
    if stamp is None:
        return "never"
    shown = datetime.datetime.fromtimestamp(stamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{shown} ({max(0.0, now - stamp):.0f} s ago)"


def _verify(client: httpx.Client) -> int:
    try:
        report = _answer(client, "POST", "/vssverify")
    except _NodeSaid as exc:
        return fail("vssnode verify", exc, 2)
    exact = not report["missing_on_server"] and not report["extra_on_server"] and not report["mismatched"]
    exact = exact and bool(report["wallet_restorable"])
    print(
        f"checked {counted(report['keys_checked'], 'key')} in {report['took_s']:.1f} s: "
        f"{report['missing_on_server']} missing on the server, {report['extra_on_server']} only on the server, "
        f"{report['mismatched']} different, {report['pending']} still owed (not compared); "
        f"wallet backup {'restores' if report['wallet_restorable'] else 'does NOT restore'}"
    )
    print("the backup would restore exactly" if exact else "the backup would NOT restore exactly", file=sys.stderr)
    return 0 if exact else 1
