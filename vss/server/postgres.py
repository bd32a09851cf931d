"""PostgreSQL storage for the VSS server, on an asyncpg pool.

Several server processes may share one database. Correctness under concurrency comes
from row-level atomic statements inside one transaction per putObjects, never from
read-then-write in Python:

- the global version is checked and incremented by one conditional UPDATE (or, for an
  expected 0, an INSERT ... ON CONFLICT DO UPDATE ... WHERE), which takes the store's
  row lock; a concurrent call expecting the same version waits, re-checks against the
  committed row (READ COMMITTED re-evaluates the WHERE), and finds it changed;
- version 0 is INSERT ... ON CONFLICT DO NOTHING, version v is UPDATE ... WHERE
  version = v, deletes are DELETE ... WHERE; each reports the rows it touched, and a
  short count is a CONFLICT that rolls the whole transaction back.

Deadlocks between two multi-key calls are possible in principle (Postgres then aborts
one); the aborted transaction changed nothing and is simply run again.

The creation order for listKeyVersions is a BIGSERIAL column: an upsert of an existing
row keeps it, a re-created key gets a new one. The schema is created on open with
CREATE ... IF NOT EXISTS under an advisory lock, so processes starting together agree.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from vss.errors import ConflictError, InternalServerError
from vss.server.backend import (
    UNCONDITIONAL,
    Backend,
    Delete,
    ScannedKey,
    StoredObject,
    Write,
    redact_url,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
POOL_SIZE = 10
TRANSIENT_RETRIES = 5
_SCHEMA_LOCK_ID = 0x5653535F534348  # "VSS_SCH": serializes schema creation across processes
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS vss_objects (
        seq BIGSERIAL NOT NULL,
        user_id TEXT NOT NULL,
        store_id TEXT NOT NULL,
        key TEXT NOT NULL,
        version BIGINT NOT NULL,
        value BYTEA NOT NULL,
        PRIMARY KEY (user_id, store_id, key)
    )""",
    "CREATE INDEX IF NOT EXISTS vss_objects_by_creation ON vss_objects (user_id, store_id, seq)",
    """CREATE TABLE IF NOT EXISTS vss_stores (
        user_id TEXT NOT NULL,
        store_id TEXT NOT NULL,
        global_version BIGINT NOT NULL,
        PRIMARY KEY (user_id, store_id)
    )""",
    "CREATE TABLE IF NOT EXISTS vss_schema_version (version INTEGER NOT NULL)",
]


