"""CuckooMap against a plain dict model, at growth, at high load, through snapshots and bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from monolith_ray.table import cuckoo
from monolith_ray.table.cuckoo import EMPTY, SLOTS, CuckooMap

MIN_KEY, MAX_KEY = -(2**63) + 1, 2**63 - 1
BIG = [MAX_KEY, MIN_KEY, 2**62 + 5, -(2**62) - 5, 2**31, -(2**31), 2**32 + 1]
# A small range makes repeats (across and within batches) common; BIG and the full range
# keep the extremes and hash-spread keys in play.
KEYS = st.one_of(st.integers(-5, 40), st.sampled_from(BIG), st.integers(MIN_KEY, MAX_KEY))
BATCHES = st.lists(KEYS, max_size=40)


def as_keys(keys) -> np.ndarray:
    return np.array(keys, dtype=np.int64)


def distinct_keys(rng: np.random.Generator, n: int) -> np.ndarray:
    """n distinct int64 keys spread over the whole range (never EMPTY), in random order."""
    keys = np.unique(rng.integers(MIN_KEY, MAX_KEY, n + n // 100 + 16, endpoint=True))[:n]
    assert keys.shape[0] == n
    return rng.permutation(keys)


def read_only_copy(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A copy of a state whose arrays are read-only, like arrays from Ray's object store."""
    out = {}
    for name, a in state.items():
        out[name] = np.array(a)
        out[name].flags.writeable = False
    return out


def assert_matches(m: CuckooMap, keys: np.ndarray, rows: np.ndarray) -> None:
    """m holds exactly keys -> rows: finds, size, items, row bounds and the free list agree."""
    assert len(m) == keys.shape[0]
    np.testing.assert_array_equal(m.find(keys), rows)
    item_keys, item_rows = m.items()
    order = np.argsort(item_keys, kind="stable")
    expected = np.argsort(keys, kind="stable")
    np.testing.assert_array_equal(item_keys[order], keys[expected])
    np.testing.assert_array_equal(item_rows[order], rows[expected])
    assert np.unique(rows).shape[0] == rows.shape[0], "two live keys share a row"
    assert rows.shape[0] == 0 or (rows.min() >= 0 and rows.max() < m.row_bound)
    # Live rows and the free list partition range(row_bound): no row leaks, none is handed twice.
    free = np.sort(m.state()["free"])
    np.testing.assert_array_equal(free, np.setdiff1d(np.arange(m.row_bound), rows))


# --- 1. stateful: random batches of find_or_insert / find / erase / reserve / snapshot ---------

