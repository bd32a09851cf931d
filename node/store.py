"""The node's local SQLite database: the source of truth.

What it owns:
- `kv`: the node's namespaced key-value state, as the API sees it.
- `unsynced`: one durable marker per key whose latest change the VSS server may not
  have yet, written in the same transaction as the change itself, so a crash can never
  leave a committed change that nobody remembers to replicate. `seq` orders changes:
  a marker is cleared only if it still carries the seq that was sent.
- `settings`: the node's bookkeeping (schema version, network, sealed mnemonic,
  instance id, whether the KV state was initialised). Never visible through /kv.
- `restore_staging`: values fetched by a restore, made live in one transaction.

All methods are synchronous and cheap; the actors call them from worker threads. The
single writer connection belongs to the local-writer (and, before the actors start,
to the unlock sequence); readers borrow pooled connections, which WAL lets run beside
the writer.
"""

from __future__ import annotations

import queue
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

Triple = tuple[str, str, str]  # (primary namespace, secondary namespace, key)

# Numbered migrations: step i brings user_version from i to i + 1. Never edit a step
# that has shipped; append a new one.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE kv (
        primary_ns TEXT NOT NULL, secondary_ns TEXT NOT NULL, key TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (primary_ns, secondary_ns, key)) WITHOUT ROWID;
    CREATE TABLE unsynced (
        primary_ns TEXT NOT NULL, secondary_ns TEXT NOT NULL, key TEXT NOT NULL,
        seq INTEGER NOT NULL, since REAL NOT NULL,
        PRIMARY KEY (primary_ns, secondary_ns, key)) WITHOUT ROWID;
    CREATE INDEX unsynced_by_seq ON unsynced (seq);
    CREATE TABLE settings (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE restore_staging (
        primary_ns TEXT NOT NULL, secondary_ns TEXT NOT NULL, key TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (primary_ns, secondary_ns, key)) WITHOUT ROWID;
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)


@dataclass(frozen=True)
class Owed:
    """A key owed to the server: its current value (None = deleted) and marker seq."""

    triple: Triple
    seq: int
    value: bytes | None


@dataclass(frozen=True)
class LocalChange:
    """One change for `apply_writes`: a value to store, or None to delete the key."""

    triple: Triple
    value: bytes | None


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a group commit is exactly
    # one transaction. check_same_thread=False: a connection moves between worker threads
    # but is only ever used by one at a time (the writer actor, or a borrower of the pool).
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def _bookkeeping(conn: sqlite3.Connection, cleared: Iterable[tuple[Triple, int]], settings: dict[str, bytes]) -> None:
    """Clear the markers of changes that reached the server (only at the seq sent: a key
    changed again keeps its marker) and record settings."""
    conn.executemany(
        "DELETE FROM unsynced WHERE primary_ns = ? AND secondary_ns = ? AND key = ? AND seq = ?",
        [(*triple, seq) for triple, seq in cleared],
    )
    conn.executemany("INSERT OR REPLACE INTO settings (name, value) VALUES (?, ?)", list(settings.items()))


