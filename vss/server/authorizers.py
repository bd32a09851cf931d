"""Who is calling: the server's three ways to turn an `Authorization` header into a user.

An authorizer is a callable `authorize(header) -> user` that raises AuthError (401).
`SignatureAuthorizer` checks the VSS signature header (`vss.auth`), `JwtAuthorizer` an
RS256 bearer token, `NoAuthorizer` lets everyone in as one user (local development).

Both verifying authorizers remember headers they have verified (`VerifiedCache`):
clients reuse one header for seconds to minutes, and a secp256k1 or RSA verification
per request was a tenth of the server's CPU per getObject. An entry is keyed by the
exact header and lives no longer than the header itself is valid (the signature's 24 h
window, the token's expiry), so the cache never accepts what a fresh check would refuse.
Failures are never cached.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from vss import auth as vss_auth
from vss.errors import AuthError

ANONYMOUS_USER = "anonymous"
"""The one user every caller is under `NoAuthorizer`."""
CACHE_ENTRIES = 4096
"""Verified headers remembered: far more than the clients one server sees at once; an
entry is a few hundred bytes."""
JWT_LEEWAY_S = 60
"""Clock skew tolerated on `exp` (and `nbf`, `iat`), as lightningdevkit's vss-server does."""
MAX_TOKEN_CHARS = 16384
"""A bearer token longer than this is refused unread."""


class Authorizer(Protocol):
    """Returns the user an `Authorization` header value names; raises AuthError."""

    def __call__(self, header: str | None) -> str: ...


class VerifiedCache:
    """Verified headers and their users, each until its own deadline (Unix seconds).

    Bounded: when full, the oldest entry makes room. `clock` is for tests.
    """

    def __init__(self, entries: int = CACHE_ENTRIES, *, clock: Callable[[], float] = time.time) -> None:
        if entries < 1:
            raise ValueError("a cache needs room for at least one entry")
        self._entries = entries
        self._clock = clock
        self._users: dict[str, tuple[str, float]] = {}

    def get(self, header: str) -> str | None:
        """The user of a header verified before and still valid, else None."""
        found = self._users.get(header)
        if found is None:
            return None
        user, valid_until = found
        if self._clock() > valid_until:
            del self._users[header]
            return None
        return user

    def put(self, header: str, user: str, valid_until: float) -> None:
        if valid_until < self._clock():
            return
        if header not in self._users and len(self._users) >= self._entries:
            del self._users[next(iter(self._users))]
        self._users[header] = (user, valid_until)

    def __len__(self) -> int:
        return len(self._users)


class NoAuthorizer:
    """Every caller, with or without a header, is `ANONYMOUS_USER`."""

    def __call__(self, header: str | None) -> str:
        return ANONYMOUS_USER


class SignatureAuthorizer:
    """The VSS signature header (docs/PROTOCOL.md); the user is the lower-case pubkey hex."""

    def __init__(self, cache: VerifiedCache | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._cache = VerifiedCache(clock=clock) if cache is None else cache

    def __call__(self, header: str | None) -> str:
        if header:
            user = self._cache.get(header)
            if user is not None:
                return user
        user, valid_until = vss_auth.verify_header(header, now=int(self._clock()))
        assert header is not None  # verification refuses a missing header
        self._cache.put(header, user, valid_until)
        return user


class JwtAuthorizer:
    """`Authorization: Bearer <JWT>` signed RS256 by the key whose public half is given.

    As lightningdevkit's vss-server: the token must carry `exp` (checked with 60 s of
    leeway) and `sub`, which names the user; any other algorithm is refused.
    """

    def __init__(self, public_key_pem: bytes, cache: VerifiedCache | None = None) -> None:
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            key = load_pem_public_key(public_key_pem)
        except (ValueError, TypeError):
            raise ValueError("not a PEM public key (-----BEGIN PUBLIC KEY-----)") from None
        if not isinstance(key, RSAPublicKey):
            raise ValueError("the JWT public key must be an RSA key (RS256)")
        self._key = key
        self._cache = VerifiedCache() if cache is None else cache

    @classmethod
    def from_file(cls, path: str | Path) -> JwtAuthorizer:
        """Read the PEM at `path`; ValueError (naming the file) if it is missing or not an RSA key."""
        try:
            pem = Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read the JWT public key {str(path)!r}: {exc.strerror or exc}") from None
        try:
            return cls(pem)
        except ValueError as exc:
            raise ValueError(f"JWT public key {str(path)!r}: {exc}") from None

    def __call__(self, header: str | None) -> str:
        if not header:
            raise AuthError("missing Authorization header")
        cached = self._cache.get(header)
        if cached is not None:
            return cached
        scheme, _, token = header.partition(" ")
        if scheme != "Bearer" or not token:
            raise AuthError("Authorization must be 'Bearer <JWT>'")
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthError("bearer token is too long")
        claims = self._verify(token)
        user: str = claims["sub"]
        expires: float = claims["exp"]
        # The cache honours the expiry the check would: exp plus the leeway.
        self._cache.put(header, user, float(expires) + JWT_LEEWAY_S)
        return user

    def _verify(self, token: str) -> dict[str, Any]:
        import jwt

        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=["RS256"],
                leeway=JWT_LEEWAY_S,
                options={"require": ["exp", "sub"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("bearer token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"bearer token does not verify: {exc}") from None
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise AuthError("bearer token has no subject (sub)")
        if not isinstance(claims.get("exp"), int | float):
            raise AuthError("bearer token has no numeric expiry (exp)")
        return claims
