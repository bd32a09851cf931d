"""SQLite storage for the VSS server: one file in WAL mode, stdlib sqlite3 off the event loop.

Writes are serialized through one connection and group-committed: whichever request
holds the write lock takes every write queued behind it and applies them in one
SQLite transaction, each inside its own SAVEPOINT so a conflicting request rolls back
alone; then one COMMIT (one fsync, `synchronous=FULL`) makes the whole group durable
before any of its requests is answered. Reads use a small pool of separate
connections, which WAL lets run beside the writer.

Short reads run on the event loop itself, on a reader connection of their own: a
getObject by primary key, the global version, a listing page without a prefix filter
(at most 101 rows of an index), each a few microseconds from the page cache. Handing
them to a worker thread cost more than the read. That connection never waits for a
lock (busy timeout 0): should SQLite report the database busy, or a value be larger
than `INLINE_VALUE_BYTES` (read from disk, it could take a while), the read is done
again in a worker thread like any other.

The creation order that listKeyVersions needs is the table's AUTOINCREMENT rowid:
an upsert of an existing key keeps its row (and position); a key deleted and created
again gets a new, larger one. Several processes may share the file: SQLite's own lock
serializes their writers (with a busy timeout).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from vss.errors import ConflictError, InternalServerError, VssError
from vss.server.backend import (
    UNCONDITIONAL,
    Backend,
    Delete,
    ScannedKey,
    StoredObject,
    Write,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
READ_CONNECTIONS = 4
BUSY_TIMEOUT_MS = 10_000
INLINE_VALUE_BYTES = 64 * 1024
"""Values up to this size are read on the event loop; larger ones in a worker thread."""
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vss_objects (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    store_id TEXT NOT NULL,
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    value BLOB NOT NULL,
    UNIQUE (user_id, store_id, key)
);
CREATE INDEX IF NOT EXISTS vss_objects_by_creation ON vss_objects (user_id, store_id, seq);
CREATE TABLE IF NOT EXISTS vss_stores (
    user_id TEXT NOT NULL,
    store_id TEXT NOT NULL,
    global_version INTEGER NOT NULL,
    PRIMARY KEY (user_id, store_id)
) WITHOUT ROWID;
"""


class _WriteJob:
    """One request's write, queued for the next group commit."""

    __slots__ = ("apply", "taken", "done", "error")

    def __init__(self, apply: Callable[[sqlite3.Connection], None]) -> None:
        self.apply = apply
        self.taken = False
        self.done = False
        self.error: BaseException | None = None