class CuckooModel(RuleBasedStateMachine):
    """CuckooMap driven by random batches and checked against a dict key -> row."""

    @initialize(capacity=st.sampled_from([1, 2, 16]), max_load=st.sampled_from([0.5, 0.9, 0.98]),
                seed=st.integers(1, 2**32), segment_keys=st.sampled_from([2, 8, 1 << 16]))
    def create(self, capacity: int, max_load: float, seed: int, segment_keys: int) -> None:
        # Small segment_keys split the map into many segments within a few batches.
        self.map = CuckooMap(capacity=capacity, max_load=max_load, seed=seed,
                             segment_keys=segment_keys)
        self.model: dict[int, int] = {}

    def model_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return as_keys(list(self.model)), np.array(list(self.model.values()), dtype=np.int32)

    @rule(batch=BATCHES)
    def insert(self, batch: list[int]) -> None:
        bound = self.map.row_bound
        freed = set(range(bound)) - set(self.model.values())
        rows, inserted = self.map.find_or_insert(as_keys(batch))
        assert rows.dtype == np.int32 and inserted.dtype == np.bool_
        for key, row, new in zip(batch, rows.tolist(), inserted.tolist()):
            assert new == (key not in self.model), f"inserted flag wrong for {key}"
            if new:
                self.model[key] = row
            assert row == self.model[key]
        new_rows = set(rows[inserted].tolist())
        # Freed rows are used before fresh ones: row_bound grows only by what the free list lacks.
        assert self.map.row_bound == bound + max(0, len(new_rows) - len(freed))
        if len(new_rows) <= len(freed):
            assert new_rows <= freed
        else:
            assert freed <= new_rows
            assert new_rows - freed == set(range(bound, self.map.row_bound))

    @rule(data=st.data())
    def find(self, data: st.DataObject) -> None:
        present = data.draw(st.lists(st.sampled_from(sorted(self.model)))) if self.model else []
        query = data.draw(st.permutations(present + data.draw(BATCHES)))
        np.testing.assert_array_equal(self.map.find(as_keys(query)),
                                      [self.model.get(k, -1) for k in query])

    @rule(data=st.data())
    def erase(self, data: st.DataObject) -> None:
        present = data.draw(st.lists(st.sampled_from(sorted(self.model)))) if self.model else []
        query = data.draw(st.permutations(present + data.draw(BATCHES)))
        size = len(self.map)
        freed = self.map.erase(as_keys(query))
        # A key repeated in the batch is erased by its first copy; later copies find it absent.
        np.testing.assert_array_equal(freed, [self.model.pop(k, -1) for k in query])
        assert len(self.map) == size - np.count_nonzero(freed >= 0)

    @rule(extra=st.integers(0, 10))
    def reserve(self, extra: int) -> None:
        want = 2 * len(self.map) + extra
        self.map.reserve(want)
        assert int(self.map.max_load * self.map.capacity) >= want

    @rule()
    def snapshot_restore(self) -> None:
        self.map = CuckooMap.from_state(read_only_copy(self.map.state()))

    @invariant()
    def matches_model(self) -> None:
        assert_matches(self.map, *self.model_arrays())

    @invariant()
    def absent_keys_are_not_found(self) -> None:
        probe = [k for k in range(-5, 41) if k not in self.model] + [k for k in BIG if k not in self.model]
        assert (self.map.find(as_keys(probe + [EMPTY])) == -1).all()


TestCuckooModel = CuckooModel.TestCase
TestCuckooModel.settings = settings(max_examples=120, stateful_step_count=30, deadline=None)


# --- 2. growth far past the initial capacity ---------------------------------------------------

def test_grows_from_16_slots_to_200k_keys() -> None:
    rng = np.random.default_rng(2)
    keys = distinct_keys(rng, 200_000)
    m = CuckooMap(capacity=16)
    cuts = np.sort(rng.choice(np.arange(1, keys.shape[0]), 80, replace=False))
    batches = np.split(keys, cuts)
    assert min(b.shape[0] for b in batches) < 100 < max(b.shape[0] for b in batches)
    for batch in batches:
        rows, inserted = m.find_or_insert(batch)
        assert inserted.all()
    rows = m.find(keys)
    np.testing.assert_array_equal(np.sort(rows), np.arange(keys.shape[0]))
    assert m.row_bound == keys.shape[0]
    assert m.capacity >= keys.shape[0] and m.load_factor <= m.max_load
    assert_matches(m, keys, rows)
    again, inserted = m.find_or_insert(keys[::-1])
    assert not inserted.any()
    np.testing.assert_array_equal(again, rows[::-1])
    absent = np.setdiff1d(distinct_keys(rng, 10_000), keys)
    assert (m.find(absent) == -1).all()


# --- 3. high load and failed displacement walks ------------------------------------------------

def test_fills_fixed_buckets_to_098_load() -> None:
    """Filling a map to max_load=0.98 without growing needs long displacement walks: first-
    bucket-then-second placement with no displacement jams near a load of 0.5 here."""
    filled_without_growth = 0
    for seed in range(1, 6):
        rng = np.random.default_rng(seed)
        m = CuckooMap(capacity=2000, max_load=0.98, seed=seed)
        capacity = m.capacity
        keys = distinct_keys(rng, int(0.98 * capacity))
        rows = np.concatenate([m.find_or_insert(b)[0] for b in np.array_split(keys, 7)])
        filled_without_growth += m.capacity == capacity
        np.testing.assert_array_equal(np.sort(rows), np.arange(keys.shape[0]))
        assert_matches(m, keys, rows)
        # Churn at high load: erase a third, insert as many new keys; freed rows are reused.
        gone = keys[::3]
        m.erase(gone)
        kept = np.setdiff1d(keys, gone)
        fresh = np.setdiff1d(distinct_keys(rng, gone.shape[0] + 100), keys)[: gone.shape[0]]
        bound = m.row_bound
        m.find_or_insert(fresh)
        assert m.row_bound == bound
        live = np.concatenate([kept, fresh])
        assert_matches(m, live, m.find(live))
    assert filled_without_growth >= 3


