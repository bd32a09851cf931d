"""VssClient's transports, on asyncio (aiohttp) and trio (httpcore): the engine chosen,
the bundled server spoken to, response bodies capped, broken answers, https trust."""

from __future__ import annotations

import contextlib
import os
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import httpx
import pytest
import trustme
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.tls import TLSListener

from conftest import RunningVssServer
from vss.client import DEFAULT_MAX_RESPONSE_BYTES, RetryPolicy, SignatureAuth, VssClient
from vss.errors import InternalServerError, NoSuchKeyError, VssUnavailableError
from vss.proto import vss_pb2

SIGNING_KEY = bytes.fromhex("4b78cf03b10fe46e63552fccc1217d62d654542969f0d994d91440cdbb5f0ee2")
ONCE = RetryPolicy(attempts=1)
STUB_TIMEOUT_S = 10.0  # bounds every wait on a stub server; a pass takes milliseconds

Handler = Callable[[ByteStream], Awaitable[None]]


@pytest.fixture(params=["asyncio", "trio"], scope="module")
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


def engine_for(anyio_backend: str) -> str:
    return "aiohttp" if anyio_backend == "asyncio" else "httpx"


# ------------------------------------------------------------------------ stub servers


async def read_request(stream: ByteStream) -> bytes:
    """Read one HTTP/1.1 request with a Content-Length body; return the body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += await stream.receive()
    return body


def http_answer(status: int, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


@contextlib.asynccontextmanager
async def stub_server(handle: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """Serve `handle(stream)` for each connection on a loopback port; yield the base URL.

    A handler's connection errors (the client hung up) end that connection only."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    served = TLSListener(listener, tls, standard_compatible=False) if tls is not None else listener

    async def guarded(stream: ByteStream) -> None:
        async with stream:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                await handle(stream)

    async with served, anyio.create_task_group() as tg:
        tg.start_soon(served.serve, guarded)
        try:
            yield f"{'https' if tls is not None else 'http'}://127.0.0.1:{port}/vss"
        finally:
            tg.cancel_scope.cancel()


def one_value_handler(stored: vss_pb2.KeyValue) -> Handler:
    async def handle(stream: ByteStream) -> None:
        await read_request(stream)
        await stream.send(http_answer(200, vss_pb2.GetObjectResponse(value=stored).SerializeToString()))

    return handle


# ------------------------------------------------------------------ the bundled server


@pytest.mark.anyio
async def test_every_call_against_the_bundled_server(vss_server: RunningVssServer, anyio_backend: str) -> None:
    store = f"transport-{uuid.uuid4().hex}"
    items = [vss_pb2.KeyValue(key=f"k{i}", version=0, value=bytes([i]) * 300) for i in range(5)]
    async with VssClient(vss_server.url, SignatureAuth(SIGNING_KEY), max_connections=4) as client:
        await client.put_objects(store, items, global_version=0)
        assert client.http_engine == engine_for(anyio_backend)
        async with anyio.create_task_group() as tg:
            got: dict[str, bytes] = {}

            async def fetch(key: str) -> None:
                got[key] = (await client.get_object(store, key)).value

            for item in items:
                tg.start_soon(fetch, item.key)
        assert got == {item.key: item.value for item in items}
        listed = [(kv.key, kv.version) async for kv in client.iter_key_versions(store, page_size=2)]
        assert sorted(listed) == [(f"k{i}", 1) for i in range(5)]
        assert await client.get_global_version(store) == 1
        await client.delete_object(store, vss_pb2.KeyValue(key="k0", version=1))
        with pytest.raises(NoSuchKeyError):
            await client.get_object(store, "k0")


@pytest.mark.anyio
async def test_httpx_engine_forced_on_asyncio(vss_server: RunningVssServer) -> None:
    store = f"forced-{uuid.uuid4().hex}"
    async with VssClient(vss_server.url, SignatureAuth(SIGNING_KEY), http_backend="httpx") as client:
        await client.put_objects(store, [vss_pb2.KeyValue(key="k", version=-1, value=b"v")])
        assert (await client.get_object(store, "k")).value == b"v"
        assert client.http_engine == "httpx"


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_aiohttp_engine_refused_on_trio() -> None:
    async with VssClient("http://127.0.0.1:9/vss", http_backend="aiohttp") as client:
        with pytest.raises(RuntimeError, match="only on asyncio"):
            await client.get_object("s", "k")


