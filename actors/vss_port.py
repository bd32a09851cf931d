"""The narrow face of a VSS server that the actors use.

`vss.client.VssClient` satisfies it over HTTP; the test suite's in-memory fake
satisfies it too, and can pause at a named point, so a test can put a takeover exactly
between two reads of the ownership-guard. Only the ownership-guard calls
`put_objects`; everyone else reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from vss.proto.vss_pb2 import KeyValue, ListKeyVersionsResponse


class VssPort(Protocol):
    """The four calls the actors make; errors are vss.errors' types (NoSuchKeyError,
    ConflictError, VssUnavailableError, ...), retries are the implementation's job."""

    async def get_object(self, store_id: str, key: str) -> KeyValue:
        """The key's value and version; NoSuchKeyError if absent."""
        ...

    async def put_objects(
        self,
        store_id: str,
        transaction_items: Sequence[KeyValue] = (),
        delete_items: Sequence[KeyValue] = (),
        global_version: int | None = None,
    ) -> None:
        """All-or-nothing writes and deletes; ConflictError on any version mismatch."""
        ...

    async def list_key_versions(
        self,
        store_id: str,
        key_prefix: str | None = None,
        page_size: int | None = None,
        page_token: str | None = None,
    ) -> ListKeyVersionsResponse:
        """One page of keys and versions, newest first."""
        ...

    def iter_key_versions(
        self, store_id: str, key_prefix: str | None = None, page_size: int | None = None
    ) -> AsyncIterator[KeyValue]:
        """Every key (and version) under the prefix, page by page."""
        ...

    async def get_global_version(self, store_id: str) -> int:
        """The store's global version, 0 if it was never written."""
        ...

    async def aclose(self) -> None: ...
