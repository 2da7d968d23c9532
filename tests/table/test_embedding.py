"""EmbeddingTable: a model-based stateful test, growth, expiry, sync deltas, snapshots, bad input."""

from __future__ import annotations

import io
import json
import sys
import threading
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from monolith_ray.config import (AdmissionConfig, ConfigError, InitializerConfig,
                                 OptimizerConfig, SlotConfig)
from monolith_ray.table.cuckoo import EMPTY
from monolith_ray.table.embedding import SNAPSHOT_CHUNK_ROWS, EmbeddingTable
from monolith_ray.table.initializers import init_rows

DIM = 4
LR = 0.1
INIT = InitializerConfig(kind="uniform", scale=0.5, seed=7)
OPTIMIZERS = {
    "sgd": OptimizerConfig(kind="sgd", learning_rate=LR),
    "adagrad": OptimizerConfig(kind="adagrad", learning_rate=0.1, initial_accumulator=0.1),
    "ftrl": OptimizerConfig(kind="ftrl", learning_rate=0.05, initial_accumulator=0.1, l1=0.01,
                            l2=0.1),
    "adam": OptimizerConfig(kind="adam", learning_rate=0.01),
}


def make_slot(optimizer: str = "sgd", **kw) -> SlotConfig:
    return SlotConfig(name="s", slot_id=3, dim=DIM, optimizer=OPTIMIZERS[optimizer],
                      initializer=INIT, **kw)


def initial(ids) -> np.ndarray:
    """The rows the slot's initializer gives ``ids``: float32 (n, DIM)."""
    return init_rows(np.asarray(ids, dtype=np.int64), DIM, INIT)


def grads_for(ids, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(len(ids), DIM)).astype(np.float32)


def table_state(table: EmbeddingTable) -> dict[str, np.ndarray]:
    """Every array of a table's state: its rows below the bound, its map, sketch and eviction
    log, and its version and counters."""
    bound = table._map.row_bound
    state = {f"rows/{k}": a[:bound].copy() for k, a in table._rows.items()}
    state.update({f"map/{k}": v for k, v in table._map.state().items()})
    state["sketch"] = table._filter.sketch.copy()
    for name, parts in (("evicted/ids", table._evicted_ids),
                        ("evicted/versions", table._evicted_versions)):
        state[name] = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    state["meta"] = np.frombuffer(json.dumps([table.version, table.counters]).encode(),
                                  dtype=np.uint8)
    return state


def assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


# ---------------------------------------------------------------- model-based stateful test

EXPIRE_S = 10.0
POOL = [0, 1, 2, 3, 5, 8, 13, -1, -7, 2**63 - 1, -(2**63) + 1, 2**48 + 9, 3 << 48, 10**15]
POOL_IDS = np.array(POOL + [404, -404], dtype=np.int64)  # the last two are never inserted
ID_LISTS = st.lists(st.sampled_from(POOL), max_size=10)


class TableMachine(RuleBasedStateMachine):
    """EmbeddingTable (SGD, admit all, expiry) against {id: (weights row, last update time)}."""

    def __init__(self) -> None:
        super().__init__()
        self.table = EmbeddingTable(make_slot(expire_s=EXPIRE_S), capacity=4)
        self.model: dict[int, tuple[np.ndarray, float]] = {}
        self.now = 0.0

    @rule(ids=ID_LISTS)
    def lookup_train(self, ids):
        out = self.table.lookup_train(np.array(ids, dtype=np.int64), self.now)
        for i in ids:
            if i not in self.model:
                self.model[i] = (initial([i])[0], self.now)
        expected = np.array([self.model[i][0] for i in ids], dtype=np.float32).reshape(-1, DIM)
        np.testing.assert_array_equal(out, expected)

    @rule(data=st.data())
    def apply_gradients(self, data):
        ids = data.draw(ID_LISTS)
        grads = data.draw(arrays(np.float32, (len(ids), DIM),
                                 elements=st.floats(-4, 4, width=32)))
        updated = self.table.apply_gradients(np.array(ids, dtype=np.int64), grads, self.now)
        summed: dict[int, np.ndarray] = {}
        for i, g in zip(ids, grads):
            if i in self.model:
                summed[i] = summed.get(i, np.zeros(DIM, dtype=np.float32)) + g
        for i, g in summed.items():
            w = self.model[i][0].astype(np.float64) - LR * g.astype(np.float64)
            self.model[i] = (w.astype(np.float32), self.now)
        assert updated == len(summed)

    @rule(dt=st.sampled_from([0.0, 1.0, 4.0, 9.5, 10.0]))
    def advance_clock(self, dt):
        self.now += dt

    @rule()
    def evict_expired(self):
        gone = self.table.evict_expired(self.now)
        stale = {i for i, (_, t) in self.model.items() if t < self.now - EXPIRE_S}
        assert sorted(gone.tolist()) == sorted(stale)
        for i in stale:
            del self.model[i]

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def evict(self, data):
        ids = data.draw(st.lists(st.sampled_from(POOL), max_size=6))
        gone = self.table.evict(np.array(ids, dtype=np.int64))
        present = set(ids) & self.model.keys()
        assert sorted(gone.tolist()) == sorted(present)
        for i in present:
            del self.model[i]

    @invariant()
    def serving_matches_model(self):
        expected = np.array([self.model[i][0] if i in self.model else np.zeros(DIM)
                             for i in POOL_IDS.tolist()], dtype=np.float32)
        np.testing.assert_allclose(self.table.lookup_serve(POOL_IDS), expected,
                                   rtol=1e-6, atol=1e-7)
        assert len(self.table) == len(self.model)
        delta = self.table.export_since(0)
        assert sorted(delta.ids.tolist()) == sorted(self.model)
        np.testing.assert_array_equal(delta.weights, self.table.lookup_serve(delta.ids))


TableMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestTableMachine = TableMachine.TestCase


# ---------------------------------------------------------------- growth

def test_grows_far_beyond_initial_capacity():
    rng = np.random.default_rng(0)
    ids = rng.permutation(np.unique(rng.integers(-(2**62), 2**62, size=100_000)))
    table = EmbeddingTable(make_slot(), capacity=4)
    trained = np.concatenate([table.lookup_train(chunk, now=0.0)
                              for chunk in np.split(ids, [3, 1000, 40_000, 41_000])])
    assert len(table) == ids.size
    np.testing.assert_array_equal(trained, initial(ids))
    np.testing.assert_array_equal(table.lookup_serve(ids), trained)
    np.testing.assert_array_equal(table.lookup_serve(ids[::-1]), trained[::-1])


def test_growth_never_moves_or_copies_the_rows():
    table = EmbeddingTable(make_slot("adagrad"), capacity=4)
    table.lookup_train(np.arange(10), now=0.0)
    before = {k: a.ctypes.data for k, a in table._rows.items()}
    table.lookup_train(np.arange(10, 200_000), now=1.0)
    assert len(table) == 200_000
    assert {k: a.ctypes.data for k, a in table._rows.items()} == before
    np.testing.assert_array_equal(table.lookup_serve(np.arange(10)), initial(np.arange(10)))


_FILL = """
import gc, json, os
import numpy as np
from monolith_ray.config import InitializerConfig, OptimizerConfig, SlotConfig
from monolith_ray.table.embedding import EmbeddingTable

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

slot = SlotConfig(name="big", slot_id=1, dim=17,
                  optimizer=OptimizerConfig(kind="adagrad", learning_rate=0.1),
                  initializer=InitializerConfig(kind="uniform", scale=0.5, seed=7))
# Compiled once beforehand: the process's growth is then the table's, not the JIT's.
EmbeddingTable(slot, capacity=1024).lookup_train(np.arange(4096, dtype=np.int64), now=0.0)
gc.collect()
rss0 = rss()
table = EmbeddingTable(slot, capacity=1024)
ids = np.arange(1_500_000, dtype=np.int64) * 7919
for chunk in np.array_split(ids, 30):
    table.lookup_train(chunk, now=0.0)
print(json.dumps({"grown": rss() - rss0, **table.stats()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_stats_bytes_match_what_the_process_holds():
    """Filling a table grows the process by what ``stats()`` reports (map, committed row
    pages and state), not by reserved or doubled capacity. Measured in a fresh process: in
    the test session's, memory other tests freed and the allocator kept blurs the growth."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", _FILL], capture_output=True, text=True,
                         timeout=300, check=True)
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert stats["rows"] == 1_500_000
    per_id = stats["bytes"] / stats["rows"]
    assert 4 * 17 * 2 + 28 <= per_id <= 4 * 17 * 2 + 28 + 22  # rows + state + map
    grown = stats["grown"]
    assert 0.85 * stats["bytes"] <= grown <= 1.15 * stats["bytes"], (grown, stats["bytes"])


def _filled(n_rows: int) -> tuple[EmbeddingTable, np.ndarray]:
    """A dim-17 Adagrad table holding ``n_rows`` ids -> (table, ids)."""
    slot = SlotConfig(name="big", slot_id=1, dim=17, optimizer=OPTIMIZERS["adagrad"],
                      initializer=INIT)
    table = EmbeddingTable(slot)
    ids = np.arange(n_rows, dtype=np.int64) * 7919
    for chunk in np.array_split(ids, 10):
        table.lookup_train(chunk, now=0.0)
    return table, ids


