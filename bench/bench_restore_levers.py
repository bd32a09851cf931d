"""The node's restore, lever by lever in one run: CPU per key of each version of the code.

    .venv/bin/python bench/bench_restore_levers.py [--keys 10000] [--rounds 3]
        [--variant LABEL=REV[,NAME=VALUE...]]... [--lean] [--postgres] [--record]

Starts the bundled VSS server (this tree's, SQLite in a temp dir, or PostgreSQL at
127.0.0.1:5432/test in a schema of its own with --postgres), fills one store with
`--keys` values of 256 B, then restores it once per variant per round, the variants
in a rotating order. A variant is a git revision (`work` is this working tree as it
is), taken with `git archive` into a directory of its own, plus optional settings of
actors.restorer's module constants (`DEFAULT_CONCURRENCY=32`): each restore runs in a
fresh process on that tree, a fresh data dir unlocking the store (`init`,
`clear_fence`, `unlock`), and the figure is what the `restore_kv` call inside that
unlock costs: this process's CPU time (user + sys, worker threads included) per key,
the server's (/proc/PID/stat) and keys/s. `--lean` adds bench/lean_client.py's restore
of the same store as a reference row.

CPU per key hardly moves with other load on the machine; keys/s does (node, server and
everything else share the cores), so the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
for path in (REPO_ROOT, REPO_ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import anyio  # noqa: E402
from bench_restore import Store, drop_schema, populate, postgres_dsn  # noqa: E402
from figures import machine_summary  # noqa: E402
from harness import new_identity  # noqa: E402

from tests.conftest import start_vss_server, stop_vss_server  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")

# Runs in a fresh process whose working directory is the variant's tree.
CHILD = r"""
import json, os, sys, time
sys.path.insert(0, os.getcwd())
spec = json.loads(sys.argv[1])

