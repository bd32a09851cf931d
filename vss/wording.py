"""How messages word counts: "1 key", "2 keys", "1,234 keys". In vss/ because the
client words its own messages and imports nothing of the project; the node and its
actors use the same helpers."""

from __future__ import annotations

__all__ = ["counted", "plural"]


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """The noun in the number `count` needs: `noun` for 1, else `plural_form` (noun + "s")."""
    return noun if count == 1 else (plural_form or noun + "s")


def counted(count: int, noun: str, plural_form: str | None = None) -> str:
    """`count` and the noun in the number it needs, with thousands separators."""
    return f"{count:,} {plural(count, noun, plural_form)}"
