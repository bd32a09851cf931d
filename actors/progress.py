"""Progress of long work (a restore, a verify, a wallet transfer), logged at most every
few seconds so that a large job shows it is alive without flooding the log."""

from __future__ import annotations

import logging
import time

EVERY_S = 5.0


class Throttle:
    """Says when long work is due to report again: at most every `every_s` seconds."""

    def __init__(self, every_s: float = EVERY_S) -> None:
        self._started = time.monotonic()
        self._every = every_s
        self._next = self._started + every_s

    def due(self) -> float | None:
        """The seconds since the work started when a report is due now, else None (one
        reading of the clock either way)."""
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self._every
        return now - self._started

    def elapsed(self) -> float:
        """Seconds since the work started."""
        return time.monotonic() - self._started


class ProgressLog:
    """Call `advance(done)` as bytes move; every EVERY_S it logs one line such as
    'wallet restore: 12.0 of 48.0 MiB, 6.1 MiB/s, about 6 s left'."""

    def __init__(self, log: logging.Logger, what: str, total_bytes: int) -> None:
        self._log = log
        self._what = what
        self._total = total_bytes
        self._throttle = Throttle()

    def advance(self, done_bytes: int) -> None:
        elapsed = self._throttle.due()
        if elapsed is None:
            return
        rate = done_bytes / elapsed
        left = (self._total - done_bytes) / rate if rate > 0 else 0.0
        self._log.info("%s: %.1f of %.1f MiB, %.1f MiB/s, about %.0f s left", self._what, done_bytes / 2**20,
                       self._total / 2**20, rate / 2**20, max(0.0, left))