def test_failed_walks_are_undone_then_the_map_grows() -> None:
    """On tiny maps at 0.98 load a walk often fails below max_size (a grow then happens while
    the map has room); every key must survive the undo and the rehash."""
    rng = np.random.default_rng(3)
    walk_failures = 0
    for seed in range(1, 41):
        m = CuckooMap(capacity=1, max_load=0.98, seed=seed)
        keys = distinct_keys(rng, 300)
        for i, key in enumerate(keys):
            room = len(m) < int(m.max_load * m.capacity)
            capacity = m.capacity
            row, inserted = m.find_or_insert(keys[i: i + 1])
            assert inserted[0] and row[0] == i
            walk_failures += room and m.capacity > capacity
        assert_matches(m, keys, np.arange(keys.shape[0], dtype=np.int32))
    assert walk_failures > 0


def test_failed_walk_leaves_the_table_as_it_was() -> None:
    """Kernel level: in a completely full two-bucket table, an extra key's walk must fail and
    every key and row must be back in its slot (only overflow flags may change)."""
    n_buckets = np.uint64(2)
    two_way = [k for k in range(10_000) if len(set(cuckoo._buckets(k, n_buckets))) == 2]
    m = CuckooMap(capacity=9, max_load=0.98)
    assert m.capacity == 2 * SLOTS and m.segments == 1
    seg = m._segments[0]
    seg_rows = seg.view(np.int32)
    keys = as_keys(two_way[: 2 * SLOTS])
    out = np.empty(keys.shape[0], dtype=np.int32)
    inserted = np.empty(keys.shape[0], dtype=np.bool_)

    def insert(query: np.ndarray, limit: int) -> tuple[int, int]:
        status, reached, _ = cuckoo._find_or_insert_batch(
            m._bases, m._n_buckets, m._sizes, np.array([limit]), m._directory, m._shift,
            m._counters, m._free, m._rng, query, out, inserted, 0)
        return status, reached

    assert insert(keys, 2 * SLOTS) == (cuckoo._OK, keys.shape[0])
    before_keys = seg[:, :SLOTS].copy()
    before_rows = seg_rows[:, cuckoo._ROW0: cuckoo._ROW0 + SLOTS].copy()
    before_counters = m._counters.copy()
    extra = as_keys(two_way[2 * SLOTS: 2 * SLOTS + 1])
    assert insert(extra, 2 * SLOTS + 1) == (cuckoo._NEED_GROW, 0)
    np.testing.assert_array_equal(seg[:, :SLOTS], before_keys)
    np.testing.assert_array_equal(seg_rows[:, cuckoo._ROW0: cuckoo._ROW0 + SLOTS], before_rows)
    np.testing.assert_array_equal(m._counters, before_counters)
    assert m._sizes[0] == 2 * SLOTS
    rows, inserted = m.find_or_insert(extra)
    assert inserted[0] and m.capacity > 2 * SLOTS
    all_keys = np.concatenate([keys, extra])
    assert_matches(m, all_keys, np.arange(all_keys.shape[0], dtype=np.int32))


@pytest.mark.parametrize("max_load", [0.29, 0.35, 0.5, 0.58, 0.69, 0.7, 0.9, 0.98])
def test_capacity_and_reserve_hold_what_they_promise(max_load: float) -> None:
    """A map built for n keys, or reserved for n, may hold n before it grows: the bucket count
    must survive the float rounding of max_load x capacity."""
    for n in range(1, 3000):
        m = CuckooMap(capacity=n, max_load=max_load)
        assert int(max_load * m.capacity) >= n, n
    m = CuckooMap(capacity=1, max_load=max_load)
    for n in range(1, 3000, 7):
        m.reserve(n)
        assert int(max_load * m.capacity) >= n, n


