"""A progress line for long work, logged at most every few seconds: done, rate, time left."""

from __future__ import annotations

import logging
import time

EVERY_S = 5.0


class ProgressLog:
    """Call `advance(done)` as work proceeds; every EVERY_S it logs one line such as
    'wallet restore: 12.0 of 48.0 MiB, 6.1 MiB/s, about 6 s left'."""

    def __init__(self, log: logging.Logger, what: str, total_bytes: int) -> None:
        self._log = log
        self._what = what
        self._total = total_bytes
        self._started = time.monotonic()
        self._next = self._started + EVERY_S

    def advance(self, done_bytes: int) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + EVERY_S
        rate = done_bytes / (now - self._started)
        left = (self._total - done_bytes) / rate if rate > 0 else 0.0
        self._log.info("%s: %.1f of %.1f MiB, %.1f MiB/s, about %.0f s left", self._what, done_bytes / 2**20,
                       self._total / 2**20, rate / 2**20, max(0.0, left))
