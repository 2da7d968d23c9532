"""Tower tables: their configs beside the ranking slots', and pooling a batch's rows from any
lookup (the shards' or a serving store's)."""

from __future__ import annotations

import numpy as np

from monolith_ray.config import OptimizerConfig, SlotConfig
from monolith_ray.data.batches import Batch
from monolith_ray.model.api import SlotSpec
from monolith_ray.retrieval import pooled_rows, table_name, tower_slots

SLOTS = (SlotConfig("user_id", 1, 4), SlotConfig("genres", 7, 2, combiner="mean", max_values=3))


def test_tower_slots_keep_the_slot_id_and_take_overrides():
    adagrad = OptimizerConfig(kind="adagrad", learning_rate=0.1)
    (genres,) = tower_slots(SLOTS, ["genres"], optimizer=adagrad)
    assert genres.name == table_name("genres") == "tower_genres"
    assert (genres.slot_id, genres.dim, genres.combiner, genres.max_values) == (7, 2, "mean", 3)
    assert genres.optimizer == adagrad


def test_pooled_rows_pool_each_example_with_the_slot_combiner():
    table = {10: [1.0, 2.0, 3.0], 20: [3.0, 4.0, 5.0]}  # fid -> row (dim 2 + 1)
    calls = []

    def lookup(fids):
        calls.append(sorted(fids))
        return {name: np.array([table.get(int(f), [0.0] * 3) for f in ids], np.float32)
                for name, ids in fids.items()}

    batch = Batch(fids={"genres": np.array([10, 20, 30])},
                  idx={"genres": np.array([[0, 1, -1], [2, -1, -1], [-1, -1, -1]], np.int32)},
                  labels=np.zeros(3, np.float32), weights=np.ones(3, np.float32),
                  time=np.zeros(3, np.int64))
    pooled = pooled_rows(lookup, batch, [SlotSpec("genres", 2, "mean")])
    np.testing.assert_allclose(pooled["genres"], [[2.0, 3.0, 4.0], [0, 0, 0], [0, 0, 0]])
    assert calls == [["tower_genres"]]  # one lookup, of the tower table
