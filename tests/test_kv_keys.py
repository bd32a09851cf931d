"""node.kv_keys: LDK namespace rules and the VSS key encoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.kv_keys import InvalidKey, InvalidNamespace, from_vss_key, to_vss_key, validate

VECTORS = json.loads(
    (Path(__file__).resolve().parent / "vectors" / "vectors.json").read_text()
)
LONGEST = "a" * 120


@pytest.mark.parametrize("case", VECTORS["kv_keys"], ids=lambda c: c["vss_key"])
def test_vectors_both_directions(case):
    assert to_vss_key(case["primary"], case["secondary"], case["key"]) == case["vss_key"]
    assert from_vss_key(case["vss_key"]) == (case["primary"], case["secondary"], case["key"])


@pytest.mark.parametrize(
    "primary, secondary, key, vss_key",
    [
        ("", "", "_", "_/_/_"),
        ("", "", "k", "_/_/k"),
        ("p", "", "k", "p/_/k"),
        ("p", "s", "k", "p/s/k"),
        ("A-z_09", "__", "-", "A-z_09/__/-"),
        (LONGEST, LONGEST, LONGEST, f"{LONGEST}/{LONGEST}/{LONGEST}"),
        ("p", "s", "__rln_instance__", "p/s/__rln_instance__"),
    ],
)
def test_valid_names_round_trip(primary, secondary, key, vss_key):
    validate(primary, secondary, key)
    assert to_vss_key(primary, secondary, key) == vss_key
    assert from_vss_key(vss_key) == (primary, secondary, key)


@pytest.mark.parametrize(
    "primary, secondary, key, error, fragment",
    [
        ("_", "", "k", InvalidNamespace, "exactly '_'"),
        ("p", "_", "k", InvalidNamespace, "exactly '_'"),
        ("a" * 121, "", "k", InvalidNamespace, "121 characters"),
        ("p", "a" * 121, "k", InvalidNamespace, "121 characters"),
        ("p", "", "a" * 121, InvalidKey, "121 characters"),
        ("p/q", "", "k", InvalidNamespace, "outside"),
        ("p", "s.t", "k", InvalidNamespace, "outside"),
        ("p", "", "k e y", InvalidKey, "outside"),
        ("p", "", "k/x", InvalidKey, "outside"),
        ("p", "", "ключ", InvalidKey, "outside"),
        ("p", "", "٣", InvalidKey, "outside"),  # a non-ASCII digit
        ("", "s", "k", InvalidNamespace, "requires a non-empty primary"),
        ("p", "s", "", InvalidKey, "empty"),
        ("", "", "", InvalidKey, "empty"),
    ],
)
def test_invalid_names(primary, secondary, key, error, fragment):
    with pytest.raises(error, match=fragment):
        validate(primary, secondary, key)
    with pytest.raises(error):
        to_vss_key(primary, secondary, key)


def test_non_string_parts_are_refused():
    with pytest.raises(InvalidNamespace):
        validate(None, "", "k")  # type: ignore[arg-type]
    with pytest.raises(InvalidKey):
        validate("p", "", b"k")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "vss_key",
    [
        "__rln_instance__",
        "",
        "k",
        "p/k",
        "p/s/k/x",
        "p//k",
        "/s/k",
        "p/s/",
        "_/s/k",  # empty primary with a secondary
        "p/s/k.x",
        "p/" + "a" * 121 + "/k",
    ],
)
def test_from_vss_key_refuses_non_encoded_keys(vss_key):
    with pytest.raises(InvalidKey):
        from_vss_key(vss_key)


def test_errors_are_value_errors():
    assert issubclass(InvalidKey, ValueError)
    assert issubclass(InvalidNamespace, ValueError)
