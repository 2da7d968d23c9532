"""``serve.seen.unseen``: the candidates left once a user's seen items are left out."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from monolith_ray.serve.seen import unseen

ITEMS = np.arange(1000, 1100, dtype=np.int64)  # pool position i holds item 1000 + i


def test_a_search_widened_by_the_seen_items_still_gives_limit_candidates() -> None:
    """Retrieval asked for 10 + 5 (five seen); the five are left out, ten stay, in order."""
    take = np.array([7, 3, 50, 4, 9, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69])
    seen = ITEMS[[3, 9, 61, 99, 0]]  # three of them retrieved, two not
    got, excluded, kept = unseen(take, ITEMS, seen, k=5, limit=10)
    assert got.tolist() == [7, 50, 4, 60, 62, 63, 64, 65, 66, 67]
    assert (excluded, kept) == (3, 0)


def test_seen_items_fill_up_to_k_in_their_order_and_none_seen_only_cuts_to_limit() -> None:
    take = np.array([1, 2, 3, 4])
    got, excluded, kept = unseen(take, ITEMS, ITEMS[[2, 3, 4]], k=3, limit=10)
    assert got.tolist() == [1, 2, 3] and (excluded, kept) == (1, 2)
    got, excluded, kept = unseen(np.arange(20), ITEMS, np.empty(0, np.int64), k=3, limit=12)
    assert got.tolist() == list(range(12)) and (excluded, kept) == (0, 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 99), unique=True, max_size=60),
       st.lists(st.integers(0, 99), max_size=20), st.integers(1, 30), st.integers(1, 40))
def test_what_is_left_is_bounded_ordered_and_unseen_unless_needed_for_k(
        take, seen, k, limit) -> None:
    take_a = np.asarray(take, np.int64)
    got, excluded, kept = unseen(take_a, ITEMS, ITEMS[seen], k, limit)
    assert got.size <= limit and got.size == min(limit, take_a.size - excluded)
    position = {p: i for i, p in enumerate(take)}
    assert [position[p] for p in got.tolist()] == sorted(position[p] for p in got.tolist())
    seen_got = int(np.isin(ITEMS[got], ITEMS[seen]).sum())
    seen_all = int(np.isin(ITEMS[take_a], ITEMS[seen]).sum())
    assert excluded + kept == seen_all and seen_got <= kept
    assert take_a.size - seen_all >= min(k, take_a.size) or kept == min(k, take_a.size) - (
        take_a.size - seen_all)
