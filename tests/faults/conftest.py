"""Fixtures of the fault suite: a per-test `report` (seed and figures) and the summary.

Every scenario asks for `report`: it carries the scenario's seed (printed, so a
failure can be replayed with VSSNODE_FAULTS_SEED) and collects the figures the
scenario counts (writes, faults injected by kind, kills). At the end of the session
the figures are printed as a table; with VSSNODE_FAULTS_REPORT=PATH they are also
written to PATH as JSON (tests/FAULTS.md is written from such a run).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import SOAK, seed_for

_RESULTS: list[dict] = []


class Report:
    def __init__(self, test: str, seed: int) -> None:
        self.test = test
        self.seed = seed
        self.figures: dict[str, float | int | str] = {}

    def add(self, **figures: int | float) -> None:
        """Add to running totals."""
        for name, value in figures.items():
            self.figures[name] = self.figures.get(name, 0) + value  # type: ignore[operator]

    def set(self, **figures: int | float | str) -> None:
        self.figures.update(figures)

    def add_proxy(self, counts: dict[str, int]) -> None:
        """The proxy's counts, each as `proxy.<kind>`."""
        self.add(**{f"proxy.{name}": value for name, value in counts.items()})


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Iterator[Report]:
    seed = seed_for(request.node.name)
    print(f"{request.node.name}: seed {seed} (replay with VSSNODE_FAULTS_SEED={seed}), soak={SOAK}")
    rep = Report(request.node.name, seed)
    started = time.monotonic()
    yield rep
    call = getattr(request.node, "faults_call_report", None)
    outcome = "not run" if call is None else ("xfailed" if hasattr(call, "wasxfail") else call.outcome)
    _RESULTS.append(
        {
            "test": request.node.nodeid,
            "outcome": outcome,
            "seed": seed,
            "seconds": round(time.monotonic() - started, 1),
            "figures": dict(sorted(rep.figures.items())),
        }
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    rep = yield
    if rep.when == "call":
        item.faults_call_report = rep  # type: ignore[attr-defined]
    return rep


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    if not _RESULTS:
        return
    terminalreporter.section("fault-injection figures")
    for result in _RESULTS:
        terminalreporter.write_line(f"{result['test']}  [{result['outcome']}, seed {result['seed']}, {result['seconds']} s]")
        for name, value in result["figures"].items():
            terminalreporter.write_line(f"    {name}: {value}")
    target = os.environ.get("VSSNODE_FAULTS_REPORT")
    if target:
        machine = {
            "nproc": os.cpu_count(),
            "cpu": _cpu_model(),
            "python": platform.python_version(),
            "soak": SOAK,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
        Path(target).write_text(json.dumps({"machine": machine, "results": _RESULTS}, indent=2) + "\n")
        terminalreporter.write_line(f"fault figures written to {target}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
