"""The messages the actors exchange, and the one-shot reply a caller waits on.

Keys travel between actors as triples (primary, secondary, key); values never do once
committed: the replicator reads the newest committed value when it sends, so an older
value can never overtake a newer one, whatever path (live, retry, re-scan) a key took.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio

from node.store import Triple, Write

T = TypeVar("T")


class Reply(Generic[T]):
    """A one-shot answer: the sender of a request awaits it, the actor fills it once."""

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    def set(self, value: T | None = None) -> None:
        self._value = value
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    async def wait(self) -> T | None:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


@dataclass
class WriteRequest:
    """api → local-writer: commit this change durably, then answer."""

    write: Write
    reply: Reply[None] = field(default_factory=Reply)


@dataclass
class ClearMarkers:
    """replicator → local-writer: these (key, seq) reached the server."""

    sent: list[tuple[Triple, int]]


@dataclass
class Flush:
    """lock → local-writer: answer once everything queued before this is committed."""

    reply: Reply[None] = field(default_factory=Reply)


@dataclass
class KeysChanged:
    """local-writer → replicator: these keys were committed and are owed to the server."""

    triples: list[Triple]


@dataclass
class RetryBatch:
    """retry-queue → replicator: try these owed keys again."""

    triples: list[Triple]


@dataclass
class Deferred:
    """replicator → retry-queue: keys not (yet) on the server. `failed`: a send failed."""

    triples: list[Triple]
    failed: bool
    error: str = ""


@dataclass
class Succeeded:
    """replicator → retry-queue: a batch landed; the server is reachable, drain."""


@dataclass
class Rescan:
    """local-writer → retry-queue: a notification was dropped; re-read the markers."""