def test_map_built_for_63_keys_at_load_07_holds_them_without_growing() -> None:
    m = CuckooMap(capacity=63, max_load=0.7)
    capacity = m.capacity
    m.find_or_insert(np.arange(63))
    assert m.capacity == capacity


# --- 4. snapshot / restore ---------------------------------------------------------------------

def churned_map(rng: np.random.Generator) -> tuple[CuckooMap, np.ndarray]:
    """A map with erased keys (so a non-empty free list), and the keys it holds."""
    m = CuckooMap(capacity=8)
    keys = distinct_keys(rng, 5000)
    m.find_or_insert(keys)
    m.erase(keys[::4])
    return m, np.setdiff1d(keys, keys[::4])


def test_state_round_trip_from_read_only_arrays() -> None:
    rng = np.random.default_rng(4)
    m, live = churned_map(rng)
    state = read_only_copy(m.state())
    r = CuckooMap.from_state(state)
    probe = np.concatenate([live, distinct_keys(rng, 1000), as_keys([EMPTY])])
    np.testing.assert_array_equal(r.find(probe), m.find(probe))
    assert (len(r), r.row_bound, r.capacity) == (len(m), m.row_bound, m.capacity)
    assert (r.max_load, r.growth) == (m.max_load, m.growth)
    assert_matches(r, live, m.find(live))
    assert all(a.flags.writeable for a in r.state().values())
    # Same free list and rng: the same inserts and erases give the same rows from here on.
    more = distinct_keys(rng, 3000)
    np.testing.assert_array_equal(r.find_or_insert(more)[0], m.find_or_insert(more)[0])
    np.testing.assert_array_equal(r.erase(more[:500]), m.erase(more[:500]))
    np.testing.assert_array_equal(r.find_or_insert(more[::-1])[0], m.find_or_insert(more[::-1])[0])


def test_restored_map_is_independent_of_the_state_and_the_original() -> None:
    rng = np.random.default_rng(5)
    m, live = churned_map(rng)
    state = read_only_copy(m.state())
    frozen = {name: a.copy() for name, a in state.items()}
    r = CuckooMap.from_state(state)
    r_keys = distinct_keys(rng, 4000)
    r_keys = np.setdiff1d(r_keys, live)
    r.find_or_insert(r_keys)
    r.erase(live[:100])
    assert (m.find(r_keys) == -1).all()
    assert (m.find(live) >= 0).all()
    m.erase(live[100:200])
    assert (r.find(live[100:200]) >= 0).all()
    for name, a in state.items():
        np.testing.assert_array_equal(a, frozen[name])


def test_state_survives_npz() -> None:
    rng = np.random.default_rng(6)
    m, live = churned_map(rng)
    buf = io.BytesIO()
    np.savez(buf, **m.state())
    buf.seek(0)
    with np.load(buf) as saved:
        r = CuckooMap.from_state(dict(saved))
    assert_matches(r, live, m.find(live))


def test_from_state_rejects_bad_buckets() -> None:
    state = CuckooMap(capacity=8).state()
    with pytest.raises(ValueError, match="bad cuckoo map state"):
        CuckooMap.from_state({**state, "buckets": state["buckets"].reshape(-1)})
    with pytest.raises(ValueError, match="bad cuckoo map state"):
        CuckooMap.from_state({**state, "buckets": state["buckets"].astype(np.float64)})


# --- 5. input checking and input forms ---------------------------------------------------------

@pytest.mark.parametrize("method", ["find", "find_or_insert", "erase"])
def test_rejects_non_1d_keys(method: str) -> None:
    m = CuckooMap()
    with pytest.raises(ValueError, match="1-D"):
        getattr(m, method)(np.arange(6).reshape(2, 3))
    with pytest.raises(ValueError, match="1-D"):
        getattr(m, method)(np.int64(3))


@pytest.mark.parametrize("method", ["find", "find_or_insert", "erase"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.bool_])
def test_rejects_non_integer_keys(method: str, dtype: type) -> None:
    m = CuckooMap()
    with pytest.raises(TypeError, match="int64"):
        getattr(m, method)(np.ones(3, dtype=dtype))
    assert len(m) == 0