class PostgresBackend(Backend):
    """VSS storage in PostgreSQL. `schema` (created if missing) keeps its tables apart."""

    def __init__(self, dsn: str, *, schema: str | None = None, pool_size: int = POOL_SIZE) -> None:
        if schema is not None and not _IDENTIFIER.fullmatch(schema):
            raise ValueError(f"schema name {schema!r} is not a plain SQL identifier")
        self.dsn = dsn
        self.schema = schema
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    @classmethod
    def from_url(cls, url: str) -> PostgresBackend:
        """Build from `postgresql://...`; the query parameters `schema` and `pool_size` are ours,
        any other is passed on to asyncpg (which sends unknown ones as server settings)."""
        parts = urlsplit(url)
        ours: dict[str, str | None] = {"schema": None, "pool_size": None}
        rest: list[tuple[str, str]] = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name in ours:
                ours[name] = value
            else:
                rest.append((name, value))
        dsn = urlunsplit(parts._replace(query=urlencode(rest)))
        pool_size = POOL_SIZE
        if ours["pool_size"] is not None:
            try:
                pool_size = int(ours["pool_size"])
            except ValueError:
                raise ValueError(f"pool_size in {redact_url(url)!r} is not a number") from None
            if pool_size < 1:
                raise ValueError("pool_size must be at least 1")
        return cls(dsn, schema=ours["schema"], pool_size=pool_size)

    # -- lifecycle --------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            raise RuntimeError("PostgresBackend is already open")
        settings = {"search_path": self.schema} if self.schema else None
        pool = await asyncpg.create_pool(
            self.dsn, min_size=1, max_size=self.pool_size, server_settings=settings
        )
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK_ID)
                if self.schema:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                for statement in _SCHEMA:
                    await conn.execute(statement)
                found = await conn.fetchval("SELECT max(version) FROM vss_schema_version")
                if found is None:
                    await conn.execute("INSERT INTO vss_schema_version VALUES ($1)", SCHEMA_VERSION)
                elif found > SCHEMA_VERSION:
                    raise RuntimeError(
                        f"the database has VSS schema version {found}; this server knows up to "
                        f"{SCHEMA_VERSION}: upgrade the server"
                    )
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def describe(self) -> str:
        return redact_url(self.dsn) + (f" (schema {self.schema})" if self.schema else "")

    async def ping(self) -> None:
        await self._require_pool().fetchval("SELECT 1")

    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise InternalServerError("the PostgreSQL backend is not open")
        return self._pool

    # -- hooks ----------------------------------------------------------------------

    async def _read_object(self, user: str, store_id: str, key: str) -> StoredObject | None:
        row = await self._require_pool().fetchrow(
            "SELECT version, value FROM vss_objects WHERE user_id=$1 AND store_id=$2 AND key=$3",
            user,
            store_id,
            key,
        )
        return None if row is None else StoredObject(key, row["version"], row["value"])

    async def _read_global_version(self, user: str, store_id: str) -> int:
        return await _global_version(self._require_pool(), user, store_id)

    async def _commit_put(
        self,
        user: str,
        store_id: str,
        global_version: int | None,
        writes: list[Write],
        deletes: list[Delete],
    ) -> None:
        pool = self._require_pool()
        for attempt in range(1, TRANSIENT_RETRIES + 1):
            try:
                async with pool.acquire() as conn, conn.transaction():
                    await _apply_put(conn, user, store_id, global_version, writes, deletes)
                return
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
                # The transaction was rolled back whole; running it again is safe.
                if attempt == TRANSIENT_RETRIES:
                    raise InternalServerError("storage kept aborting the transaction; retry") from exc
                log.info("putObjects aborted by PostgreSQL (%s); running it again", exc)

    async def _delete_if_present(self, user: str, store_id: str, key: str, version: int) -> None:
        await self._require_pool().execute(
            "DELETE FROM vss_objects WHERE user_id=$1 AND store_id=$2 AND key=$3"
            " AND ($4::bigint = -1 OR version = $4::bigint)",
            user,
            store_id,
            key,
            version,
        )

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
        async with self._require_pool().acquire() as conn:
            # Read first, keys after: a key written after this read bumps (for writers that
            # use it) a global version newer than the one returned.
            version = await _global_version(conn, user, store_id) if with_global_version else None
            if limit == 0:
                return version, []
            # starts_with, not LIKE: the prefix is literal and case-sensitive.
            sql = (
                "SELECT key, version, seq FROM vss_objects"
                " WHERE user_id=$1 AND store_id=$2 AND starts_with(key, $3)"
            )
            args: list[object] = [user, store_id, prefix]
            if before_seq is not None:
                sql += " AND seq < $5"
            sql += " ORDER BY seq DESC LIMIT $4"
            args.append(limit + 1)
            if before_seq is not None:
                args.append(before_seq)
            rows = await conn.fetch(sql, *args)
        return version, [ScannedKey(r["key"], r["version"], r["seq"]) for r in rows]


async def _global_version(conn: asyncpg.Pool | asyncpg.Connection, user: str, store_id: str) -> int:
    found = await conn.fetchval(
        "SELECT global_version FROM vss_stores WHERE user_id=$1 AND store_id=$2", user, store_id
    )
    return 0 if found is None else found


