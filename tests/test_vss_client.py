"""VssClient against in-process fake servers (httpx.MockTransport): wire encoding,
decoding, error mapping, retry policy and authorization headers, on asyncio and trio."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import anyio
import httpx
import pytest

import vss.client
from vss.auth import verify_header
from vss.backoff import Backoff
from vss.client import FixedHeaders, RetryPolicy, SignatureAuth, VssClient
from vss.errors import (
    AuthError,
    ConflictError,
    InternalServerError,
    InvalidRequestError,
    NoSuchKeyError,
    RequestTooLargeError,
    VssError,
    VssUnavailableError,
)
from vss.proto import vss_pb2

BASE = "http://vss.test/vss"
STORE = "store-1"
SIGNING_KEY = bytes.fromhex("4b78cf03b10fe46e63552fccc1217d62d654542969f0d994d91440cdbb5f0ee2")
FAST = RetryPolicy(attempts=3, base_delay_s=0.001, max_total_s=1.0)

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(params=["asyncio", "trio"], scope="module")
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record backoff delays instead of sleeping; still yields to the event loop."""
    recorded: list[float] = []

    async def fake_sleep(delay: float) -> None:
        recorded.append(delay)
        await anyio.lowlevel.checkpoint()

    monkeypatch.setattr(vss.client, "_sleep", fake_sleep)
    return recorded


class FakeServer:
    """Records every request and answers with `handler`; counts transport closes."""

    def __init__(self, handler: Handler) -> None:
        self.requests: list[httpx.Request] = []
        self.closed = 0
        self._handler = handler
        server = self

        class _Transport(httpx.MockTransport):
            async def aclose(self) -> None:
                server.closed += 1

        self.transport = _Transport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self._handler(request)

    def client(self, auth=None, retry: RetryPolicy = FAST, base: str = BASE) -> VssClient:
        return VssClient(base, auth, transport=self.transport, retry=retry)


def ok(message) -> httpx.Response:
    return httpx.Response(
        200, content=message.SerializeToString(), headers={"Content-Type": "application/octet-stream"}
    )


def error(status: int, code: int, message: str) -> httpx.Response:
    body = vss_pb2.ErrorResponse(error_code=code, message=message).SerializeToString()
    return httpx.Response(status, content=body)


