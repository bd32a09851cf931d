"""The server's authorizers: the cache of verified headers, and RS256 bearer tokens.

The cache must answer exactly as a fresh check would: a header it remembers stops
working the second its own validity ends. JWTs are checked as lightningdevkit's
vss-server checks them: RS256 only, `exp` and `sub` required.
"""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import vss.auth
from asgiutil import serving
from vss.auth import MAX_CLOCK_SKEW_S, sign_header
from vss.errors import AuthError
from vss.proto import vss_pb2 as pb
from vss.server.app import create_app
from vss.server.authorizers import JwtAuthorizer, SignatureAuthorizer, VerifiedCache
from vss.server.sqlite import SqliteBackend

KEY = bytes.fromhex("44" * 32)
T = 1_767_225_600


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return _rsa_key()


def _token(key: rsa.RSAPrivateKey, **claims: object) -> str:
    body: dict[str, object] = {"sub": "user-1", "exp": int(time.time()) + 600}
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm="RS256")


# -- the cache -------------------------------------------------------------------------------


def test_cache_forgets_an_entry_at_its_deadline_and_stays_bounded() -> None:
    clock = Clock(100.0)
    cache = VerifiedCache(2, clock=clock)
    cache.put("a", "alice", 150.0)
    assert cache.get("a") == "alice"
    clock.now = 150.0
    assert cache.get("a") == "alice"
    clock.now = 150.5
    assert cache.get("a") is None
    cache.put("b", "bob", 200.0)
    cache.put("c", "carol", 200.0)
    cache.put("d", "dave", 200.0)  # full: the oldest makes room
    assert len(cache) == 2 and cache.get("b") is None and cache.get("d") == "dave"
    cache.put("stale", "x", 10.0)  # already past: not stored
    assert cache.get("stale") is None


def test_signature_cache_verifies_once_per_header(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = vss.auth.verify_header

    def counting(header: str | None, now: int | None = None) -> tuple[str, int]:
        calls.append(header)
        return real(header, now)

    monkeypatch.setattr(vss.auth, "verify_header", counting)
    authorize = SignatureAuthorizer(clock=Clock(T))
    header = sign_header(KEY, T)
    users = {authorize(header) for _ in range(50)}
    assert len(users) == 1 and len(calls) == 1
    other = sign_header(KEY, T + 1)
    assert authorize(other) in users and len(calls) == 2


@pytest.mark.parametrize("signed_offset_s", [0, -3600, 3600])
def test_a_cached_header_never_outlives_its_24_hour_window(signed_offset_s: int) -> None:
    clock = Clock(T)
    authorize = SignatureAuthorizer(clock=clock)
    header = sign_header(KEY, T + signed_offset_s)
    user = authorize(header)
    deadline = T + signed_offset_s + MAX_CLOCK_SKEW_S
    clock.now = deadline
    assert authorize(header) == user  # still inside the window
    clock.now = deadline + 1
    with pytest.raises(AuthError, match="24 hours"):
        authorize(header)
    with pytest.raises(AuthError):  # and it was not put back
        authorize(header)


def test_failures_are_not_cached() -> None:
    authorize = SignatureAuthorizer(clock=Clock(T))
    forged = sign_header(KEY, T)[:66] + sign_header(bytes.fromhex("55" * 32), T)[66:]
    for _ in range(2):
        with pytest.raises(AuthError):
            authorize(forged)


# -- JWT ----------------------------------------------------------------------------------------


def test_jwt_names_the_user_by_sub(signing_key: rsa.RSAPrivateKey) -> None:
    authorize = JwtAuthorizer(_public_pem(signing_key))
    assert authorize(f"Bearer {_token(signing_key, sub='wallet-7')}") == "wallet-7"


def test_jwt_rejections(signing_key: rsa.RSAPrivateKey) -> None:
    authorize = JwtAuthorizer(_public_pem(signing_key))
    other = _rsa_key()
    secret = "a shared secret of at least thirty-two bytes"
    hs256 = jwt.encode({"sub": "u", "exp": int(time.time()) + 600}, secret, algorithm="HS256")
    unsigned = jwt.encode({"sub": "u", "exp": int(time.time()) + 600}, None, algorithm="none")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    es256 = jwt.encode({"sub": "u", "exp": int(time.time()) + 600}, ec_key, algorithm="ES256")
    rejected = {
        "expired beyond the leeway": f"Bearer {_token(signing_key, exp=int(time.time()) - 120)}",
        "signed by another key": f"Bearer {_token(other)}",
        "HS256": f"Bearer {hs256}",
        "alg none": f"Bearer {unsigned}",
        "ES256": f"Bearer {es256}",
        "no sub": f"Bearer {_token(signing_key, sub=None)}",
        "empty sub": f"Bearer {_token(signing_key, sub='')}",
        "numeric sub": f"Bearer {_token(signing_key, sub=42)}",
        "no exp": f"Bearer {_token(signing_key, exp=None)}",
        "not bearer": _token(signing_key),
        "basic": "Basic dXNlcjpwYXNz",
        "garbage": "Bearer not.a.jwt",
        "huge": "Bearer " + "a" * 20_000,
        "missing": "",
    }
    for what, header in rejected.items():
        with pytest.raises(AuthError):
            authorize(header)
        assert what  # names the case in a failure


def test_jwt_within_the_leeway_is_accepted(signing_key: rsa.RSAPrivateKey) -> None:
    authorize = JwtAuthorizer(_public_pem(signing_key))
    assert authorize(f"Bearer {_token(signing_key, exp=int(time.time()) - 30)}") == "user-1"


def test_jwt_key_must_be_an_rsa_public_key(tmp_path) -> None:
    with pytest.raises(ValueError, match="RSA"):
        JwtAuthorizer(_public_pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(ValueError, match="PEM"):
        JwtAuthorizer(b"not a key")
    with pytest.raises(ValueError, match="cannot read"):
        JwtAuthorizer.from_file(tmp_path / "missing.pem")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_jwt_over_http_partitions_by_sub_and_refuses_with_auth_exception(
    anyio_backend: str, signing_key: rsa.RSAPrivateKey, tmp_path
) -> None:
    app = create_app(SqliteBackend(str(tmp_path / "vss.sqlite3")), auth=JwtAuthorizer(_public_pem(signing_key)))
    put = pb.PutObjectRequest(store_id="s", transaction_items=[pb.KeyValue(key="k", version=-1, value=b"v")])
    get = pb.GetObjectRequest(store_id="s", key="k").SerializeToString()
    async with serving(app) as client:
        alice = {"Authorization": f"Bearer {_token(signing_key, sub='alice')}"}
        bob = {"Authorization": f"Bearer {_token(signing_key, sub='bob')}"}
        assert (await client.post("/vss/putObjects", content=put.SerializeToString(), headers=alice)).status_code == 200
        assert (await client.post("/vss/getObject", content=get, headers=alice)).status_code == 200
        assert (await client.post("/vss/getObject", content=get, headers=bob)).status_code == 404
        expired = {"Authorization": f"Bearer {_token(signing_key, sub='alice', exp=int(time.time()) - 3600)}"}
        for headers in (expired, {"Authorization": sign_header(KEY)}, {}):
            reply = await client.post("/vss/getObject", content=get, headers=headers)
            assert reply.status_code == 401
            assert pb.ErrorResponse.FromString(reply.content).error_code == pb.AUTH_EXCEPTION
