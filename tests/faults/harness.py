"""What the fault scenarios share: run modes, seeds, stamped values and a write ledger.

Modes: the default sizes keep the whole suite within a few minutes inside `make test`;
`VSSNODE_SOAK=1` runs the same scenarios longer (more writes, kills, keys).
`VSSNODE_FAULTS_SEED=N` replaces every scenario's seed (otherwise each scenario has a
fixed seed of its own, or a fresh random one in soak mode); the seed is printed and
reported, so a failing run can be replayed with the same random choices.

Values are stamped `counter:key:padding`, the counter growing per key, so a check can
tell an older value from a newer one. The `Ledger` writes through a node's API with at
most one write per key in flight (a per-key lock), and remembers for every key the
last acknowledged value and the one still in flight, which is what a crash may or may
not have kept.
"""

from __future__ import annotations

import os
import random
import zlib
from dataclasses import dataclass, field

import httpx
import trio

from node import crypto, kv_keys
from node.keys import NodeKeys
from node.store import Triple
from nodeutil import client_for
from vss.proto.vss_pb2 import KeyValue

from .nodeproc import NodeProcess

PASSWORD = "fault injection password"
SOAK = os.environ.get("VSSNODE_SOAK", "").strip().lower() not in ("", "0", "false", "no")


def scaled(normal: int, soak: int) -> int:
    """`normal` in the default run, `soak` with VSSNODE_SOAK=1."""
    return soak if SOAK else normal


def seed_for(test_name: str) -> int:
    explicit = os.environ.get("VSSNODE_FAULTS_SEED")
    if explicit:
        return int(explicit)
    if SOAK:
        return random.SystemRandom().randrange(2**32)
    return zlib.crc32(test_name.encode())


# -- stamped values ------------------------------------------------------------------------------


def stamp(key: str, counter: int, size: int = 0) -> bytes:
    head = f"{counter:010d}:{key}:".encode()
    return head + b"." * max(0, size - len(head))


def counter_of(value: bytes) -> int:
    return int(value[:10])


# -- the server, written directly ------------------------------------------------------------------


async def populate_server(server_url: str, keys: NodeKeys, items: dict[Triple, bytes], batch: int = 1000) -> None:
    """Put `items` on the server the way the node would (encrypted, VSS key format),
    without a node; `server_url` is the server itself."""
    rows = list(items.items())
    async with client_for(server_url, keys) as client:
        for start in range(0, len(rows), batch):
            await client.put_objects(
                keys.kv_store_id,
                [
                    KeyValue(key=kv_keys.to_vss_key(*triple), version=-1, value=crypto.encrypt_value(keys.signing_key, value))
                    for triple, value in rows[start : start + batch]
                ],
            )


# -- the write ledger ------------------------------------------------------------------------------


@dataclass
class Entry:
    counter: int = 0  # the last counter handed out for this key
    acked: bytes | None = None  # the value the node acknowledged last (None: absent/deleted)
    # Writes sent since that acknowledgement whose answer never came (the node died):
    # any of them may or may not have been committed.
    in_flight: list[bytes | None] = field(default_factory=list)
    lock: trio.Lock = field(default_factory=trio.Lock)


class Ledger:
    """Per-key record of what was written through a node's API (one namespace)."""

    def __init__(self, primary: str, keys: list[str]) -> None:
        self.primary = primary
        self.entries = {key: Entry() for key in keys}
        self.acked_writes = 0
        self.acked_deletes = 0
        self.unanswered = 0  # writes whose answer never came (the node died)
        self.refused = 0

    def triple(self, key: str) -> Triple:
        return (self.primary, "", key)

    async def write(self, node: NodeProcess, key: str, *, size: int, delete: bool = False) -> bool:
        """Write (or delete) `key` once; True if the node acknowledged it with 204.
        A transport error (the node died) leaves the write in flight and returns False."""
        entry = self.entries[key]
        async with entry.lock:
            if not node.running:
                return False  # killed while this writer waited for the key
            entry.counter += 1
            value = None if delete else stamp(key, entry.counter, size)
            entry.in_flight.append(value)
            try:
                if value is None:
                    response = await node.delete(key, self.primary)
                else:
                    response = await node.put(key, value, self.primary)
            except httpx.TransportError:
                self.unanswered += 1
                return False
            if response.status_code != 204:
                self.refused += 1
                raise AssertionError(f"write of {key} answered {response.status_code}: {response.text[:300]}\n{node.log_tail()}")
            entry.acked, entry.in_flight = value, []
            if value is None:
                self.acked_deletes += 1
            else:
                self.acked_writes += 1
            return True

    def expected(self) -> dict[Triple, bytes]:
        """The state the acknowledged writes describe (nothing in flight)."""
        return {self.triple(k): e.acked for k, e in self.entries.items() if e.acked is not None}

    def check_after_crash(self, local: dict[Triple, bytes]) -> list[str]:
        """Every key must hold its last acknowledged value, or one of the writes in
        flight when the node died. Returns the violations (empty: fine), then adopts
        the local state as acknowledged, ready for the next round."""
        problems = []
        for key, entry in self.entries.items():
            have = local.get(self.triple(key))
            if have != entry.acked and have not in entry.in_flight:
                problems.append(
                    f"{key}: local {_head(have)}, acknowledged {_head(entry.acked)}, "
                    f"in flight {[_head(v) for v in entry.in_flight]}"
                )
            entry.acked, entry.in_flight = have, []
        return problems


def _head(value: bytes | None) -> str:
    return "(absent)" if value is None else repr(value[:24])


async def write_steadily(
    node: NodeProcess,
    ledger: Ledger,
    rng: random.Random,
    *,
    stop: trio.Event,
    max_writes: int,
    pause_s: float = 0.0,
    size_range: tuple[int, int] = (32, 512),
    delete_rate: float = 0.0,
    latencies: list[float] | None = None,
) -> int:
    """Write random keys of the ledger until `stop` is set, `max_writes` is reached or
    the node stops answering (killed); returns how many writes were acknowledged."""
    keys = list(ledger.entries)
    done = 0
    for _ in range(max_writes):
        if stop.is_set():
            break
        key = rng.choice(keys)
        size = rng.randint(*size_range)
        delete = rng.random() < delete_rate
        started = trio.current_time()
        if not await ledger.write(node, key, size=size, delete=delete):
            break  # the node is gone
        if latencies is not None:
            latencies.append(trio.current_time() - started)
        done += 1
        if pause_s > 0:
            await trio.sleep(pause_s)
    return done
