"""The lean reference restore: how fast a minimal client reads a whole VSS store back.

The yardstick the node's restore is compared against: the same work (list every page,
getObject every key, decrypt every value) with as little client machinery as Python
allows, so the gap between the two is what the node's own layers cost.

- HTTP/1.1 by hand over `asyncio.open_connection`, keep-alive: one connection per
  fetcher (CONNECTIONS of them) plus one for the listing. No httpx, no aiohttp, no
  retries: any failure ends the run (it is a measuring stick, not a client).
- The Authorization header is `vss.auth.sign_header`'s signature, reused for 10 s as
  VssClient reuses it.
- One task lists the store page by page (listKeyVersions) and hands each key to the
  fetchers as soon as its page arrives, so listing and fetching overlap.
- Every value is opened with `node.crypto.decrypt_value`; the fence key (plain text,
  not part of the KV data) is skipped, as the node's restorer skips it.

    from lean_client import lean_restore
    result = await lean_restore("http://127.0.0.1:8081/vss", signing_key, store_id)
    result.keys_per_s, result.cpu_ms_per_key, result.values

As a script, against a server: `python bench/lean_client.py URL --signing-key HEX
--store ID`; without URL it starts the bundled server, fills a store (--keys,
--value-size) and restores that.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from actors.ownership_guard import FENCE_KEY  # noqa: E402
from node.crypto import decrypt_value  # noqa: E402
from vss.auth import sign_header  # noqa: E402
from vss.proto import vss_pb2  # noqa: E402

CONNECTIONS = 32
SIGNATURE_REUSE_S = 10.0
_DONE = None  # what the lister sends each fetcher when the listing is over


@dataclass
class LeanResult:
    """A lean restore: keys fetched and decrypted, their plaintext bytes, wall and CPU time."""

    keys: int
    bytes: int
    seconds: float
    cpu_seconds: float  # this process's user + sys CPU over the restore
    values: dict[str, bytes] = field(repr=False, default_factory=dict)  # VSS key -> plaintext

    @property
    def keys_per_s(self) -> float:
        return self.keys / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_key(self) -> float:
        return self.cpu_seconds / self.keys * 1000 if self.keys else 0.0


class Signer:
    """The Authorization header, signed again once it is SIGNATURE_REUSE_S old."""

    def __init__(self, signing_key: bytes) -> None:
        self._key = signing_key
        self._header = b""
        self._signed_at = -SIGNATURE_REUSE_S

    def header(self) -> bytes:
        now = time.monotonic()
        if now - self._signed_at >= SIGNATURE_REUSE_S:
            self._header = sign_header(self._key).encode("ascii")
            self._signed_at = now
        return self._header


class Connection:
    """One keep-alive HTTP/1.1 connection; requests one at a time, reopened if the server closes it."""

    def __init__(self, url: str, signer: Signer) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or parts.hostname is None:
            raise ValueError(f"lean client needs an http(s):// base URL, got {url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._path = parts.path.rstrip("/").encode()
        self._host_header = parts.netloc.rpartition("@")[2].encode()
        self._signer = signer
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, call: bytes, body: bytes) -> tuple[int, bytes]:
        """POST `body` to `{base}/{call}`; (status, response body)."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port, ssl=self._tls)
        assert self._reader is not None
        self._writer.write(
            b"POST " + self._path + b"/" + call + b" HTTP/1.1\r\nHost: " + self._host_header
            + b"\r\nContent-Type: application/octet-stream\r\nAuthorization: " + self._signer.header()
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length: int | None = None
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                close = value.strip().lower() == b"close"
            elif name == b"transfer-encoding":
                raise RuntimeError("lean client: the server sent a chunked body; only Content-Length is read")
        if length is None:
            raise RuntimeError("lean client: a response without Content-Length")
        data = await self._reader.readexactly(length)
        if close:
            await self.aclose()
        return status, data

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer, self._reader = None, None


def _error(call: str, status: int, data: bytes) -> RuntimeError:
    try:
        parsed = vss_pb2.ErrorResponse.FromString(data)
        detail = f"{vss_pb2.ErrorCode.Name(parsed.error_code)}: {parsed.message}"
    except Exception:  # noqa: BLE001 - any body that is not an ErrorResponse
        detail = f"{len(data)} bytes that are not a VSS error"
    return RuntimeError(f"lean client: {call} answered HTTP {status} ({detail})")


async def lean_restore(
    base_url: str,
    signing_key: bytes,
    store_id: str,
    connections: int = CONNECTIONS,
    *,
    keep_values: bool = True,
) -> LeanResult:
    """Read the whole store `store_id` back and decrypt it; see the module doc.

    `keep_values=False` drops each plaintext once decrypted (the counts remain)."""
    signer = Signer(signing_key)
    keys: asyncio.Queue[str | None] = asyncio.Queue(maxsize=connections * 4)
    values: dict[str, bytes] = {}
    totals = [0, 0]  # keys, plaintext bytes

    async def list_keys() -> None:
        connection = Connection(base_url, signer)
        try:
            request = vss_pb2.ListKeyVersionsRequest(store_id=store_id)
            while True:
                status, data = await connection.post(b"listKeyVersions", request.SerializeToString())
                if status != 200:
                    raise _error("listKeyVersions", status, data)
                page = vss_pb2.ListKeyVersionsResponse.FromString(data)
                for item in page.key_versions:
                    if item.key != FENCE_KEY:
                        await keys.put(item.key)
                if not page.next_page_token:
                    break
                request.page_token = page.next_page_token
        finally:
            await connection.aclose()
            for _ in range(connections):
                await keys.put(_DONE)

    async def fetch() -> None:
        connection = Connection(base_url, signer)
        request = vss_pb2.GetObjectRequest(store_id=store_id)
        try:
            while (key := await keys.get()) is not _DONE:
                request.key = key
                status, data = await connection.post(b"getObject", request.SerializeToString())
                if status != 200:
                    raise _error("getObject", status, data)
                plaintext = decrypt_value(signing_key, vss_pb2.GetObjectResponse.FromString(data).value.value)
                totals[0] += 1
                totals[1] += len(plaintext)
                if keep_values:
                    values[key] = plaintext
        finally:
            await connection.aclose()

    cpu, wall = time.process_time(), time.perf_counter()
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(list_keys())
        for _ in range(connections):
            tasks.create_task(fetch())
    return LeanResult(totals[0], totals[1], time.perf_counter() - wall, time.process_time() - cpu, values)


# ------------------------------------------------------------------------------ script


async def _fill(url: str, signing_key: bytes, store_id: str, count: int, value_size: int) -> None:
    from node.crypto import encrypt_value
    from vss.client import SignatureAuth, VssClient

    async with VssClient(url, SignatureAuth(signing_key)) as client:
        for first in range(0, count, 1000):
            items = [
                vss_pb2.KeyValue(key=f"_/_/k{i:07d}", version=-1, value=encrypt_value(signing_key, os.urandom(value_size)))
                for i in range(first, min(first + 1000, count))
            ]
            await client.put_objects(store_id, items)


def main() -> None:
    parser = argparse.ArgumentParser(description="The lean reference restore (bench/lean_client.py).")
    parser.add_argument("url", nargs="?", help="VSS base URL; without it a bundled server is started and filled")
    parser.add_argument("--signing-key", help="the store's signing key, 64 hex digits (with URL)")
    parser.add_argument("--store", default="lean-bench", help="store id (default lean-bench)")
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument("--keys", type=int, default=10_000, help="keys to fill the bundled server with (default 10000)")
    parser.add_argument("--value-size", type=int, default=1024, help="plaintext bytes per value (default 1024)")
    args = parser.parse_args()
    server = None
    if args.url:
        if not args.signing_key:
            parser.error("--signing-key is needed with a URL")
        url, signing_key = args.url, bytes.fromhex(args.signing_key)
    else:
        from tests.conftest import start_vss_server

        signing_key = os.urandom(32)
        server = start_vss_server(Path(tempfile.mkdtemp(prefix="lean-client-")), "--auth", "sigs")
        url = server.url
    try:
        if server is not None:
            asyncio.run(_fill(url, signing_key, args.store, args.keys, args.value_size))
        result = asyncio.run(lean_restore(url, signing_key, args.store, args.connections, keep_values=False))
    finally:
        if server is not None:
            from tests.conftest import stop_vss_server

            stop_vss_server(server)
    print(
        f"lean restore: {result.keys} keys, {result.bytes} bytes in {result.seconds:.2f} s: "
        f"{result.keys_per_s:.0f} keys/s, {result.cpu_ms_per_key:.3f} ms CPU per key "
        f"({args.connections} connections; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())})"
    )


if __name__ == "__main__":
    main()