def scripted(*answers: httpx.Response | Exception) -> Handler:
    """A handler that gives each answer in turn (raising exceptions), then repeats the last."""
    queue = list(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handle


def assert_vss_request(request: httpx.Request, method: str) -> None:
    assert request.method == "POST"
    assert request.url.host == "vss.test"
    assert request.url.path == f"/vss/{method}"
    assert request.headers["content-type"] == "application/octet-stream"


# ------------------------------------------------------------------ encoding / decoding


@pytest.mark.anyio
async def test_get_object_encodes_request_and_decodes_value() -> None:
    stored = vss_pb2.KeyValue(key="k/1", version=7, value=b"\x00ciphertext")
    server = FakeServer(lambda request: ok(vss_pb2.GetObjectResponse(value=stored)))
    async with server.client() as client:
        result = await client.get_object(STORE, "k/1")
    assert result == stored
    (request,) = server.requests
    assert_vss_request(request, "getObject")
    assert vss_pb2.GetObjectRequest.FromString(request.content) == vss_pb2.GetObjectRequest(
        store_id=STORE, key="k/1"
    )


@pytest.mark.anyio
async def test_get_object_404_is_no_such_key_and_final() -> None:
    server = FakeServer(lambda request: error(404, vss_pb2.NO_SUCH_KEY_EXCEPTION, "no key k"))
    async with server.client() as client:
        with pytest.raises(NoSuchKeyError, match="no key k"):
            await client.get_object(STORE, "k")
    assert len(server.requests) == 1


@pytest.mark.anyio
async def test_put_objects_encodes_items_and_global_version() -> None:
    server = FakeServer(lambda request: ok(vss_pb2.PutObjectResponse()))
    writes = [
        vss_pb2.KeyValue(key="a", version=0, value=b"1"),
        vss_pb2.KeyValue(key="b", version=4, value=b""),
    ]
    deletes = [vss_pb2.KeyValue(key="c", version=-1)]
    async with server.client() as client:
        assert await client.put_objects(STORE, writes, deletes, global_version=5) is None
    (request,) = server.requests
    assert_vss_request(request, "putObjects")
    sent = vss_pb2.PutObjectRequest.FromString(request.content)
    assert sent.store_id == STORE
    assert list(sent.transaction_items) == writes
    assert list(sent.delete_items) == deletes
    assert sent.HasField("global_version") and sent.global_version == 5


@pytest.mark.anyio
async def test_put_objects_global_version_unset_vs_zero() -> None:
    server = FakeServer(lambda request: ok(vss_pb2.PutObjectResponse()))
    async with server.client() as client:
        await client.put_objects(STORE, [vss_pb2.KeyValue(key="a", version=-1, value=b"x")])
        await client.put_objects(STORE, [vss_pb2.KeyValue(key="a", version=-1, value=b"x")], global_version=0)
    unset, zero = (vss_pb2.PutObjectRequest.FromString(r.content) for r in server.requests)
    # None must not become a condition; 0 ("never written") must be one.
    assert not unset.HasField("global_version")
    assert zero.HasField("global_version") and zero.global_version == 0
    assert list(unset.delete_items) == []


@pytest.mark.anyio
async def test_delete_object_encodes_key_value() -> None:
    server = FakeServer(lambda request: ok(vss_pb2.DeleteObjectResponse()))
    target = vss_pb2.KeyValue(key="gone", version=3)
    async with server.client() as client:
        assert await client.delete_object(STORE, target) is None
    (request,) = server.requests
    assert_vss_request(request, "deleteObject")
    sent = vss_pb2.DeleteObjectRequest.FromString(request.content)
    assert sent.store_id == STORE
    assert sent.HasField("key_value") and sent.key_value == target


@pytest.mark.anyio
async def test_list_key_versions_first_page_leaves_optionals_unset() -> None:
    page = vss_pb2.ListKeyVersionsResponse(
        key_versions=[vss_pb2.KeyValue(key="b", version=2), vss_pb2.KeyValue(key="a", version=1)],
        next_page_token="tok-2",
        global_version=9,
    )
    server = FakeServer(lambda request: ok(page))
    async with server.client() as client:
        result = await client.list_key_versions(STORE)
    assert result == page
    assert [kv.key for kv in result.key_versions] == ["b", "a"]
    assert result.next_page_token == "tok-2" and result.global_version == 9
    (request,) = server.requests
    assert_vss_request(request, "listKeyVersions")
    sent = vss_pb2.ListKeyVersionsRequest.FromString(request.content)
    assert sent.store_id == STORE
    # The reference server rejects page_token "": unset is not the same as empty.
    assert not sent.HasField("page_token")
    assert not sent.HasField("key_prefix")
    assert not sent.HasField("page_size")


@pytest.mark.anyio
async def test_list_key_versions_sends_given_arguments() -> None:
    server = FakeServer(lambda request: ok(vss_pb2.ListKeyVersionsResponse()))
    async with server.client() as client:
        result = await client.list_key_versions(STORE, key_prefix="_/_/", page_size=50, page_token="tok-2")
    assert not result.HasField("next_page_token")
    sent = vss_pb2.ListKeyVersionsRequest.FromString(server.requests[0].content)
    assert sent.key_prefix == "_/_/" and sent.page_size == 50 and sent.page_token == "tok-2"


@pytest.mark.anyio
async def test_list_key_versions_refuses_empty_page_token() -> None:
    server = FakeServer(lambda request: ok(vss_pb2.ListKeyVersionsResponse()))
    async with server.client() as client:
        with pytest.raises(ValueError):
            await client.list_key_versions(STORE, page_token="")
    assert server.requests == []


@pytest.mark.anyio
async def test_iter_key_versions_follows_tokens() -> None:
    pages = {
        None: vss_pb2.ListKeyVersionsResponse(
            key_versions=[vss_pb2.KeyValue(key="c", version=1)], next_page_token="p2", global_version=3
        ),
        "p2": vss_pb2.ListKeyVersionsResponse(
            key_versions=[vss_pb2.KeyValue(key="b", version=1), vss_pb2.KeyValue(key="a", version=2)],
            next_page_token="",
        ),
    }

    def handle(request: httpx.Request) -> httpx.Response:
        sent = vss_pb2.ListKeyVersionsRequest.FromString(request.content)
        return ok(pages[sent.page_token if sent.HasField("page_token") else None])

    server = FakeServer(handle)
    async with server.client() as client:
        keys = [(kv.key, kv.version) async for kv in client.iter_key_versions(STORE, key_prefix="")]
    assert keys == [("c", 1), ("b", 1), ("a", 2)]
    assert len(server.requests) == 2


@pytest.mark.anyio
async def test_iter_key_versions_stops_on_repeated_token() -> None:
    looping = vss_pb2.ListKeyVersionsResponse(next_page_token="same")
    server = FakeServer(lambda request: ok(looping))
    async with server.client() as client:
        with pytest.raises(VssUnavailableError):
            async for _ in client.iter_key_versions(STORE):
                pass
    assert len(server.requests) == 2


@pytest.mark.anyio
@pytest.mark.parametrize(("answer", "expected"), [(42, 42), (None, 0)])
async def test_get_global_version(answer: int | None, expected: int) -> None:
    response = vss_pb2.ListKeyVersionsResponse()
    if answer is not None:
        response.global_version = answer
    server = FakeServer(lambda request: ok(response))
    async with server.client() as client:
        assert await client.get_global_version(STORE) == expected
    sent = vss_pb2.ListKeyVersionsRequest.FromString(server.requests[0].content)
    assert sent.store_id == STORE
    assert sent.HasField("page_size") and sent.page_size == 0
    assert not sent.HasField("page_token")


@pytest.mark.anyio
async def test_trailing_slash_in_base_url() -> None:
    server = FakeServer(lambda request: ok(vss_pb2.DeleteObjectResponse()))
    async with server.client(base=BASE + "/") as client:
        await client.delete_object(STORE, vss_pb2.KeyValue(key="k", version=-1))
    assert server.requests[0].url.path == "/vss/deleteObject"


def test_non_http_base_url_rejected() -> None:
    with pytest.raises(ValueError):
        VssClient("ftp://vss.test/vss")


# ------------------------------------------------------------------------ error mapping


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "code", "error_type"),
    [
        (409, vss_pb2.CONFLICT_EXCEPTION, ConflictError),
        (400, vss_pb2.INVALID_REQUEST_EXCEPTION, InvalidRequestError),
        (404, vss_pb2.NO_SUCH_KEY_EXCEPTION, NoSuchKeyError),
        (401, vss_pb2.AUTH_EXCEPTION, AuthError),
    ],
)
async def test_final_error_codes_raise_typed_error_without_retry(
    status: int, code: int, error_type: type[VssError], sleeps: list[float]
) -> None:
    server = FakeServer(lambda request: error(status, code, "server says why"))
    async with server.client() as client:
        with pytest.raises(error_type) as caught:
            await client.put_objects(STORE, [vss_pb2.KeyValue(key="k", version=1, value=b"v")])
    assert type(caught.value) is error_type
    assert str(caught.value) == "server says why"
    assert not caught.value.retryable
    assert len(server.requests) == 1
    assert sleeps == []


