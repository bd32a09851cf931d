"""LDK-style KV names and their VSS keys.

A local entry is named by `(primary, secondary, key)`. Each part uses LDK's alphabet
`[A-Za-z0-9_-]` and is at most 120 characters; the namespaces may be empty, the key
may not; an empty primary namespace requires an empty secondary one.

On the server the entry lives under `"{primary}/{secondary}/{key}"` with an empty
namespace written `_` (docs/FORMAT.md, "KV stream"). Since `_` would
then mean both "empty" and "the namespace `_`", a namespace that is exactly `_` is
refused, which keeps the mapping one-to-one. Keys may be `_`: they are never empty.
"""

from __future__ import annotations

import re

from node.errors import InvalidKey, InvalidNamespace

__all__ = ["InvalidKey", "InvalidNamespace", "from_vss_key", "to_vss_key", "validate"]

MAX_PART_LEN = 120
EMPTY_NAMESPACE = "_"
_SEPARATOR = "/"
_ALPHABET = re.compile(r"[A-Za-z0-9_-]*")


def _shown(text: str, limit: int = 80) -> str:
    """A repr short enough for an error message, whatever the input's length."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _check_part(value: object, what: str, error: type[ValueError]) -> str:
    if not isinstance(value, str):
        raise error(f"{what} must be a string")
    if len(value) > MAX_PART_LEN:
        raise error(f"{what} is {len(value)} characters long; at most {MAX_PART_LEN} allowed")
    if not _ALPHABET.fullmatch(value):
        raise error(f"{what} {value!r} has characters outside [A-Za-z0-9_-]")
    return value


def validate(primary: str, secondary: str, key: str) -> None:
    """Raise InvalidNamespace or InvalidKey unless the triple names a storable entry."""
    for value, what in ((primary, "primary namespace"), (secondary, "secondary namespace")):
        _check_part(value, what, InvalidNamespace)
        if value == EMPTY_NAMESPACE:
            raise InvalidNamespace(
                f"{what} may not be exactly {EMPTY_NAMESPACE!r}: on VSS it stands for the empty "
                "namespace"
            )
    if primary == "" and secondary != "":
        raise InvalidNamespace("a secondary namespace requires a non-empty primary namespace")
    _check_part(key, "key", InvalidKey)
    if key == "":
        raise InvalidKey("key may not be empty")


def to_vss_key(primary: str, secondary: str, key: str) -> str:
    """The VSS key of an entry, e.g. `("", "", "manager")` → `"_/_/manager"`."""
    validate(primary, secondary, key)
    return _SEPARATOR.join((primary or EMPTY_NAMESPACE, secondary or EMPTY_NAMESPACE, key))


def from_vss_key(vss_key: str) -> tuple[str, str, str]:
    """The `(primary, secondary, key)` of a VSS key; the inverse of `to_vss_key`.

    Raises InvalidKey for anything `to_vss_key` cannot have produced, such as the
    reserved fence key `__rln_instance__` or `"a//k"`.
    """
    if not isinstance(vss_key, str):
        raise InvalidKey("VSS key must be a string")
    parts = vss_key.split(_SEPARATOR)
    if len(parts) != 3 or "" in parts:
        raise InvalidKey(
            f"VSS key {_shown(vss_key)} is not of the form primary/secondary/key"
        )
    encoded_primary, encoded_secondary, key = parts
    primary = "" if encoded_primary == EMPTY_NAMESPACE else encoded_primary
    secondary = "" if encoded_secondary == EMPTY_NAMESPACE else encoded_secondary
    try:
        validate(primary, secondary, key)
    except InvalidNamespace as error:
        raise InvalidKey(f"VSS key {_shown(vss_key)} is not a valid KV key: {error}") from None
    return primary, secondary, key