def test_bad_backend_name_and_limits_rejected() -> None:
    with pytest.raises(ValueError, match="http_backend"):
        VssClient("http://vss.test/vss", http_backend="curl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_connections"):
        VssClient("http://vss.test/vss", max_connections=0)
    with pytest.raises(ValueError, match="max_response_bytes"):
        VssClient("http://vss.test/vss", max_response_bytes=0)


@pytest.mark.anyio
async def test_closed_client_refuses_calls() -> None:
    client = VssClient("http://127.0.0.1:9/vss")
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await client.get_object("s", "k")


# ------------------------------------------------------------------ response size cap


ENDLESS_BYTES = 64 * 1024 * 1024
"""Where an "endless" body of these tests ends after all: far past any limit they set, yet
small enough that a client which stopped capping fails the test rather than exhausting
the machine's memory."""


class CountingStream(httpx.AsyncByteStream):
    """An endless body (up to ENDLESS_BYTES), counting what the client pulled from it and
    whether it closed it."""

    def __init__(self, chunk: int = 4096) -> None:
        self.chunk = chunk
        self.pulled = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.pulled < ENDLESS_BYTES:
            self.pulled += self.chunk
            yield b"\x00" * self.chunk

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.anyio
async def test_endless_streamed_body_is_cut_at_the_limit() -> None:
    streams: list[CountingStream] = []

    def handle(request: httpx.Request) -> httpx.Response:
        streams.append(CountingStream())
        return httpx.Response(200, stream=streams[-1])

    limit = 50_000
    retry = RetryPolicy(attempts=2, base_delay_s=0.0, max_total_s=0.0)
    async with VssClient("http://vss.test/vss", transport=httpx.MockTransport(handle), retry=retry,
                         max_response_bytes=limit) as client:
        with pytest.raises(VssUnavailableError, match=f"more than {limit} bytes") as caught:
            await client.get_object("s", "k")
    assert caught.value.retryable
    assert len(streams) == 2  # retried like any other broken answer
    for stream in streams:
        assert limit < stream.pulled <= limit + stream.chunk
        assert stream.closed


@pytest.mark.anyio
async def test_declared_length_over_the_limit_reads_nothing() -> None:
    stream = CountingStream()
    transport = httpx.MockTransport(lambda request: httpx.Response(200, headers={"Content-Length": "10001"}, stream=stream))
    async with VssClient("http://vss.test/vss", transport=transport, retry=ONCE, max_response_bytes=10_000) as client:
        with pytest.raises(VssUnavailableError, match="more than 10000 bytes"):
            await client.get_object("s", "k")
    assert stream.pulled == 0 and stream.closed


@pytest.mark.anyio
@pytest.mark.parametrize("status", [200, 500])
async def test_already_read_body_over_the_limit_refused(status: int) -> None:
    body = vss_pb2.GetObjectResponse(value=vss_pb2.KeyValue(key="k", value=b"x" * 100)).SerializeToString()
    transport = httpx.MockTransport(lambda request: httpx.Response(status, content=body))
    async with VssClient("http://vss.test/vss", transport=transport, retry=ONCE, max_response_bytes=len(body) - 1) as client:
        with pytest.raises(VssUnavailableError, match="more than"):
            await client.get_object("s", "k")
    async with VssClient("http://vss.test/vss", transport=transport, retry=ONCE, max_response_bytes=len(body)) as client:
        if status == 200:
            assert (await client.get_object("s", "k")).value == b"x" * 100
        else:
            with pytest.raises(InternalServerError):
                await client.get_object("s", "k")


def test_default_response_limit_holds_the_largest_request() -> None:
    # The bundled server accepts bodies up to 64 MiB; a value stored so must come back.
    assert DEFAULT_MAX_RESPONSE_BYTES > 64 * 1024 * 1024


