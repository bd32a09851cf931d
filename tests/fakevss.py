"""An in-memory VSS server for actor tests, with the protocol's semantics and seams.

`FakeVssServer` holds the stores; `server.port()` is one client's view of it (what a
node's actors talk to: it satisfies `actors.vss_port.VssPort`). A port can be told to
- pause: `port.pause_before("get_global_version")` returns a `Pause`; the next such
  call waits until the test has done what it wanted (`await pause.reached.wait()`,
  act, `pause.release()`). That is how a test puts a takeover exactly between two reads.
- fail: `port.down = True` makes every call a transport failure; `port.fail_next(op,
  exc)` fails the next call of `op` once.
- be watched: `port.calls` names every call in order, `port.call_times[op]` says when
  (anyio clock) each call of `op` began, and `await port.wait_calls(op, n)` returns once
  `op` has been called `n` times, so a test waits on what happened, not on a timer.
- be small: `server.max_body_bytes` refuses a putObjects whose values add up to more
  (RequestTooLargeError, as a body limit or a proxy would).
Semantics follow docs/PROTOCOL.md: -1/0/v versions, deletes that remove nothing
conflict, all-or-nothing, the global version, creation order newest first, 100 a page.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from vss.errors import (
    ConflictError,
    InvalidRequestError,
    NoSuchKeyError,
    RequestTooLargeError,
    VssUnavailableError,
)
from vss.proto.vss_pb2 import KeyValue, ListKeyVersionsResponse

if TYPE_CHECKING:
    from actors.vss_port import VssPort

PAGE = 100


@dataclass
class _Row:
    version: int
    value: bytes
    seq: int


@dataclass
class _Store:
    rows: dict[str, _Row] = field(default_factory=dict)
    global_version: int = 0


class FakeVssServer:
    def __init__(self) -> None:
        self.stores: dict[str, _Store] = {}
        self.max_body_bytes: int | None = None
        self.puts = 0
        self._seq = itertools.count(1)

    def port(self) -> FakePort:
        return FakePort(self)

    def store(self, store_id: str) -> _Store:
        return self.stores.setdefault(store_id, _Store())

    def wipe(self) -> None:
        """The server loses all its data (or a new one answers at the same URL)."""
        self.stores.clear()

    def values(self, store_id: str) -> dict[str, bytes]:
        return {key: row.value for key, row in self.store(store_id).rows.items()}

    def apply_put(self, store_id: str, items: Sequence[KeyValue], deletes: Sequence[KeyValue],
                  global_version: int | None) -> None:
        if len(items) + len(deletes) > 1000:
            raise InvalidRequestError("too many items")
        if self.max_body_bytes is not None and sum(len(i.value) + len(i.key) for i in items) > self.max_body_bytes:
            raise RequestTooLargeError("body over the limit")
        store = self.store(store_id)
        if global_version is not None and store.global_version != global_version:
            raise ConflictError(f"global_version is {store.global_version}, expected {global_version}")
        for item in items:
            row = store.rows.get(item.key)
            if item.version == 0 and row is not None:
                raise ConflictError(f"{item.key} exists")
            if item.version > 0 and (row is None or row.version != item.version):
                raise ConflictError(f"{item.key} is not at {item.version}")
        for item in deletes:
            row = store.rows.get(item.key)
            if row is None or (item.version != -1 and row.version != item.version):
                raise ConflictError(f"delete of {item.key} removes nothing")
        for item in items:
            row = store.rows.get(item.key)
            version = row.version + 1 if row is not None and item.version > 0 else 1
            seq = row.seq if row is not None else next(self._seq)
            store.rows[item.key] = _Row(version, bytes(item.value), seq)
        for item in deletes:
            del store.rows[item.key]
        if global_version is not None:
            store.global_version += 1
        self.puts += 1


class Pause:
    """One pause point: `reached` is set when a call got there; it waits for `release()`."""

    def __init__(self) -> None:
        self.reached = anyio.Event()
        self._released = anyio.Event()

    def release(self) -> None:
        self._released.set()

    async def hold(self) -> None:
        self.reached.set()
        await self._released.wait()


class FakePort:
    """One client's view of a FakeVssServer (satisfies actors.vss_port.VssPort)."""

    def __init__(self, server: FakeVssServer) -> None:
        self.server = server
        self.down = False
        self.calls: list[str] = []
        self.call_times: dict[str, list[float]] = {}
        self._called: anyio.Event | None = None  # made by a waiter (an Event needs a running loop)
        self._pauses: dict[str, list[Pause]] = {}
        self._failures: dict[str, list[Exception]] = {}

    def pause_before(self, op: str) -> Pause:
        pause = Pause()
        self._pauses.setdefault(op, []).append(pause)
        return pause

    def fail_next(self, op: str, exc: Exception) -> None:
        self._failures.setdefault(op, []).append(exc)

    async def wait_calls(self, op: str, count: int) -> None:
        """Return once `op` has been called at least `count` times (whatever the outcome)."""
        while len(self.call_times.get(op, ())) < count:
            if self._called is None:
                self._called = anyio.Event()
            await self._called.wait()

    async def _enter(self, op: str) -> None:
        self.calls.append(op)
        self.call_times.setdefault(op, []).append(anyio.current_time())
        if self._called is not None:
            self._called.set()
            self._called = None
        await anyio.lowlevel.checkpoint()
        pauses = self._pauses.get(op)
        if pauses:
            await pauses.pop(0).hold()
        if self.down:
            raise VssUnavailableError(f"injected: the server is down ({op})")
        failures = self._failures.get(op)
        if failures:
            raise failures.pop(0)

    async def get_object(self, store_id: str, key: str) -> KeyValue:
        await self._enter("get_object")
        row = self.server.store(store_id).rows.get(key)
        if row is None:
            raise NoSuchKeyError(f"no {key}")
        return KeyValue(key=key, version=row.version, value=row.value)

    async def put_objects(
        self,
        store_id: str,
        transaction_items: Sequence[KeyValue] = (),
        delete_items: Sequence[KeyValue] = (),
        global_version: int | None = None,
    ) -> None:
        await self._enter("put_objects")
        self.server.apply_put(store_id, transaction_items, delete_items, global_version)

    async def list_key_versions(
        self, store_id: str, key_prefix: str | None = None, page_size: int | None = None, page_token: str | None = None
    ) -> ListKeyVersionsResponse:
        await self._enter("list_key_versions")
        store = self.server.store(store_id)
        rows = sorted(
            ((k, r) for k, r in store.rows.items() if k.startswith(key_prefix or "")), key=lambda kr: -kr[1].seq
        )
        if page_token is not None:
            rows = [(k, r) for k, r in rows if r.seq < int(page_token)]
        limit = PAGE if page_size is None else min(page_size, PAGE)
        page = rows[:limit]
        response = ListKeyVersionsResponse(key_versions=[KeyValue(key=k, version=r.version) for k, r in page])
        if len(rows) > limit and page:
            response.next_page_token = str(page[-1][1].seq)
        if page_token is None:
            response.global_version = store.global_version
        return response

    async def iter_key_versions(
        self, store_id: str, key_prefix: str | None = None, page_size: int | None = None
    ) -> AsyncIterator[KeyValue]:
        token = None
        while True:
            page = await self.list_key_versions(store_id, key_prefix, page_size, token)
            for item in page.key_versions:
                yield item
            if not page.next_page_token:
                return
            token = page.next_page_token

    async def get_global_version(self, store_id: str) -> int:
        await self._enter("get_global_version")
        return self.server.store(store_id).global_version

    async def aclose(self) -> None:
        pass


if TYPE_CHECKING:
    _satisfies: VssPort = FakePort(FakeVssServer())  # mypy (make test) checks the fake against the port
