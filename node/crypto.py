"""The encryption both VSS streams share: HKDF-SHA256 keys and XChaCha20-Poly1305 STREAM.

Format facts (docs/FORMAT.md, "Encryption"):

- Key: HKDF-SHA256(salt = 32 random bytes, ikm = the 32-byte signing key, info).
- STREAM "BE32": the plaintext is cut into 239-byte segments; segment `i` is sealed
  with nonce `prefix19 || uint32_be(i) || last_flag` and empty associated data, so
  each sealed segment is 255 bytes except the final one (16..254 bytes). The final
  segment always holds fewer than 239 plaintext bytes: a plaintext whose length is a
  multiple of 239 (0 included) ends with an empty final segment. A ciphertext without
  a final segment has been truncated and is refused.
- KV value: `0x01 || salt32 || prefix19 || STREAM-ciphertext`.

`StreamEncryptor` and `StreamDecryptor` work incrementally, so a wallet of any size
is processed a block at a time; `stream_encrypt` is a thin wrapper over the first.
Opening a whole ciphertext at once (`stream_decrypt`, `decrypt_value`: a restore does
it once per key) takes a shorter way to the same result: every segment is opened
straight from the stored bytes into one output buffer through libsodium's function as
PyNaCl's own cffi module exposes it, without the per-call copies and checks of PyNaCl's
Python wrapper (for a 256-byte value 9 us instead of 18). Without that module
it falls back to PyNaCl's public binding.
A decryptor hands out each segment's plaintext as soon as its tag checks, but the
stream as a whole is only authentic once `finalize()` has returned: callers write
that plaintext somewhere temporary and use it only after `finalize()`.
"""

from __future__ import annotations

import abc
import hmac
import os
import struct

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt as _aead_open,
)
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_encrypt as _aead_seal,
)
from nacl.exceptions import CryptoError

try:  # PyNaCl's cffi module, which nacl.bindings itself is written on
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib
except ImportError:  # pragma: no cover - a PyNaCl without it: the public binding is used
    _ffi = _lib = None

KV_INFO = b"rgb-ln-vss-kv-encryption-v1"
WALLET_INFO = b"rgb-lib-vss-backup-encryption-v1"
_KV_INFO_BLOCK_1 = KV_INFO + b"\x01"  # HKDF expand: T(1) = HMAC(PRK, info || 0x01)

KEY_SIZE = 32
SALT_SIZE = 32
PREFIX_SIZE = 19
TAG_SIZE = 16
PLAIN_SEGMENT = 239
SEALED_SEGMENT = PLAIN_SEGMENT + TAG_SIZE  # 255
_MAX_SEGMENTS = 2**32  # the counter is a uint32

VALUE_VERSION = 1
_VALUE_VERSION_BYTE = bytes([VALUE_VERSION])
_VALUE_HEADER = 1 + SALT_SIZE + PREFIX_SIZE

_HASH_LEN = 32
_NOT_LAST = b"\x00"
_LAST = b"\x01"
_counter = struct.Struct(">I")
_NONCE_SIZE = PREFIX_SIZE + 5  # prefix19 || uint32_be(i) || last_flag