@pytest.mark.anyio
@pytest.mark.parametrize("framing", ["chunked", "until-close"])
@pytest.mark.parametrize("call", ["get_object", "list_key_versions"])  # getObject's own connections; the engine's
async def test_real_engine_stops_reading_an_endless_body(anyio_backend: str, framing: str, call: str) -> None:
    total = ENDLESS_BYTES  # far more than the limit plus every socket buffer on the way
    sent = 0
    hung_up = anyio.Event()
    piece = b"\x00" * 65536
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n" if framing == "chunked" else b"Connection: close\r\n\r\n"
    frame = b"10000\r\n" + piece + b"\r\n" if framing == "chunked" else piece

    async def endless(stream: ByteStream) -> None:
        nonlocal sent
        await read_request(stream)
        await stream.send(head)
        try:
            while sent < total:
                await stream.send(frame)
                sent += len(piece)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            hung_up.set()

    limit = 256 * 1024
    async with stub_server(endless) as url:
        async with VssClient(url, retry=ONCE, max_response_bytes=limit) as client:
            with anyio.fail_after(STUB_TIMEOUT_S):
                with pytest.raises(VssUnavailableError, match=f"more than {limit} bytes"):
                    await (client.get_object("s", "k") if call == "get_object" else client.list_key_versions("s"))
            assert client.http_engine == engine_for(anyio_backend)
        with anyio.fail_after(STUB_TIMEOUT_S):
            await hung_up.wait()
    assert sent < total // 4


@pytest.mark.anyio
async def test_real_engine_refuses_a_declared_length_over_the_limit(anyio_backend: str) -> None:
    hung_up = anyio.Event()

    async def promise_a_lot(stream: ByteStream) -> None:
        await read_request(stream)
        await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n" + b"\x00" * 1000)
        try:
            await stream.receive()  # the client hangs up rather than wait for the rest
        except anyio.EndOfStream:
            pass
        hung_up.set()

    async with stub_server(promise_a_lot) as url:
        async with VssClient(url, retry=ONCE, max_response_bytes=1_000_000, timeout_s=60) as client:
            with anyio.fail_after(STUB_TIMEOUT_S):
                with pytest.raises(VssUnavailableError, match="more than 1000000 bytes"):
                    await client.get_object("s", "k")
        with anyio.fail_after(STUB_TIMEOUT_S):
            await hung_up.wait()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "answer",
    [b"NOT HTTP AT ALL\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n", b""],
    ids=["garbage", "bad-length", "hang-up"],
)
async def test_broken_answer_is_unavailable(anyio_backend: str, answer: bytes) -> None:
    async def broken(stream: ByteStream) -> None:
        await read_request(stream)
        if answer:
            await stream.send(answer)

    async with stub_server(broken) as url:
        async with VssClient(url, retry=ONCE) as client:
            with anyio.fail_after(STUB_TIMEOUT_S):
                with pytest.raises(VssUnavailableError, match="could not reach"):
                    await client.get_object("s", "k")
            assert client.http_engine == engine_for(anyio_backend)


# -------------------------------------------------------------------------------- https


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def ca_pem(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def no_ca_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


STORED = vss_pb2.KeyValue(key="k", version=3, value=b"over tls")


@pytest.mark.anyio
async def test_https_with_ca_file(anyio_backend: str, server_tls: ssl.SSLContext, ca_pem: Path, no_ca_env: None) -> None:
    async with stub_server(one_value_handler(STORED), server_tls) as url:
        async with VssClient(url, retry=ONCE, ca_file=ca_pem) as client:
            with anyio.fail_after(STUB_TIMEOUT_S):
                assert await client.get_object("s", "k") == STORED
            assert client.http_engine == engine_for(anyio_backend)


@pytest.mark.anyio
async def test_https_with_ssl_cert_file(
    server_tls: ssl.SSLContext, ca_pem: Path, no_ca_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_pem))
    async with stub_server(one_value_handler(STORED), server_tls) as url:
        async with VssClient(url, retry=ONCE) as client:
            with anyio.fail_after(STUB_TIMEOUT_S):
                assert await client.get_object("s", "k") == STORED


@pytest.mark.anyio
async def test_https_untrusted_ca_refused(server_tls: ssl.SSLContext, no_ca_env: None) -> None:
    async with stub_server(one_value_handler(STORED), server_tls) as url:
        async with VssClient(url, retry=ONCE) as client:
            with anyio.fail_after(STUB_TIMEOUT_S):
                with pytest.raises(VssUnavailableError, match="(?i)certificate"):
                    await client.get_object("s", "k")