def _peak_allocated(work) -> int:
    """Bytes allocated at the peak of ``work()`` beyond what was held before (NumPy reports
    its arrays to tracemalloc)."""
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_snapshot_holds_a_chunk_beside_the_table_whatever_its_size(tmp_path):
    """A snapshot copies a chunk at a time: what it allocates stays one chunk's copy whether
    the table holds 50 thousand or 400 thousand rows, far below a copy of the table."""
    chunk_bytes = SNAPSHOT_CHUNK_ROWS * (4 * 17 * 2 + 28)
    peaks = []
    for n_rows in (50_000, 400_000):
        table, _ = _filled(n_rows)
        peaks.append(_peak_allocated(
            lambda: table.snapshot(str(tmp_path / f"{n_rows}.table"), threading.RLock())))
    assert max(peaks) <= 1.25 * chunk_bytes, (peaks, chunk_bytes)
    assert table.stats()["bytes"] > 40 * peaks[1]


def test_an_export_holds_its_delta_at_most_twice():
    """``export_since`` under a lock, evictions and all, allocates at most about twice the
    delta it returns (its parts, then their concatenation)."""
    table, ids = _filled(200_000)
    table.evict(ids[::3])
    deltas = []
    peak = _peak_allocated(lambda: deltas.append(table.export_since(0, threading.RLock())))
    delta = deltas[0]
    assert delta.ids.size == 200_000 - ids[::3].size and delta.evicted.size == ids[::3].size
    delta_bytes = delta.ids.nbytes + delta.weights.nbytes + delta.evicted.nbytes
    assert peak <= 2.3 * delta_bytes, (peak, delta_bytes)


# ---------------------------------------------------------------- expiry

def test_evict_expired_removes_only_rows_older_than_expire_s():
    table = EmbeddingTable(make_slot(expire_s=10.0))
    table.lookup_train(np.array([1, 2, 3]), now=0.0)
    table.apply_gradients(np.array([2]), grads_for([2], 0), now=5.0)
    table.lookup_train(np.array([4]), now=7.0)
    assert sorted(table.evict_expired(now=12.0).tolist()) == [1, 3]
    assert table.contains(np.array([1, 2, 3, 4])).tolist() == [False, True, False, True]
    np.testing.assert_array_equal(table.lookup_serve(np.array([1, 3])), np.zeros((2, DIM)))
    assert table.evict_expired(now=15.0).size == 0  # updated exactly expire_s ago: kept
    assert table.evict_expired(now=15.5).tolist() == [2]
    assert table.evict_expired(now=17.5).tolist() == [4]
    assert len(table) == 0 and table.counters["evicted"] == 4


def test_no_expiry_when_expire_s_is_zero():
    table = EmbeddingTable(make_slot())
    table.lookup_train(np.arange(5), now=0.0)
    assert table.evict_expired(now=1e12).size == 0
    assert len(table) == 5


def test_evicted_rows_are_reused_with_fresh_weights_and_state():
    table = EmbeddingTable(make_slot("adagrad", expire_s=10.0), capacity=16)
    table.lookup_train(np.arange(50), now=0.0)
    table.apply_gradients(np.arange(50), grads_for(range(50), 1), now=1.0)
    table.apply_gradients(np.arange(30), grads_for(range(30), 2), now=20.0)
    bound = table._map.row_bound
    assert sorted(table.evict_expired(now=25.0).tolist()) == list(range(30, 50))
    new = np.arange(100, 120)
    np.testing.assert_array_equal(table.lookup_train(new, now=25.0), initial(new))
    assert table.stats()["rows"] == 50
    assert table._map.row_bound == bound
    rows = table._map.find(new)
    assert np.all(table._rows["state/accum"][rows] == np.float32(0.1))
    assert np.all(table._rows["updated_at"][rows] == 25.0)
    np.testing.assert_array_equal(table._rows["ids"][rows], new)


def test_export_since_reports_evictions_not_reinserted():
    table = EmbeddingTable(make_slot())
    table.lookup_train(np.arange(10), now=0.0)
    v0 = table.version
    assert sorted(table.evict(np.array([1, 2, 77])).tolist()) == [1, 2]
    table.lookup_train(np.array([2]), now=1.0)
    delta = table.export_since(v0)
    assert delta.evicted.tolist() == [1]
    assert delta.ids.tolist() == [2]
    np.testing.assert_array_equal(delta.weights, initial([2]))
    assert table.export_since(table.version).evicted.size == 0


def test_forget_evictions_drops_only_records_up_to_version():
    table = EmbeddingTable(make_slot())
    table.lookup_train(np.arange(10), now=0.0)
    table.evict(np.array([3]))
    v1 = table.version
    table.evict(np.array([4]))
    table.forget_evictions(v1)
    assert table.export_since(0).evicted.tolist() == [4]
    table.forget_evictions(table.version)
    assert table.export_since(0).evicted.size == 0


# ---------------------------------------------------------------- sync deltas

