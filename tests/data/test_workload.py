"""The synthetic scale workload: reproducible, Zipf-popular, a steady inflow of new ids."""

from __future__ import annotations

import numpy as np
import pytest

from monolith_ray.data.workload import SlotTraffic, Workload, default_workload, zipf_ranks
from monolith_ray.features import make_fids


def test_batches_are_a_pure_function_of_seed_step_and_trainer():
    w = default_workload(batch_size=256)
    a, b = w.batch(7, 1, 2), w.batch(7, 1, 2)
    for name in a.fids:
        np.testing.assert_array_equal(a.fids[name], b.fids[name])
        np.testing.assert_array_equal(a.idx[name], b.idx[name])
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.fids["user"], w.batch(7, 0, 2).fids["user"])
    assert not np.array_equal(a.fids["user"], default_workload(256, seed=1).batch(7, 1, 2)
                              .fids["user"])


def test_default_shape_is_production_like():
    w = default_workload()
    cards = sorted(s.cardinality for s in w.slots)
    assert len(w.slots) >= 20 and cards[0] <= 20 and cards[-1] >= 10_000_000
    assert w.new_ids_per_example() > 1
    batch = w.batch(0)
    assert len(batch) == 4096 and set(batch.fids) == {s.name for s in w.slots}
    for s in w.slots:  # every example has one value per slot, indexing the batch's fids
        idx = batch.idx[s.name]
        assert idx.shape == (4096, 1) and idx.min() >= 0
        assert idx.max() == batch.fids[s.name].size - 1
    assert 0.05 < batch.labels.mean() < 0.95


def test_zipf_ranks_follow_the_power_law():
    rng = np.random.default_rng(0)
    for a in (0.9, 1.0, 1.2):
        ranks = zipf_ranks(rng.random(2_000_000), 1_000_000, a)
        assert ranks.min() >= 0 and ranks.max() < 1_000_000
        counts = np.bincount(ranks, minlength=1_000_000)
        # P(rank r) = the mass of x ** -a on [r + 1, r + 2): ranks 0-9 against 90-99.
        mass = (np.log if a == 1.0 else lambda x: x ** (1 - a) / (1 - a))
        want = (mass(11.0) - mass(1.0)) / (mass(101.0) - mass(91.0))
        ratio = counts[:10].sum() / counts[90:100].sum()
        assert want / 1.15 < ratio < want * 1.15, (a, ratio, want)
        assert counts[0] > counts[1] > counts[10] > counts[1000]
    assert zipf_ranks(np.array([0.0, 0.999999]), 1, 1.1).tolist() == [0, 0]


def test_new_ids_are_never_seen_before_over_steps_and_trainers():
    slot = SlotTraffic("user", 1, cardinality=100, zipf=1.0, new_rate=0.5)
    w = Workload((slot,), batch_size=512)
    known = set(make_fids(1, np.arange(100)).tolist())
    seen: set[int] = set()
    fresh_total = 0
    for step in range(4):
        for trainer in range(3):
            fids = set(w.batch(step, trainer, 3).fids["user"].tolist())
            fresh = fids - known
            assert not fresh & seen  # never drawn by an earlier batch of any trainer
            seen |= fresh
            fresh_total += len(fresh)
    assert 0.4 * 12 * 512 < fresh_total < 0.6 * 12 * 512


def test_bad_traffic_is_refused():
    with pytest.raises(ValueError, match="cardinality"):
        SlotTraffic("x", 1, 0)
    with pytest.raises(ValueError, match="new_rate"):
        SlotTraffic("x", 1, 10, new_rate=2.0)
    with pytest.raises(ValueError, match="trainer"):
        default_workload(16).batch(0, 2, 2)
