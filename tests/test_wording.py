"""How messages count things (vss.wording): the number and the noun it needs."""

from __future__ import annotations

import pytest

from vss.wording import counted, plural


@pytest.mark.parametrize(
    "count, noun, form, expected",
    [
        (0, "key", None, "0 keys"),
        (1, "key", None, "1 key"),
        (2, "key", None, "2 keys"),
        (1234, "local key", None, "1,234 local keys"),
        (1, "entry", "entries", "1 entry"),
        (3, "entry", "entries", "3 entries"),
    ],
)
def test_counted_says_the_number_and_the_noun_it_needs(count, noun, form, expected):
    assert counted(count, noun, form) == expected


def test_plural_is_the_noun_alone():
    assert [plural(n, "position") for n in (0, 1, 2)] == ["positions", "position", "positions"]
