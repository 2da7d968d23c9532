"""The joiner's spill store: impressions, orphan actions and join records on disk, found
through a fixed-size key filter instead of a set of every key."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from monolith_ray.stream import spill
from monolith_ray.stream.spill import KeyFilter, SpillStore


def test_key_filter_never_misses_a_key_held_and_forgets_removed_ones() -> None:
    keys = [(f"r{i}", str(i % 7)) for i in range(20_000)]
    bloom = KeyFilter(1 << 18)
    for key in keys:
        bloom.add(key)
    assert all(bloom.may_hold(key) for key in keys)
    others = [(f"x{i}", "1") for i in range(20_000)]
    assert sum(map(bloom.may_hold, others)) < 0.05 * len(others)
    for key in keys[:10_000]:
        bloom.remove(key)
    assert all(bloom.may_hold(key) for key in keys[10_000:])
    assert sum(map(bloom.may_hold, keys[:10_000])) < 0.05 * 10_000
    bloom.close()


def test_store_memory_does_not_grow_with_the_keys_it_holds() -> None:
    """50k impressions stored: the Python side grows by far less than a set of their keys
    (~100 B a key) would take; the filter's counters were allocated up front."""
    store = SpillStore(memory_bytes=4 << 20)
    rows = [(f"request-{i}", "7", 0, i, 100 + i // 100, b"{}") for i in range(50_000)]
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for start in range(0, len(rows), 5000):
            store.put_many(rows[start:start + 5000])
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert grown < 200_000, grown
    assert len(store) == 50_000 and ("request-123", "7") in store
    assert ("request-123", "8") not in store
    assert store.get(("request-49999", "7")) == (0, 49_999, 599, b"{}")
    store.close()


def test_pop_older_reads_in_chunks_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spill, "_CHUNK", 7)
    store = SpillStore(memory_bytes=1 << 20)
    store.put_many([(f"r{i}", "1", i % 2, i, 1000 - i, b"m%d" % i) for i in range(40)])
    popped = list(store.pop_older(980))
    assert [row[3] for row in popped] == list(range(961, 980))
    assert [row[0] for row in popped] == [f"r{1000 - t}" for t in range(961, 980)]
    assert len(store) == 21 and ("r25", "1") not in store and ("r5", "1") in store
    assert store.oldest_offset(0) == 0 and store.oldest_offset(1) == 1
    store.delete(("r0", "1"))
    assert store.oldest_offset(0) == 2
    assert len(list(store.pop_older(None))) == 20 and len(store) == 0
    assert store.oldest_offset(0) is None
    store.close()


def test_orphans_wait_once_per_key_and_leave_by_time_or_when_taken(tmp_path) -> None:
    store = SpillStore(tmp_path / "s.sqlite", memory_bytes=1 << 20)
    assert store.add_orphan(("a", "1"), 0, 5, 100)
    assert not store.add_orphan(("a", "1"), 0, 6, 101), "one orphan a key"
    assert store.add_orphan(("b", "1"), 1, 3, 90) and store.add_orphan(("c", "1"), 0, 9, 120)
    assert store.orphans == 3
    assert store.oldest_orphan(0) == 5 and store.oldest_orphan(1) == 3
    assert store.take_orphan(("a", "1")) == (0, 5, 100) and store.take_orphan(("a", "1")) is None
    assert store.oldest_orphan(0) == 9
    assert store.drop_orphans(110) == 1 and store.orphans == 1
    assert store.oldest_orphan(1) is None and not store.may_hold(("b", "1"))
    store.close()


def test_join_records_give_the_oldest_needed_action_offset() -> None:
    store = SpillStore(memory_bytes=1 << 20)
    store.add_joined([(0, 10, 0, 4), (0, 12, 0, 7), (1, 3, 0, 2), (1, 8, 1, 1)])
    assert store.oldest_joining(0) == 2 and store.oldest_joining(1) == 1
    store.drop_joined(1, 5)
    assert store.oldest_joining(0) == 4
    store.drop_joined(0, 11)
    assert store.oldest_joining(0) == 7 and store.oldest_joining(2) is None
    store.close()


def test_a_store_left_by_another_run_is_started_afresh(tmp_path) -> None:
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"torn by a crash" * 1000)
    store = SpillStore(path, memory_bytes=1 << 20)
    store.put_many([("a", "1", 0, 0, 100, b"{}")])
    assert store.get(("a", "1")) == (0, 0, 100, b"{}")
    store.close()
    again = SpillStore(path, memory_bytes=1 << 20)
    assert len(again) == 0 and again.get(("a", "1")) is None
    again.close()