def test_reserved_key_is_rejected_after_inserting_the_keys_before_it() -> None:
    """Documented behaviour: keys ahead of -2**63 in the batch are inserted (the error is
    raised mid-batch), the ones after it are not, and the map stays consistent and usable."""
    m = CuckooMap(capacity=4)
    m.find_or_insert(as_keys([100, 200]))
    with pytest.raises(ValueError, match=r"-9223372036854775808.*position 2"):
        m.find_or_insert(as_keys([100, 1, EMPTY, 2]))
    assert_matches(m, as_keys([100, 200, 1]), np.array([0, 1, 2], dtype=np.int32))
    assert m.find(as_keys([2, EMPTY]))[0] == -1
    rows, inserted = m.find_or_insert(as_keys([2, 1]))
    assert rows.tolist() == [3, 2] and inserted.tolist() == [True, False]


def test_reserved_key_on_a_full_map_raises_instead_of_growing() -> None:
    m = CuckooMap(capacity=1)
    keys = as_keys(range(int(m.max_load * m.capacity)))
    m.find_or_insert(keys)
    capacity = m.capacity
    with pytest.raises(ValueError, match="reserved"):
        m.find_or_insert(as_keys([EMPTY]))
    assert m.capacity == capacity
    assert_matches(m, keys, np.arange(keys.shape[0], dtype=np.int32))


def test_reserved_key_is_never_found_or_erased() -> None:
    m = CuckooMap(capacity=1)
    m.find_or_insert(as_keys([5]))
    m.erase(as_keys([5]))  # leaves an EMPTY slot behind a freed row
    assert m.find(as_keys([EMPTY])).tolist() == [-1]
    assert m.erase(as_keys([EMPTY])).tolist() == [-1]
    assert len(m) == 0 and m.state()["free"].tolist() == [0]


@pytest.mark.parametrize("empty", [np.empty(0, dtype=np.int64), np.array([]), []])
def test_empty_batches(empty) -> None:
    m = CuckooMap()
    m.find_or_insert(as_keys([9]))
    rows, inserted = m.find_or_insert(empty)
    assert rows.shape == inserted.shape == (0,)
    assert rows.dtype == np.int32 and inserted.dtype == np.bool_
    assert m.find(empty).shape == (0,) and m.erase(empty).shape == (0,)
    assert_matches(m, as_keys([9]), np.array([0], dtype=np.int32))


def test_strided_reversed_and_read_only_keys() -> None:
    rng = np.random.default_rng(7)
    base = distinct_keys(rng, 3000)
    strided = base[::3]
    assert not strided.flags.c_contiguous
    m = CuckooMap(capacity=2)
    rows, inserted = m.find_or_insert(strided)
    assert inserted.all()
    np.testing.assert_array_equal(m.find(strided[::-1]), rows[::-1])
    frozen = base.copy()
    frozen.flags.writeable = False
    found = m.find(frozen)
    np.testing.assert_array_equal(found[::3], rows)
    assert (found[1::3] == -1).all()
    rows2, inserted2 = m.find_or_insert(frozen)
    np.testing.assert_array_equal(rows2[::3], rows)
    assert inserted2.sum() == base.shape[0] - strided.shape[0]
    freed = m.erase(frozen[1::3])
    np.testing.assert_array_equal(freed, rows2[1::3])
    np.testing.assert_array_equal(base, frozen)


@pytest.mark.parametrize("dtype", [np.int32, np.int8, np.uint32, ">i8"])
def test_other_integer_dtypes_mean_the_same_int64_keys(dtype) -> None:
    values = np.array([-7, 0, 5, 127, -128]) if np.dtype(dtype).kind == "i" else np.arange(5) * 1000
    typed = values.astype(dtype)
    m = CuckooMap()
    rows, inserted = m.find_or_insert(typed)
    assert inserted.all()
    np.testing.assert_array_equal(m.find(values.astype(np.int64)), rows)
    np.testing.assert_array_equal(m.find(typed), rows)
    np.testing.assert_array_equal(m.erase(typed), rows)
    assert len(m) == 0


def test_int32_extremes() -> None:
    keys = np.array([np.iinfo(np.int32).min, -1, np.iinfo(np.int32).max], dtype=np.int32)
    m = CuckooMap()
    rows, _ = m.find_or_insert(keys)
    np.testing.assert_array_equal(m.find(as_keys([-(2**31), -1, 2**31 - 1])), rows)
    assert (m.find(as_keys([2**32 - 1, 2**31, -(2**31) - 1])) == -1).all()


