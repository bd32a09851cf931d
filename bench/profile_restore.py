"""Where the node's CPU goes during a restore: py-spy over one restore, by category.

    .venv/bin/python bench/profile_restore.py [--rev REV] [--keys 20000] [--rate 500] [--raw FILE]

Needs py-spy (`.venv/bin/pip install py-spy`; it samples another process from
outside, so the restore runs at its own speed). Starts the bundled VSS server
(SQLite), fills a store with `--keys` values of 256 B, then restores it in a fresh
process on the code of `--rev` (a git revision, default this working tree), as
bench_restore_levers.py does, with py-spy recording that process. The samples are
sorted into the categories below (the first that matches a sample's stack wins);
samples of threads waiting (epoll, a worker thread's queue) and of the password
check at unlock (argon2id, key derivation) are left out, and so is the import of
the code. Each share is of what is left, and is also given as ms per key from the
restoring process's own CPU time per key.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
for path in (REPO_ROOT, REPO_ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import anyio  # noqa: E402
from bench_restore import Store, populate  # noqa: E402
from bench_restore_levers import CHILD, tree_of  # noqa: E402
from figures import machine_summary  # noqa: E402
from harness import new_identity  # noqa: E402

from tests.conftest import start_vss_server, stop_vss_server  # noqa: E402

Rule = Callable[[list[str]], bool]


def _any(*prefixes: str) -> Rule:
    return lambda frames: any(frame.startswith(prefixes) for frame in frames)


LEFT_OUT: list[tuple[str, Rule]] = [
    ("waiting", lambda frames: frames[-1].startswith(("Condition.wait", "EpollSelector.select", "select ("))),
    ("password check and keys", _any("crypto_pwhash", "open_mnemonic", "seal_mnemonic", "derive_keys")),
    ("imports and start", lambda frames: not any("_run_once" in f or "WorkerThread.run" in f for f in frames)),
]
CATEGORIES: list[tuple[str, Rule]] = [
    ("staging in SQLite (worker thread)", _any("LocalStore.")),
    ("decrypt_value", _any("decrypt_value")),
    ("listing (listKeyVersions, key parsing)", _any("_list_keys")),
    ("httpx.Request and Response", lambda fs: any(f.startswith(("Request.__init__", "Response.__init__")) and "httpx" in f
                                                  for f in fs)),
    ("socket send (kernel)", lambda fs: fs[-1].startswith(("_SelectorSocketTransport.write", "socket.send"))),
    ("aiohttp: building and sending a request", _any("ClientSession._request", "_BaseRequestContextManager",
                                                     "ClientRequest.")),
    ("httpx-aiohttp glue", _any("AiohttpTransport", "map_aiohttp_exceptions")),
    ("socket reads and response parsing (loop callbacks)", _any("_SelectorSocketTransport._read_ready",
                                                                "ResponseHandler.data_received")),
    ("reading the body", _any("read_body", "ClientResponse", "AiohttpResponseStream", "_read_response",
                              "StreamReader.")),
    ("VssClient and its pool (headers, protobuf, connections)", _any("VssClient.", "KeepAlivePool.", "BareTarget.",
                                                                     "SignatureAuth")),
    ("restorer: queue, channels, tasks, progress", _any("_fetch", "_stage", "_pipeline", "_Restore", "MemoryObject",
                                                        "restore_kv", "_patiently")),
    ("event loop: timers, task steps, wakeups", _any("BaseEventLoop._run_once", "Handle._run")),
]


def categorize(raw: Path) -> tuple[collections.Counter[str], int]:
    """Samples per category of a py-spy raw (collapsed stacks) file, and their total."""
    shares: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        if any(rule(frames) for _, rule in LEFT_OUT):
            continue
        n = int(count)
        total += n
        shares[next((name for name, rule in CATEGORIES if rule(frames)), "other")] += n
    return shares, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="work", help="git revision of the node's code (default: this working tree)")
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--raw", type=Path, help="also keep py-spy's raw output here")
    args = parser.parse_args()
    spy = REPO_ROOT / ".venv" / "bin" / "py-spy"
    if not spy.exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    identity = new_identity()
    with tempfile.TemporaryDirectory(prefix="profile-restore-") as tmp:
        work = Path(tmp)
        tree = tree_of(args.rev, work / "tree")
        server = start_vss_server(work / "server", "--auth", "sigs")
        try:
            store = Store("SQLite", server, args.keys, identity)
            anyio.run(populate, store)
            spec = {"mode": "node", "url": server.url, "server_pid": server.process.pid, "mnemonic": identity.mnemonic,
                    "signing_key": identity.keys.signing_key.hex(), "store_id": identity.keys.kv_store_id,
                    "settings": {}, "data_dir": str(work / "node")}
            raw = args.raw or work / "profile.txt"
            done = subprocess.run([str(spy), "record", "-r", str(args.rate), "-f", "raw", "-o", str(raw), "--",
                                   sys.executable, "-c", CHILD, json.dumps(spec)],
                                  cwd=tree, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                raise SystemExit(f"the restore failed under py-spy:\n{done.stderr[-3000:]}")
            # py-spy writes its own lines to the same stdout: the child's is the JSON one
            result = json.loads(next(line for line in reversed(done.stdout.splitlines()) if line.startswith("{")))
        finally:
            stop_vss_server(server)
        shares, total = categorize(raw)
    cpu_ms = result["cpu_s"] / result["keys"] * 1000
    print(f"py-spy of a node restore, code {args.rev}: {result['keys']:,} keys x 256 B, "
          f"{result['keys'] / result['seconds']:,.0f} keys/s, {cpu_ms:.3f} ms CPU per key; {total} samples at "
          f"{args.rate} Hz kept. Machine: {machine_summary()}; load at the end {os.getloadavg()[0]:.2f}.\n")
    print("| where | share | ms per key |\n|---|---|---|")
    for name, _ in [*CATEGORIES, ("other", _any())]:
        if shares[name]:
            print(f"| {name} | {shares[name] / total * 100:.1f}% | {shares[name] / total * cpu_ms:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