class LocalStore:
    """The database file of one data dir, with its writer connection and reader pool."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = _connect(path)
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all_readers: list[sqlite3.Connection] = []
        self._migrate()

    def close(self) -> None:
        self._writer.close()
        for conn in self._all_readers:
            conn.close()
        self._all_readers.clear()

    # -- plumbing ------------------------------------------------------------------

    def _migrate(self) -> None:
        version = self._writer.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path} has schema {version}, newer than this program ({SCHEMA_VERSION})")
        for step in range(version, SCHEMA_VERSION):
            with self._transaction() as conn:
                for statement in _MIGRATIONS[step].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {step + 1}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = self._readers.get_nowait()
        except queue.Empty:
            conn = _connect(self.path)
            conn.execute("PRAGMA query_only = ON")
            self._all_readers.append(conn)
        try:
            yield conn
        finally:
            self._readers.put(conn)

    # -- settings ------------------------------------------------------------------

    def get_setting(self, name: str) -> bytes | None:
        with self._reader() as conn:
            row = conn.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def set_settings(self, values: dict[str, bytes]) -> None:
        with self._transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO settings (name, value) VALUES (?, ?)", list(values.items())
            )

    # -- key-value reads -------------------------------------------------------------

    def get(self, triple: Triple) -> bytes | None:
        with self._reader() as conn:
            row = conn.execute(
                "SELECT value FROM kv WHERE primary_ns = ? AND secondary_ns = ? AND key = ?", triple
            ).fetchone()
        return None if row is None else bytes(row[0])

    def list_keys(self, primary: str, secondary: str) -> list[str]:
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT key FROM kv WHERE primary_ns = ? AND secondary_ns = ? ORDER BY key",
                (primary, secondary),
            ).fetchall()
        return [row[0] for row in rows]

    def has_state(self) -> bool:
        with self._reader() as conn:
            return bool(conn.execute("SELECT EXISTS (SELECT 1 FROM kv)").fetchone()[0] == 1)

    def key_sets(self) -> tuple[set[Triple], set[Triple]]:
        """(every local key, every owed key), read in one snapshot."""
        with self._reader() as conn:
            conn.execute("BEGIN")
            try:
                local = {(p, s, k) for p, s, k in conn.execute("SELECT primary_ns, secondary_ns, key FROM kv")}
                owed = {(p, s, k) for p, s, k in conn.execute("SELECT primary_ns, secondary_ns, key FROM unsynced")}
            finally:
                conn.execute("COMMIT")
        return local, owed

    def get_many(self, triples: Iterable[Triple]) -> dict[Triple, bytes]:
        """The values of those keys that exist, read in one snapshot."""
        found: dict[Triple, bytes] = {}
        with self._reader() as conn:
            conn.execute("BEGIN")
            try:
                for triple in triples:
                    row = conn.execute(
                        "SELECT value FROM kv WHERE primary_ns = ? AND secondary_ns = ? AND key = ?", triple
                    ).fetchone()
                    if row is not None:
                        found[triple] = bytes(row[0])
            finally:
                conn.execute("COMMIT")
        return found

    # -- the write path (local-writer only) -----------------------------------------------

    def next_seq(self) -> int:
        """The first seq this session may use: above every marker already on disk."""
        row = self._writer.execute("SELECT COALESCE(MAX(seq), 0) FROM unsynced").fetchone()
        return int(row[0]) + 1

    def apply_writes(
        self,
        writes: Sequence[LocalChange],
        first_seq: int,
        *,
        track_unsynced: bool,
        cleared: Iterable[tuple[Triple, int]] = (),
        settings: dict[str, bytes] | None = None,
    ) -> None:
        """Commit a group of writes in one durable transaction, with their markers (and
        the group's bookkeeping, `cleared` and `settings` as in `apply_bookkeeping`, which
        then costs no transaction of its own).

        Write i of the group gets seq `first_seq + i`; when a key is written more than
        once in the group, its last write wins, as it would have one by one.
        """
        final: dict[Triple, tuple[bytes | None, int]] = {}
        for i, write in enumerate(writes):
            final.pop(write.triple, None)  # re-insert so dict order follows the last write
            final[write.triple] = (write.value, first_seq + i)
        now = time.time()
        with self._transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO kv (primary_ns, secondary_ns, key, value) VALUES (?, ?, ?, ?)",
                [(*t, value) for t, (value, _) in final.items() if value is not None],
            )
            conn.executemany(
                "DELETE FROM kv WHERE primary_ns = ? AND secondary_ns = ? AND key = ?",
                [t for t, (value, _) in final.items() if value is None],
            )
            if track_unsynced:
                # Keep `since` of a key already owed: it dates the oldest unsent change.
                conn.executemany(
                    "INSERT INTO unsynced (primary_ns, secondary_ns, key, seq, since) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (primary_ns, secondary_ns, key) DO UPDATE SET seq = excluded.seq",
                    [(*t, seq, now) for t, (_, seq) in final.items()],
                )
            _bookkeeping(conn, cleared, settings or {})

    def apply_bookkeeping(self, cleared: Iterable[tuple[Triple, int]], settings: dict[str, bytes]) -> None:
        """Forget markers whose change reached the server (unless changed again since),
        and record bookkeeping settings (such as the store's global version), together.

        Committed without an fsync of its own (the next durable commit carries it):
        losing this in a crash only means re-sending values the server already has, and
        an fsync per replicated batch would slow down the local writes behind it.
        """
        self._writer.execute("PRAGMA synchronous = NORMAL")
        try:
            with self._transaction() as conn:
                _bookkeeping(conn, cleared, settings)
        finally:
            self._writer.execute("PRAGMA synchronous = FULL")

    def mark_all_unsynced(self, first_seq: int) -> int:
        """Owe every local key to the server (VSS newly enabled, an emptied store, or a
        divergence the operator accepted). Returns how many keys became owed; their seqs
        are taken from `first_seq` on, so the writer continues from `next_seq()`."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO unsynced (primary_ns, secondary_ns, key, seq, since) "
                "SELECT primary_ns, secondary_ns, key, ? + ROW_NUMBER() OVER () - 1, ? FROM kv",
                (first_seq, time.time()),
            )
            return int(conn.execute("SELECT changes()").fetchone()[0])

    def mark_unsynced(self, triples: Sequence[Triple], first_seq: int) -> int:
        """Owe these keys (found missing on the server) again, keeping markers that exist.
        Returns how many markers were added; their seqs are taken from `first_seq` on, so
        the writer continues from `next_seq()`."""
        now = time.time()
        with self._transaction() as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO unsynced (primary_ns, secondary_ns, key, seq, since) VALUES (?, ?, ?, ?, ?)",
                [(*triple, first_seq + i, now) for i, triple in enumerate(triples)],
            )
            return conn.total_changes - before

    # -- what is owed to the server --------------------------------------------------------

    def read_owed(self, triples: Iterable[Triple]) -> list[Owed]:
        """Current value and seq of each key that still has a marker; others are skipped."""
        owed = []
        with self._reader() as conn:
            conn.execute("BEGIN")  # one snapshot for the whole batch
            try:
                for triple in triples:
                    row = conn.execute(
                        "SELECT u.seq, kv.value FROM unsynced u LEFT JOIN kv ON "
                        "kv.primary_ns = u.primary_ns AND kv.secondary_ns = u.secondary_ns AND kv.key = u.key "
                        "WHERE u.primary_ns = ? AND u.secondary_ns = ? AND u.key = ?",
                        triple,
                    ).fetchone()
                    if row is not None:
                        owed.append(Owed(triple, row[0], None if row[1] is None else bytes(row[1])))
            finally:
                conn.execute("COMMIT")
        return owed

    def owed_keys(self, limit: int, after_seq: int = 0) -> list[tuple[Triple, int]]:
        """Marked keys in change order, from `after_seq` on: the backstop re-scan."""
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT primary_ns, secondary_ns, key, seq FROM unsynced WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [((p, s, k), seq) for p, s, k, seq in rows]

    def pending_stats(self) -> tuple[int, float | None]:
        """(number of keys owed to the server, time.time() of the oldest owed change)."""
        with self._reader() as conn:
            count, oldest = conn.execute("SELECT COUNT(*), MIN(since) FROM unsynced").fetchone()
        return count, oldest

    # -- restore -----------------------------------------------------------------------------

    def clear_staging(self) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM restore_staging")

    def stage(self, rows: Sequence[tuple[Triple, bytes]]) -> None:
        with self._transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO restore_staging (primary_ns, secondary_ns, key, value) VALUES (?, ?, ?, ?)",
                [(*triple, value) for triple, value in rows],
            )

    def make_restore_live(self, settings: dict[str, bytes]) -> int:
        """Move the staged values into `kv` and record `settings`, all in one transaction."""
        with self._transaction() as conn:
            if conn.execute("SELECT EXISTS (SELECT 1 FROM kv)").fetchone()[0]:
                raise RuntimeError("refusing to restore over existing local state")
            conn.execute(
                "INSERT INTO kv (primary_ns, secondary_ns, key, value) "
                "SELECT primary_ns, secondary_ns, key, value FROM restore_staging"
            )
            count = conn.execute("SELECT changes()").fetchone()[0]
            conn.execute("DELETE FROM restore_staging")
            conn.executemany("INSERT OR REPLACE INTO settings (name, value) VALUES (?, ?)", list(settings.items()))
        return int(count)