def test_export_since_returns_exactly_the_rows_changed_after_version():
    table = EmbeddingTable(make_slot())
    table.lookup_train(np.arange(20), now=0.0)
    v0 = table.version
    table.lookup_train(np.arange(20), now=1.0)  # reads only: no change
    table.lookup_serve(np.arange(30))
    assert table.version == v0
    table.apply_gradients(np.array([3, 5, 5, 7, 99]), grads_for(range(5), 3), now=2.0)
    v1 = table.version
    table.lookup_train(np.array([3, 20, 21]), now=3.0)
    delta = table.export_since(v0)
    assert sorted(delta.ids.tolist()) == [3, 5, 7, 20, 21]
    np.testing.assert_array_equal(delta.weights, table.lookup_serve(delta.ids))
    assert delta.version == table.version and delta.evicted.size == 0
    assert sorted(table.export_since(v1).ids.tolist()) == [20, 21]
    assert table.export_since(table.version).ids.size == 0
    unchanged = np.setdiff1d(np.arange(20), [3, 5, 7])
    np.testing.assert_array_equal(table.lookup_serve(unchanged), initial(unchanged))


def test_export_since_at_a_duty_sleeps_after_each_chunk_and_returns_the_same_delta(monkeypatch):
    import monolith_ray.table.embedding as embedding

    table = EmbeddingTable(make_slot())
    table.lookup_train(np.arange(1000), now=0.0)
    v0 = table.version
    table.apply_gradients(np.arange(0, 1000, 7), grads_for(range(0, 1000, 7), 1), now=1.0)
    full = table.export_since(v0, threading.Lock(), chunk_rows=100)
    slept: list[float] = []
    monkeypatch.setattr(embedding.time, "sleep", slept.append)
    for duty in (1.0, 0.25):
        slept.clear()
        delta = table.export_since(v0, threading.Lock(), chunk_rows=100, duty=duty)
        np.testing.assert_array_equal(delta.ids, full.ids)
        np.testing.assert_array_equal(delta.weights, full.weights)
        assert len(slept) == -(-table._map.row_bound // 100)  # once after every chunk
        assert all(s == 0.0 for s in slept) if duty == 1.0 else all(s > 0 for s in slept)
    with pytest.raises(ValueError, match="duty"):
        table.export_since(v0, duty=0.0)


# ---------------------------------------------------------------- snapshot / restore

def build_busy_table(optimizer: str) -> EmbeddingTable:
    """A table that has admitted, trained, expired, evicted and reused rows."""
    table = EmbeddingTable(make_slot(optimizer, occurrence_threshold=2, expire_s=100.0),
                           AdmissionConfig(sketch_width=1024, sketch_depth=2), capacity=8)
    first = np.arange(300)
    table.lookup_train(np.concatenate([first, first]), now=0.0)
    touched = np.concatenate([first[::3], first[::6]])
    table.apply_gradients(touched, grads_for(touched, 4), now=10.0)
    table.lookup_train(np.repeat(np.arange(300, 400), 2), now=50.0)
    table.evict_expired(now=105.0)
    table.evict(np.array([0, 3]))
    table.lookup_train(np.repeat(np.arange(1000, 1050), 2), now=106.0)
    table.lookup_train(np.arange(2000, 2010), now=106.0)  # seen once: not admitted
    return table


def keep_training(table: EmbeddingTable) -> None:
    ids = np.concatenate([np.arange(300, 420), np.arange(1000, 1050), np.arange(2000, 2010)])
    table.lookup_train(ids, now=120.0)
    table.apply_gradients(ids, grads_for(ids, 5), now=121.0)
    table.evict_expired(now=151.0)
    table.lookup_train(np.repeat(np.arange(3000, 3040), 2), now=152.0)


ALL_IDS = np.arange(-5, 3100)


def rows_by_id(table: EmbeddingTable) -> dict[str, np.ndarray]:
    """Every per-row field of the live rows, in id order (restore may place rows elsewhere)."""
    bound = table._map.row_bound
    ids = table._rows["ids"][:bound]
    live = np.flatnonzero(ids != EMPTY)
    order = live[np.argsort(ids[live])]
    return {k: a[order] for k, a in table._rows.items()}


def sorted_delta(delta):
    order = np.argsort(delta.ids)
    return delta.ids[order], delta.weights[order], np.sort(delta.evicted), delta.version


def assert_tables_identical(a: EmbeddingTable, b: EmbeddingTable) -> None:
    np.testing.assert_array_equal(a.lookup_serve(ALL_IDS), b.lookup_serve(ALL_IDS))
    ra, rb = rows_by_id(a), rows_by_id(b)
    assert ra.keys() == rb.keys()
    for k in ra:
        assert ra[k].tobytes() == rb[k].tobytes(), k
    assert a._filter.sketch.tobytes() == b._filter.sketch.tobytes()
    assert (a.version, a.counters, len(a)) == (b.version, b.counters, len(b))
    for v in (0, a.version // 2):
        for x, y in zip(sorted_delta(a.export_since(v)), sorted_delta(b.export_since(v))):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("optimizer", ["adagrad", "ftrl", "adam"])
@pytest.mark.parametrize("target", ["path", "bytesio"])
def test_snapshot_restore_is_bit_exact_and_keeps_working(optimizer, target, tmp_path):
    table = build_busy_table(optimizer)
    assert table.counters["evicted"] > 0 and table.counters["filtered"] > 0
    if target == "path":
        file = tmp_path / "table.snapshot"
        table.snapshot(str(file))
        restored = EmbeddingTable.restore(str(file))
    else:
        file = io.BytesIO()
        table.snapshot(file)
        file.seek(0)
        restored = EmbeddingTable.restore(file)
    assert_tables_identical(table, restored)
    keep_training(table)
    keep_training(restored)
    assert_tables_identical(table, restored)


def test_restore_keeps_eviction_versions_for_forget_evictions():
    table = EmbeddingTable(make_slot())
    table.lookup_train(np.arange(4), now=0.0)
    table.evict(np.array([0]))
    v1 = table.version
    table.evict(np.array([1]))
    buf = io.BytesIO()
    table.snapshot(buf)
    buf.seek(0)
    restored = EmbeddingTable.restore(buf)
    restored.forget_evictions(v1)
    assert restored.export_since(0).evicted.tolist() == [1]


def test_snapshot_in_chunks_under_a_lock_equals_one_without(tmp_path):
    table = build_busy_table("adagrad")
    whole, chunked = io.BytesIO(), io.BytesIO()
    table.snapshot(whole)
    assert table.snapshot(chunked, threading.RLock(), chunk_rows=7) == len(table)
    whole.seek(0)
    chunked.seek(0)
    assert_tables_identical(EmbeddingTable.restore(whole), EmbeddingTable.restore(chunked))
    assert_tables_identical(table, EmbeddingTable.restore(io.BytesIO(chunked.getvalue())))


class _CountingLock:
    """A lock that runs ``between`` after every release: a writer that gets in between the
    snapshot's chunks."""

    def __init__(self, between) -> None:
        self.lock, self.between, self.held = threading.RLock(), between, 0

    def __enter__(self):
        self.lock.acquire()
        self.held += 1

    def __exit__(self, *exc):
        self.lock.release()
        self.between()


def test_fuzzy_snapshot_keeps_every_row_whole_and_the_newest_copy_of_a_moved_id():
    """Writers run between the chunks of a snapshot: rows trained meanwhile come back as one
    of the values they had, ids never touched come back exactly, and an id evicted and
    inserted again into a later row comes back once, with its newer row."""
    table = EmbeddingTable(make_slot("adagrad"), capacity=8)
    table.lookup_train(np.arange(100), now=0.0)
    table.evict(np.array([90]))  # row of id 90 on the free list: the next insert reuses it
    moved = np.array([5])
    steps = iter(range(1000))

    def between():
        step = next(steps)
        if step == 2:  # id 5's chunk (rows 0-9) is written: move it to the free row
            table.evict(moved)
            table.lookup_train(np.array([7777]), now=1.0)  # takes the free row of 90
            table.lookup_train(moved, now=1.0)  # a fresh row past 100
            table.apply_gradients(moved, grads_for(moved, 9), now=1.0)
        if step in (3, 4):
            table.apply_gradients(np.arange(50, 60), grads_for(range(10), step), now=2.0)

    buf = io.BytesIO()
    table.snapshot(buf, _CountingLock(between), chunk_rows=10)
    buf.seek(0)
    restored = EmbeddingTable.restore(buf)
    # 7777 took id 5's old row, in a chunk already written: missed, as a fuzzy cut may; id 5
    # was in that chunk and again in the free row of 90, written later: restored once, newer.
    assert restored.contains(np.array([7777])).tolist() == [False]
    assert len(restored) == len(table) - 1
    np.testing.assert_array_equal(restored.lookup_serve(moved), table.lookup_serve(moved))
    untouched = np.setdiff1d(np.arange(100), [5, 90, *range(50, 60)])
    np.testing.assert_array_equal(restored.lookup_serve(untouched),
                                  table.lookup_serve(untouched))
    assert restored.contains(np.array([90])).tolist() == [False]


def test_export_in_chunks_under_a_lock_equals_one_without():
    table = build_busy_table("ftrl")
    for v in (0, 3, table.version // 2, table.version):
        a = sorted_delta(table.export_since(v))
        b = sorted_delta(table.export_since(v, threading.RLock(), chunk_rows=5))
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_restore_rejects_truncated_and_oversized_snapshots():
    table = build_busy_table("sgd")
    buf = io.BytesIO()
    table.snapshot(buf)
    data = buf.getvalue()
    for cut in (len(data) // 3, len(data) - 5):
        with pytest.raises(ValueError, match="snapshot"):
            EmbeddingTable.restore(io.BytesIO(data[:cut]))
    bad_slot = io.BytesIO()
    header = {"format": "monolith_ray.table/2", "slot": {}, "admission": {}, "fields": {}}
    np.lib.format.write_array(bad_slot, np.frombuffer(json.dumps(header).encode(), np.uint8))
    bad_slot.seek(0)
    with pytest.raises(ValueError, match="corrupt table snapshot"):
        EmbeddingTable.restore(bad_slot)
    buf.seek(0)
    np.lib.format.read_array(buf)  # the real header frame, then a chunk of 10**12 rows
    huge = io.BytesIO(data[:buf.tell()])
    huge.seek(0, io.SEEK_END)
    np.lib.format.write_array(huge, np.array([10**12], dtype=np.int64))
    np.lib.format.write_array_header_1_0(huge, {"descr": "<i8", "fortran_order": False,
                                                "shape": (10**12,)})
    huge.seek(0)
    with pytest.raises(ValueError, match="corrupt table snapshot frame"):
        EmbeddingTable.restore(huge)


def _write_junk(path):
    path.write_bytes(b"definitely not a snapshot\n" * 20)


def _write_empty(path):
    path.write_bytes(b"")


def _write_npy(path):
    with open(path, "wb") as f:
        np.save(f, np.arange(10))


def _write_npz_without_meta(path):
    with open(path, "wb") as f:
        np.savez(f, weights=np.zeros((3, 3)))


def _write_other_format(path):
    meta = np.frombuffer(json.dumps({"format": "something/else"}).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, meta=meta)


@pytest.mark.parametrize("write", [_write_junk, _write_empty, _write_npy,
                                   _write_npz_without_meta, _write_other_format])
def test_restore_rejects_a_file_that_is_not_a_snapshot(write, tmp_path):
    path = tmp_path / "bogus"
    write(path)
    with pytest.raises(ValueError, match="not a table snapshot"):
        EmbeddingTable.restore(str(path))
    with pytest.raises(ValueError, match="not a table snapshot"):
        EmbeddingTable.restore(io.BytesIO(path.read_bytes()))


# ---------------------------------------------------------------- bad input

def trained_table() -> EmbeddingTable:
    table = EmbeddingTable(make_slot("adagrad"))
    table.lookup_train(np.arange(10), now=0.0)
    table.apply_gradients(np.arange(10), grads_for(range(10), 6), now=1.0)
    return table


def _with(value, at=(0, 0)):
    g = grads_for(range(3), 7)
    g[at] = value
    return g


IDS3 = np.array([1, 2, 3])
BAD_CALLS = {
    "2-D ids lookup_train": (lambda t: t.lookup_train(IDS3.reshape(3, 1), 2.0), ValueError),
    "2-D ids lookup_serve": (lambda t: t.lookup_serve(IDS3.reshape(1, 3)), ValueError),
    "2-D ids apply_gradients": (lambda t: t.apply_gradients(
        IDS3.reshape(3, 1), grads_for(range(3), 0), 2.0), ValueError),
    "2-D ids evict": (lambda t: t.evict(IDS3.reshape(3, 1)), ValueError),
    "float ids lookup_train": (lambda t: t.lookup_train(np.array([1.0, 2.0]), 2.0), TypeError),
    "float ids lookup_serve": (lambda t: t.lookup_serve(np.array([1.0])), TypeError),
    "float ids apply_gradients": (lambda t: t.apply_gradients(
        IDS3.astype(np.float64), grads_for(range(3), 0), 2.0), TypeError),
    "float ids evict": (lambda t: t.evict(np.array([1.5])), TypeError),
    "reserved id -2**63": (lambda t: t.lookup_train(
        np.array([11, 12, -(2**63)], dtype=np.int64), 2.0), ValueError),
    "grads too wide": (lambda t: t.apply_gradients(
        IDS3, np.zeros((3, DIM + 1), np.float32), 2.0), ValueError),
    "grads too few rows": (lambda t: t.apply_gradients(
        IDS3, np.zeros((2, DIM), np.float32), 2.0), ValueError),
    "grads 1-D": (lambda t: t.apply_gradients(IDS3, np.zeros(3 * DIM, np.float32), 2.0),
                  ValueError),
    "grads int": (lambda t: t.apply_gradients(IDS3, np.ones((3, DIM), np.int32), 2.0), TypeError),
    "grads NaN": (lambda t: t.apply_gradients(IDS3, _with(np.nan), 2.0), ValueError),
    "grads +Inf": (lambda t: t.apply_gradients(IDS3, _with(np.inf, (2, 3)), 2.0), ValueError),
    "grads -Inf": (lambda t: t.apply_gradients(IDS3, _with(-np.inf, (1, 1)), 2.0), ValueError),
    "NaN grad of an unknown id": (lambda t: t.apply_gradients(
        np.array([1, 2, 555]), _with(np.nan, (2, 0)), 2.0), ValueError),
    "float64 grads overflowing float32": (lambda t: t.apply_gradients(
        IDS3, np.full((3, DIM), 1e300), 2.0), ValueError),
}


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_input_raises_and_leaves_table_unchanged(name):
    call, error = BAD_CALLS[name]
    table = trained_table()
    before = table_state(table)
    with pytest.raises(error):
        call(table)
    assert_same_state(before, table_state(table))
    np.testing.assert_array_equal(table.lookup_serve(np.arange(15)),
                                  trained_table().lookup_serve(np.arange(15)))


def test_non_finite_grads_error_says_nothing_was_applied():
    with pytest.raises(ValueError, match="nothing was applied"):
        trained_table().apply_gradients(IDS3, _with(np.nan), 2.0)


@pytest.mark.parametrize("dim", [0, -1, -64])
def test_non_positive_dim_is_a_config_error(dim):
    with pytest.raises(ConfigError) as err:
        SlotConfig(name="s", slot_id=1, dim=dim)
    assert err.value.key == "dim"


# ---------------------------------------------------------------- read-only input (Ray object store)

def read_only(a: np.ndarray) -> np.ndarray:
    a = np.array(a)
    a.flags.writeable = False
    return a


def test_read_only_ids_and_grads_work_and_are_not_kept():
    ids = np.array([5, 6, 7, 5, 8], dtype=np.int64)
    grads = grads_for(ids, 8)
    a, b = (EmbeddingTable(make_slot("adam", expire_s=5.0)) for _ in range(2))
    for table, wrap in ((a, read_only), (b, np.array)):
        table.lookup_train(wrap(ids), now=0.0)
        assert table.apply_gradients(wrap(ids), wrap(grads), now=1.0) == 4
        table.lookup_serve(wrap(ids))
        table.contains(wrap(ids))
        table.evict(wrap(np.array([6])))
        table.lookup_train(wrap(np.array([9, 10])), now=2.0)
        table.evict_expired(now=6.5)
    assert_same_state(table_state(a), table_state(b))
    assert sorted(a.export_since(0).evicted.tolist()) == [5, 6, 7, 8]


def test_table_copies_the_ids_it_keeps():
    table = EmbeddingTable(make_slot())
    ids = np.array([1, 2, 3], dtype=np.int64)
    table.lookup_train(ids, now=0.0)
    gone = np.array([2, 3], dtype=np.int64)
    table.evict(gone)
    ids[:] = 42
    gone[:] = 43
    assert table.contains(np.array([1, 42])).tolist() == [True, False]
    assert table.export_since(0).ids.tolist() == [1]
    assert sorted(table.export_since(0).evicted.tolist()) == [2, 3]


class _Hook:
    """A lock whose ``at``-th acquisition first runs ``act``: a writer that gets in between
    the chunks of a snapshot or an export."""

    def __init__(self, at: int, act) -> None:
        self.n, self.at, self.act = 0, at, act

    def __enter__(self):
        self.n += 1
        if self.n == self.at:
            self.act()

    def __exit__(self, *exc):
        return False


def test_an_id_evicted_after_its_row_was_copied_stays_evicted_after_restore():
    table = EmbeddingTable(make_slot())
    table.lookup_train(np.arange(1, 9), now=0.0)
    buf = io.BytesIO()  # acquisition 3: after chunk 0 (rows 0-3, id 2 among them) was copied
    table.snapshot(buf, _Hook(3, lambda: table.evict(np.array([2]))), chunk_rows=4)
    buf.seek(0)
    restored = EmbeddingTable.restore(buf)
    assert restored.contains(np.array([2, 1, 3])).tolist() == [False, True, True]
    assert restored.export_since(0).evicted.tolist() == [2]


def test_a_delta_never_holds_an_id_both_changed_and_evicted():
    table = EmbeddingTable(make_slot())
    table.lookup_train(np.arange(1, 9), now=0.0)
    v0 = table.version
    table.evict(np.array([1]))
    table.lookup_train(np.array([1]), now=0.0)  # evicted and admitted again after v0
    delta = table.export_since(v0, _Hook(3, lambda: table.evict(np.array([1]))), chunk_rows=4)
    assert delta.evicted.tolist() == [1] and 1 not in delta.ids.tolist()


def test_a_full_table_refuses_new_ids_and_changes_nothing(monkeypatch):
    from monolith_ray.table import embedding

    monkeypatch.setattr(embedding, "MAX_ROWS", 64)
    table = EmbeddingTable(make_slot())
    table.lookup_train(np.arange(60), now=0.0)
    before = table_state(table)
    with pytest.raises(MemoryError, match="at most 64 rows"):
        table.lookup_train(np.arange(100), now=1.0)
    assert_same_state(before, table_state(table))
    table.evict(np.arange(10))
    table.lookup_train(np.arange(100, 114), now=1.0)  # 10 free rows + 4 fresh: fits
    assert len(table) == 64


def test_a_table_is_not_pickled():
    import pickle

    with pytest.raises(TypeError, match="snapshot"):
        pickle.dumps(EmbeddingTable(make_slot()))


def with_header(table: EmbeddingTable, changes: dict) -> io.BytesIO:
    """``table``'s snapshot stream with ``changes`` merged into its header, ready to read."""
    buf = io.BytesIO()
    table.snapshot(buf)
    buf.seek(0)
    real = json.loads(np.lib.format.read_array(buf).tobytes())
    out = io.BytesIO()
    np.lib.format.write_array(out, np.frombuffer(json.dumps({**real, **changes}).encode(),
                                                 np.uint8))
    out.write(buf.read())
    out.seek(0)
    return out


@pytest.mark.parametrize("header", [
    {"rows": float("inf")}, {"rows": "many"},
    {"admission": {"sketch_width": 2**44, "sketch_depth": 4}},
])
def test_restore_turns_hostile_headers_into_value_errors(header):
    with pytest.raises(ValueError, match="snapshot"):
        EmbeddingTable.restore(with_header(build_busy_table("sgd"), header))


def test_a_header_row_count_is_only_a_hint():
    table = build_busy_table("sgd")
    assert_tables_identical(table, EmbeddingTable.restore(with_header(table,
                                                                      {"rows": 10**13})))


def test_restore_refuses_a_deeply_nested_header():
    bomb = io.BytesIO()
    np.lib.format.write_array(bomb, np.frombuffer(b"[" * 200_000, np.uint8))
    bomb.seek(0)
    with pytest.raises(ValueError, match="snapshot"):
        EmbeddingTable.restore(bomb)


def test_a_snapshot_of_the_earlier_npz_format_still_restores():
    """``fixtures/table_v1.npz`` was written by the format-/1 table (adagrad, 50 ids trained,
    4 and 7 evicted, 100 and 101 added); ``table_v1_rows.npy`` holds its serving rows of
    ids -2..109."""
    from pathlib import Path

    fixtures = Path(__file__).parent / "fixtures"
    table = EmbeddingTable.restore_npz(str(fixtures / "table_v1.npz"))
    np.testing.assert_array_equal(table.lookup_serve(np.arange(-2, 110)),
                                  np.load(fixtures / "table_v1_rows.npy"))
    assert len(table) == 50 and sorted(table.export_since(0).evicted.tolist()) == [4, 7]
    table.lookup_train(np.arange(200, 300), now=7.0)  # and it keeps working
    assert len(table) == 150
    buf = io.BytesIO()
    table.snapshot(buf)
    buf.seek(0)
    assert_tables_identical(table, EmbeddingTable.restore(buf))
    with pytest.raises(ValueError, match="not a table snapshot"):
        EmbeddingTable.restore_npz(io.BytesIO(b"PK\x03\x04 not really a zip"))


def test_evict_expired_in_chunks_under_a_lock_equals_one_pass():
    tables = [EmbeddingTable(make_slot(expire_s=10.0)) for _ in range(2)]
    for t in tables:
        t.lookup_train(np.arange(100), now=0.0)
        t.apply_gradients(np.arange(0, 100, 3), grads_for(range(34), 1), now=20.0)
    whole = tables[0].evict_expired(now=25.0)
    chunked = tables[1].evict_expired(now=25.0, lock=threading.RLock(), chunk_rows=7)
    assert sorted(whole.tolist()) == sorted(chunked.tolist()) == \
        sorted(set(range(100)) - set(range(0, 100, 3)))
    # The same rows stay (versions differ: each chunk's eviction is a change of its own).
    np.testing.assert_array_equal(tables[0].lookup_serve(ALL_IDS),
                                  tables[1].lookup_serve(ALL_IDS))
    assert len(tables[0]) == len(tables[1]) == 34
    assert sorted(tables[0].export_since(0).evicted.tolist()) == \
        sorted(tables[1].export_since(0).evicted.tolist())


def test_occurrence_counts_add_repeats_and_hold_at_the_top_instead_of_wrapping():
    table = EmbeddingTable(make_slot())
    ids = np.array([1, 2, 2, 3], dtype=np.int64)
    table.lookup_train(ids, now=0.0)
    rows = table._map.find(np.array([1, 2, 3], dtype=np.int64)).astype(np.int64)
    assert table._rows["count"][rows].tolist() == [1, 2, 1]
    top = np.iinfo(np.uint32).max
    table._rows["count"][rows] = [top - 1, top, 7]
    table.lookup_train(ids, now=1.0)
    assert table._rows["count"][rows].tolist() == [top, top, 8]  # not 0 and 1


def test_unread_eviction_records_are_bounded_and_the_floor_names_what_was_dropped():
    table = EmbeddingTable(make_slot())
    table.max_eviction_records = 10
    table.lookup_train(np.arange(100), now=0.0)
    versions = []
    for i in range(12):  # one eviction a call, no reader forgetting any
        table.evict(np.array([i]))
        versions.append(table.version)
    # the 11th call held 11 > 10: the oldest 6 went, leaving 5; the 12th added one
    held = table.export_since(0).evicted.tolist()
    assert held == list(range(6, 12))
    assert table.eviction_floor == versions[5]
    # a reader at the floor or past it misses nothing
    assert table.export_since(versions[5]).evicted.tolist() == list(range(6, 12))
    table.forget_evictions(table.version)
    assert table.export_since(0).evicted.size == 0 and table.eviction_floor == versions[5]
