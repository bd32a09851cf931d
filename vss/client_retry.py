"""How patiently the client retries a transient failure: tries, first delay, total budget.

The delays themselves come from `vss.backoff.Backoff`, the project's one backoff
implementation; this adds what a single call needs on top: a count of tries and a
budget of sleep that the delays of one call never exceed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from vss.backoff import Backoff

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a transient failure.

    `attempts` counts every try, the first included. Between tries the client sleeps
    `base_delay_s`, then twice that, and so on (times a little jitter, so many nodes
    that lost the same server do not come back in lock step); the sleeps of one call
    add up to at most `max_total_s`. The defaults match rgb-lightning-node's clients.
    """

    attempts: int = 3
    base_delay_s: float = 0.1
    max_total_s: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if self.base_delay_s < 0 or self.max_total_s < 0:
            raise ValueError("RetryPolicy delays must not be negative")

    @property
    def backoff(self) -> Backoff:
        """The delay before each retry; no single one is longer than the whole budget."""
        return Backoff(base_s=self.base_delay_s, max_s=max(self.max_total_s, self.base_delay_s))

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Yield the sleep before each retry: at most `attempts - 1` values.

        Stops early once the sleep budget `max_total_s` is spent; the last delay is
        cut short so the total never exceeds the budget.
        """
        backoff = self.backoff
        slept = 0.0
        for retry in range(1, self.attempts):
            wanted = backoff.delay(retry, rng)
            budget = self.max_total_s - slept
            if wanted > 0 and budget <= 0:
                return
            delay = min(wanted, max(budget, 0.0))
            slept += delay
            yield delay
