"""Figure 4: group commit — local write throughput with 1, 8 and 64 concurrent writers.

A node with VSS off takes 1 KiB puts from N writer tasks through the Python API. The
local-writer commits whatever is queued as one fsync'd transaction (up to
`actors.local_writer.MAX_GROUP` writes); the comparison patches that module constant to
1, which makes it one transaction per write. Both variants run on the same node in
alternating rounds; writes/s is total writes over total time, and writes per commit
comes from the node's own commit counter.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import anyio
from bench_write_latency import VALUES
from figures import Figure, ms, percentile, ratio
from harness import BenchContext, running_node, standalone

import actors.local_writer as local_writer

WRITERS = (1, 8, 64)


async def _burst(node, writers: int, total: int, tag: str) -> tuple[float, list[float]]:
    per_writer = max(1, total // writers)
    samples: list[float] = []

    async def writer(w: int) -> None:
        for i in range(per_writer):
            start = time.perf_counter()
            await node.put("bench", "", f"{tag}-{w}-{i}", VALUES[(w + i) % len(VALUES)])
            samples.append(time.perf_counter() - start)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for w in range(writers):
            tg.start_soon(writer, w)
    return time.perf_counter() - start, samples


async def run(ctx: BenchContext) -> Figure:
    total = ctx.pick(600, 3000)
    rounds = ctx.pick(1, 2)
    results: dict[tuple[int, str], list] = {}  # (writers, variant) -> [seconds, writes, commits, samples]
    default_group = local_writer.MAX_GROUP
    async with running_node(ctx.scratch("group-commit"), None) as node:
        await _burst(node, 8, 200, "warm")
        try:
            for r in range(rounds):
                for writers in WRITERS:
                    variants = ("group", "single") if r % 2 == 0 else ("single", "group")
                    for variant in variants:
                        local_writer.MAX_GROUP = default_group if variant == "group" else 1
                        commits_before = node.metrics.value("local_commits_total")
                        seconds, samples = await _burst(node, writers, total, f"r{r}-{writers}-{variant}")
                        commits = node.metrics.value("local_commits_total") - commits_before
                        acc = results.setdefault((writers, variant), [0.0, 0, 0, []])
                        acc[0] += seconds
                        acc[1] += len(samples)
                        acc[2] += commits
                        acc[3] += samples
        finally:
            local_writer.MAX_GROUP = default_group

    fig = Figure(4, "group commit: local write throughput, 1 KiB values, VSS off",
                 ["writers", "variant", "writes/s", "writes per commit", "p50", "p99", "group / single"])
    for writers in WRITERS:
        rate = {}
        for variant in ("group", "single"):
            seconds, writes, commits, samples = results[(writers, variant)]
            rate[variant] = writes / seconds
        for variant in ("group", "single"):
            seconds, writes, commits, samples = results[(writers, variant)]
            label = f"group commit (MAX_GROUP={default_group})" if variant == "group" else "one transaction per write"
            gain = f"{ratio(rate['group'], rate['single']):.2f}x" if variant == "group" else ""
            fig.add(writers, label, f"{rate[variant]:.0f}", f"{writes / max(commits, 1):.1f}",
                    ms(percentile(samples, 50)), ms(percentile(samples, 99)), gain)
        fig.ratio(f"{writers} writers: group commit writes/s / one transaction per write", ratio(rate["group"], rate["single"]))
    fig.method = (
        f"in-process node, Python API, {total} writes per variant per round, {rounds} round(s), variants alternating; "
        "'one transaction per write' = actors.local_writer.MAX_GROUP patched to 1; SQLite WAL, synchronous=FULL, ext4"
    )
    fig.reading = (
        "one writer cannot form groups, so both variants are one fsync plus a thread hop per write. With many "
        "writers, one transaction per write is capped by fsyncs/s, while group commit spreads each fsync over "
        "the queued writes and is then limited by Python: the event loop, the worker-thread hop and building "
        "each write's row and reply."
    )
    return fig


if __name__ == "__main__":
    standalone(run, "Figure 4: group commit")
