"""RecentKeys: a repeat is recognised while it is among the last ``capacity`` keys."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monolith_ray.policy.repeats import RecentKeys


def test_a_key_is_new_once_then_a_repeat() -> None:
    keys = RecentKeys(10)
    assert keys.first("r1", "7", "click") and keys.first("r1", "7", "like")
    assert not keys.first("r1", "7", "click") and not keys.first("r1", "7", "like")
    assert len(keys) == 2


def test_the_oldest_key_is_forgotten_past_capacity() -> None:
    keys = RecentKeys(3)
    for n in range(4):
        assert keys.first(str(n))
    assert len(keys) == 3
    assert keys.first("0")  # forgotten: new again, and "1" is forgotten for it
    assert not keys.first("3") and not keys.first("2")
    assert keys.first("1")
    assert keys.first("2")  # a repeat did not refresh it: the oldest, forgotten for "1"


@given(st.lists(st.text(max_size=4), min_size=1, max_size=3),
       st.lists(st.text(max_size=4), min_size=1, max_size=3))
def test_keys_of_other_parts_are_other_keys(a: list[str], b: list[str]) -> None:
    keys = RecentKeys(10)
    keys.first(*a)
    assert keys.first(*b) == (a != b)


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        RecentKeys(0)