async def _apply_put(
    conn: asyncpg.Connection,
    user: str,
    store_id: str,
    global_version: int | None,
    writes: list[Write],
    deletes: list[Delete],
) -> None:
    """The statements of one putObjects, inside the caller's transaction."""
    if global_version is not None:
        await _bump_global_version(conn, user, store_id, global_version)
    # Creation order is request order, as with SQLite: take sequence numbers for every
    # write that may create a row, in order, before the statements run in key order
    # (the same row-lock order for concurrent calls makes deadlocks rare).
    creating = [item for item in writes if item.version in (UNCONDITIONAL, 0)]
    seq_of: dict[str, int] = {}
    if creating:
        seqs = await conn.fetchval(
            "SELECT array_agg(nextval('vss_objects_seq_seq')) FROM generate_series(1, $1)", len(creating)
        )
        seq_of = {item.key: seq for item, seq in zip(creating, sorted(seqs), strict=True)}
    writes = sorted(writes, key=lambda item: item.key)
    upserts = [item for item in writes if item.version == UNCONDITIONAL]
    creates = [item for item in writes if item.version == 0]
    updates = [item for item in writes if item.version > 0]
    deletes = sorted(deletes, key=lambda item: item.key)

    if creates:
        rows = await conn.fetch(
            "INSERT INTO vss_objects (seq, user_id, store_id, key, version, value)"
            " SELECT t.seq, $1, $2, t.k, 1, t.v"
            " FROM unnest($3::text[], $4::bytea[], $5::bigint[]) AS t(k, v, seq)"
            " ON CONFLICT (user_id, store_id, key) DO NOTHING RETURNING key",
            user,
            store_id,
            [item.key for item in creates],
            [item.value for item in creates],
            [seq_of[item.key] for item in creates],
        )
        _require_all([item.key for item in creates], rows, "already exists (version 0 means create only)")
    if updates:
        rows = await conn.fetch(
            "UPDATE vss_objects AS o SET version = o.version + 1, value = t.v"
            " FROM unnest($3::text[], $4::bigint[], $5::bytea[]) AS t(k, expected, v)"
            " WHERE o.user_id = $1 AND o.store_id = $2 AND o.key = t.k AND o.version = t.expected"
            " RETURNING o.key",
            user,
            store_id,
            [item.key for item in updates],
            [item.version for item in updates],
            [item.value for item in updates],
        )
        _require_all([item.key for item in updates], rows, "is missing or not at the expected version")
    if deletes:
        rows = await conn.fetch(
            "DELETE FROM vss_objects AS o USING unnest($3::text[], $4::bigint[]) AS t(k, expected)"
            " WHERE o.user_id = $1 AND o.store_id = $2 AND o.key = t.k"
            " AND (t.expected = -1 OR o.version = t.expected)"
            " RETURNING o.key",
            user,
            store_id,
            [item.key for item in deletes],
            [item.version for item in deletes],
        )
        _require_all(
            [item.key for item in deletes], rows, "was not deleted: missing or not at the expected version"
        )
    if upserts:
        # An existing row keeps its seq (its creation position); only a new row uses ours.
        await conn.execute(
            "INSERT INTO vss_objects (seq, user_id, store_id, key, version, value)"
            " SELECT t.seq, $1, $2, t.k, 1, t.v"
            " FROM unnest($3::text[], $4::bytea[], $5::bigint[]) AS t(k, v, seq)"
            " ON CONFLICT (user_id, store_id, key) DO UPDATE SET version = 1, value = excluded.value",
            user,
            store_id,
            [item.key for item in upserts],
            [item.value for item in upserts],
            [seq_of[item.key] for item in upserts],
        )


async def _bump_global_version(conn: asyncpg.Connection, user: str, store_id: str, expected: int) -> None:
    if expected == 0:
        # A store never written has no row: create it at 1, or bump a row still at 0.
        status = await conn.execute(
            "INSERT INTO vss_stores (user_id, store_id, global_version) VALUES ($1, $2, 1)"
            " ON CONFLICT (user_id, store_id) DO UPDATE"
            " SET global_version = vss_stores.global_version + 1 WHERE vss_stores.global_version = 0",
            user,
            store_id,
        )
    else:
        status = await conn.execute(
            "UPDATE vss_stores SET global_version = global_version + 1"
            " WHERE user_id = $1 AND store_id = $2 AND global_version = $3",
            user,
            store_id,
            expected,
        )
    if not status.endswith(" 1"):
        found = await _global_version(conn, user, store_id)
        raise ConflictError(
            f"global_version of store {store_id!r} is {found}, the request expected {expected}"
        )


def _require_all(keys: list[str], rows: list[asyncpg.Record], problem: str) -> None:
    if len(rows) != len(keys):
        done = {row["key"] for row in rows}
        failed = next(key for key in keys if key not in done)
        raise ConflictError(f"key {failed!r} {problem}")
