"""The storage seam of the bundled VSS server: one small interface, shared validation.

`Backend` is what the HTTP layer (`vss.server.app`) talks to. Its four public calls
mirror the protocol's four calls and enforce every rule that does not depend on the
storage engine (limits, distinct keys, reserved key, page tokens), so a backend only
implements a handful of storage hooks and cannot forget a rule. `sqlite.py` and
`postgres.py` are the two engines; `engines.open_backend(url)` picks one from a URL.

Semantics are those of docs/PROTOCOL.md. Everything a backend stores is
partitioned by (user, store_id, key); the global version by (user, store_id).
"""

from __future__ import annotations

import abc
import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass

from vss.errors import InvalidRequestError, NoSuchKeyError

MAX_ITEMS_PER_PUT = 1000
MAX_KEY_CHARS = 600
MAX_STORE_ID_CHARS = 120
MAX_PAGE_SIZE = 100
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
"""Default request body limit: fits a 1 MiB wallet chunk many times over, and 1000-item
putObjects of modest values."""
GLOBAL_VERSION_KEY = "global_version"
"""Reserved key: getObject on it reads the store's global version; it can never be written."""

UNCONDITIONAL = -1
"""Item version meaning "whatever is stored" (upsert, or delete whatever is there)."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    """A key as getObject returns it."""

    key: str
    version: int
    value: bytes


@dataclass(frozen=True, slots=True)
class KeyVersion:
    """A key as listKeyVersions returns it (no value)."""

    key: str
    version: int


@dataclass(frozen=True, slots=True)
class Write:
    """One transaction item of putObjects: -1 upsert, 0 create only, v > 0 update if at v."""

    key: str
    version: int
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    """One delete item of putObjects: -1 delete whatever is there, v delete only if at v."""

    key: str
    version: int


@dataclass(frozen=True, slots=True)
class KeyPage:
    """One page of listKeyVersions.

    `next_page_token` is None on the last page; `global_version` is None except on the
    first page (the one asked for without a page token).
    """

    key_versions: list[KeyVersion]
    next_page_token: str | None
    global_version: int | None


@dataclass(frozen=True, slots=True)
class ScannedKey:
    """A row of a backend's page scan: `seq` is its creation sequence number."""

    key: str
    version: int
    seq: int