def server_cpu():
    fields = open(f"/proc/{spec['server_pid']}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

import anyio

async def node():
    from pathlib import Path
    import actors.restorer as restorer
    import actors.unlock as unlock
    from actors import Node
    from node.config import NodeConfig
    from nacl.pwhash import argon2id  # the test suites' cheap vault limits, spelled out: older trees are run too
    FAST_LIMITS = (argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE)
    for name, value in spec["settings"].items():
        if not hasattr(restorer, name):
            raise SystemExit(f"actors.restorer has no {name} in this tree")
        setattr(restorer, name, value)
    concurrency = spec["settings"].get("DEFAULT_CONCURRENCY")
    original, seen = unlock.restore_kv, {}

    async def timed(*args, **kwargs):
        if concurrency:
            kwargs["concurrency"] = concurrency  # older trees bind the default at import
        cpu, server, wall = time.process_time(), server_cpu(), time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            seen.update(seconds=time.perf_counter() - wall, cpu_s=time.process_time() - cpu,
                        server_cpu_s=server_cpu() - server)

    unlock.restore_kv = timed
    config = NodeConfig(data_dir=Path(spec["data_dir"]), vss_url=spec["url"], vault_limits=FAST_LIMITS)
    async with Node.open(config) as n:
        await n.init("bench password", spec["mnemonic"])
        await n.clear_fence("bench password")
        await n.unlock("bench password")
        seen["keys"] = n.restore_status.keys_done
    return seen

async def lean():
    sys.path.insert(0, os.path.join(os.getcwd(), "bench"))
    from lean_client import lean_restore
    server = server_cpu()
    result = await lean_restore(spec["url"], bytes.fromhex(spec["signing_key"]), spec["store_id"], keep_values=False)
    return {"keys": result.keys, "seconds": result.seconds, "cpu_s": result.cpu_seconds,
            "server_cpu_s": server_cpu() - server}

print(json.dumps(anyio.run(node if spec["mode"] == "node" else lean)))
"""


@dataclass
class Variant:
    label: str
    rev: str  # a git revision, or "work"
    settings: dict[str, int] = field(default_factory=dict)
    lean: bool = False
    runs: list[dict[str, float]] = field(default_factory=list)

    @property
    def what(self) -> str:
        if self.lean:
            return "bench/lean_client.py (reference)"
        where = "this working tree" if self.rev == "work" else f"`{self.rev}`"
        return where + "".join(f", {name}={value}" for name, value in self.settings.items())

    def median(self, key: str) -> float:
        if key == "cpu_ms":
            return statistics.median(r["cpu_s"] / r["keys"] * 1000 for r in self.runs)
        if key == "server_cpu_ms":
            return statistics.median(r["server_cpu_s"] / r["keys"] * 1000 for r in self.runs)
        return statistics.median(r["keys"] / r["seconds"] for r in self.runs)


def parse_variant(text: str) -> Variant:
    label, _, rest = text.partition("=")
    rev, *pairs = rest.split(",")
    settings = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        settings[name] = int(value)
    return Variant(label, rev or "work", settings)


def tree_of(rev: str, into: Path) -> Path:
    """The files of `rev` in a directory of their own (`work`: this tree itself)."""
    if rev == "work":
        return REPO_ROOT
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def table(variants: list[Variant]) -> str:
    head = ["variant", "code", "node CPU ms/key", "vs prev", "vs first", "server CPU ms/key", "keys/s", "runs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    nodes = [v for v in variants if not v.lean]
    for v in variants:
        cpu = v.median("cpu_ms")
        index = nodes.index(v) if v in nodes else -1
        prev = f"{cpu / nodes[index - 1].median('cpu_ms'):.2f}x" if index > 0 else ""
        first = f"{cpu / nodes[0].median('cpu_ms'):.2f}x" if index > 0 else ""
        lines.append(f"| {v.label} | {v.what} | {cpu:.3f} | {prev} | {first} | {v.median('server_cpu_ms'):.3f} | "
                     f"{v.median('keys_per_s'):,.0f} | {len(v.runs)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=REV[,NAME=VALUE...]",
                        help="repeatable; default: one variant, this working tree")
    parser.add_argument("--lean", action="store_true", help="add the lean reference client as a row")
    parser.add_argument("--postgres", action="store_true", help="the server on PostgreSQL instead of SQLite")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    variants = [parse_variant(text) for text in args.variant] or [Variant("work", "work")]
    if args.lean:
        variants.append(Variant("lean", "work", lean=True))
    started, machine = dt.datetime.now(dt.UTC), machine_summary()
    identity = new_identity()
    with tempfile.TemporaryDirectory(prefix="restore-levers-") as tmp:
        work = Path(tmp)
        trees = {v.rev: tree_of(v.rev, work / f"tree-{i}") for i, v in enumerate(variants)}
        schema = dsn = None
        if args.postgres:
            dsn = postgres_dsn()
            if dsn is None:
                raise SystemExit("--postgres: nothing answers at 127.0.0.1:5432/test")
            schema = f"bench_levers_{os.getpid()}"
            server = start_vss_server(work / "server", "--auth", "sigs", db=f"{dsn}?schema={schema}")
        else:
            server = start_vss_server(work / "server", "--auth", "sigs")
        try:
            store = Store("PostgreSQL" if args.postgres else "SQLite", server, args.keys, identity)
            anyio.run(populate, store)
            keys = identity.keys
            for r in range(args.rounds):
                order = variants[r % len(variants):] + variants[: r % len(variants)]
                for i, v in enumerate(order):
                    spec = {
                        "mode": "lean" if v.lean else "node", "url": server.url, "server_pid": server.process.pid,
                        "mnemonic": identity.mnemonic, "signing_key": keys.signing_key.hex(),
                        "store_id": keys.kv_store_id, "settings": v.settings,
                        "data_dir": str(work / f"node-{r}-{i}"),
                    }
                    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], cwd=trees[v.rev],
                                          capture_output=True, text=True, timeout=900)
                    if done.returncode != 0:
                        raise RuntimeError(f"variant {v.label} failed:\n{done.stderr[-3000:]}")
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                    if result["keys"] != args.keys:
                        raise RuntimeError(f"variant {v.label} restored {result['keys']} of {args.keys} keys")
                    v.runs.append(result)
                    print(f"round {r + 1} {v.label}: {result['cpu_s'] / result['keys'] * 1000:.3f} ms CPU/key, "
                          f"{result['keys'] / result['seconds']:,.0f} keys/s (load {load()})", file=sys.stderr, flush=True)
        finally:
            stop_vss_server(server)
            if schema is not None and dsn is not None:
                drop_schema(dsn, schema)
    text = (
        f"### bench_restore_levers.py — {started:%Y-%m-%d %H:%M} UTC\n\n"
        f"Machine: {machine}; load average at the end {load()}.\n"
        + (f"Note: {args.note}\n" if args.note else "")
        + f"\n{args.keys:,} values of 256 B on the bundled server ({store.engine}, signature auth), "
        f"{args.rounds} rounds, variants in rotating order, medians; node CPU = the restoring process's "
        "user+sys CPU over the restore_kv call, per key.\n\n" + table(variants) + "\n"
    )
    print(text)
    if args.record:
        with RESULTS.open("a") as results:
            results.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
