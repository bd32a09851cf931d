"""The client's header authorization: FixedHeaders, HeaderFile, headers_auth, and the one
retry after an AUTH error with refreshed headers; values never in reprs, logs or errors."""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

import httpx
import pytest

from vss.auth import verify_header
from vss.client import (
    CombinedAuth,
    FixedHeaders,
    HeaderFile,
    RetryPolicy,
    SignatureAuth,
    VssClient,
    headers_auth,
)
from vss.errors import AuthError
from vss.proto import vss_pb2

SIGNING_KEY = bytes.fromhex("4b78cf03b10fe46e63552fccc1217d62d654542969f0d994d91440cdbb5f0ee2")
SECRET = "s3cr3t-t0ken-value"
STORED = vss_pb2.KeyValue(key="k", version=1, value=b"v")


@pytest.fixture(params=["asyncio", "trio"], scope="module")
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def names(headers: object) -> set[str]:
    assert isinstance(headers, dict)
    return {name.lower() for name in headers}


# ------------------------------------------------------------------------- header file


def test_header_file_parses_names_values_comments_and_blanks(tmp_path: Path) -> None:
    path = write(tmp_path / "h", f"# the proxy's token\n\nAuthorization: Bearer {SECRET}\n  X-Tenant :  acme  \n")
    assert HeaderFile(path).headers() == {"Authorization": f"Bearer {SECRET}", "X-Tenant": "acme"}


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        (f"X-A: 1\n{SECRET}\n", 2, "no ':'"),
        (f"\n\nBad Name: {SECRET}\n", 3, "not an HTTP token"),
        ("X-Empty:\n", 1, "empty value"),
        (f"X-A: {SECRET}\nx-a: {SECRET}\n", 2, "given twice"),
        (f"Content-Length: {SECRET}\n", 1, "set by the client"),
        (f"X-A: {SECRET}\x7f\n", 1, "not printable ASCII"),
        (f"X-A: {SECRET}é\n", 1, "not printable ASCII"),
    ],
)
def test_malformed_line_names_its_number_never_its_value(tmp_path: Path, text: str, line: int, reason: str) -> None:
    path = write(tmp_path / "h", text)
    with pytest.raises(ValueError) as caught:
        HeaderFile(path)
    message = str(caught.value)
    assert f"line {line}:" in message and reason in message and str(path) in message
    assert SECRET not in message


