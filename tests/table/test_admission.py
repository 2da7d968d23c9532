"""Feature admission through EmbeddingTable: occurrence threshold, probability, bounded sketch."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from monolith_ray.config import AdmissionConfig, InitializerConfig, OptimizerConfig, SlotConfig
from monolith_ray.table.embedding import EmbeddingTable
from monolith_ray.table.initializers import init_rows

DIM = 3
INIT = InitializerConfig(kind="uniform", scale=0.5, seed=11)
ZEROS = np.zeros(DIM, dtype=np.float32)


def make_table(threshold: int = 0, probability: float = 1.0,
               admission: AdmissionConfig = AdmissionConfig(sketch_width=4096)) -> EmbeddingTable:
    slot = SlotConfig(name="s", slot_id=2, dim=DIM, initializer=INIT,
                      optimizer=OptimizerConfig(kind="sgd", learning_rate=0.5),
                      occurrence_threshold=threshold, admit_probability=probability)
    return EmbeddingTable(slot, admission)


def initial(i: int) -> np.ndarray:
    return init_rows(np.array([i]), DIM, INIT)[0]


def test_threshold_admits_at_the_third_occurrence_across_batches():
    table = make_table(threshold=3)
    out = table.lookup_train(np.array([7]), now=0.0)
    np.testing.assert_array_equal(out, [ZEROS])
    out = table.lookup_train(np.array([7, 8]), now=1.0)
    np.testing.assert_array_equal(out, [ZEROS, ZEROS])
    assert not table.contains(np.array([7, 8])).any()
    assert len(table) == 0
    out = table.lookup_train(np.array([8, 7]), now=2.0)
    np.testing.assert_array_equal(out, [ZEROS, initial(7)])
    assert table.contains(np.array([7, 8])).tolist() == [True, False]
    assert table.counters["filtered"] == 4 and table.counters["admitted"] == 1
    np.testing.assert_array_equal(table.lookup_serve(np.array([7, 8])), [initial(7), ZEROS])
    out = table.lookup_train(np.array([8]), now=3.0)
    np.testing.assert_array_equal(out, [initial(8)])


def test_unadmitted_gradients_are_dropped_and_counted():
    table = make_table(threshold=3)
    table.lookup_train(np.array([1, 1, 2]), now=0.0)
    version = table.version
    grads = np.ones((3, DIM), dtype=np.float32)
    assert table.apply_gradients(np.array([1, 2, 1]), grads, now=1.0) == 0
    assert table.counters["dropped_grads"] == 3
    assert table.version == version and len(table) == 0
    np.testing.assert_array_equal(table.lookup_train(np.array([1]), now=2.0), [initial(1)])
    assert table.apply_gradients(np.array([1, 2]), grads[:2], now=3.0) == 1
    assert table.counters["dropped_grads"] == 4
    np.testing.assert_allclose(table.lookup_serve(np.array([1, 2])),
                               [initial(1) - 0.5, ZEROS], rtol=1e-6)


def test_an_id_admitted_within_a_batch_reads_its_row_at_every_occurrence():
    table = make_table(threshold=3)
    out = table.lookup_train(np.array([5, 6, 5, 6, 5]), now=0.0)
    np.testing.assert_array_equal(out, [initial(5), ZEROS, initial(5), ZEROS, initial(5)])
    assert table.counters["filtered"] == 2
    assert table._rows["count"][table._map.find(np.array([5]))].tolist() == [3]


def test_probabilistic_admission_is_consistent_within_a_batch():
    table = make_table(probability=0.5)
    ids = np.repeat(np.arange(500), 6)
    out = table.lookup_train(ids, now=0.0).reshape(500, 6, DIM)
    admitted = table.contains(np.arange(500))
    assert 0.8 < admitted.mean() < 0.999  # 1 - 0.5**6 expected
    rows = init_rows(np.arange(500), DIM, INIT)
    expected = np.where(admitted[:, None, None], rows[:, None, :], 0.0)
    np.testing.assert_array_equal(out, np.broadcast_to(expected, out.shape))
    assert table.counters["filtered"] == 6 * np.count_nonzero(~admitted)


def test_probabilistic_admission_rate_and_determinism():
    ids = np.random.default_rng(3).permutation(40_000)[:20_000].astype(np.int64) * 7919
    a, b, c = make_table(probability=0.25), make_table(probability=0.25), make_table(
        probability=0.25)
    a.lookup_train(ids, now=0.0)
    b.lookup_train(ids, now=0.0)
    assert a._filter.age[1] == 2  # the counters halved twice, at the same ids in the replay
    for chunk in np.array_split(ids, 7):  # a replay batched differently
        c.lookup_train(chunk, now=0.0)
    first = a.contains(ids)
    assert 0.22 < first.mean() < 0.28
    assert a.counters["filtered"] == np.count_nonzero(~first)
    np.testing.assert_array_equal(b.contains(ids), first)
    np.testing.assert_array_equal(c.contains(ids), first)
    a.lookup_train(ids, now=1.0)  # second sight: a fresh coin for the ids still out
    second = a.contains(ids)
    assert second[first].all()
    assert 0.40 < second.mean() < 0.48  # 1 - 0.75**2 expected


@settings(max_examples=40, deadline=None)
@given(ids=st.lists(st.integers(-(2**62), 2**62), min_size=50, max_size=300, unique=True),
       data=st.data())
def test_tiny_count_min_sketch_never_under_counts(ids, data):
    threshold = 4
    counts = data.draw(st.lists(st.integers(1, 6), min_size=len(ids), max_size=len(ids)))
    n_batches = data.draw(st.integers(1, 12))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    ids_arr = np.array(ids, dtype=np.int64)
    stream = rng.permutation(np.repeat(ids_arr, counts))
    # 1,800 occurrences at most: under the first halving (2 x 1,024), so none is aged
    table = make_table(threshold=threshold,
                       admission=AdmissionConfig(sketch_width=1024, sketch_depth=2))
    seen = dict.fromkeys(ids, 0)
    for batch in np.array_split(stream, n_batches):
        out = table.lookup_train(batch, now=0.0)
        for i in batch.tolist():
            seen[i] += 1
        due = np.array([seen[i] >= threshold for i in ids])
        assert table.contains(ids_arr[due]).all()
        np.testing.assert_array_equal(table.lookup_serve(batch), out)


def test_threshold_with_a_wide_sketch_admits_no_id_early():
    table = make_table(threshold=4, admission=AdmissionConfig(sketch_width=1 << 16))
    ids = np.arange(1000, dtype=np.int64) * 104729
    for _ in range(3):
        table.lookup_train(ids, now=0.0)
    assert len(table) == 0
    table.lookup_train(ids[:10], now=0.0)
    assert len(table) == 10


def test_sketch_memory_is_bounded_while_a_million_ids_stream():
    cfg = AdmissionConfig(sketch_width=1 << 16, sketch_depth=4)
    table = make_table(threshold=255, admission=cfg)
    sketch = table._filter.sketch
    start = table.stats()["bytes"]
    for k in range(10):
        table.lookup_train(np.arange(k * 100_000, (k + 1) * 100_000, dtype=np.int64), now=0.0)
        assert table._filter.sketch is sketch and sketch.nbytes == 4 * (1 << 16)
        assert table.stats()["bytes"] == start
    assert len(table) == 0 and table.counters["filtered"] == 1_000_000


def test_counts_age_so_a_long_stream_of_rare_ids_does_not_open_the_filter():
    """Ids each seen twice never reach a threshold of 5; without halving, the counters of a
    4,096-wide sketch filled up and past ~20 x width distinct ids every id passed."""
    width = 4096
    table = make_table(threshold=5, admission=AdmissionConfig(sketch_width=width))
    rng = np.random.default_rng(0)
    for k in range(40):  # 40 x 2,048 distinct ids, each twice
        ids = np.arange(k * 2048, (k + 1) * 2048, dtype=np.int64) * 104729 + 1
        table.lookup_train(rng.permutation(np.repeat(ids, 2)), now=0.0)
    assert len(table) < 0.001 * 40 * 2048, len(table)
    assert table._filter.age[1] == 40 * 4096 // (2 * width)  # halvings at each 2 x width
    hot = np.arange(1000, dtype=np.int64) * 7 + 3  # seen 5 times in a row: admitted
    for _ in range(5):
        table.lookup_train(hot, now=1.0)
    assert table.contains(hot).all()


def test_a_count_halves_every_two_widths_of_occurrences():
    width = 64
    table = make_table(threshold=4, admission=AdmissionConfig(sketch_width=width,
                                                              sketch_depth=2))
    rare = np.array([10**12 + 1], dtype=np.int64)
    for _ in range(3):
        table.lookup_train(rare, now=0.0)  # 3 of 4
    table.lookup_train(np.arange(2 * width - 3, dtype=np.int64) * 7919, now=0.0)
    # the counters halved at the 128th occurrence: 3 -> 1, so a fourth sight is its second
    table.lookup_train(rare, now=0.0)
    assert not table.contains(rare).any()
    table.lookup_train(np.concatenate([rare, rare]), now=0.0)
    assert table.contains(rare).all()


def test_admit_all_keeps_no_sketch():
    table = make_table()
    assert table._filter.nbytes == 0
    table.lookup_train(np.array([1, 2, 2, 3]), now=0.0)
    assert len(table) == 3 and table.counters["filtered"] == 0
    assert table.counters["admitted"] == 3