def test_bad_ca_file_is_a_one_line_value_error(tmp_path: Path, no_ca_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    cases = [(tmp_path / "missing.pem", "not found"), (tmp_path, "not found"), (garbage, "cannot be loaded")]
    for path, reason in cases:
        with pytest.raises(ValueError, match=reason) as caught:
            VssClient("https://vss.test/vss", ca_file=path)
        message = str(caught.value)
        assert "\n" not in message and str(path) in message
    # Checked even for http: a wrong path is a configuration error either way.
    with pytest.raises(ValueError, match="not found"):
        VssClient("http://vss.test/vss", ca_file=tmp_path / "missing.pem")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match="SSL_CERT_FILE"):
        VssClient("https://vss.test/vss")
    VssClient("http://vss.test/vss")  # http without ca_file never loads CAs


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_aiohttp_errors_are_unavailable_under_a_callers_transport_too() -> None:
    from vss.transport import aiohttp_transport, unused_tls_context

    async def garbage(stream: ByteStream) -> None:
        await read_request(stream)
        await stream.send(b"NOT HTTP AT ALL\r\n\r\n")

    async with stub_server(garbage) as url:
        transport = aiohttp_transport(2, unused_tls_context())
        async with VssClient(url, retry=ONCE, transport=transport) as client:
            with anyio.fail_after(STUB_TIMEOUT_S):
                with pytest.raises(VssUnavailableError, match="could not reach"):
                    await client.get_object("s", "k")
            assert client.http_engine == "caller's transport"


# ------------------------------------------------------- getObject's bare aiohttp path


class Recorder:
    """A stub server's handler: keep-alive, answering the queued (status, body) pairs in
    turn (the last one from then on), recording each request's head and body.

    `raw`: the whole answer as bytes instead (the last one from then on); `close_after`:
    hang up after each answer without saying so; `delay_s`: wait before answering.
    `connections` counts the connections made, `most_at_once` those open together."""

    def __init__(self, *answers: tuple[int, bytes], raw: list[bytes] | None = None, close_after: bool = False,
                 delay_s: float = 0.0) -> None:
        self.answers = list(answers)
        self.raw = raw
        self.close_after = close_after
        self.delay_s = delay_s
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.connections = 0
        self.open = 0
        self.most_at_once = 0
        self.hung_up = 0  # connections the client closed

    def next_answer(self) -> bytes:
        if self.raw is not None:
            return self.raw.pop(0) if len(self.raw) > 1 else self.raw[0]
        status, answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return (f"HTTP/1.1 {status} X\r\nContent-Type: application/octet-stream\r\nContent-Length: {len(answer)}"
                "\r\n\r\n").encode() + answer

    async def __call__(self, stream: ByteStream) -> None:
        self.connections += 1
        self.open += 1
        self.most_at_once = max(self.most_at_once, self.open)
        try:
            await self._serve(stream)
        except anyio.EndOfStream:
            self.hung_up += 1
            raise
        finally:
            self.open -= 1

    async def _serve(self, stream: ByteStream) -> None:
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                buffer += await stream.receive()
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
            length = int(headers.get("content-length", "0"))
            while len(buffer) < length:
                buffer += await stream.receive()
            body, buffer = buffer[:length], buffer[length:]
            self.requests.append(({"request-line": lines[0], **headers}, body))
            if self.delay_s:
                await anyio.sleep(self.delay_s)
            await stream.send(self.next_answer())
            if self.close_after:
                return


def value_answer(stored: vss_pb2.KeyValue) -> tuple[int, bytes]:
    return 200, vss_pb2.GetObjectResponse(value=stored).SerializeToString()