def test_input_arrays_are_not_modified() -> None:
    keys = as_keys([3, 1, 3, 2])
    copy = keys.copy()
    m = CuckooMap()
    m.find_or_insert(keys)
    m.find(keys)
    m.erase(keys)
    np.testing.assert_array_equal(keys, copy)


@pytest.mark.parametrize("kwargs", [dict(capacity=0), dict(max_load=0.99), dict(max_load=0.05),
                                    dict(growth=1.05)])
def test_rejects_bad_construction(kwargs) -> None:
    with pytest.raises(ValueError):
        CuckooMap(**kwargs)


# --- 6. duplicates within one batch ------------------------------------------------------------

def test_duplicates_in_a_batch_are_inserted_once() -> None:
    m = CuckooMap()
    rows, inserted = m.find_or_insert(as_keys([5, 5, 7, 5, 7, MAX_KEY, MAX_KEY]))
    assert rows.tolist() == [0, 0, 1, 0, 1, 2, 2]
    assert inserted.tolist() == [True, False, True, False, False, True, False]
    assert len(m) == 3 and m.row_bound == 3


def test_duplicates_across_growth_in_one_batch() -> None:
    """A batch with heavy repeats that forces several grows mid-batch: each distinct key gets
    one row, shared by all its copies, and only its first copy reports inserted."""
    rng = np.random.default_rng(8)
    pool = distinct_keys(rng, 3000)
    batch = pool[rng.integers(0, pool.shape[0], 20_000)]
    m = CuckooMap(capacity=1)
    rows, inserted = m.find_or_insert(batch)
    uniq, first, inverse = np.unique(batch, return_index=True, return_inverse=True)
    expected_inserted = np.zeros(batch.shape[0], dtype=bool)
    expected_inserted[first] = True
    np.testing.assert_array_equal(inserted, expected_inserted)
    np.testing.assert_array_equal(rows, rows[first][inverse])
    np.testing.assert_array_equal(np.sort(rows[first]), np.arange(uniq.shape[0]))
    assert_matches(m, uniq, rows[first])


def test_duplicates_in_an_erase_batch_free_the_row_once() -> None:
    m = CuckooMap()
    m.find_or_insert(as_keys([5, 7]))
    assert m.erase(as_keys([7, 7, 9, 7])).tolist() == [1, -1, -1, -1]
    assert m.state()["free"].tolist() == [1]
    rows, inserted = m.find_or_insert(as_keys([11, 12, 11]))
    assert rows.tolist() == [1, 2, 1] and inserted.tolist() == [True, True, False]


# --- 5. segments: growth moves at most a segment's keys ----------------------------------------

def test_growth_moves_at_most_two_segments_of_keys_however_big_the_map() -> None:
    """A map of many segments grows a segment at a time: no growth rehashes more than
    2 x segment_keys keys (the split point varies 1-2x by segment), where one array would
    rehash every key; and every key keeps its row through the splits."""
    rng = np.random.default_rng(11)
    keys = distinct_keys(rng, 300_000)
    segmented = CuckooMap(capacity=16, segment_keys=4096)
    single = CuckooMap(capacity=16, segment_keys=1 << 30)
    rows = np.concatenate([segmented.find_or_insert(batch)[0] for batch in np.split(keys, 300)])
    for batch in np.split(keys, 300):
        single.find_or_insert(batch)
    assert segmented.segments >= 300_000 // (2 * 4096)
    assert segmented.largest_rehash <= 2 * 4096
    assert single.segments == 1 and single.largest_rehash > 150_000
    # Rows are handed out densely, in the order keys arrive.
    np.testing.assert_array_equal(rows, np.arange(keys.shape[0], dtype=np.int32))
    assert_matches(segmented, keys, rows)
    absent = np.setdiff1d(distinct_keys(rng, 10_000), keys)
    assert (segmented.find(absent) == -1).all()


