"""The VSS signature authorizer: build and verify the `Authorization` header.

The header proves knowledge of a secp256k1 key without a shared secret:
`hex(pubkey33) || hex(sig64) || decimal(unix_time)`, where `sig64` is a compact low-S
ECDSA signature over SHA256(SALT || pubkey33 || ascii(unix_time)). The server names
the user by the lower-case pubkey hex. See docs/PROTOCOL.md.
"""

from __future__ import annotations

import hashlib
import time

import coincurve

from vss.errors import AuthError

SIGNING_SALT = b"VSS Signature Authorizer Signing Salt Constant".ljust(64, b".")
MAX_CLOCK_SKEW_S = 24 * 3600
_PUBKEY_HEX_LEN = 66
_SIG_HEX_LEN = 128
_MAX_TIME_DIGITS = 20
"""Unix seconds fit in 20 digits for billions of years; longer is garbage (and int() of
thousands of digits raises rather than answer)."""


def _digest(pubkey33: bytes, unix_time: int) -> bytes:
    return hashlib.sha256(SIGNING_SALT + pubkey33 + str(unix_time).encode()).digest()


def sign_header(private_key: bytes, unix_time: int | None = None) -> str:
    """Return the Authorization header value for `private_key` (32 bytes) at `unix_time`."""
    if unix_time is None:
        unix_time = int(time.time())
    key = coincurve.PrivateKey(private_key)
    pubkey33 = key.public_key.format(compressed=True)
    # coincurve signs low-S, deterministically (RFC 6979); hasher=None: we pass the digest.
    signature = key.sign_recoverable(_digest(pubkey33, unix_time), hasher=None)[:64]
    return pubkey33.hex() + signature.hex() + str(unix_time)


def verify_header(header: str | None, now: int | None = None) -> tuple[str, int]:
    """Check an Authorization header: return the user id (lower-case pubkey hex) and the
    last Unix second at which the header is still valid (its time plus 24 hours), which
    a cache of verified headers must not outlive.

    Raises AuthError when the header is missing, malformed, signed by another key, or
    more than 24 hours away from `now`.
    """
    if not header:
        raise AuthError("missing Authorization header")
    if len(header) <= _PUBKEY_HEX_LEN + _SIG_HEX_LEN:
        raise AuthError("Authorization header too short")
    pubkey_hex = header[:_PUBKEY_HEX_LEN]
    sig_hex = header[_PUBKEY_HEX_LEN : _PUBKEY_HEX_LEN + _SIG_HEX_LEN]
    time_text = header[_PUBKEY_HEX_LEN + _SIG_HEX_LEN :]
    if len(time_text) > _MAX_TIME_DIGITS or not time_text.isascii() or not time_text.isdigit():
        raise AuthError("Authorization time is not a decimal number of Unix seconds")
    try:
        pubkey33 = bytes.fromhex(pubkey_hex)
        signature = bytes.fromhex(sig_hex)
        public_key = coincurve.PublicKey(pubkey33)
    except ValueError as exc:
        raise AuthError("Authorization key or signature is not valid hex or not a valid key") from exc
    unix_time = int(time_text)
    if now is None:
        now = int(time.time())
    if abs(now - unix_time) > MAX_CLOCK_SKEW_S:
        raise AuthError("Authorization time is more than 24 hours from the server's clock")
    try:
        der = coincurve.ecdsa.cdata_to_der(coincurve.ecdsa.deserialize_compact(signature))
        valid = public_key.verify(der, _digest(pubkey33, unix_time), hasher=None)
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise AuthError("Authorization signature does not verify")
    return pubkey_hex.lower(), unix_time + MAX_CLOCK_SKEW_S
