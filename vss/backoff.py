"""One description of "wait longer after each failure", shared by every retry loop.

A `Backoff` is a value: the first delay, the growth factor, the cap and the jitter.
`delay(n)` is the wait before retry `n` (1 for the first retry). Jitter spreads many
nodes that lost the same server, so they do not all come back in the same instant.

    policy = Backoff(base_s=0.25, max_s=15.0)
    policy.delay(1)   # 0.25 .. 0.3125
    policy.delay(10)  # 15.0 (capped; the jitter never pushes a delay over the cap)
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: `base_s * factor**(n - 1)`, times up to `1 + jitter`, capped."""

    base_s: float
    max_s: float
    factor: float = 2.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.max_s < self.base_s:
            raise ValueError("Backoff needs 0 <= base_s <= max_s")
        if self.factor < 1 or self.jitter < 0:
            raise ValueError("Backoff needs factor >= 1 and jitter >= 0")

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """The wait before retry number `retry` (1-based); at most `max_s`."""
        if retry < 1:
            raise ValueError("retries count from 1")
        exponent = min(retry - 1, 64)  # far past any cap; keeps the float finite
        wanted = self.base_s * self.factor**exponent
        spread = (rng or random).uniform(1.0, 1.0 + self.jitter) if self.jitter else 1.0
        return min(self.max_s, wanted * spread)
