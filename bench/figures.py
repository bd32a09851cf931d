"""How the benchmarks turn samples into what they report: percentiles, ratios, the
`Figure` (printed to the terminal, written to bench/RESULTS.md) and the machine line.

Standard library only: nothing here starts a process or touches the node. What the
benchmarks run against (servers, injected latency, nodes, the run's context) is in
bench/harness.py.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# ----------------------------------------------------------------------------- numbers


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of unsorted samples; nan when empty."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.2f} ms"


def ratio(a: float, b: float) -> float:
    return math.nan if not b or math.isnan(a) or math.isnan(b) else a / b


def fmt_ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}x"


# ----------------------------------------------------------------------------- figures


@dataclass
class Figure:
    """One figure: a table of rows, headline ratios, a method note and a reading."""

    number: int
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    method: str = ""
    reading: str = ""
    seconds: float = 0.0

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def ratio(self, name: str, value: float, target: float | None = None, *, at_least: bool = False) -> None:
        """A headline ratio; with a target, met when at most it (`at_least`: at least it)."""
        self.ratios.append(Ratio(name, value, target, at_least))

    def text(self) -> str:
        """The figure as plain text for the terminal."""
        widths = [len(c) for c in self.columns]
        for row in self.rows:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
        line = lambda cells: "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
        out = [f"== Figure {self.number}: {self.title} ({self.seconds:.0f} s)", line(self.columns)]
        out += [line(row) for row in self.rows]
        for r in self.ratios:
            out.append(f"   ratio {r.name}: {fmt_ratio(r.value)}{r.note()}")
        if self.method:
            out.append(f"   method: {self.method}")
        if self.reading:
            out.append(f"   reading: {self.reading}")
        return "\n".join(out)

    def markdown(self) -> str:
        out = [f"#### Figure {self.number}: {self.title} ({self.seconds:.0f} s)", ""]
        out.append("| " + " | ".join(self.columns) + " |")
        out.append("|" + "---|" * len(self.columns))
        out += ["| " + " | ".join(row) + " |" for row in self.rows]
        out.append("")
        for r in self.ratios:
            out.append(f"- ratio {r.name}: **{fmt_ratio(r.value)}**{r.note()}")
        if self.method:
            out.append(f"- method: {self.method}")
        if self.reading:
            out.append(f"- reading: {self.reading}")
        out.append("")
        return "\n".join(out)


@dataclass(frozen=True)
class Ratio:
    """A figure's headline ratio, and the target it is held to (if any)."""

    name: str
    value: float
    target: float | None = None
    at_least: bool = False  # the target is a floor, not a ceiling

    @property
    def verdict(self) -> str:
        """"met", "MISSED", or "" when there is no target (or no value)."""
        if self.target is None or math.isnan(self.value):
            return ""
        met = self.value >= self.target if self.at_least else self.value <= self.target
        return "met" if met else "MISSED"

    @property
    def target_text(self) -> str:
        return "" if self.target is None else f"{'>=' if self.at_least else '<='} {self.target:.2f}"

    def note(self) -> str:
        return f" (target {self.target_text}: {self.verdict})" if self.verdict else ""


# ----------------------------------------------------------------------------- machine


def cores() -> int:
    """CPUs this process may run on (what the node, the server and the bench share)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_summary() -> str:
    """nproc, CPU model, RAM, Python version and load: what a reader needs to weigh a figure."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for text_line in Path("/proc/cpuinfo").read_text().splitlines():
            if text_line.startswith("model name"):
                model = text_line.split(":", 1)[1].strip()
                break
    ram = "unknown RAM"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for text_line in Path("/proc/meminfo").read_text().splitlines():
            if text_line.startswith("MemTotal:"):
                ram = f"{int(text_line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
                break
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"nproc {cores()}, {model}, {ram}, Python {platform.python_version()} "
        f"({platform.system()} {platform.release()}), load average at start {load}"
    )
