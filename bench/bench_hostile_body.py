"""What a hostile putObjects costs the server: before (the baseline revision) and now.

    .venv/bin/python bench/bench_hostile_body.py [--baseline REV] [--no-record]

The body is a PutObjectRequest of millions of tiny delete items (`\\x22\\x03\\x0a\\x01x`:
a delete of key "x", 5 bytes each), far over the 1000-item limit; anyone with a key can
sign one under `--auth sigs`. For a 9.5 MiB body (2 million items) and a 62 MiB body
(13 million), against SQLite with one server process, it measures:

- the time from sending the request to its 4xx answer;
- the server's peak resident memory during the request, above what it used before
  (VmHWM after resetting it through /proc/PID/clear_refs);
- how long a getObject sent alongside on another connection waited (the longest of a
  loop of them while the hostile request is in flight): the event loop's stall.

The figures are appended to bench/RESULTS.md as their own section unless --no-record.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_vss_server import (  # noqa: E402
    DEFAULT_BASELINE,
    RESULTS,
    Connection,
    ServerProcess,
    Variant,
    extract_baseline,
    load,
    machine,
    seed,
)

from vss.auth import sign_header  # noqa: E402
from vss.proto import vss_pb2 as pb  # noqa: E402

ITEM = b"\x22\x03\x0a\x01x"
SIZES = {"9.5 MiB (2 M items)": 2_000_000, "62 MiB (13 M items)": 13_000_000}
SECTION = "## bench_hostile_body.py"


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


async def one_body(server: ServerProcess, items: int, authorization: bytes) -> tuple[float, int, float, int, int]:
    body = pb.PutObjectRequest(store_id="bench").SerializeToString() + ITEM * items
    get = pb.GetObjectRequest(store_id="bench", key="key-1").SerializeToString()
    pid = server.process.pid
    before = rss_kib(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS := current RSS
    hostile = await Connection.open(server.port)
    reader = await Connection.open(server.port)
    done = asyncio.Event()
    waits: list[float] = []

    async def read_alongside() -> None:
        while not done.is_set():
            began = time.perf_counter()
            await reader.post(b"/vss/getObject", get, authorization)
            waits.append(time.perf_counter() - began)
            await asyncio.sleep(0.005)

    alongside = asyncio.create_task(read_alongside())
    began = time.perf_counter()
    try:
        status = await hostile.post(b"/vss/putObjects", body, authorization)
    except (ConnectionError, asyncio.IncompleteReadError):
        status = -1
    elapsed = time.perf_counter() - began
    done.set()
    await alongside
    peak = rss_kib(pid, "VmHWM")
    await hostile.close()
    await reader.close()
    return elapsed, status, max(waits), (peak - before) // 1024, len(waits)


def run(variant: Variant, code_dir: Path, workdir: Path) -> dict[str, tuple[float, int, float, int, int]]:
    authorization = sign_header(os.urandom(32)).encode()
    server = ServerProcess(variant, f"sqlite:///{workdir / variant.name}.sqlite3", code_dir, workdir / f"{variant.name}.log")
    try:
        asyncio.run(seed(server.port, authorization))
        return {name: asyncio.run(one_body(server, items, authorization)) for name, items in SIZES.items()}
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default=DEFAULT_BASELINE)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    started = dt.datetime.now(dt.UTC)
    load_before = load()
    with tempfile.TemporaryDirectory(prefix="vss-hostile-") as tmp:
        workdir = Path(tmp)
        baseline_dir = extract_baseline(args.baseline, workdir / "baseline")
        rows = {
            f"before ({args.baseline})": run(Variant("baseline", "", baseline=True), baseline_dir, workdir),
            "now": run(Variant("now", "", ()), Path(__file__).resolve().parents[1], workdir),
        }
    lines = [
        "| server | body | answer | time to answer | peak RSS above idle | longest concurrent getObject | getObjects meanwhile |",
        "|---|---|---|---|---|---|---|",
    ]
    for server, results in rows.items():
        for body, (elapsed, status, wait, rss_mib, gets) in results.items():
            lines.append(
                f"| {server} | {body} | {status} | {elapsed:.2f} s | {rss_mib} MiB | {1000 * wait:.0f} ms | {gets} |"
            )
    text = (
        f"{SECTION} — {started.strftime('%Y-%m-%d %H:%M UTC')}\n\n"
        f"Machine: {machine()}; load average {load_before} at the start, {load()} at the end.\n\n"
        "One server process (SQLite, --auth sigs, default 64 MiB body limit); the hostile body is sent on one "
        "connection while another sends a getObject every 5 ms.\n\n" + "\n".join(lines) + "\n"
    )
    print(text)
    if not args.no_record:
        with RESULTS.open("a") as out:
            out.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