def test_missing_or_binary_file_is_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be read"):
        HeaderFile(tmp_path / "missing")
    (tmp_path / "bin").write_bytes(b"X-A: \xff\xfe\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        HeaderFile(tmp_path / "bin")


def test_header_file_rereads_when_the_file_changes(tmp_path: Path) -> None:
    path = write(tmp_path / "h", "Authorization: Bearer one\n")
    source = HeaderFile(path)
    assert source.headers()["Authorization"] == "Bearer one"
    # Replaced the way token renewers do it: a new file renamed over the old one.
    write(tmp_path / "h.new", "Authorization: Bearer twenty-two\n").replace(path)
    assert source.headers()["Authorization"] == "Bearer twenty-two"
    # Rewritten in place.
    write(path, "Authorization: Bearer three\nX-B: b\n")
    assert source.headers() == {"Authorization": "Bearer three", "X-B": "b"}


def test_header_file_keeps_the_last_good_headers_when_broken(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "h", f"Authorization: Bearer {SECRET}\n")
    source = HeaderFile(path)
    caplog.set_level(logging.WARNING)
    write(path, f"half-written {SECRET}")
    assert source.headers() == {"Authorization": f"Bearer {SECRET}"}
    assert "line 1" in caplog.text and "keeping the headers read before" in caplog.text
    warnings = len(caplog.records)
    assert source.headers() == {"Authorization": f"Bearer {SECRET}"}
    assert len(caplog.records) == warnings  # an unchanged broken file is not re-read per request
    path.unlink()
    assert source.headers() == {"Authorization": f"Bearer {SECRET}"}
    write(path, "Authorization: Bearer fixed\n")
    assert source.headers() == {"Authorization": "Bearer fixed"}
    assert SECRET not in caplog.text


def test_refresh_rereads_a_file_that_stat_cannot_tell_apart(tmp_path: Path) -> None:
    path = write(tmp_path / "h", "Authorization: Bearer aaaa\n")
    source = HeaderFile(path)
    before = os.stat(path)
    write(path, "Authorization: Bearer bbbb\n")  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # same mtime, same inode
    assert source.headers()["Authorization"] == "Bearer aaaa"
    assert source.refresh() is True
    assert source.headers()["Authorization"] == "Bearer bbbb"
    assert source.refresh() is False


def test_reprs_show_names_not_values(tmp_path: Path) -> None:
    path = write(tmp_path / "h", f"Authorization: Bearer {SECRET}\n")
    providers = [
        HeaderFile(path),
        FixedHeaders({"X-Key": SECRET}),
        headers_auth(SIGNING_KEY, {"X-Key": SECRET}, path),
    ]
    for provider in providers:
        assert SECRET not in repr(provider)
        assert SIGNING_KEY.hex() not in repr(provider)
    assert "Authorization" in repr(providers[0])


@pytest.mark.parametrize("headers", [{"Bad Name": "x"}, {"X-A": "line\r\nbreak"}, {"Host": "evil"}, {"X-A": ""}])
def test_fixed_headers_refuse_what_cannot_be_sent(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError) as caught:
        FixedHeaders(headers)
    for value in headers.values():
        if value:
            assert value not in str(caught.value)


# ------------------------------------------------------------------------ headers_auth


def test_headers_auth_without_extras_is_the_signature() -> None:
    auth = headers_auth(SIGNING_KEY, {}, None)
    assert isinstance(auth, SignatureAuth)


def test_headers_auth_signs_and_adds_extras(tmp_path: Path) -> None:
    path = write(tmp_path / "h", "X-From-File: f\nX-Both: file wins\n")
    auth = headers_auth(SIGNING_KEY, {"X-Fixed": "x", "x-both": "fixed"}, path)
    headers = dict(auth.headers())
    assert verify_header(headers.pop("Authorization"))[0] == SignatureAuth(SIGNING_KEY).user_id
    assert headers == {"X-Fixed": "x", "X-From-File": "f", "X-Both": "file wins"}


@pytest.mark.parametrize("where", ["fixed", "file"])
def test_an_authorization_header_replaces_the_signature(tmp_path: Path, where: str) -> None:
    path = write(tmp_path / "h", f"authorization: Bearer {SECRET}\n" if where == "file" else "X-A: a\n")
    fixed = {"Authorization": f"Bearer {SECRET}"} if where == "fixed" else {}
    headers = headers_auth(SIGNING_KEY, fixed, path).headers()
    assert [value for name, value in headers.items() if name.lower() == "authorization"] == [f"Bearer {SECRET}"]


def test_header_file_gaining_authorization_switches_scheme(tmp_path: Path) -> None:
    path = write(tmp_path / "h", "X-A: a\n")
    auth = headers_auth(SIGNING_KEY, {}, path)
    assert len(auth.headers()["Authorization"]) > 66 + 128  # a signature
    write(path, "X-A: a\nAuthorization: Bearer jwt-now\n")
    assert auth.headers()["Authorization"] == "Bearer jwt-now"


def test_headers_auth_without_a_key_does_not_sign(tmp_path: Path) -> None:
    auth = headers_auth(None, {"X-A": "a"}, None)
    assert isinstance(auth, CombinedAuth)
    assert names(dict(auth.headers())) == {"x-a"}


def test_headers_auth_checks_its_pieces(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        headers_auth(b"short", {}, None)
    with pytest.raises(ValueError, match="cannot be read"):
        headers_auth(SIGNING_KEY, {}, tmp_path / "missing")
    with pytest.raises(ValueError, match="HTTP token"):
        headers_auth(SIGNING_KEY, {"Bad Name": "x"}, None)


# ------------------------------------------------------------- the retry after AUTH


def auth_server(accepted: str, seen: list[str]) -> httpx.MockTransport:
    """Answers 200 to `Authorization: accepted`, AUTH_EXCEPTION to anything else."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization", ""))
        if seen[-1] == accepted:
            return httpx.Response(200, content=vss_pb2.GetObjectResponse(value=STORED).SerializeToString())
        refusal = vss_pb2.ErrorResponse(error_code=vss_pb2.AUTH_EXCEPTION, message="token expired")
        return httpx.Response(401, content=refusal.SerializeToString())

    return httpx.MockTransport(handle)


def client(transport: httpx.MockTransport, auth: object) -> VssClient:
    return VssClient("http://vss.test/vss", auth, transport=transport, retry=RetryPolicy(attempts=3, base_delay_s=0))  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_expired_token_is_reread_after_401_and_the_call_retried_once(tmp_path: Path) -> None:
    path = write(tmp_path / "h", "Authorization: Bearer aaaa\n")
    source = HeaderFile(path)
    before = os.stat(path)
    write(path, "Authorization: Bearer bbbb\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # stat() sees no change
    seen: list[str] = []
    async with client(auth_server("Bearer bbbb", seen), source) as vss:
        assert await vss.get_object("s", "k") == STORED
    assert seen == ["Bearer aaaa", "Bearer bbbb"]


@pytest.mark.anyio
async def test_unchanged_headers_after_401_raise_at_once(tmp_path: Path) -> None:
    seen: list[str] = []
    async with client(auth_server("Bearer good", seen), HeaderFile(write(tmp_path / "h", "Authorization: Bearer bad\n"))) as vss:
        with pytest.raises(AuthError, match="token expired"):
            await vss.get_object("s", "k")
    assert seen == ["Bearer bad"]


class AlwaysNew:
    """A refreshable provider whose every refresh yields a new (still refused) token."""

    def __init__(self) -> None:
        self.token = 0
        self.refreshes = 0

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def refresh(self) -> bool:
        self.refreshes += 1
        self.token += 1
        return True


@pytest.mark.anyio
async def test_only_one_refresh_per_call() -> None:
    seen: list[str] = []
    provider = AlwaysNew()
    async with client(auth_server("never", seen), provider) as vss:
        with pytest.raises(AuthError):
            await vss.get_object("s", "k")
        assert seen == ["Bearer 0", "Bearer 1"] and provider.refreshes == 1
        with pytest.raises(AuthError):
            await vss.get_object("s", "k")  # the next call may refresh again
    assert provider.refreshes == 2


@pytest.mark.anyio
async def test_providers_without_refresh_are_not_retried() -> None:
    seen: list[str] = []
    async with client(auth_server("never", seen), FixedHeaders({"Authorization": "Bearer x"})) as vss:
        with pytest.raises(AuthError):
            await vss.get_object("s", "k")
    assert seen == ["Bearer x"]


@pytest.mark.anyio
async def test_url_credentials_are_basic_auth_and_not_in_the_url() -> None:
    requests: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, content=vss_pb2.DeleteObjectResponse().SerializeToString())

    transport = httpx.MockTransport(handle)
    async with VssClient("http://user:pa55word@vss.test/vss", SignatureAuth(SIGNING_KEY), transport=transport) as vss:
        await vss.delete_object("s", vss_pb2.KeyValue(key="k", version=-1))
    (request,) = requests
    assert request.url.userinfo == b""
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"user:pa55word").decode()