class SqliteBackend(Backend):
    """VSS storage in one SQLite file (`":memory:"` keeps it in memory, for tests)."""

    def __init__(self, path: str, *, read_connections: int = READ_CONNECTIONS) -> None:
        self.path = path
        self._in_memory = path == ":memory:"
        self._read_connections = read_connections
        self._writer: sqlite3.Connection | None = None
        self._readers: list[sqlite3.Connection] = []
        self._inline: sqlite3.Connection | None = None
        self._read_slots = anyio.Semaphore(max(1, read_connections))
        self._write_lock = anyio.Lock()
        self._pending: list[_WriteJob] = []

    # -- lifecycle --------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            raise RuntimeError("SqliteBackend is already open")
        await anyio.to_thread.run_sync(self._open_sync)

    def _open_sync(self) -> None:
        if not self._in_memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        writer = self._connect()
        try:
            if not self._in_memory:
                mode = writer.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise RuntimeError(f"SQLite refused WAL mode for {self.path} (got {mode})")
            writer.execute("PRAGMA synchronous=FULL")
            writer.execute("BEGIN IMMEDIATE")
            found = writer.execute("PRAGMA user_version").fetchone()[0]
            if found > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has schema version {found}; this server knows up to "
                    f"{SCHEMA_VERSION}: upgrade the server"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    writer.execute(statement)
            writer.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            writer.execute("COMMIT")
        except BaseException:
            writer.close()
            raise
        readers = []
        inline = None
        if not self._in_memory:
            for _ in range(self._read_connections):
                reader = self._connect()
                reader.execute("PRAGMA query_only=ON")
                readers.append(reader)
            inline = self._connect(busy_timeout_ms=0)
            inline.execute("PRAGMA query_only=ON")
        self._writer = writer
        self._readers = readers
        self._inline = inline

    def _connect(self, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            timeout=busy_timeout_ms / 1000,
        )
        conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        return conn

    async def close(self) -> None:
        async with self._write_lock:
            connections = [*self._readers, *(c for c in (self._inline, self._writer) if c is not None)]
            self._readers = []
            self._inline = None
            self._writer = None
            for conn in connections:
                await anyio.to_thread.run_sync(conn.close)

    def describe(self) -> str:
        return f"sqlite:///{self.path}"

    async def ping(self) -> None:
        await self._read_short(lambda conn: conn.execute("SELECT 1").fetchone())

    # -- plumbing -----------------------------------------------------------------

    def _require_writer(self) -> sqlite3.Connection:
        if self._writer is None:
            raise InternalServerError("the SQLite backend is not open")
        return self._writer

    async def _read_short(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """Run a short `query` on the event loop, or in a worker thread if SQLite is busy."""
        inline = self._inline
        if inline is not None:
            try:
                return query(inline)
            except sqlite3.OperationalError:
                # "database is locked" and the like: never wait on the loop; wait in a thread.
                if inline.in_transaction:
                    inline.execute("ROLLBACK")
        return await self._read(query)

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """Run `query` on a reader connection in a worker thread."""
        if self._in_memory:
            # One in-memory database means one connection: reads queue with the writes.
            async with self._write_lock:
                return await anyio.to_thread.run_sync(query, self._require_writer())
        async with self._read_slots:
            if not self._readers:
                raise InternalServerError("the SQLite backend is not open")
            conn = self._readers.pop()
            try:
                return await anyio.to_thread.run_sync(query, conn)
            finally:
                self._readers.append(conn)

    async def _write(self, apply: Callable[[sqlite3.Connection], None]) -> None:
        """Run `apply` inside the next group commit; return once it is durable.

        Raises what `apply` raised (its changes rolled back), or InternalServerError if
        the group's COMMIT failed.
        """
        job = _WriteJob(apply)
        self._pending.append(job)
        try:
            async with self._write_lock:
                if not job.taken:
                    group, self._pending = self._pending, []
                    for queued in group:
                        queued.taken = True
                    # Not abandoned on cancellation: the group's callers wait for it.
                    await anyio.to_thread.run_sync(self._commit_group, self._require_writer(), group)
        except BaseException:
            if not job.taken:
                self._pending.remove(job)
            raise
        if not job.done:
            raise InternalServerError("write was not applied")
        if job.error is not None:
            raise job.error

    @staticmethod
    def _commit_group(conn: sqlite3.Connection, group: list[_WriteJob]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in group:
                conn.execute("SAVEPOINT request")
                try:
                    job.apply(conn)
                except VssError as exc:
                    job.error = exc
                except Exception:
                    log.exception("SQLite write failed")
                    job.error = InternalServerError("storage failed")
                if job.error is not None:
                    conn.execute("ROLLBACK TO request")
                conn.execute("RELEASE request")
            conn.execute("COMMIT")
        except Exception:
            log.exception("SQLite group commit failed; the whole group is rolled back")
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("SQLite ROLLBACK failed")
            # Even a conflict was judged against writes that are now gone: let all retry.
            for job in group:
                job.error = InternalServerError("storage failed to commit")
        finally:
            for job in group:
                job.done = True

    # -- hooks ----------------------------------------------------------------------

    async def _read_object(self, user: str, store_id: str, key: str) -> StoredObject | None:
        def query(conn: sqlite3.Connection) -> StoredObject | None:
            row = conn.execute(
                "SELECT version, value FROM vss_objects WHERE user_id=? AND store_id=? AND key=?",
                (user, store_id, key),
            ).fetchone()
            return None if row is None else StoredObject(key, row[0], bytes(row[1]))

        def small_only(conn: sqlite3.Connection) -> StoredObject | None | _TooLarge:
            # length() of a blob reads no overflow pages: a large value is left on disk.
            row = conn.execute(
                "SELECT version, CASE WHEN length(value) <= ? THEN value END"
                " FROM vss_objects WHERE user_id=? AND store_id=? AND key=?",
                (INLINE_VALUE_BYTES, user, store_id, key),
            ).fetchone()
            if row is None:
                return None
            if row[1] is None:
                return _TOO_LARGE
            return StoredObject(key, row[0], bytes(row[1]))

        found = await self._read_short(small_only)
        if isinstance(found, _TooLarge):
            return await self._read(query)
        return found

    async def _read_global_version(self, user: str, store_id: str) -> int:
        return await self._read_short(lambda conn: _global_version(conn, user, store_id))

    async def _commit_put(
        self,
        user: str,
        store_id: str,
        global_version: int | None,
        writes: list[Write],
        deletes: list[Delete],
    ) -> None:
        def apply(conn: sqlite3.Connection) -> None:
            if global_version is not None:
                _bump_global_version(conn, user, store_id, global_version)
            for item in writes:
                _write_item(conn, user, store_id, item)
            for gone in deletes:
                _delete_item(conn, user, store_id, gone)

        await self._write(apply)

    async def _delete_if_present(self, user: str, store_id: str, key: str, version: int) -> None:
        def apply(conn: sqlite3.Connection) -> None:
            if version == UNCONDITIONAL:
                conn.execute(
                    "DELETE FROM vss_objects WHERE user_id=? AND store_id=? AND key=?",
                    (user, store_id, key),
                )
            else:
                conn.execute(
                    "DELETE FROM vss_objects WHERE user_id=? AND store_id=? AND key=? AND version=?",
                    (user, store_id, key, version),
                )

        await self._write(apply)

    async def _scan_page(
        self,
        user: str,
        store_id: str,
        prefix: str,
        limit: int,
        before_seq: int | None,
        *,
        with_global_version: bool,
    ) -> tuple[int | None, list[ScannedKey]]:
        def query(conn: sqlite3.Connection) -> tuple[int | None, list[ScannedKey]]:
            # One read transaction: the global version is read first, the keys in the
            # same snapshot.
            conn.execute("BEGIN")
            try:
                version = _global_version(conn, user, store_id) if with_global_version else None
                if limit == 0:
                    return version, []
                # substr comparison, not LIKE: the prefix is literal and case-sensitive.
                sql = (
                    "SELECT key, version, seq FROM vss_objects"
                    " WHERE user_id=? AND store_id=? AND substr(key, 1, ?)=?"
                )
                params: list[Any] = [user, store_id, len(prefix), prefix]
                if before_seq is not None:
                    sql += " AND seq<?"
                    params.append(before_seq)
                sql += " ORDER BY seq DESC LIMIT ?"
                params.append(limit + 1)
                rows = [ScannedKey(k, v, s) for k, v, s in conn.execute(sql, params)]
                return version, rows
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

        if prefix:
            # A prefix filter may walk every key of the store to fill a page: not short.
            return await self._read(query)
        return await self._read_short(query)


class _TooLarge:
    """A value over INLINE_VALUE_BYTES: read it again in a worker thread."""


_TOO_LARGE = _TooLarge()


def _global_version(conn: sqlite3.Connection, user: str, store_id: str) -> int:
    row = conn.execute(
        "SELECT global_version FROM vss_stores WHERE user_id=? AND store_id=?", (user, store_id)
    ).fetchone()
    return 0 if row is None else int(row[0])


def _bump_global_version(conn: sqlite3.Connection, user: str, store_id: str, expected: int) -> None:
    found = _global_version(conn, user, store_id)
    if found != expected:
        raise ConflictError(
            f"global_version of store {store_id!r} is {found}, the request expected {expected}"
        )
    conn.execute(
        "INSERT INTO vss_stores (user_id, store_id, global_version) VALUES (?, ?, 1)"
        " ON CONFLICT (user_id, store_id) DO UPDATE SET global_version = global_version + 1",
        (user, store_id),
    )


def _write_item(conn: sqlite3.Connection, user: str, store_id: str, item: Write) -> None:
    if item.version == UNCONDITIONAL:
        conn.execute(
            "INSERT INTO vss_objects (user_id, store_id, key, version, value) VALUES (?, ?, ?, 1, ?)"
            " ON CONFLICT (user_id, store_id, key) DO UPDATE SET version=1, value=excluded.value",
            (user, store_id, item.key, item.value),
        )
    elif item.version == 0:
        cursor = conn.execute(
            "INSERT INTO vss_objects (user_id, store_id, key, version, value) VALUES (?, ?, ?, 1, ?)"
            " ON CONFLICT (user_id, store_id, key) DO NOTHING",
            (user, store_id, item.key, item.value),
        )
        if cursor.rowcount != 1:
            raise ConflictError(f"key {item.key!r} already exists (version 0 means create only)")
    else:
        cursor = conn.execute(
            "UPDATE vss_objects SET version=version+1, value=?"
            " WHERE user_id=? AND store_id=? AND key=? AND version=?",
            (item.value, user, store_id, item.key, item.version),
        )
        if cursor.rowcount != 1:
            raise ConflictError(f"key {item.key!r} is missing or not at version {item.version}")


def _delete_item(conn: sqlite3.Connection, user: str, store_id: str, item: Delete) -> None:
    if item.version == UNCONDITIONAL:
        cursor = conn.execute(
            "DELETE FROM vss_objects WHERE user_id=? AND store_id=? AND key=?",
            (user, store_id, item.key),
        )
    else:
        cursor = conn.execute(
            "DELETE FROM vss_objects WHERE user_id=? AND store_id=? AND key=? AND version=?",
            (user, store_id, item.key, item.version),
        )
    if cursor.rowcount != 1:
        raise ConflictError(
            f"delete of key {item.key!r} removed nothing (missing or not at version {item.version})"
        )