@pytest.mark.anyio
async def test_internal_error_code_retried_then_raised(sleeps: list[float]) -> None:
    server = FakeServer(lambda request: error(500, vss_pb2.INTERNAL_SERVER_EXCEPTION, "db down"))
    async with server.client() as client:
        with pytest.raises(InternalServerError, match="db down"):
            await client.get_object(STORE, "k")
    assert len(server.requests) == FAST.attempts
    assert len(sleeps) == FAST.attempts - 1


@pytest.mark.anyio
async def test_error_code_wins_over_status() -> None:
    # The code is the contract; a server that picks another status still means the code.
    server = FakeServer(lambda request: error(500, vss_pb2.CONFLICT_EXCEPTION, "version moved"))
    async with server.client() as client:
        with pytest.raises(ConflictError):
            await client.put_objects(STORE, [vss_pb2.KeyValue(key="k", version=1, value=b"v")])
    assert len(server.requests) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"request entity too large",
        vss_pb2.ErrorResponse(error_code=vss_pb2.INVALID_REQUEST_EXCEPTION).SerializeToString(),
    ],
)
async def test_413_is_request_too_large_and_final(body: bytes) -> None:
    server = FakeServer(lambda request: httpx.Response(413, content=body))
    async with server.client() as client:
        with pytest.raises(RequestTooLargeError):
            await client.put_objects(STORE, [vss_pb2.KeyValue(key="k", version=-1, value=b"x" * 100)])
    assert len(server.requests) == 1