@pytest.mark.anyio
async def test_get_object_sends_what_every_other_call_sends(anyio_backend: str) -> None:
    # getObject goes bare on asyncio's own engine, putObjects through httpx: the server
    # must not be able to tell them apart by their headers.
    recorder = Recorder(value_answer(STORED), (200, vss_pb2.PutObjectResponse().SerializeToString()))
    async with stub_server(recorder) as url:
        async with VssClient(url, SignatureAuth(SIGNING_KEY), retry=ONCE) as client:
            with anyio.fail_after(STUB_TIMEOUT_S):
                assert await client.get_object("s", "k") == STORED
                await client.put_objects("s", [vss_pb2.KeyValue(key="k", version=-1, value=b"v")])
            bare = client._connections.bare("getObject", client._urls["getObject"])
            assert (bare is not None) == (anyio_backend == "asyncio")
    (get_headers, get_body), (put_headers, _) = recorder.requests
    assert get_body == vss_pb2.GetObjectRequest(store_id="s", key="k").SerializeToString()
    assert get_headers["request-line"] == "POST /vss/getObject HTTP/1.1"
    for name in ("content-type", "user-agent", "accept-encoding", "host"):
        assert get_headers[name] == put_headers[name], name
    assert get_headers["content-type"] == "application/octet-stream"
    assert get_headers["accept-encoding"] == "identity"
    assert get_headers["authorization"] == put_headers["authorization"]  # one signature, reused
    assert len(get_headers["authorization"]) > 100


@pytest.mark.anyio
async def test_get_object_with_credentials_in_the_url_sends_basic_auth(anyio_backend: str) -> None:
    recorder = Recorder(value_answer(STORED))
    async with stub_server(recorder) as url:
        with_user = url.replace("http://", "http://alice:secret@")
        async with VssClient(with_user, SignatureAuth(SIGNING_KEY), retry=ONCE) as client:
            with anyio.fail_after(STUB_TIMEOUT_S):
                assert await client.get_object("s", "k") == STORED
    headers, _ = recorder.requests[0]
    assert headers["authorization"] == "Basic YWxpY2U6c2VjcmV0"
    assert "alice" not in headers["request-line"]


@pytest.mark.anyio
async def test_get_object_errors_are_typed_and_retried_as_on_every_path(anyio_backend: str) -> None:
    error = vss_pb2.ErrorResponse(error_code=vss_pb2.INTERNAL_SERVER_EXCEPTION, message="try again")
    recorder = Recorder((500, error.SerializeToString()), (200, b"\xff not a protobuf"), value_answer(STORED))
    retry = RetryPolicy(attempts=3, base_delay_s=0.0, max_total_s=0.0)
    async with stub_server(recorder) as url:
        async with VssClient(url, retry=retry) as client:
            with anyio.fail_after(STUB_TIMEOUT_S):
                assert await client.get_object("s", "k") == STORED
    assert len(recorder.requests) == 3
    missing = vss_pb2.ErrorResponse(error_code=vss_pb2.NO_SUCH_KEY_EXCEPTION, message="no k")
    recorder = Recorder((404, missing.SerializeToString()))
    async with stub_server(recorder) as url:
        async with VssClient(url, retry=retry) as client:
            with anyio.fail_after(STUB_TIMEOUT_S):
                with pytest.raises(NoSuchKeyError):
                    await client.get_object("s", "k")
    assert len(recorder.requests) == 1  # final: not retried


@pytest.mark.anyio
async def test_get_object_times_out_as_unavailable(anyio_backend: str) -> None:
    async def silent(stream: ByteStream) -> None:
        await read_request(stream)
        await anyio.sleep(STUB_TIMEOUT_S)

    async with stub_server(silent) as url:
        async with VssClient(url, retry=ONCE, timeout_s=0.2) as client:
            with anyio.fail_after(STUB_TIMEOUT_S):
                with pytest.raises(VssUnavailableError, match="could not reach"):
                    await client.get_object("s", "k")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_a_callers_transport_sees_every_get_object() -> None:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, content=vss_pb2.GetObjectResponse(value=STORED).SerializeToString())

    async with VssClient("http://vss.test/vss", transport=httpx.MockTransport(handle), retry=ONCE) as client:
        assert await client.get_object("s", "k") == STORED
        assert client._connections.bare("getObject", client._urls["getObject"]) is None
    assert seen == ["/vss/getObject"]


GOT = vss_pb2.GetObjectResponse(value=STORED).SerializeToString()


def framed(head: str, body: bytes = GOT) -> bytes:
    return head.replace("{n}", str(len(body))).encode() + body


async def fetch_times(url: str, count: int, **kwargs: object) -> None:
    async with VssClient(url, retry=ONCE, **kwargs) as client:  # type: ignore[arg-type]
        for _ in range(count):
            with anyio.fail_after(STUB_TIMEOUT_S):
                assert await client.get_object("s", "k") == STORED


