"""SparseStore: serving's copy of the rows, changed only by sync updates."""

from __future__ import annotations

import numpy as np
import pytest

from monolith_ray.config import SlotConfig
from monolith_ray.serve.store import SparseStore, SparseUpdate
from monolith_ray.table import TableDelta

SLOTS = (SlotConfig("user_id", 1, 4), SlotConfig("item_id", 2, 4))


def _rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 5)).astype(np.float32)


def test_upsert_lookup_and_default_for_unknown_ids() -> None:
    store = SparseStore(SLOTS, "float32")
    ids = np.arange(1, 1001, dtype=np.int64) * 7919
    rows = _rows(1000)
    store.upsert("item_id", ids, rows)
    np.testing.assert_array_equal(store.lookup("item_id", ids[::-1]), rows[::-1])
    unknown = store.lookup("item_id", np.array([5, ids[3]], dtype=np.int64))
    np.testing.assert_array_equal(unknown[0], np.zeros(5, np.float32))
    np.testing.assert_array_equal(unknown[1], rows[3])
    assert store.lookup("user_id", ids).sum() == 0  # another slot's ids are not this one's


def test_erase_reverts_to_the_default_and_rows_are_reused() -> None:
    store = SparseStore(SLOTS, "float32")
    ids = np.arange(100, dtype=np.int64)
    store.upsert("user_id", ids, _rows(100))
    assert store.erase("user_id", np.array([3, 4, 1000], dtype=np.int64)) == 2
    assert not store.lookup("user_id", np.array([3, 4])).any()
    assert store.rows_per_slot()["user_id"] == 98
    before = store.nbytes
    store.upsert("user_id", np.array([500, 501], dtype=np.int64), _rows(2, 1))
    assert store.nbytes == before  # freed rows taken again
    np.testing.assert_array_equal(store.lookup("user_id", np.array([501]))[0], _rows(2, 1)[1])


def test_float16_halves_the_rows_and_rounds_as_float16() -> None:
    ids = np.arange(10_000, dtype=np.int64)
    rows = _rows(10_000)
    half, full = SparseStore(SLOTS, "float16"), SparseStore(SLOTS, "float32")
    for store in (half, full):
        store.upsert("item_id", ids, rows)
    np.testing.assert_array_equal(half.lookup("item_id", ids),
                                  rows.astype(np.float16).astype(np.float32))
    row_bytes = half._rows["item_id"].nbytes, full._rows["item_id"].nbytes
    assert row_bytes[0] * 2 == row_bytes[1]
    assert half.nbytes < full.nbytes


def test_everything_then_apply_rebuilds_an_equal_store() -> None:
    store = SparseStore(SLOTS)
    store.upsert("user_id", np.arange(50, dtype=np.int64), _rows(50))
    store.upsert("item_id", np.arange(7, dtype=np.int64), _rows(7, 2))
    store.erase("user_id", np.arange(10, dtype=np.int64))
    store.version = 9
    copy = SparseStore(SLOTS)
    copy.upsert("user_id", np.array([999], dtype=np.int64), _rows(1))  # dropped by the reset
    copy.apply(store.whole_update())
    assert copy.version == 9 and copy.rows_per_slot() == store.rows_per_slot()
    probe = np.arange(-5, 1000, dtype=np.int64)
    for name in ("user_id", "item_id"):
        np.testing.assert_array_equal(copy.lookup(name, probe), store.lookup(name, probe))


def test_incremental_update_and_training_deltas() -> None:
    store = SparseStore(SLOTS, "float32")
    store.apply_deltas({"item_id": TableDelta(np.array([1, 2, 3]), _rows(3),
                                              np.empty(0, np.int64), 4)})
    store.apply(SparseUpdate(2, False, {"item_id": np.array([2], dtype=np.int64)},
                             {"item_id": np.ones((1, 5), np.float32)},
                             {"item_id": np.array([3], dtype=np.int64)}))
    got = store.lookup("item_id", np.array([1, 2, 3], dtype=np.int64))
    np.testing.assert_array_equal(got, np.stack([_rows(3)[0], np.ones(5), np.zeros(5)]))
    assert store.version == 2


def test_bad_input_is_refused_by_name() -> None:
    store = SparseStore(SLOTS)
    with pytest.raises(KeyError, match="no slot 'genre'"):
        store.lookup("genre", np.array([1]))
    with pytest.raises(ValueError, match="item_id"):
        store.upsert("item_id", np.array([1, 2]), np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        SparseStore(SLOTS, "int8")



def test_the_ids_held_from_a_shard_that_its_whole_table_lacks() -> None:
    store = SparseStore(SLOTS, "float32")
    width = store.widths[SLOTS[0].name]
    name = SLOTS[0].name

    def delta(ids: list[int]) -> TableDelta:
        return TableDelta(np.array(ids, np.int64), np.ones((len(ids), width), np.float32),
                          np.empty(0, np.int64), 1)

    store.apply_deltas({name: delta([1, 2, 3])}, owner=0)
    store.apply_deltas({name: delta([10, 11])}, owner=1)
    store.upsert(name, np.array([20]), np.ones((1, width), np.float32))  # no owner known
    assert sorted(store.missing_from(name, 0, np.array([2, 99])).tolist()) == [1, 3]
    assert store.missing_from(name, 1, np.array([10, 11])).size == 0
    store.erase(name, np.array([1]))
    assert sorted(store.missing_from(name, 0, np.array([2])).tolist()) == [3]
    assert store.missing_from(name, 5, np.array([], np.int64)).size == 0