@pytest.mark.anyio
async def test_empty_server_message_gets_a_useful_one() -> None:
    server = FakeServer(lambda request: error(409, vss_pb2.CONFLICT_EXCEPTION, ""))
    async with server.client() as client:
        with pytest.raises(ConflictError, match="CONFLICT_EXCEPTION"):
            await client.put_objects(STORE, [vss_pb2.KeyValue(key="k", version=1, value=b"v")])


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "body", "error_type", "requests"),
    [
        (502, b"<html><body>502 Bad Gateway</body></html>", InternalServerError, 3),
        (503, b"", InternalServerError, 3),
        (500, vss_pb2.ErrorResponse(error_code=vss_pb2.UNKNOWN, message="?").SerializeToString(),
         InternalServerError, 3),
        (500, vss_pb2.ErrorResponse(error_code=99, message="?").SerializeToString(), InternalServerError, 3),
        (401, b"<html>Unauthorized</html>", AuthError, 1),
        (400, b"", InvalidRequestError, 1),
        # A misrouted 404 must never look like a missing key (an empty store).
        (404, b"404 page not found", VssUnavailableError, 3),
        (302, b"", VssUnavailableError, 3),
        (204, b"", VssUnavailableError, 3),
    ],
)
async def test_non_vss_error_bodies_mapped_by_status(
    status: int, body: bytes, error_type: type[VssError], requests: int, sleeps: list[float]
) -> None:
    server = FakeServer(lambda request: httpx.Response(status, content=body))
    async with server.client() as client:
        with pytest.raises(error_type) as caught:
            await client.get_object(STORE, "k")
    assert type(caught.value) is error_type
    assert len(server.requests) == requests
    assert str(status) in str(caught.value)


# ------------------------------------------------------------------------------ retries


@pytest.mark.anyio
async def test_two_500s_then_success(sleeps: list[float]) -> None:
    stored = vss_pb2.KeyValue(key="k", version=2, value=b"v")
    server = FakeServer(
        scripted(
            error(500, vss_pb2.INTERNAL_SERVER_EXCEPTION, "busy"),
            httpx.Response(500, content=b"oops"),
            ok(vss_pb2.GetObjectResponse(value=stored)),
        )
    )
    async with server.client() as client:
        assert await client.get_object(STORE, "k") == stored
    assert len(server.requests) == 3
    # Every attempt sends the same call.
    assert len({r.content for r in server.requests}) == 1
    # Exponential backoff: base, then twice the base (jitter adds at most 25%).
    assert len(sleeps) == 2
    assert 0.001 <= sleeps[0] <= 0.00125
    assert 0.002 <= sleeps[1] <= 0.0025


@pytest.mark.anyio
async def test_conflict_after_a_retry_is_raised_not_retried(sleeps: list[float]) -> None:
    # A lost response then a retried conditional write: the retry sees CONFLICT; the
    # client must surface it at once and leave the decision to the caller.
    server = FakeServer(
        scripted(
            httpx.ReadError("connection reset"),
            error(409, vss_pb2.CONFLICT_EXCEPTION, "version 1 != 2"),
        )
    )
    async with server.client() as client:
        with pytest.raises(ConflictError, match="version 1 != 2"):
            await client.put_objects(STORE, [vss_pb2.KeyValue(key="k", version=1, value=b"v")])
    assert len(server.requests) == 2
    assert len(sleeps) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadError("connection reset by peer"),
        httpx.ReadTimeout("timed out"),
        httpx.ConnectTimeout("timed out"),
        httpx.RemoteProtocolError("server disconnected"),
    ],
    ids=lambda exc: type(exc).__name__,
)
async def test_transport_errors_retried_then_unavailable(failure: Exception, sleeps: list[float]) -> None:
    server = FakeServer(scripted(failure))
    async with server.client() as client:
        with pytest.raises(VssUnavailableError) as caught:
            await client.get_object(STORE, "k")
    assert len(server.requests) == FAST.attempts
    assert len(sleeps) == FAST.attempts - 1
    assert caught.value.retryable
    assert isinstance(caught.value.__cause__, type(failure))


@pytest.mark.anyio
async def test_transport_error_then_success(sleeps: list[float]) -> None:
    server = FakeServer(scripted(httpx.ConnectError("refused"), ok(vss_pb2.PutObjectResponse())))
    async with server.client() as client:
        await client.put_objects(STORE, [vss_pb2.KeyValue(key="k", version=-1, value=b"v")])
    assert len(server.requests) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("attempts, tries", [(1, "1 attempt"), (2, "2 attempts"), (5, "5 attempts")])
