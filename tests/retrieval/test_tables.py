"""Tower tables: their configs beside the ranking slots', and pooling a batch's rows from any
lookup (the shards' or a serving store's)."""

from __future__ import annotations

import numpy as np

from monolith_ray.config import OptimizerConfig, SlotConfig
from monolith_ray.data.batches import Batch
from monolith_ray.model.api import SlotSpec
from monolith_ray.retrieval import pooled_rows, table_name, tower_slots
from monolith_ray.retrieval.tables import pool_rows, tower_fids

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


def test_rows_read_apart_pool_as_a_lookup_would():
    """A caller that reads :func:`tower_fids` itself (serving's async read) and pools with
    :func:`pool_rows` gets each example's rows pooled with its slot's combiner (checked by
    hand), as :func:`pooled_rows` gives them from the same rows."""
    rng = np.random.default_rng(0)
    slots = [SlotSpec("user_id", 2, "sum"), SlotSpec("genres", 3, "mean")]
    batch = Batch(fids={"user_id": np.array([5, 6]), "genres": np.array([1, 2, 3, 4])},
                  idx={"user_id": np.array([[0], [1], [0]], np.int32),
                       "genres": np.array([[0, 1], [2, -1], [3, 0]], np.int32)},
                  labels=np.zeros(3, np.float32), weights=np.ones(3, np.float32),
                  time=np.zeros(3, np.int64))
    wanted = tower_fids(batch, slots)
    assert {k: v.tolist() for k, v in wanted.items()} == {
        "tower_user_id": [5, 6], "tower_genres": [1, 2, 3, 4]}
    rows = {name: rng.normal(size=(ids.size, 4 if name == "tower_genres" else 3))
            for name, ids in wanted.items()}
    apart = pool_rows(rows, batch, slots)
    user, genres = rows["tower_user_id"], rows["tower_genres"]
    np.testing.assert_allclose(apart["user_id"], user[[0, 1, 0]], rtol=1e-5)  # sum of one
    np.testing.assert_allclose(apart["genres"], [(genres[0] + genres[1]) / 2, genres[2],
                                                 (genres[3] + genres[0]) / 2], rtol=1e-5)
    whole = pooled_rows(lambda asked: {k: rows[k] for k in asked}, batch, slots)
    for s in slots:
        np.testing.assert_array_equal(apart[s.name], whole[s.name])
