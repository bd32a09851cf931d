"""The VSS signature authorizer against the test vectors (tests/vectors/vectors.json) and every rejection the spec names."""

from __future__ import annotations

import json
from pathlib import Path

import coincurve
import pytest

from vss.auth import sign_header, verify_header
from vss.errors import AuthError

VECTORS_PATH = Path(__file__).resolve().parent / "vectors" / "vectors.json"
VECTORS = json.loads(VECTORS_PATH.read_text())
SIGNING_KEY = bytes.fromhex(VECTORS["signing_key_hex"])
PUBKEY_HEX = coincurve.PrivateKey(SIGNING_KEY).public_key.format(compressed=True).hex()
OTHER_KEY = bytes.fromhex("11" * 32)
T = 1_767_225_600
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def test_vectors_file_has_auth_cases() -> None:
    assert len(VECTORS["auth"]) == 2


@pytest.mark.parametrize("case", VECTORS["auth"], ids=lambda case: str(case["unix_time"]))
def test_sign_header_reproduces_vector_byte_for_byte(case: dict) -> None:
    assert sign_header(SIGNING_KEY, case["unix_time"]) == case["authorization"]


@pytest.mark.parametrize("case", VECTORS["auth"], ids=lambda case: str(case["unix_time"]))
def test_vector_header_verifies_to_lower_case_pubkey(case: dict) -> None:
    assert verify_header(case["authorization"], now=case["unix_time"])[0] == PUBKEY_HEX
    # The wallet's store id is the same pubkey hex: both derive from the one signing key.
    assert PUBKEY_HEX == VECTORS["store_id_kv"]


def test_header_layout_is_pubkey_signature_time() -> None:
    header = sign_header(SIGNING_KEY, T)
    assert header[:66] == PUBKEY_HEX
    assert header[66:194] == header[66:194].lower()
    assert header[194:] == str(T)


def test_signature_is_low_s() -> None:
    # The reference server's secp256k1 verifier rejects high-S signatures.
    for unix_time in (T, T + 1, T + 2, T + 3):
        s = int(sign_header(SIGNING_KEY, unix_time)[130:194], 16)
        assert 0 < s <= SECP256K1_ORDER // 2


def test_round_trip_with_default_clock() -> None:
    assert verify_header(sign_header(SIGNING_KEY))[0] == PUBKEY_HEX
    other_pubkey = coincurve.PrivateKey(OTHER_KEY).public_key.format(compressed=True).hex()
    assert verify_header(sign_header(OTHER_KEY, T), now=T) == (other_pubkey, T + 24 * 3600)  # valid until 24 h after its time


@pytest.mark.parametrize("header", [None, ""])
def test_missing_header_rejected(header: str | None) -> None:
    with pytest.raises(AuthError):
        verify_header(header, now=T)


def test_too_short_header_rejected() -> None:
    header = sign_header(SIGNING_KEY, T)
    with pytest.raises(AuthError):
        verify_header(header[:194], now=T)  # pubkey and signature, no time
    with pytest.raises(AuthError):
        verify_header(header[:100], now=T)


@pytest.mark.parametrize("position", [10, 100], ids=["in-pubkey", "in-signature"])
def test_non_hex_rejected(position: int) -> None:
    header = sign_header(SIGNING_KEY, T)
    with pytest.raises(AuthError):
        verify_header(header[:position] + "g" + header[position + 1 :], now=T)


@pytest.mark.parametrize("time_text", ["17672256x0", "-1767225600", "１７６７２２５６００"])
def test_non_decimal_time_rejected(time_text: str) -> None:
    header = sign_header(SIGNING_KEY, T)
    with pytest.raises(AuthError):
        verify_header(header[:194] + time_text, now=T)


def test_invalid_pubkey_rejected() -> None:
    header = sign_header(SIGNING_KEY, T)
    with pytest.raises(AuthError):
        verify_header("05" + header[2:], now=T)  # 0x05 is no compressed-point prefix


def test_signature_by_another_key_rejected() -> None:
    forged = PUBKEY_HEX + sign_header(OTHER_KEY, T)[66:]
    with pytest.raises(AuthError):
        verify_header(forged, now=T)


def test_tampered_time_rejected() -> None:
    header = sign_header(SIGNING_KEY, T)
    with pytest.raises(AuthError):
        verify_header(header[:194] + str(T + 1), now=T)


def test_tampered_signature_rejected() -> None:
    header = sign_header(SIGNING_KEY, T)
    flipped = "0" if header[150] != "0" else "1"
    with pytest.raises(AuthError):
        verify_header(header[:150] + flipped + header[151:], now=T)


def test_high_s_signature_rejected() -> None:
    header = sign_header(SIGNING_KEY, T)
    s = int(header[130:194], 16)
    high_s = f"{SECP256K1_ORDER - s:064x}"
    with pytest.raises(AuthError):
        verify_header(header[:130] + high_s + header[194:], now=T)


@pytest.mark.parametrize("offset_h", [25, -25])
def test_time_25_hours_off_rejected(offset_h: int) -> None:
    header = sign_header(SIGNING_KEY, T)
    with pytest.raises(AuthError):
        verify_header(header, now=T + offset_h * 3600)


@pytest.mark.parametrize("offset_h", [23, -23])
def test_time_within_a_day_accepted(offset_h: int) -> None:
    assert verify_header(sign_header(SIGNING_KEY, T), now=T + offset_h * 3600)[0] == PUBKEY_HEX


def test_upper_case_pubkey_accepted_and_user_id_lower_cased() -> None:
    header = sign_header(SIGNING_KEY, T)
    upper = header[:66].upper() + header[66:]
    assert upper[:66] != PUBKEY_HEX
    user_id = verify_header(upper, now=T)[0]
    assert user_id == PUBKEY_HEX
    assert user_id == user_id.lower()


@pytest.mark.parametrize("digits", [21, 5000])
def test_overlong_time_rejected_without_parsing(digits: int) -> None:
    # int() of more than 4300 digits raises ValueError: it must be an AuthError (401), not a 500.
    header = sign_header(SIGNING_KEY, T)
    with pytest.raises(AuthError):
        verify_header(header[:194] + "1" * digits, now=T)