async def test_retries_bounded_by_attempts(attempts: int, tries: str, sleeps: list[float]) -> None:
    server = FakeServer(lambda request: httpx.Response(503))
    retry = RetryPolicy(attempts=attempts, base_delay_s=0.001, max_total_s=10.0)
    async with server.client(retry=retry) as client:
        with pytest.raises(InternalServerError) as caught:
            await client.delete_object(STORE, vss_pb2.KeyValue(key="k", version=-1))
    assert len(server.requests) == attempts
    assert len(sleeps) == attempts - 1
    assert caught.value.__notes__[-1] == f"VSS deleteObject: gave up after {tries}"


@pytest.mark.anyio
async def test_total_sleep_capped_by_budget(sleeps: list[float]) -> None:
    server = FakeServer(lambda request: httpx.Response(503))
    retry = RetryPolicy(attempts=10, base_delay_s=1.0, max_total_s=2.5)
    async with server.client(retry=retry) as client:
        with pytest.raises(InternalServerError):
            await client.get_object(STORE, "k")
    # 1 s, then the 2 s step cut to the 1.5 s left, then the budget is spent.
    assert 1.0 <= sleeps[0] <= 1.25
    assert sum(sleeps) == pytest.approx(2.5)
    assert len(sleeps) == 2
    assert len(server.requests) == 3


def test_retry_policy_delays_are_exponential_and_capped() -> None:
    delays = list(RetryPolicy(attempts=6, base_delay_s=0.1, max_total_s=100).delays(random.Random(7)))
    assert len(delays) == 5
    for i, delay in enumerate(delays):
        assert 0.1 * 2**i <= delay <= 0.1 * 2**i * 1.25
    capped = list(RetryPolicy(attempts=20, base_delay_s=0.1, max_total_s=5.0).delays(random.Random(7)))
    assert sum(capped) == pytest.approx(5.0)
    assert len(capped) < 19
    assert list(RetryPolicy(attempts=1).delays()) == []
    defaults = RetryPolicy()
    assert (defaults.attempts, defaults.base_delay_s, defaults.max_total_s) == (3, 0.1, 5.0)