class DecryptionError(ValueError):
    """A ciphertext cannot be opened: wrong mnemonic, corruption, truncation or bad format."""


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = KEY_SIZE) -> bytes:
    """HKDF-SHA256 (RFC 5869): extract with `salt`, expand with `info` to `length` bytes."""
    if not 0 < length <= 255 * _HASH_LEN:
        raise ValueError(f"HKDF-SHA256 output length must be 1..{255 * _HASH_LEN}, got {length}")
    prk = hmac.digest(salt, ikm, "sha256")
    blocks = []
    previous = b""
    for counter in range(1, -(-length // _HASH_LEN) + 1):
        previous = hmac.digest(prk, previous + info + bytes([counter]), "sha256")
        blocks.append(previous)
    return b"".join(blocks)[:length]


def _check_key_and_prefix(key: bytes, prefix19: bytes) -> None:
    if len(key) != KEY_SIZE:
        raise ValueError(f"STREAM key must be {KEY_SIZE} bytes, got {len(key)}")
    if len(prefix19) != PREFIX_SIZE:
        raise ValueError(f"STREAM nonce prefix must be {PREFIX_SIZE} bytes, got {len(prefix19)}")


class _Stream(abc.ABC):
    """What both directions share: key, nonce prefix, segment counter, pending bytes."""

    _segment_in: int  # input bytes per non-final segment

    def __init__(self, key: bytes, prefix19: bytes) -> None:
        _check_key_and_prefix(key, prefix19)
        self._key = bytes(key)
        self._prefix = bytes(prefix19)
        self._index = 0
        self._pending = bytearray()
        self._finished = False

    def _nonce(self, last: bool) -> bytes:
        if self._index >= _MAX_SEGMENTS:
            raise ValueError("STREAM segment counter exhausted (over 2**32 segments)")
        return self._prefix + _counter.pack(self._index) + (_LAST if last else _NOT_LAST)

    @abc.abstractmethod
    def _process(self, segment: bytes, last: bool) -> bytes:
        """Seal or open one segment (the direction is the subclass's)."""

    def update(self, data: bytes) -> bytes:
        """Feed the next bytes; return the output of every segment now complete."""
        if self._finished:
            raise ValueError("stream already finalized")
        size = self._segment_in
        # A full-size segment is never the final one, so it can go out at once. Only
        # the tail that does not fill a segment waits for more input or finalize().
        if self._pending:
            self._pending += data
            source = memoryview(self._pending)
        else:
            source = memoryview(data)
        whole = len(source) - len(source) % size
        out = [self._process(source[i : i + size].tobytes(), False) for i in range(0, whole, size)]
        tail = source[whole:].tobytes()
        source.release()
        self._pending = bytearray(tail)
        return b"".join(out)

    def _finish(self) -> bytes:
        if self._finished:
            raise ValueError("stream already finalized")
        self._finished = True
        tail = bytes(self._pending)
        self._pending = bytearray()
        return self._process(tail, True)


class StreamEncryptor(_Stream):
    """Seal a plaintext of any length incrementally: `update()` as often as needed, then
    `finalize()` once. The concatenated outputs equal `stream_encrypt` of the whole."""

    _segment_in = PLAIN_SEGMENT

    def _process(self, segment: bytes, last: bool) -> bytes:
        sealed = _aead_seal(segment, None, self._nonce(last), self._key)
        self._index += 1
        return sealed

    def finalize(self) -> bytes:
        """Seal the final segment (0..238 plaintext bytes) and return it."""
        return self._finish()


class StreamDecryptor(_Stream):
    """Open a STREAM ciphertext incrementally. Each complete 255-byte segment is opened as
    it arrives; `finalize()` opens the final one and refuses a truncated stream. Raises
    DecryptionError on any failed tag, so nothing unauthenticated is ever returned."""

    _segment_in = SEALED_SEGMENT

    def _process(self, segment: bytes, last: bool) -> bytes:
        if last and not segment:
            raise DecryptionError(
                "ciphertext is truncated (no final segment): corrupted or incomplete data"
            )
        if len(segment) < TAG_SIZE:
            raise DecryptionError(
                f"ciphertext ends with a {len(segment)}-byte fragment, shorter than a tag: "
                "corrupted or incomplete data"
            )
        try:
            opened = _aead_open(segment, None, self._nonce(last), self._key)
        except CryptoError:
            raise DecryptionError(
                f"authentication failed at segment {self._index}: wrong mnemonic or corrupted data"
            ) from None
        self._index += 1
        return opened

    def finalize(self) -> bytes:
        """Open the final segment (16..254 bytes) and return its plaintext."""
        return self._finish()


def stream_encrypt(key: bytes, prefix19: bytes, plaintext: bytes) -> bytes:
    """Seal `plaintext` with STREAM under `key` and the 19-byte nonce prefix."""
    encryptor = StreamEncryptor(key, prefix19)
    head = encryptor.update(plaintext)
    return head + encryptor.finalize()


def stream_decrypt(key: bytes, prefix19: bytes, ciphertext: bytes) -> bytes:
    """Open a STREAM ciphertext; raises DecryptionError on a wrong key, corruption,
    reordering or truncation."""
    _check_key_and_prefix(key, prefix19)
    return _open_all(bytes(key), bytes(prefix19), ciphertext, 0)


def _open_all(key: bytes, prefix: bytes, data: bytes, start: int) -> bytes:
    """Open the STREAM ciphertext `data[start:]` whole: what StreamDecryptor's update()
    and finalize() give for it, read in place (no copy of the ciphertext is made)."""
    length = len(data) - start
    tail = length % SEALED_SEGMENT  # the final segment; a multiple of 255 has none
    if tail == 0:
        raise DecryptionError("ciphertext is truncated (no final segment): corrupted or incomplete data")
    if tail < TAG_SIZE:
        raise DecryptionError(
            f"ciphertext ends with a {tail}-byte fragment, shorter than a tag: corrupted or incomplete data"
        )
    full = length // SEALED_SEGMENT
    if full >= _MAX_SEGMENTS:
        raise ValueError("STREAM segment counter exhausted (over 2**32 segments)")
    if _lib is None or _ffi is None:  # pragma: no cover - exercised by a test that removes the module
        return _open_all_public(key, prefix, data, start, full, tail)
    nonce = bytearray(_NONCE_SIZE)
    nonce[:PREFIX_SIZE] = prefix
    out = bytearray(full * PLAIN_SEGMENT + tail - TAG_SIZE)
    nonce_p, src, dst = _ffi.from_buffer(nonce), _ffi.from_buffer(data) + start, _ffi.from_buffer(out)
    null, open_ = _ffi.NULL, _lib.crypto_aead_xchacha20poly1305_ietf_decrypt
    for index in range(full + 1):
        _counter.pack_into(nonce, PREFIX_SIZE, index)
        size = SEALED_SEGMENT
        if index == full:
            nonce[-1] = 1
            size = tail
        if open_(dst + index * PLAIN_SEGMENT, null, null, src + index * SEALED_SEGMENT, size, null, 0, nonce_p, key):
            raise DecryptionError(f"authentication failed at segment {index}: wrong mnemonic or corrupted data")
    return bytes(out)


def _open_all_public(key: bytes, prefix: bytes, data: bytes, start: int, full: int, tail: int) -> bytes:
    """`_open_all` through PyNaCl's public binding, one segment at a time."""
    view = memoryview(data)[start:]
    out = []
    for index in range(full + 1):
        last = index == full
        segment = view[index * SEALED_SEGMENT : index * SEALED_SEGMENT + (tail if last else SEALED_SEGMENT)]
        nonce = prefix + _counter.pack(index) + (_LAST if last else _NOT_LAST)
        try:
            out.append(_aead_open(segment.tobytes(), None, nonce, key))
        except CryptoError:
            raise DecryptionError(f"authentication failed at segment {index}: wrong mnemonic or corrupted data") from None
    return b"".join(out)


def kv_value_key(signing_key: bytes, salt: bytes) -> bytes:
    """The STREAM key of one KV value: HKDF-SHA256 of 32 bytes, whose expand step is a
    single HMAC block (written out here: it runs once per value restored)."""
    prk = hmac.digest(salt, signing_key, "sha256")
    return hmac.digest(prk, _KV_INFO_BLOCK_1, "sha256")


def wallet_key(signing_key: bytes, salt: bytes) -> bytes:
    """The STREAM key of one wallet backup."""
    return hkdf_sha256(signing_key, salt, WALLET_INFO)


def encrypt_value(
    signing_key: bytes,
    plaintext: bytes,
    *,
    salt: bytes | None = None,
    prefix: bytes | None = None,
) -> bytes:
    """Encrypt one KV value as `0x01 || salt32 || prefix19 || ciphertext`.

    `salt` and `prefix` are fresh random bytes unless given (tests pass them to
    reproduce vectors; production code never should, a (key, prefix) pair must not
    repeat).
    """
    if salt is None:
        salt = os.urandom(SALT_SIZE)
    elif len(salt) != SALT_SIZE:
        raise ValueError(f"salt must be {SALT_SIZE} bytes, got {len(salt)}")
    if prefix is None:
        prefix = os.urandom(PREFIX_SIZE)
    ciphertext = stream_encrypt(kv_value_key(signing_key, salt), prefix, plaintext)
    return b"".join((_VALUE_VERSION_BYTE, salt, prefix, ciphertext))


def decrypt_value(signing_key: bytes, stored: bytes) -> bytes:
    """Open a stored KV value; raises DecryptionError when it is too short, of an unknown
    version, or fails authentication (wrong mnemonic or corrupted data)."""
    if len(stored) < _VALUE_HEADER + TAG_SIZE:
        raise DecryptionError(
            f"stored value is {len(stored)} bytes, shorter than the smallest encrypted value "
            f"({_VALUE_HEADER + TAG_SIZE}): corrupted data or not written by this format"
        )
    if stored[0] != VALUE_VERSION:
        raise DecryptionError(
            f"stored value has version byte {stored[0]}, expected {VALUE_VERSION}: "
            "corrupted data or an unsupported format"
        )
    salt = stored[1 : 1 + SALT_SIZE]
    prefix = bytes(stored[1 + SALT_SIZE : _VALUE_HEADER])
    return _open_all(kv_value_key(signing_key, salt), prefix, stored, _VALUE_HEADER)