ASYNCIO_ONLY = pytest.mark.parametrize("anyio_backend", ["asyncio"])


@ASYNCIO_ONLY
@pytest.mark.anyio
async def test_bare_get_objects_keep_one_connection_alive() -> None:
    recorder = Recorder(value_answer(STORED))
    async with stub_server(recorder) as url:
        await fetch_times(url, 5)
    assert recorder.connections == 1 and len(recorder.requests) == 5


@ASYNCIO_ONLY
@pytest.mark.anyio
async def test_bare_get_objects_wait_in_turn_beyond_max_connections() -> None:
    recorder = Recorder(value_answer(STORED), delay_s=0.02)
    async with stub_server(recorder) as url, VssClient(url, retry=ONCE, max_connections=2) as client:
        async def fetch() -> None:
            assert await client.get_object("s", "k") == STORED

        with anyio.fail_after(STUB_TIMEOUT_S):
            async with anyio.create_task_group() as tg:
                for _ in range(9):
                    tg.start_soon(fetch)
            assert recorder.most_at_once == 2 and recorder.connections == 2
            # Requests cancelled while they wait or are answered: no slot may be lost.
            with anyio.move_on_after(0.01):
                async with anyio.create_task_group() as tg:
                    for _ in range(5):
                        tg.start_soon(fetch)
            (pool,) = client._connections.get()._pools.values()  # type: ignore[attr-defined]
            assert pool._open <= 2 and not pool._waiters
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(fetch)


@ASYNCIO_ONLY
@pytest.mark.anyio
async def test_a_connection_the_server_closed_while_idle_is_replaced_without_a_retry() -> None:
    # The server hangs up after each answer without a Connection: close. The client may
    # only notice when it reuses the connection: the request then goes once more on a
    # new one, which is no retry (retry=ONCE allows none).
    recorder = Recorder(value_answer(STORED), close_after=True)
    async with stub_server(recorder) as url:
        await fetch_times(url, 4)
    assert recorder.connections == 4


@ASYNCIO_ONLY
@pytest.mark.anyio
async def test_answers_framed_every_way_are_read() -> None:
    body = b"".join(f"{len(part):x};ext=1\r\n".encode() + part + b"\r\n" for part in (GOT[:5], GOT[5:]))
    raw = [
        framed("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n"),
        b"HTTP/1.1 100 Continue\r\n\r\n" + framed("HTTP/1.1 200 OK\r\ncontent-length:{n}\r\n\r\n"),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body + b"0\r\nX-Trailer: t\r\n\r\n",
        framed("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {n}\r\n\r\n"),
        framed("HTTP/1.0 200 OK\r\nContent-Length: {n}\r\n\r\n"),
        framed("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: {n}\r\n\r\n"),
        framed("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n"),
    ]
    recorder = Recorder(raw=raw)
    async with stub_server(recorder) as url:
        await fetch_times(url, len(raw))
    # A new connection after the Connection: close and after the plain HTTP/1.0 answer.
    assert recorder.connections == 3


@ASYNCIO_ONLY
@pytest.mark.anyio
@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nabcde\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcdefg\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/2 200\r\n\r\n",
    b"HTTP/1.1 20 OK\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n",
], ids=["bad-size", "0x-size", "chunk-overrun", "gzip", "two-lengths", "no-colon", "http2", "short-status",
        "switch", "cut-body", "long-head"])
async def test_answers_that_are_not_http_we_read_are_unavailable(answer: bytes) -> None:
    async def broken(stream: ByteStream) -> None:
        await read_request(stream)
        await stream.send(answer)

    async with stub_server(broken) as url, VssClient(url, retry=ONCE) as client:
        with anyio.fail_after(STUB_TIMEOUT_S):
            with pytest.raises(VssUnavailableError, match="could not reach") as caught:
                await client.get_object("s", "k")
    assert "HttpProtocolError" in str(caught.value) or "IncompleteRead" in str(caught.value)


