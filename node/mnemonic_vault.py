"""The mnemonic at rest: sealed under the operator's password.

`init` seals the mnemonic into a small blob kept in the data dir; `unlock` opens it.
The key comes from the password through argon2id (PyNaCl) and seals with SecretBox
(XSalsa20-Poly1305). The blob describes itself, so the cost parameters can change
later without breaking old data dirs (new vaults use PyNaCl's MODERATE limits, about
a second and 256 MiB; a vault sealed with other limits opens with its own):

    version (1 byte, 0x01) || opslimit (uint32 BE) || memlimit (uint64 BE)
    || salt (16 bytes) || SecretBox output (nonce 24 || tag 16 || ciphertext)

Every way of failing to open a blob, a wrong password or a damaged file, is reported
as WrongPassword: with an authenticated cipher the two cannot be told apart. Neither
the mnemonic nor the password ever appears in a message.
"""

from __future__ import annotations

import struct
import unicodedata

import nacl.pwhash.argon2id as argon2id
import nacl.secret
import nacl.utils
from nacl.exceptions import CryptoError

from node.errors import InvalidRequest, WrongPassword

VAULT_VERSION = 1
DEFAULT_OPSLIMIT = argon2id.OPSLIMIT_MODERATE
DEFAULT_MEMLIMIT = argon2id.MEMLIMIT_MODERATE
# Bounds on what a blob may ask for, so a damaged header cannot demand terabytes.
_OPSLIMIT_RANGE = (argon2id.OPSLIMIT_MIN, argon2id.OPSLIMIT_SENSITIVE)
_MEMLIMIT_RANGE = (argon2id.MEMLIMIT_MIN, argon2id.MEMLIMIT_SENSITIVE)

_header = struct.Struct(f">BIQ{argon2id.SALTBYTES}s")
_MIN_BOX = nacl.secret.SecretBox.NONCE_SIZE + nacl.secret.SecretBox.MACBYTES


def _password_bytes(password: str) -> bytes:
    if not isinstance(password, str):
        raise InvalidRequest("the password must be a string")
    # NFKC so the same password typed through different input methods gives one key.
    try:
        return unicodedata.normalize("NFKC", password).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate such as "\ud800" (JSON allows it)
        raise InvalidRequest("the password is not valid Unicode text (it holds a lone surrogate)") from None


def _limits_ok(opslimit: int, memlimit: int) -> bool:
    # argon2id counts memory in KiB: requiring whole KiB keeps one key per header, so
    # no edit of the header can still open the blob.
    return (
        _OPSLIMIT_RANGE[0] <= opslimit <= _OPSLIMIT_RANGE[1]
        and _MEMLIMIT_RANGE[0] <= memlimit <= _MEMLIMIT_RANGE[1]
        and memlimit % 1024 == 0
    )


def _box(password: bytes, salt: bytes, opslimit: int, memlimit: int) -> nacl.secret.SecretBox:
    key = argon2id.kdf(nacl.secret.SecretBox.KEY_SIZE, password, salt, opslimit, memlimit)
    return nacl.secret.SecretBox(key)


def seal_mnemonic(
    mnemonic: str,
    password: str,
    *,
    opslimit: int = DEFAULT_OPSLIMIT,
    memlimit: int = DEFAULT_MEMLIMIT,
) -> bytes:
    """Seal `mnemonic` under `password`; returns the blob to store.

    Raises ValueError for an empty password or cost limits outside argon2id's
    min..sensitive range (memlimit in whole KiB). At the default (MODERATE) limits it
    takes 256 MiB and half a second to over a second, as does opening the blob: call
    it off the event loop.
    """
    if not isinstance(mnemonic, str) or not mnemonic:
        raise ValueError("mnemonic must be a non-empty string")
    secret = _password_bytes(password)
    if not secret:
        raise ValueError("password must not be empty")
    if not _limits_ok(opslimit, memlimit):
        raise ValueError(
            f"argon2id limits out of range: opslimit {_OPSLIMIT_RANGE}, memlimit "
            f"{_MEMLIMIT_RANGE} in whole KiB"
        )
    salt = nacl.utils.random(argon2id.SALTBYTES)
    sealed = _box(secret, salt, opslimit, memlimit).encrypt(mnemonic.encode("utf-8"))
    return _header.pack(VAULT_VERSION, opslimit, memlimit, salt) + bytes(sealed)


def open_mnemonic(blob: bytes, password: str) -> str:
    """Open a blob made by `seal_mnemonic`; raises WrongPassword when it does not open."""
    secret = _password_bytes(password)
    if not secret:
        raise WrongPassword("wrong password: the password is empty")
    if len(blob) < _header.size + _MIN_BOX:
        raise WrongPassword("sealed mnemonic is damaged: too short")
    version, opslimit, memlimit, salt = _header.unpack_from(blob)
    if version != VAULT_VERSION:
        raise WrongPassword(f"sealed mnemonic is damaged or of unknown version {version}")
    if not _limits_ok(opslimit, memlimit):
        raise WrongPassword("sealed mnemonic is damaged: its argon2id limits are out of range")
    try:
        plain = _box(secret, salt, opslimit, memlimit).decrypt(bytes(blob[_header.size :]))
        return plain.decode("utf-8")
    except (CryptoError, UnicodeDecodeError):
        raise WrongPassword("wrong password, or the sealed mnemonic is damaged") from None