class Backend(abc.ABC):
    """Storage of the VSS server. Open once, share between requests, close once.

    The public calls validate their arguments (raising InvalidRequestError and changing
    nothing) and raise the protocol's errors: NoSuchKeyError, ConflictError. Anything
    else escaping a call is a server fault. Implementations provide the `_hooks`; each
    hook receives arguments already validated.
    """

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create the schema if it is missing."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections. The backend is unusable afterwards."""

    def describe(self) -> str:
        """Which database this is, for messages; never a password."""
        return type(self).__name__

    @abc.abstractmethod
    async def ping(self) -> None:
        """Run a trivial query: return if the database answers, raise otherwise (for /health)."""

    async def get_object(self, user: str, store_id: str, key: str) -> StoredObject:
        """The key's value and version; the reserved key `global_version` reads the counter."""
        check_store_id(store_id)
        check_key(key)
        if key == GLOBAL_VERSION_KEY:
            version = await self._read_global_version(user, store_id)
            return StoredObject(GLOBAL_VERSION_KEY, version, b"")
        found = await self._read_object(user, store_id, key)
        if found is None:
            raise NoSuchKeyError(f"no key {key!r} in store {store_id!r}")
        return found

    async def put_objects(
        self,
        user: str,
        store_id: str,
        global_version: int | None,
        writes: Sequence[Write],
        deletes: Sequence[Delete],
    ) -> None:
        """Apply writes and deletes all-or-nothing, checking and bumping `global_version` if given.

        Raises ConflictError when a version does not match or a delete removes no row.
        """
        check_store_id(store_id)
        check_put(writes, deletes)
        await self._commit_put(user, store_id, global_version, list(writes), list(deletes))

    async def delete_object(self, user: str, store_id: str, key: str, version: int) -> None:
        """Delete the key (only at `version` unless it is -1). Idempotent: no row, no error."""
        check_store_id(store_id)
        check_writable_key(key)
        check_item_version(key, version)
        await self._delete_if_present(user, store_id, key, version)

    async def list_key_versions(
        self,
        user: str,
        store_id: str,
        *,
        prefix: str = "",
        page_size: int | None = None,
        page_token: str | None = None,
    ) -> KeyPage:
        """One page of keys, newest created first, with the global version on the first page."""
        check_store_id(store_id)
        if "\x00" in prefix:
            raise InvalidRequestError("key_prefix must not contain NUL characters")
        if page_size is None:
            limit = MAX_PAGE_SIZE
        elif page_size < 0:
            raise InvalidRequestError(f"page_size must not be negative, got {page_size}")
        else:
            limit = min(page_size, MAX_PAGE_SIZE)
        before_seq = None if page_token is None else decode_page_token(page_token)
        first_page = page_token is None
        global_version, rows = await self._scan_page(
            user, store_id, prefix, limit, before_seq, with_global_version=first_page
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return KeyPage(
            key_versions=[KeyVersion(row.key, row.version) for row in rows],
            next_page_token=encode_page_token(rows[-1].seq) if more and rows else None,
            global_version=global_version,
        )

    # -- storage hooks -------------------------------------------------------------

    @abc.abstractmethod
    async def _read_object(self, user: str, store_id: str, key: str) -> StoredObject | None:
        """The stored object, or None."""

    @abc.abstractmethod
    async def _read_global_version(self, user: str, store_id: str) -> int:
        """The store's global version; 0 if it was never written."""

    @abc.abstractmethod
    async def _commit_put(
        self,
        user: str,
        store_id: str,
        global_version: int | None,
        writes: list[Write],
        deletes: list[Delete],
    ) -> None:
        """One atomic transaction: global version check and increment, writes, deletes.

        Raise ConflictError (and change nothing) on the first mismatch.
        """

    @abc.abstractmethod
    async def _delete_if_present(self, user: str, store_id: str, key: str, version: int) -> None:
        """Delete the row if it exists (and is at `version`, unless -1); else do nothing."""

    @abc.abstractmethod
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
        """Up to `limit + 1` keys starting with `prefix` (literally), newest created first.

        Only keys created before `before_seq` if it is set. With `with_global_version`,
        also the global version, read before the keys; else None. When `limit` is 0
        return no keys.
        """


# -- validation shared by every backend -------------------------------------------


def check_store_id(store_id: str) -> None:
    if not store_id:
        raise InvalidRequestError("store_id must not be empty")
    if len(store_id) > MAX_STORE_ID_CHARS:
        raise InvalidRequestError(
            f"store_id is {len(store_id)} characters, the limit is {MAX_STORE_ID_CHARS}"
        )
    if "\x00" in store_id:
        raise InvalidRequestError("store_id must not contain NUL characters")


def check_key(key: str) -> None:
    if not key:
        raise InvalidRequestError("key must not be empty")
    if len(key) > MAX_KEY_CHARS:
        raise InvalidRequestError(f"key is {len(key)} characters, the limit is {MAX_KEY_CHARS}")
    # Text columns of PostgreSQL cannot hold NUL; refuse it everywhere so backends agree.
    if "\x00" in key:
        raise InvalidRequestError("key must not contain NUL characters")


def check_writable_key(key: str) -> None:
    check_key(key)
    if key == GLOBAL_VERSION_KEY:
        raise InvalidRequestError(
            f"{GLOBAL_VERSION_KEY!r} is reserved for the store's global version; "
            "use putObjects' global_version field"
        )


def check_item_version(key: str, version: int) -> None:
    if version < UNCONDITIONAL:
        raise InvalidRequestError(f"version {version} of key {key!r} is invalid (must be >= -1)")


def check_put(writes: Sequence[Write], deletes: Sequence[Delete]) -> None:
    count = len(writes) + len(deletes)
    if count > MAX_ITEMS_PER_PUT:
        raise InvalidRequestError(
            f"putObjects carries {count} items, the limit is {MAX_ITEMS_PER_PUT}; split the call"
        )
    seen: set[str] = set()
    items: list[Write | Delete] = [*writes, *deletes]
    for item in items:
        check_writable_key(item.key)
        check_item_version(item.key, item.version)
        if item.key in seen:
            raise InvalidRequestError(f"key {item.key!r} appears more than once in one putObjects")
        seen.add(item.key)


# -- page tokens ----------------------------------------------------------------------
# A token is the creation sequence number of the last key of the previous page, as
# unpadded URL-safe base64 of its decimal digits. Clients treat it as opaque.

MAX_SEQ = 2**63 - 1
"""Sequence numbers are int64 in both engines: a token beyond it was never issued."""
_MAX_TOKEN_CHARS = 26
"""The longest token we issue: base64 of the 19 digits of MAX_SEQ."""


def encode_page_token(seq: int) -> str:
    return base64.urlsafe_b64encode(str(seq).encode("ascii")).rstrip(b"=").decode("ascii")


def decode_page_token(token: str) -> int:
    """The sequence number inside `token`; InvalidRequestError if it is not one of ours."""
    if not token:
        raise InvalidRequestError("page_token is empty; leave it unset for the first page")
    if len(token) > _MAX_TOKEN_CHARS:
        # Checked before decoding: int() of thousands of digits raises, and the database
        # cannot compare with a number past int64.
        raise InvalidRequestError("page_token is malformed; pass back next_page_token unchanged")
    try:
        raw = token.encode("ascii")
        padded = raw + b"=" * (-len(raw) % 4)
        text = base64.urlsafe_b64decode(padded).decode("ascii")
    except (UnicodeError, binascii.Error, ValueError):
        raise InvalidRequestError("page_token is malformed; pass back next_page_token unchanged") from None
    if not (text.isascii() and text.isdigit()) or encode_page_token(int(text)) != token or int(text) > MAX_SEQ:
        raise InvalidRequestError("page_token is malformed; pass back next_page_token unchanged")
    return int(text)


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs and messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    authority = f"{userinfo}@{hostport}" if at else hostport
    return f"{scheme}://{authority}{slash}{tail}"