@ASYNCIO_ONLY
@pytest.mark.anyio
async def test_idle_connections_are_closed_after_the_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    import vss.transport

    monkeypatch.setattr(vss.transport, "KEEPALIVE_S", 0.05)
    recorder = Recorder(value_answer(STORED))
    async with stub_server(recorder) as url, VssClient(url, retry=ONCE) as client:
        with anyio.fail_after(STUB_TIMEOUT_S):
            assert await client.get_object("s", "k") == STORED
            while recorder.hung_up == 0:  # closed by the client while idle, without any call
                await anyio.sleep(0.01)
            assert await client.get_object("s", "k") == STORED
    assert recorder.connections == 2


@ASYNCIO_ONLY
@pytest.mark.anyio
async def test_closing_the_client_closes_its_idle_connections() -> None:
    recorder = Recorder(value_answer(STORED))
    async with stub_server(recorder) as url:
        client = VssClient(url, retry=ONCE)
        with anyio.fail_after(STUB_TIMEOUT_S):
            assert await client.get_object("s", "k") == STORED
            await client.aclose()
            while recorder.hung_up == 0:
                await anyio.sleep(0.01)
        with pytest.raises(RuntimeError, match="closed"):
            await client.get_object("s", "k")


@ASYNCIO_ONLY
@pytest.mark.anyio
async def test_a_large_body_is_read_whole() -> None:
    stored = vss_pb2.KeyValue(key="k", version=1, value=os.urandom(3 * 1024 * 1024 + 17))
    recorder = Recorder(value_answer(stored))
    async with stub_server(recorder) as url, VssClient(url, retry=ONCE) as client:
        with anyio.fail_after(STUB_TIMEOUT_S):
            assert await client.get_object("s", "k") == stored


@ASYNCIO_ONLY
@pytest.mark.anyio
async def test_header_values_with_line_breaks_never_reach_the_wire() -> None:
    class Injecting:
        def headers(self) -> dict[str, str]:
            return {"X-Tenant": "a\r\nX-Evil: 1"}

    recorder = Recorder(value_answer(STORED))
    async with stub_server(recorder) as url, VssClient(url, Injecting(), retry=ONCE) as client:
        with pytest.raises(ValueError, match="line break"):
            await client.get_object("s", "k")
    assert recorder.requests == []


@ASYNCIO_ONLY
@pytest.mark.anyio
async def test_bare_get_objects_come_through_a_faulty_link_intact(vss_server: RunningVssServer, tmp_path: Path) -> None:
    # The fault proxy (tests/faults) between the client and the bundled server resets
    # requests and answers, answers 500 or garbage, stalls: every getObject still gets
    # its own value back, through the client's retries and the pool's reconnections.
    import subprocess
    import sys

    from conftest import REPO_ROOT, free_loopback_port

    store = f"faulty-{uuid.uuid4().hex}"
    items = [vss_pb2.KeyValue(key=f"k{i}", version=-1, value=os.urandom(200)) for i in range(60)]
    async with VssClient(vss_server.url, SignatureAuth(SIGNING_KEY)) as direct:
        await direct.put_objects(store, items)
    port = free_loopback_port()
    log = tmp_path / "proxy.log"
    with log.open("wb") as out:
        proxy = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.proxy", "--listen", f"127.0.0.1:{port}",
             "--upstream", vss_server.url.removesuffix("/vss"), "--seed", "11", "--reset-request-rate", "0.05",
             "--reset-response-rate", "0.05", "--error-500-rate", "0.05", "--garbage-rate", "0.05",
             "--stall-response-rate", "0.02", "--stall-ms", "100"],
            cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        with anyio.fail_after(STUB_TIMEOUT_S):
            while b"listening" not in log.read_bytes():
                assert proxy.poll() is None, log.read_text()
                await anyio.sleep(0.05)
        retry = RetryPolicy(attempts=8, base_delay_s=0.001, max_total_s=5.0)
        async with VssClient(f"http://127.0.0.1:{port}/vss", SignatureAuth(SIGNING_KEY), retry=retry,
                             max_connections=8, timeout_s=2.0) as client:
            got: dict[str, bytes] = {}

            async def fetch(item: vss_pb2.KeyValue) -> None:
                got[item.key] = (await client.get_object(store, item.key)).value

            with anyio.fail_after(60):
                for _ in range(3):
                    async with anyio.create_task_group() as tg:
                        for item in items:
                            tg.start_soon(fetch, item)
            assert got == {item.key: item.value for item in items}
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
    assert "reset_response" in log.read_text()  # faults were injected
