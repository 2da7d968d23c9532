"""RowCache: a replica's bounded hot-row cache, filled from fetches and kept fresh by syncs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monolith_ray.config import SlotConfig
from monolith_ray.features import make_fids
from monolith_ray.serve.cache import POLICIES, RowCache
from monolith_ray.serve.store import SparseUpdate

SLOTS = (SlotConfig("user_id", 1, 4), SlotConfig("item_id", 2, 4))


def _fids(slot_id: int, values: range | list[int]) -> np.ndarray:
    return make_fids(slot_id, np.asarray(values, dtype=np.int64))


def _rows_for(ids: np.ndarray) -> np.ndarray:
    """A row per id that says which id it is: (k, 5) float32, every column ``id % 1000``."""
    return np.repeat((ids % 1000).astype(np.float32)[:, None], 5, axis=1)


def _update(version: int, ids: np.ndarray | None = None, rows: np.ndarray | None = None,
            evicted: np.ndarray | None = None, reset: bool = False) -> SparseUpdate:
    empty = np.empty(0, dtype=np.int64)
    return SparseUpdate(version, reset,
                        {"item_id": empty if ids is None else ids},
                        {"item_id": np.empty((0, 5), np.float32) if rows is None else rows},
                        {"item_id": empty if evicted is None else evicted})


@pytest.mark.parametrize("policy", POLICIES)
def test_hits_after_fill_and_misses_read_zeros(policy: str) -> None:
    cache = RowCache(SLOTS, 100, "float32", policy)
    ids = _fids(2, range(10))
    rows, hit = cache.lookup("item_id", ids)
    assert not hit.any() and not rows.any() and rows.shape == (10, 5)
    assert cache.fill("item_id", ids[:6], _rows_for(ids[:6])) == 6
    rows, hit = cache.lookup("item_id", ids[::-1])
    np.testing.assert_array_equal(hit, [False] * 4 + [True] * 6)
    np.testing.assert_array_equal(rows[4:], _rows_for(ids[:6])[::-1])
    assert not rows[:4].any()
    assert not cache.lookup("user_id", _fids(1, range(10)))[1].any()  # same values, other slot


def test_float16_rows_round_as_float16() -> None:
    cache = RowCache(SLOTS, 10, "float16", "lru")
    ids = _fids(2, range(3))
    rows = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    cache.fill("item_id", ids, rows)
    np.testing.assert_array_equal(cache.lookup("item_id", ids)[0],
                                  rows.astype(np.float16).astype(np.float32))


def test_ids_of_another_slot_are_refused() -> None:
    cache = RowCache(SLOTS, 10)
    with pytest.raises(ValueError, match="fids"):
        cache.lookup("item_id", _fids(1, range(3)))
    with pytest.raises(KeyError, match="no slot"):
        cache.lookup("genre", _fids(2, range(3)))


@settings(max_examples=40, deadline=None)
@given(policy=st.sampled_from(POLICIES), capacity=st.integers(1, 40),
       batches=st.lists(st.tuples(st.sampled_from([(1, "user_id"), (2, "item_id")]),
                                  st.lists(st.integers(0, 400), min_size=0, max_size=120)),
                        min_size=1, max_size=12))
def test_capacity_never_exceeded_and_hits_read_their_rows(
        policy: str, capacity: int, batches: list[tuple[tuple[int, str], list[int]]]) -> None:
    cache = RowCache(SLOTS, capacity, "float32", policy)
    allocated = cache.nbytes
    for (slot_id, slot), values in batches:
        ids = _fids(slot_id, values)
        rows, hit = cache.lookup(slot, ids)
        np.testing.assert_array_equal(rows[hit], _rows_for(ids[hit]))
        cache.fill(slot, ids[~hit], _rows_for(ids[~hit]))
        assert len(cache) <= capacity
        assert cache.nbytes == allocated == cache.stats()["bytes"]
    assert cache.stats()["rows"] == len(cache)


def test_bytes_are_fixed_by_the_capacity_however_many_ids_pass() -> None:
    small, big = RowCache(SLOTS, 1_000, "float16"), RowCache(SLOTS, 10_000, "float16")
    before = small.nbytes
    for start in range(0, 100_000, 5_000):
        ids = _fids(2, range(start, start + 5_000))
        small.lookup("item_id", ids)
        small.fill("item_id", ids, _rows_for(ids))
        small.lookup("item_id", ids)  # seen twice: tinylfu admits them over older ones
    assert small.nbytes == before and len(small) == 1_000
    assert 9 * small.nbytes < big.nbytes < 11 * small.nbytes


@pytest.mark.parametrize("policy", POLICIES)
def test_update_refreshes_a_cached_row_and_does_not_insert_others(policy: str) -> None:
    cache = RowCache(SLOTS, 10, "float32", policy)
    cached, other = _fids(2, [1, 2]), _fids(2, [3])
    cache.fill("item_id", cached, _rows_for(cached))
    ids = np.concatenate([cached[:1], other])
    cache.apply(_update(7, ids, np.full((2, 5), 9.0, np.float32)))
    rows, hit = cache.lookup("item_id", np.concatenate([cached, other]))
    np.testing.assert_array_equal(hit, [True, True, False])
    np.testing.assert_array_equal(rows[:, 0], [9.0, _rows_for(cached)[1, 0], 0.0])
    assert len(cache) == 2 and cache.version == 7


def test_an_evicted_id_drops_and_then_misses() -> None:
    cache = RowCache(SLOTS, 10, "float32")
    ids = _fids(2, range(4))
    cache.fill("item_id", ids, _rows_for(ids))
    cache.apply(_update(3, evicted=np.concatenate([ids[1:2], _fids(2, [99])])))
    rows, hit = cache.lookup("item_id", ids)
    np.testing.assert_array_equal(hit, [True, False, True, True])
    assert not rows[1].any()
    assert cache.stats()["dropped"] == 1 and len(cache) == 3
    assert cache.fill("item_id", ids[1:2], _rows_for(ids[1:2])) == 1  # its entry is reused
    assert cache.lookup("item_id", ids)[1].all()


def test_reset_clears() -> None:
    cache = RowCache(SLOTS, 10, "float32")
    ids = _fids(2, range(4))
    cache.fill("item_id", ids, _rows_for(ids))
    cache.apply(_update(5, ids[:1], _rows_for(ids[:1]), reset=True))
    assert len(cache) == 0 and cache.version == 5
    assert not cache.lookup("item_id", ids)[1].any()
    assert cache.fill("item_id", ids, _rows_for(ids)) == 4


def test_lru_evicts_the_least_recently_used() -> None:
    cache = RowCache(SLOTS, 3, "float32", "lru")
    a, b, c, d, e = _fids(2, range(5))
    cache.fill("item_id", np.array([a, b, c]), _rows_for(np.array([a, b, c])))
    cache.lookup("item_id", np.array([a]))  # order, oldest first: b, c, a
    cache.fill("item_id", np.array([d]), _rows_for(np.array([d])))  # b goes
    np.testing.assert_array_equal(cache.lookup("item_id", np.array([a, b, c, d]))[1],
                                  [True, False, True, True])  # that lookup: a, c, d
    cache.fill("item_id", np.array([e]), _rows_for(np.array([e])))  # a goes
    np.testing.assert_array_equal(cache.lookup("item_id", np.array([a, c, d, e]))[1],
                                  [False, True, True, True])
    assert cache.stats()["evictions"] == 2


@pytest.mark.parametrize(("policy", "kept"), [("tinylfu", True), ("lru", False)])
def test_tinylfu_keeps_a_frequent_row_over_a_burst_of_one_off_ids(policy: str,
                                                                  kept: bool) -> None:
    cache = RowCache(SLOTS, 8, "float32", policy)
    hot = _fids(2, [0])
    for _ in range(5):
        rows, hit = cache.lookup("item_id", hot)
        cache.fill("item_id", hot[~hit], _rows_for(hot[~hit]))
    for start in range(1, 200, 4):  # requests of four ids never seen again
        burst = _fids(2, range(start, start + 4))
        cache.lookup("item_id", burst)
        cache.fill("item_id", burst, _rows_for(burst))
    assert cache.lookup("item_id", hot)[1][0] == kept
    assert len(cache) == 8


def test_stats_add_up() -> None:
    cache = RowCache(SLOTS, 5, "float16", "lru")
    users, items = _fids(1, range(3)), _fids(2, range(6))
    for slot, ids in (("user_id", users), ("item_id", items)):
        _, hit = cache.lookup(slot, ids)
        cache.fill(slot, ids[~hit], _rows_for(ids[~hit]))
    _, hit = cache.lookup("item_id", items)
    stats = cache.stats()
    assert stats["misses"] == 9 + int((~hit).sum()) and stats["hits"] == int(hit.sum())
    assert stats["hit_rate"] == stats["hits"] / (stats["hits"] + stats["misses"])
    assert stats["rows"] == 5 == stats["capacity"]  # one bound shared by both slots
    assert stats["evictions"] == 3  # the users; of one fill's 6 items, 5 fit
    assert stats["rejected"] == 1
    assert stats["rows"] == 9 - stats["evictions"] - stats["rejected"]
    assert stats["bytes"] == cache.nbytes >= 5 * 5 * 2


def test_tinylfu_window_takes_a_new_id_when_full() -> None:
    cache = RowCache(SLOTS, 200, "float32", "tinylfu")
    old = _fids(2, range(200))
    for _ in range(3):
        cache.lookup("item_id", old)
    cache.fill("item_id", old, _rows_for(old))
    new = _fids(2, [1000])
    cache.lookup("item_id", new)
    assert cache.fill("item_id", new, _rows_for(new)) == 1  # into the window, seen once
    assert cache.lookup("item_id", new)[1][0] and len(cache) == 200
    assert cache.stats()["evictions"] == 1


def test_rows_read_before_the_caches_version_are_not_cached() -> None:
    cache = RowCache(SLOTS, 10, "float32")
    ids = _fids(2, range(2))
    cache.fill("item_id", ids[:1], _rows_for(ids[:1]), version=0)
    cache.apply(_update(4, ids, np.full((2, 5), 9.0, np.float32)))  # ids[1] not cached: passed
    assert cache.fill("item_id", ids, _rows_for(ids), version=3) == 0  # fetched before it
    rows, hit = cache.lookup("item_id", ids)
    np.testing.assert_array_equal(hit, [True, False])
    assert rows[0, 0] == 9.0 and cache.stats()["stale"] == 2
    assert cache.fill("item_id", ids[1:], np.full((1, 5), 9.0, np.float32), version=4) == 1
