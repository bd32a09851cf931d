"""node.crypto: HKDF, XChaCha20-Poly1305 STREAM (BE32) and the KV value format."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt

from node.crypto import (
    KV_INFO,
    WALLET_INFO,
    DecryptionError,
    StreamDecryptor,
    StreamEncryptor,
    decrypt_value,
    encrypt_value,
    hkdf_sha256,
    stream_decrypt,
    stream_encrypt,
)

VECTORS = json.loads(
    (Path(__file__).resolve().parent / "vectors" / "vectors.json").read_text()
)
SIGNING_KEY = bytes.fromhex(VECTORS["signing_key_hex"])
KEY = bytes(range(32))
PREFIX = bytes(range(100, 119))
WRONG = "wrong mnemonic or corrupted data"


def sealed_length(plain_length: int) -> int:
    return plain_length // 239 * 255 + plain_length % 239 + 16


# ---------------------------------------------------------------- vectors and HKDF


def test_info_strings():
    assert KV_INFO == b"rgb-ln-vss-kv-encryption-v1"
    assert WALLET_INFO == b"rgb-lib-vss-backup-encryption-v1"


@pytest.mark.parametrize(
    "vector", VECTORS["values"], ids=lambda v: f"{len(v['plaintext_hex']) // 2}B"
)
def test_value_vectors(vector):
    plaintext = bytes.fromhex(vector["plaintext_hex"])
    salt = bytes.fromhex(vector["salt_hex"])
    prefix = bytes.fromhex(vector["nonce_prefix_hex"])
    assert vector["hkdf_info"].encode() == KV_INFO
    assert hkdf_sha256(SIGNING_KEY, salt, KV_INFO).hex() == vector["derived_key_hex"]
    stored = encrypt_value(SIGNING_KEY, plaintext, salt=salt, prefix=prefix)
    assert stored.hex() == vector["stored_value_hex"]
    assert decrypt_value(SIGNING_KEY, bytes.fromhex(vector["stored_value_hex"])) == plaintext


def test_hkdf_rfc5869_case_1():
    okm = hkdf_sha256(
        ikm=bytes([0x0B] * 22),
        salt=bytes(range(0x0D)),
        info=bytes(range(0xF0, 0xFA)),
        length=42,
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_hkdf_rejects_bad_length():
    with pytest.raises(ValueError):
        hkdf_sha256(b"k", b"s", b"i", length=0)
    with pytest.raises(ValueError):
        hkdf_sha256(b"k", b"s", b"i", length=255 * 32 + 1)


# ------------------------------------------------------------------------- STREAM


@pytest.mark.parametrize("length", [0, 1, 238, 239, 240, 478, 10_000])
def test_stream_round_trip_and_layout(length):
    plaintext = os.urandom(length)
    ciphertext = stream_encrypt(KEY, PREFIX, plaintext)
    assert len(ciphertext) == sealed_length(length)
    assert stream_decrypt(KEY, PREFIX, ciphertext) == plaintext
    # The final segment holds the plaintext's tail (0..238 bytes) under last_flag = 1.
    tail_start = length - length % 239
    last_index = length // 239
    nonce = PREFIX + struct.pack(">I", last_index) + b"\x01"
    expected_final = crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext[tail_start:], None, nonce, KEY
    )
    assert ciphertext[last_index * 255 :] == expected_final


def test_stream_first_segment_nonce_layout():
    plaintext = os.urandom(600)
    ciphertext = stream_encrypt(KEY, PREFIX, plaintext)
    for index in (0, 1):
        nonce = PREFIX + struct.pack(">I", index) + b"\x00"
        expected = crypto_aead_xchacha20poly1305_ietf_encrypt(
            plaintext[index * 239 : (index + 1) * 239], None, nonce, KEY
        )
        assert ciphertext[index * 255 : (index + 1) * 255] == expected


def test_dropping_the_empty_final_segment_is_refused():
    ciphertext = stream_encrypt(KEY, PREFIX, os.urandom(478))  # 2 full + empty final
    assert len(ciphertext) == 2 * 255 + 16
    with pytest.raises(DecryptionError, match="truncated"):
        stream_decrypt(KEY, PREFIX, ciphertext[:510])


@pytest.mark.parametrize("cut_segments", [0, 1, 10, 39])
def test_cut_at_segment_boundary_is_refused(cut_segments):
    ciphertext = stream_encrypt(KEY, PREFIX, os.urandom(10_000))
    with pytest.raises(DecryptionError):
        stream_decrypt(KEY, PREFIX, ciphertext[: cut_segments * 255])


@pytest.mark.parametrize("cut", [1, 15, 16, 17, 300])
def test_cut_inside_a_segment_is_refused(cut):
    ciphertext = stream_encrypt(KEY, PREFIX, os.urandom(1000))
    with pytest.raises(DecryptionError):
        stream_decrypt(KEY, PREFIX, ciphertext[:-cut])


def test_flipped_bits_are_refused():
    ciphertext = stream_encrypt(KEY, PREFIX, os.urandom(1000))
    for position in (0, 100, 254, 255, 600, len(ciphertext) - 1):
        damaged = bytearray(ciphertext)
        damaged[position] ^= 0x01
        with pytest.raises(DecryptionError, match=WRONG):
            stream_decrypt(KEY, PREFIX, bytes(damaged))


def test_wrong_key_or_prefix_is_refused():
    ciphertext = stream_encrypt(KEY, PREFIX, b"secret state")
    with pytest.raises(DecryptionError, match=WRONG):
        stream_decrypt(bytes(32), PREFIX, ciphertext)
    with pytest.raises(DecryptionError, match=WRONG):
        stream_decrypt(KEY, bytes(19), ciphertext)


def test_reordered_segments_are_refused():
    ciphertext = stream_encrypt(KEY, PREFIX, os.urandom(1000))
    swapped = ciphertext[255:510] + ciphertext[:255] + ciphertext[510:]
    with pytest.raises(DecryptionError, match=WRONG):
        stream_decrypt(KEY, PREFIX, swapped)


def test_final_segment_cannot_pose_as_middle_one():
    # A 239-byte final segment never exists, so a last full segment is a middle one:
    # sealing 239 bytes and presenting only the full segment must fail as truncated.
    ciphertext = stream_encrypt(KEY, PREFIX, os.urandom(239))
    with pytest.raises(DecryptionError, match="truncated"):
        stream_decrypt(KEY, PREFIX, ciphertext[:255])


def test_empty_and_tiny_ciphertexts_are_refused():
    for ciphertext in (b"", b"\x00" * 15):
        with pytest.raises(DecryptionError):
            stream_decrypt(KEY, PREFIX, ciphertext)


def test_incremental_encryptor_matches_one_shot():
    plaintext = os.urandom(5000)
    encryptor = StreamEncryptor(KEY, PREFIX)
    pieces, offset = [], 0
    for size in (0, 1, 7, 238, 239, 240, 1, 0, 1000, 3):
        pieces.append(encryptor.update(plaintext[offset : offset + size]))
        offset += size
    pieces.append(encryptor.update(plaintext[offset:]))
    pieces.append(encryptor.finalize())
    assert b"".join(pieces) == stream_encrypt(KEY, PREFIX, plaintext)


def test_incremental_decryptor_with_odd_sizes():
    plaintext = os.urandom(5000)
    ciphertext = stream_encrypt(KEY, PREFIX, plaintext)
    decryptor = StreamDecryptor(KEY, PREFIX)
    pieces = [decryptor.update(ciphertext[i : i + 97]) for i in range(0, len(ciphertext), 97)]
    pieces.append(decryptor.finalize())
    assert b"".join(pieces) == plaintext


def test_stream_objects_refuse_use_after_finalize():
    encryptor = StreamEncryptor(KEY, PREFIX)
    encryptor.finalize()
    with pytest.raises(ValueError):
        encryptor.update(b"more")
    with pytest.raises(ValueError):
        encryptor.finalize()


def test_bad_key_or_prefix_sizes():
    with pytest.raises(ValueError):
        StreamEncryptor(bytes(31), PREFIX)
    with pytest.raises(ValueError):
        StreamDecryptor(KEY, bytes(24))


# ----------------------------------------------------------------------- KV values


def test_value_round_trip_uses_fresh_salt_and_prefix():
    first = encrypt_value(SIGNING_KEY, b"value")
    second = encrypt_value(SIGNING_KEY, b"value")
    assert first[0] == 1
    assert first[1:52] != second[1:52]
    assert decrypt_value(SIGNING_KEY, first) == decrypt_value(SIGNING_KEY, second) == b"value"


def test_value_with_wrong_signing_key_is_refused():
    stored = encrypt_value(SIGNING_KEY, b"value")
    with pytest.raises(DecryptionError, match=WRONG):
        decrypt_value(bytes(31) + b"\x01", stored)


def test_value_with_bad_version_or_too_short_is_refused():
    stored = bytearray(encrypt_value(SIGNING_KEY, b"value"))
    stored[0] = 2
    with pytest.raises(DecryptionError, match="version"):
        decrypt_value(SIGNING_KEY, bytes(stored))
    with pytest.raises(DecryptionError, match="shorter"):
        decrypt_value(SIGNING_KEY, b"\x01" + bytes(50))
    with pytest.raises(DecryptionError):
        decrypt_value(SIGNING_KEY, b"")


def test_value_with_damaged_salt_is_refused():
    stored = bytearray(encrypt_value(SIGNING_KEY, b"value"))
    stored[5] ^= 0x80
    with pytest.raises(DecryptionError, match=WRONG):
        decrypt_value(SIGNING_KEY, bytes(stored))


def test_value_rejects_bad_salt_size():
    with pytest.raises(ValueError):
        encrypt_value(SIGNING_KEY, b"v", salt=bytes(31))
    with pytest.raises(ValueError):
        encrypt_value(SIGNING_KEY, b"v", prefix=bytes(18))


# ------------------------------------------------- the one-pass open, and its fallback


def _by_segments(key: bytes, prefix: bytes, ciphertext: bytes) -> bytes:
    """The reference: the incremental decryptor, fed one byte at a time at the start."""
    decryptor = StreamDecryptor(key, prefix)
    head = b"".join(decryptor.update(ciphertext[i : i + 1]) for i in range(min(3, len(ciphertext))))
    return head + decryptor.update(ciphertext[3:]) + decryptor.finalize()


LENGTHS = [0, 1, 16, 238, 239, 240, 256, 477, 478, 479, 1024, 239 * 7, 239 * 7 + 1, 65_536 + 17]


@pytest.fixture(params=["libsodium", "public binding"])
def open_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "public binding":
        import node.crypto as crypto_module

        monkeypatch.setattr(crypto_module, "_lib", None)
    return str(request.param)


@pytest.mark.parametrize("length", LENGTHS)
def test_whole_open_matches_the_incremental_one(length: int, open_path: str) -> None:
    plaintext = os.urandom(length)
    ciphertext = stream_encrypt(KEY, PREFIX, plaintext)
    assert stream_decrypt(KEY, PREFIX, ciphertext) == _by_segments(KEY, PREFIX, ciphertext) == plaintext
    stored = encrypt_value(SIGNING_KEY, plaintext)
    assert decrypt_value(SIGNING_KEY, stored) == plaintext
    assert decrypt_value(SIGNING_KEY, bytearray(stored)) == plaintext


@pytest.mark.parametrize("length", [0, 239, 700])
def test_whole_open_names_the_segment_that_fails(length: int, open_path: str) -> None:
    ciphertext = stream_encrypt(KEY, PREFIX, os.urandom(length))
    segments = len(ciphertext) // 255 + 1
    for index in range(segments):
        damaged = bytearray(ciphertext)
        damaged[min(index * 255 + 3, len(damaged) - 1)] ^= 0x01
        with pytest.raises(DecryptionError, match=f"at segment {index}: {WRONG}"):
            stream_decrypt(KEY, PREFIX, bytes(damaged))
    with pytest.raises(DecryptionError, match="truncated"):
        stream_decrypt(KEY, PREFIX, ciphertext + bytes(255 - len(ciphertext) % 255))
    with pytest.raises(DecryptionError, match="fragment"):
        stream_decrypt(KEY, PREFIX, ciphertext[: len(ciphertext) // 255 * 255] + bytes(15))
    with pytest.raises(DecryptionError, match=WRONG):
        stream_decrypt(bytes(32), PREFIX, ciphertext)


def test_whole_open_checks_key_and_prefix_sizes() -> None:
    ciphertext = stream_encrypt(KEY, PREFIX, b"x")
    with pytest.raises(ValueError, match="key"):
        stream_decrypt(bytes(31), PREFIX, ciphertext)
    with pytest.raises(ValueError, match="prefix"):
        stream_decrypt(KEY, bytes(18), ciphertext)


def test_kv_value_key_is_the_hkdf_of_its_salt() -> None:
    from node.crypto import kv_value_key

    for salt in (bytes(32), os.urandom(32)):
        assert kv_value_key(SIGNING_KEY, salt) == hkdf_sha256(SIGNING_KEY, salt, KV_INFO)
