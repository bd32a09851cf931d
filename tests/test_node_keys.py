"""node.keys: mnemonic handling and the identity derived from it (vectors.json)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from node.keys import (
    InvalidMnemonic,
    NodeKeys,
    derive_keys,
    generate_mnemonic,
    validate_mnemonic,
)

VECTORS = json.loads(
    (Path(__file__).resolve().parent / "vectors" / "vectors.json").read_text()
)


def test_vectors_identity():
    keys = derive_keys(VECTORS["mnemonic"])
    assert VECTORS["derivation_path"] == "m/535'/1'"
    assert keys.signing_key.hex() == VECTORS["signing_key_hex"]
    assert keys.pubkey_hex == VECTORS["store_id_kv"]
    assert keys.kv_store_id == VECTORS["store_id_kv"]
    assert keys.wallet_store_id == VECTORS["store_id_wallet"]
    assert keys.fingerprint == VECTORS["master_fingerprint"]


def test_derivation_ignores_spacing_and_case():
    messy = "  " + VECTORS["mnemonic"].upper().replace(" ", " \t ") + "\n"
    assert derive_keys(messy) == derive_keys(VECTORS["mnemonic"])


def test_generated_mnemonic_is_24_valid_words_and_fresh():
    first, second = generate_mnemonic(), generate_mnemonic()
    assert len(first.split()) == 24
    assert validate_mnemonic(first) == first
    assert first != second
    assert len(derive_keys(first).signing_key) == 32


def test_validate_normalizes():
    assert validate_mnemonic(" Abandon  " * 11 + "ABOUT ") == VECTORS["mnemonic"]


@pytest.mark.parametrize(
    "words, fragment",
    [
        ("abandon " * 12, "checksum"),
        ("abandon " * 11, "11 words"),
        ("", "0 words"),
        ("abandon", "mnemonic has 1 word;"),
        ("abandon " * 10 + "abandonn about", "mnemonic word at position 11 not in"),
        ("abandon abandon zzzz " + "abandon " * 7 + "abandonn about", "mnemonic words at positions 3, 11 not in"),
    ],
)
def test_invalid_mnemonics(words, fragment):
    with pytest.raises(InvalidMnemonic, match=fragment):
        validate_mnemonic(words)
    with pytest.raises(ValueError):
        derive_keys(words)


def test_invalid_mnemonic_message_does_not_repeat_words():
    words = "zebra " * 11 + "notaword"
    with pytest.raises(InvalidMnemonic) as caught:
        validate_mnemonic(words)
    assert "notaword" not in str(caught.value)
    assert "position 12" in str(caught.value)


def test_repr_hides_signing_key():
    keys = derive_keys(VECTORS["mnemonic"])
    for text in (repr(keys), str(keys), f"{keys}", repr([keys])):
        assert VECTORS["signing_key_hex"] not in text
        assert repr(keys.signing_key) not in text
        assert keys.pubkey_hex in text


def test_keys_are_frozen():
    keys = derive_keys(VECTORS["mnemonic"])
    assert isinstance(keys, NodeKeys)
    with pytest.raises(dataclasses.FrozenInstanceError):
        keys.signing_key = b"\x00" * 32  # type: ignore[misc]