@pytest.mark.parametrize("kwargs", [{"attempts": 0}, {"base_delay_s": -1}, {"max_total_s": -1}])
def test_retry_policy_rejects_nonsense(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


@pytest.mark.anyio
async def test_garbage_200_body_is_unavailable_and_retried(sleeps: list[float]) -> None:
    server = FakeServer(lambda request: httpx.Response(200, content=b"\xff\xff\xff\xff"))
    async with server.client() as client:
        with pytest.raises(VssUnavailableError):
            await client.list_key_versions(STORE)
    assert len(server.requests) == FAST.attempts


@pytest.mark.anyio
async def test_garbage_200_then_good_answer(sleeps: list[float]) -> None:
    stored = vss_pb2.KeyValue(key="k", version=1, value=b"v")
    server = FakeServer(
        scripted(httpx.Response(200, content=b"\x0a\xff"), ok(vss_pb2.GetObjectResponse(value=stored)))
    )
    async with server.client() as client:
        assert await client.get_object(STORE, "k") == stored
    assert len(server.requests) == 2


@pytest.mark.anyio
async def test_get_object_200_without_value_is_unavailable(sleeps: list[float]) -> None:
    server = FakeServer(lambda request: httpx.Response(200, content=b""))
    async with server.client() as client:
        with pytest.raises(VssUnavailableError):
            await client.get_object(STORE, "k")
    assert len(server.requests) == FAST.attempts


# --------------------------------------------------------------------------------- auth


@pytest.mark.anyio
async def test_signature_auth_header_verifies_on_every_attempt(sleeps: list[float]) -> None:
    auth = SignatureAuth(SIGNING_KEY)
    server = FakeServer(
        scripted(httpx.Response(503), ok(vss_pb2.GetObjectResponse(value=vss_pb2.KeyValue(key="k"))))
    )
    async with server.client(auth=auth) as client:
        await client.get_object(STORE, "k")
    assert len(server.requests) == 2
    for request in server.requests:
        assert verify_header(request.headers["authorization"])[0] == auth.user_id
    assert auth.user_id == "03821ed58eaf742267ccf8f60c5901f8324f48b88843ac0637db42ef9950a95255"


def test_signature_auth_keeps_key_out_of_repr() -> None:
    auth = SignatureAuth(SIGNING_KEY)
    assert SIGNING_KEY.hex() not in repr(auth)
    assert auth.user_id in repr(auth)


@pytest.mark.parametrize("key", [b"\x01" * 31, b"\x00" * 32, b"\xff" * 32])
def test_signature_auth_rejects_bad_keys(key: bytes) -> None:
    with pytest.raises(ValueError):
        SignatureAuth(key)


@pytest.mark.anyio
async def test_fixed_headers_sent_and_copied() -> None:
    given = {"Authorization": "Bearer t0ken", "X-Tenant": "acme"}
    auth = FixedHeaders(given)
    given["Authorization"] = "changed later"
    server = FakeServer(lambda request: ok(vss_pb2.DeleteObjectResponse()))
    async with server.client(auth=auth) as client:
        await client.delete_object(STORE, vss_pb2.KeyValue(key="k", version=-1))
    (request,) = server.requests
    assert request.headers["authorization"] == "Bearer t0ken"
    assert request.headers["x-tenant"] == "acme"
    assert request.headers["content-type"] == "application/octet-stream"
    assert "t0ken" not in repr(auth)


@pytest.mark.anyio
async def test_no_auth_sends_no_authorization() -> None:
    server = FakeServer(lambda request: ok(vss_pb2.DeleteObjectResponse()))
    async with server.client(auth=None) as client:
        await client.delete_object(STORE, vss_pb2.KeyValue(key="k", version=-1))
    assert "authorization" not in server.requests[0].headers


@pytest.mark.anyio
async def test_secrets_stay_out_of_logs_and_errors(
    caplog: pytest.LogCaptureFixture, sleeps: list[float]
) -> None:
    auth = FixedHeaders({"Authorization": "Bearer sup3rsecret"})
    server = FakeServer(scripted(httpx.ConnectError("refused")))
    caplog.set_level(logging.DEBUG)
    async with server.client(auth=auth, base="http://user:pa55word@vss.test/vss") as client:
        with pytest.raises(VssUnavailableError) as caught:
            await client.get_object(STORE, "k")
    assert "retry" in caplog.text  # the retries were logged at all
    for secret in ("sup3rsecret", "pa55word"):
        assert secret not in caplog.text
        assert secret not in str(caught.value)
        assert all(secret not in note for note in getattr(caught.value, "__notes__", []))


# ---------------------------------------------------------------------------- lifecycle


@pytest.mark.anyio
async def test_context_manager_and_aclose_release_transport() -> None:
    server = FakeServer(lambda request: ok(vss_pb2.DeleteObjectResponse()))
    async with server.client() as client:
        await client.delete_object(STORE, vss_pb2.KeyValue(key="k", version=-1))
    assert server.closed == 1
    other = server.client()
    await other.aclose()
    assert server.closed == 2


@pytest.mark.anyio
async def test_concurrent_calls_share_one_client() -> None:
    server = FakeServer(lambda request: ok(vss_pb2.PutObjectResponse()))
    async with server.client() as client:
        async with anyio.create_task_group() as tg:
            for i in range(20):
                item = vss_pb2.KeyValue(key=f"k{i}", version=-1, value=b"v")
                tg.start_soon(client.put_objects, STORE, [item])
    sent = {vss_pb2.PutObjectRequest.FromString(r.content).transaction_items[0].key for r in server.requests}
    assert sent == {f"k{i}" for i in range(20)}


@pytest.mark.anyio
async def test_real_transport_connection_refused_is_unavailable(sleeps: list[float], anyio_backend: str) -> None:
    # The client's own transport, not a mock: aiohttp on asyncio, httpcore on trio.
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = VssClient(f"http://127.0.0.1:{port}/vss", retry=FAST, timeout_s=5.0)
    assert client.http_engine == "not chosen yet"
    async with client:
        with pytest.raises(VssUnavailableError, match="could not reach") as caught:
            await client.get_object(STORE, "k")
        assert client.http_engine == ("aiohttp" if anyio_backend == "asyncio" else "httpx")
    assert "Connect" in str(caught.value)
    assert len(sleeps) == FAST.attempts - 1


def test_retry_policy_delays_come_from_backoff() -> None:
    # One backoff implementation in the project: RetryPolicy's delays are Backoff's.
    policy = RetryPolicy(attempts=5, base_delay_s=0.2, max_total_s=100)
    assert policy.backoff == Backoff(base_s=0.2, max_s=100)
    got = list(policy.delays(random.Random(3)))
    rng = random.Random(3)
    assert got == [policy.backoff.delay(retry, rng) for retry in range(1, 5)]
