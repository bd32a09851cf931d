"""An ownership-guard running alone against the in-memory server, for actor tests.

`GuardUnderTest` starts the guard as the session would, with stand-ins for the
local-writer (it answers every RecordStoreVersion and remembers it) and for the wallet
keeper (it counts OweWallet) and for the local store (the key sets the guard counts
when a divergence is accepted: `local_keys`, short keys in the empty namespaces), and
gives a `put()` that does what the replicator and the wallet uploader do: send a
FencedPut and wait for its reply.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache

import anyio
from anyio.abc import TaskGroup

from actors.messages import FencedPut, OweAll, OweWallet, RecordStoreVersion, StoreKind, WalletMessage, WriterMessage
from actors.metrics import NodeMetrics
from actors.ownership_guard import OwnershipGuard, StoreEvent
from fakevss import FakePort
from node.keys import NodeKeys, derive_keys
from node.store import Triple
from vss.proto.vss_pb2 import KeyValue

MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"


@cache
def keys() -> NodeKeys:
    return derive_keys(MNEMONIC)


class LocalKeysStandIn:
    """The local store as the guard reads it: these keys, none of them owed."""

    def __init__(self, short_keys: Iterable[str]) -> None:
        self.keys: set[Triple] = {("", "", key) for key in short_keys}

    def key_sets(self) -> tuple[set[Triple], set[Triple]]:
        return set(self.keys), set()


class GuardUnderTest:
    def __init__(self, port: FakePort, instance_id: str, *, recorded: dict[StoreKind, int | None] | None = None,
                 accept_divergence: bool = False, local_keys: Iterable[str] = ()) -> None:
        self.port = port
        self.metrics = NodeMetrics()
        self.guard = OwnershipGuard(port, keys(), instance_id, recorded or {}, LocalKeysStandIn(local_keys),
                                    accept_divergence=accept_divergence, metrics=self.metrics)
        self.records: list[tuple[StoreKind, int]] = []
        self.owe_all = 0
        self.owe_wallet = 0
        self.events: list[StoreEvent] = []

    def start(self, tg: TaskGroup) -> None:
        self._inbox, guard_in = anyio.create_memory_object_stream[FencedPut](64)
        writer, writer_in = anyio.create_memory_object_stream[WriterMessage](64)
        wallet, wallet_in = anyio.create_memory_object_stream[WalletMessage](64)
        tg.start_soon(self.guard.run, guard_in, writer, wallet, self.events.append)
        tg.start_soon(self._writer, writer_in)
        tg.start_soon(self._wallet, wallet_in)

    async def _writer(self, inbox: anyio.abc.ObjectReceiveStream[WriterMessage]) -> None:
        async for message in inbox:
            if isinstance(message, RecordStoreVersion):
                self.records.append((message.kind, message.version))
                message.reply.set(None)
            elif isinstance(message, OweAll):
                self.owe_all += 1

    async def _wallet(self, inbox: anyio.abc.ObjectReceiveStream[WalletMessage]) -> None:
        async for message in inbox:
            if isinstance(message, OweWallet):
                self.owe_wallet += 1

    async def put(self, kind: StoreKind, items: Sequence[KeyValue], deletes: Sequence[KeyValue] = ()) -> int:
        put = FencedPut(kind, items, deletes)
        await self._inbox.send(put)
        version = await put.reply.wait()
        assert version is not None
        return version


def item(key: str, value: bytes = b"v") -> KeyValue:
    return KeyValue(key=key, version=-1, value=value)
