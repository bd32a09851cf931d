"""node.mnemonic_vault: the password-sealed mnemonic at rest."""

from __future__ import annotations

import struct

import nacl.pwhash.argon2id as argon2id
import pytest

from node.errors import InvalidRequest, WrongPassword
from node.mnemonic_vault import open_mnemonic, seal_mnemonic

MNEMONIC = (
    "legal winner thank year wave sausage worth useful legal winner thank year wave "
    "sausage worth useful legal winner thank year wave sausage worth title"
)
# Cheap limits keep the suite fast; one test runs the defaults.
FAST = {"opslimit": argon2id.OPSLIMIT_MIN, "memlimit": argon2id.MEMLIMIT_MIN}


def test_new_vaults_use_at_least_the_moderate_limits():
    blob = seal_mnemonic(MNEMONIC, "correct horse")
    assert blob[0] == 1
    _, opslimit, memlimit = struct.unpack_from(">BIQ", blob)
    assert opslimit >= argon2id.OPSLIMIT_MODERATE and memlimit >= argon2id.MEMLIMIT_MODERATE
    assert MNEMONIC.encode() not in blob
    assert open_mnemonic(blob, "correct horse") == MNEMONIC


def test_a_vault_sealed_with_the_old_interactive_limits_still_opens():
    """Data dirs initialised before the limits went up keep opening with their own."""
    blob = seal_mnemonic(MNEMONIC, "pw", opslimit=argon2id.OPSLIMIT_INTERACTIVE, memlimit=argon2id.MEMLIMIT_INTERACTIVE)
    assert open_mnemonic(blob, "pw") == MNEMONIC


def test_a_password_with_a_lone_surrogate_is_a_bad_request_not_a_crash():
    with pytest.raises(InvalidRequest):
        seal_mnemonic(MNEMONIC, "\ud800", **FAST)
    blob = seal_mnemonic(MNEMONIC, "pw", **FAST)
    with pytest.raises(InvalidRequest):
        open_mnemonic(blob, "x\udfffy")


def test_each_seal_is_fresh():
    assert seal_mnemonic(MNEMONIC, "pw", **FAST) != seal_mnemonic(MNEMONIC, "pw", **FAST)


def test_unicode_password_round_trip():
    blob = seal_mnemonic(MNEMONIC, "pässwörd", **FAST)
    # NFC and NFD spellings of the same password open the same blob
    assert open_mnemonic(blob, "pa\u0308sswo\u0308rd") == MNEMONIC


def test_wrong_password():
    blob = seal_mnemonic(MNEMONIC, "right", **FAST)
    with pytest.raises(WrongPassword):
        open_mnemonic(blob, "wrong")
    with pytest.raises(WrongPassword):
        open_mnemonic(blob, "")


@pytest.mark.parametrize("position", [0, 1, 4, 6, 12, 13, 20, 40, 60, -1])
def test_tampered_blob(position):
    blob = bytearray(seal_mnemonic(MNEMONIC, "pw", **FAST))
    blob[position] ^= 0x01
    with pytest.raises(WrongPassword):
        open_mnemonic(bytes(blob), "pw")


def test_truncated_or_empty_blob():
    blob = seal_mnemonic(MNEMONIC, "pw", **FAST)
    for damaged in (b"", blob[:10], blob[:-1]):
        with pytest.raises(WrongPassword):
            open_mnemonic(damaged, "pw")


def test_absurd_limits_in_header_are_refused_without_running_argon2():
    blob = bytearray(seal_mnemonic(MNEMONIC, "pw", **FAST))
    struct.pack_into(">Q", blob, 5, 2**40)  # memlimit: 1 TiB
    with pytest.raises(WrongPassword, match="out of range"):
        open_mnemonic(bytes(blob), "pw")


def test_empty_password_refused_at_seal():
    with pytest.raises(ValueError):
        seal_mnemonic(MNEMONIC, "")
    with pytest.raises(ValueError):
        seal_mnemonic("", "pw")


def test_errors_do_not_reveal_the_mnemonic_or_password():
    blob = seal_mnemonic(MNEMONIC, "hunter2", **FAST)
    with pytest.raises(WrongPassword) as caught:
        open_mnemonic(blob, "hunter3")
    error = caught.value
    assert error.__cause__ is None and error.__suppress_context__
    for text in (str(error), repr(error), *map(str, error.args)):
        assert "legal" not in text and "winner" not in text
        assert "hunter" not in text
    assert isinstance(error, ValueError)
