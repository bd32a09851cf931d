"""How the node words counts in messages: "1 key", "2 keys", "1,234 keys"."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """`count` and the noun in the number it needs, with thousands separators."""
    word = noun if count == 1 else (plural or noun + "s")
    return f"{count:,} {word}"
