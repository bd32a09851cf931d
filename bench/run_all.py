"""`make bench`: every benchmark in one run, printed and appended to bench/RESULTS.md.

    .venv/bin/python bench/run_all.py [--quick] [--only 1,3,5] [--no-record]
                                      [--latency-via auto|proxy|transport] [--note TEXT]

Runs the VSS server throughput bench (bench/bench_vss_server.py, which records its own
section), then the node's figures: 4 group commit, 1-2 write latency and write-through,
3 replication throughput, 6 wallet backup, and 5 restore last, because it takes what is
left of the time budget (`--budget-s`; default 14 min, quick 105 s): when the 100,000-key
restore would not fit, it restores fewer keys and says so. Each figure is printed as
it finishes; at the end every ratio is printed side by side, and the whole run is
appended to bench/RESULTS.md with the date, the machine and a short reading of what
limits each figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import anyio
import bench_group_commit
import bench_replication
import bench_restore
import bench_wallet
import bench_write_latency
from figures import Figure, fmt_ratio, machine_summary
from harness import REPO_ROOT, bench_context, proxy_available

RESULTS = Path(__file__).with_name("RESULTS.md")
SERVER_BENCH = Path(__file__).with_name("bench_vss_server.py")
RESERVE_S = 5.0  # for writing the results once the last figure is done

# (figure numbers, module); restore last: it fits itself into what is left of the budget.
FIGURES = [
    ((4,), bench_group_commit),
    ((1, 2), bench_write_latency),
    ((3,), bench_replication),
    ((6,), bench_wallet),
    ((5,), bench_restore),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run every benchmark; print and record the figures.")
    parser.add_argument("--quick", action="store_true", help="small counts: the whole run in under 2 minutes")
    parser.add_argument("--only", help="comma-separated figure numbers (1-6); 0 is the VSS server bench")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to bench/RESULTS.md")
    parser.add_argument("--latency-via", choices=("auto", "proxy", "transport"), default="auto",
                        help="auto: the fault proxy where it exists, except for high-rate traffic (restore)")
    parser.add_argument("--budget-s", type=float, help="time budget of the whole run (default 840, quick 105)")
    parser.add_argument("--note", help="a line to record with the run (e.g. 'machine shared with test runs')")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directories")
    return parser.parse_args()


def run_server_bench(args: argparse.Namespace, timeout_s: float) -> str:
    """The VSS server throughput bench, as its own process; it records its own section."""
    if not SERVER_BENCH.exists():
        return "bench_vss_server.py: not present, skipped"
    command = [sys.executable, str(SERVER_BENCH), "--duration", "1" if args.quick else "4"]
    if args.no_record:
        command.append("--no-record")
    print(f"== VSS server throughput ({SERVER_BENCH.name})", flush=True)
    start = time.monotonic()
    try:
        done = subprocess.run(command, cwd=REPO_ROOT, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"{SERVER_BENCH.name}: stopped after {timeout_s:.0f} s"
    status = "done" if done.returncode == 0 else f"FAILED (exit {done.returncode})"
    return f"{SERVER_BENCH.name}: {status} in {time.monotonic() - start:.0f} s (recorded in its own section above)"


def summary_lines(figures: list[Figure]) -> list[str]:
    lines = []
    for fig in figures:
        for r in fig.ratios:
            lines.append(f"| {fig.number} | {r.name} | {fmt_ratio(r.value)} | {r.target_text} | {r.verdict} |")
    return lines


def record(args: argparse.Namespace, figures: list[Figure], failures: list[str], machine: str, started: dt.datetime,
           seconds: float, server_note: str, latency_note: str) -> None:
    stamp = started.strftime("%Y-%m-%d %H:%M UTC")
    load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())
    out = [
        f"\n## bench/run_all.py (node figures) — started {stamp}, {'quick' if args.quick else 'full'} run, {seconds:.0f} s\n",
        f"Machine: {machine}; load average at the end {load_end}.\n",
        f"Latency: {latency_note}. VSS server bench: {server_note}.\n",
    ]
    if args.note:
        out.append(f"Note: {args.note}\n")
    if failures:
        out.append("Failed: " + "; ".join(failures) + "\n")
    out += ["### Every ratio\n", "| figure | ratio | value | target | |", "|---|---|---|---|---|", *summary_lines(figures), ""]
    out += [fig.markdown() for fig in sorted(figures, key=lambda f: f.number)]
    with RESULTS.open("a") as results:
        if results.tell() == 0:
            results.write("# Benchmark results\n\nAppended by the scripts in bench/; newest last.\n")
        results.write("\n".join(out))
    print(f"appended to {RESULTS.relative_to(REPO_ROOT)}", flush=True)


def main() -> int:
    args = parse_args()
    wanted = None if not args.only else {int(part) for part in args.only.split(",") if part.strip()}
    budget = args.budget_s or (105.0 if args.quick else 840.0)
    start = time.monotonic()
    started = dt.datetime.now(dt.UTC)
    machine = machine_summary()
    print(f"machine: {machine}", flush=True)
    proxy_ok = args.latency_via != "transport" and proxy_available()
    latency_note = (
        f"--latency-via {args.latency_via}; fault proxy {'available' if proxy_ok else 'not available'}; "
        "each figure's method says which one produced it"
    )

    server_note = "not run (--only)"
    if wanted is None or 0 in wanted:
        server_note = run_server_bench(args, timeout_s=budget / 4)

    figures: list[Figure] = []
    failures: list[str] = []
    for numbers, module in FIGURES:
        if wanted is not None and not wanted.intersection(numbers):
            continue
        with bench_context(args.quick, args.latency_via, args.keep, proxy_ok=proxy_ok) as ctx:
            ctx.deadline = start + budget - RESERVE_S
            began = time.perf_counter()
            try:
                result = anyio.run(module.run, ctx)
            except Exception:  # one broken figure must not cost the others
                failures.append(f"figure {'/'.join(map(str, numbers))}: {traceback.format_exc(limit=3).strip().splitlines()[-1]}")
                traceback.print_exc()
                continue
        made = result if isinstance(result, list) else [result]
        for fig in made:
            fig.seconds = time.perf_counter() - began
            if wanted is None or fig.number in wanted:
                figures.append(fig)
                print(fig.text() + "\n", flush=True)

    seconds = time.monotonic() - start
    print(f"== Every ratio ({'quick' if args.quick else 'full'} run, {seconds:.0f} s of a {budget:.0f} s budget)")
    for fig in figures:
        for r in fig.ratios:
            print(f"  fig {fig.number}  {fmt_ratio(r.value):>8}  {r.name}{r.note()}")
    for failure in failures:
        print(f"  FAILED {failure}")
    if not args.no_record:
        record(args, figures, failures, machine, started, seconds, server_note, latency_note)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