def test_reserve_past_one_segment_sizes_every_segment_for_its_share() -> None:
    rng = np.random.default_rng(12)
    m = CuckooMap(capacity=1, segment_keys=2048)
    m.reserve(100_000)
    capacity, segments = m.capacity, m.segments
    assert segments >= 100_000 // 2048 and int(m.max_load * capacity) >= 100_000
    keys = distinct_keys(rng, 100_000)
    m.find_or_insert(keys)
    assert (m.capacity, m.segments, m.largest_rehash) == (capacity, segments, 0)
    assert_matches(m, keys, m.find(keys))


def test_state_of_one_array_restores_and_then_splits() -> None:
    """A state written before segments existed (one array of buckets) restores as one segment
    and splits once it grows past segment_keys."""
    rng = np.random.default_rng(13)
    m, live = churned_map(rng)
    legacy = {k: v for k, v in m.state().items() if not k.startswith(("segment_", "directory"))}
    legacy["params"] = legacy["params"][:2]
    r = CuckooMap.from_state(read_only_copy(legacy))
    assert r.segments == 1 and r.segment_keys == cuckoo.SEGMENT_KEYS
    assert_matches(r, live, m.find(live))
    r.segment_keys = 1024
    more = distinct_keys(rng, 20_000)
    rows, _ = r.find_or_insert(more)
    assert r.segments > 1
    assert_matches(r, np.concatenate([live, more]), np.concatenate([m.find(live), rows]))


def test_a_big_single_segment_splits_into_many_in_one_pass() -> None:
    """A map built large (or restored from a one-array state) moves each key once when it
    first grows past a segment: straight into as many parts as it needs, not split after
    split."""
    rng = np.random.default_rng(14)
    keys = distinct_keys(rng, 200_000)
    m = CuckooMap(capacity=200_000, max_load=0.9, segment_keys=2048)
    rows, _ = m.find_or_insert(keys)
    assert m.segments == 1 and m.rehashed_keys == 0
    more = distinct_keys(rng, 30_000)
    more_rows, _ = m.find_or_insert(more)
    assert m.segments >= 200_000 // (4 * 2048)
    assert m.rehashed_keys <= 200_000 + 4 * 2048 * 4  # the big segment once, a few parts more
    assert_matches(m, np.concatenate([keys, more]), np.concatenate([rows, more_rows]))


def _hostile(state: dict[str, np.ndarray], **changes) -> dict[str, np.ndarray]:
    return {**{k: np.array(v) for k, v in state.items()}, **changes}


def test_hostile_states_are_refused_before_any_kernel_reads_them() -> None:
    """A state may come from a file: every array that a kernel would index by is checked."""
    m = CuckooMap(capacity=8, segment_keys=64)
    m.find_or_insert(np.arange(2000))
    m.erase(np.arange(0, 2000, 7))
    state = m.state()
    assert m.segments > 4
    bad = [
        _hostile(state, directory=np.zeros(0, np.int32)),
        _hostile(state, directory=np.full_like(state["directory"], m.segments)),
        _hostile(state, directory=np.concatenate([state["directory"][-1:],
                                                  state["directory"][1:]])),
        _hostile(state, counters=state["counters"][:1]),
        _hostile(state, counters=state["counters"] + np.array([0, 0, 5])),
        _hostile(state, free=np.full_like(state["free"], 10**6)),
        _hostile(state, segment_sizes=state["segment_sizes"] + 1),
        _hostile(state, segment_depth=state["segment_depth"] + 30),
        _hostile(state, params=np.array([0.9, 1.4, 1.0])),
        _hostile(state, params=np.array([0.9])),
    ]
    rows_far = np.array(state["buckets"])
    view = rows_far.view(np.int32)[:, cuckoo._ROW0: cuckoo._ROW0 + SLOTS]
    view[rows_far[:, :SLOTS] != EMPTY] = 10**7
    bad.append(_hostile(state, buckets=rows_far))
    for s in bad:
        with pytest.raises(ValueError, match="bad cuckoo map state"):
            CuckooMap.from_state(s)
    with pytest.raises(ValueError, match="segment_keys"):
        CuckooMap(segment_keys=1)
    r = CuckooMap.from_state(state)
    np.testing.assert_array_equal(r.find(np.arange(2000)), m.find(np.arange(2000)))
