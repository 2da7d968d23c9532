"""Switching a table's optimizer for the online phase (``EmbeddingTable.set_optimizer``,
``ShardServer.set_optimizers``): rows keep their weights, fresh and old ids step with the new
kind and rate, the same kind keeps each row's state, and a snapshot restores the switch."""

from __future__ import annotations

import io

import numpy as np
import pytest

from monolith_ray.config import OptimizerConfig, SlotConfig
from monolith_ray.ps import ShardServer
from monolith_ray.table import EmbeddingTable

DIM = 4
ADAM = OptimizerConfig(kind="adam", learning_rate=1e-3)
ONLINE = OptimizerConfig(kind="adagrad", learning_rate=0.5, initial_accumulator=0.1)


def trained_table(optimizer: OptimizerConfig = ADAM) -> EmbeddingTable:
    """A table whose ids 0..4 have taken two steps of ``optimizer``."""
    table = EmbeddingTable(SlotConfig("user_id", 1, DIM, optimizer=optimizer))
    ids = np.arange(5, dtype=np.int64)
    table.lookup_train(ids, 0.0)
    for step in range(2):
        table.apply_gradients(ids, np.full((5, DIM), 0.3 - step, np.float32), 1.0)
    return table


def adagrad_step(w: np.ndarray, g: np.ndarray, cfg: OptimizerConfig,
                 squared_sums: np.ndarray | float = 0.0) -> np.ndarray:
    """One Adagrad step from an accumulator of ``initial_accumulator + squared_sums``, in
    float64."""
    w, g = w.astype(np.float64), g.astype(np.float64)
    accum = np.float32(cfg.initial_accumulator + squared_sums) + g * g
    return w - cfg.learning_rate * g / (np.sqrt(accum) + cfg.eps)


def adam_squared_sums(table: EmbeddingTable, ids: np.ndarray) -> np.ndarray:
    """Adam's record of each row's squared gradients: bias-corrected ``v`` times its steps."""
    rows = table._map.find(ids).astype(np.int64)
    t = table._state["step"][rows].astype(np.float64)
    return table._state["v"][rows] / (1 - ADAM.beta2 ** t) * t


def test_fresh_ids_take_the_online_rate_and_old_ones_keep_their_record() -> None:
    table = trained_table()
    old, fresh = np.array([2], np.int64), np.array([99], np.int64)
    sums = adam_squared_sums(table, old)
    table.set_optimizer(ONLINE)
    before = {"old": table.lookup_serve(old), "fresh": table.lookup_train(fresh, 2.0)}
    grad = np.full((1, DIM), 0.2, np.float32)
    table.apply_gradients(np.concatenate([old, fresh]), np.concatenate([grad, grad]), 2.0)
    np.testing.assert_allclose(table.lookup_serve(fresh),
                               adagrad_step(before["fresh"], grad, ONLINE), rtol=1e-6)
    np.testing.assert_allclose(table.lookup_serve(old),
                               adagrad_step(before["old"], grad, ONLINE, sums), rtol=1e-6)
    old_step = np.abs(table.lookup_serve(old) - before["old"])
    assert (old_step < np.abs(table.lookup_serve(fresh) - before["fresh"])).all()
    assert table.slot.optimizer == ONLINE


def test_switch_keeps_weights_and_leaves_other_tables_alone() -> None:
    table, other = trained_table(), trained_table()
    ids = np.arange(5, dtype=np.int64)
    table.set_optimizer(ONLINE)
    np.testing.assert_array_equal(table.lookup_serve(ids), other.lookup_serve(ids))
    assert set(table._state) == {"accum"} and set(other._state) == {"m", "v", "step"}
    np.testing.assert_allclose(table._state["accum"][table._map.find(ids)],
                               0.1 + adam_squared_sums(other, ids), rtol=1e-6)


def test_switch_to_ftrl_keeps_the_weights_it_steps_from() -> None:
    """FTRL's ``z`` is matched to each row's weight and carried accumulator: a zero gradient
    leaves the weights as they were."""
    table = trained_table()
    ids = np.arange(5, dtype=np.int64)
    before = table.lookup_serve(ids)
    table.set_optimizer(OptimizerConfig(kind="ftrl", learning_rate=0.1))
    table.apply_gradients(ids, np.zeros((5, DIM), np.float32), 2.0)
    np.testing.assert_allclose(table.lookup_serve(ids), before, rtol=1e-5)


def test_same_kind_keeps_each_rows_state_at_the_new_rate() -> None:
    """Adam at 10x the rate continues from each row's moments: the step equals that of a
    table that trained with Adam all along, with the new rate for the last step only."""
    faster = OptimizerConfig(kind="adam", learning_rate=1e-2)
    table, reference = trained_table(), trained_table()
    table.set_optimizer(faster)
    ids = np.arange(5, dtype=np.int64)
    grad = np.full((5, DIM), -0.1, np.float32)
    rows = reference._map.find(ids).astype(np.int64)
    before = reference.lookup_serve(ids)
    reference.apply_gradients(ids, grad, 2.0)
    slow_step = reference.lookup_serve(ids) - before
    table.apply_gradients(ids, grad, 2.0)
    np.testing.assert_allclose(table.lookup_serve(ids) - before, 10 * slow_step, rtol=1e-4)
    np.testing.assert_array_equal(table._state["step"][rows], 3)


def test_snapshot_restores_the_switched_optimizer() -> None:
    table = trained_table()
    table.set_optimizer(ONLINE)
    table.apply_gradients(np.arange(5, dtype=np.int64), np.ones((5, DIM), np.float32), 2.0)
    buffer = io.BytesIO()
    table.snapshot(buffer)
    buffer.seek(0)
    restored = EmbeddingTable.restore(buffer)
    assert restored.slot.optimizer == ONLINE
    ids = np.arange(6, dtype=np.int64)
    for t in (table, restored):
        t.lookup_train(ids, 3.0)
        t.apply_gradients(ids, np.full((6, DIM), 0.5, np.float32), 3.0)
    np.testing.assert_array_equal(restored.lookup_serve(ids), table.lookup_serve(ids))


def test_shard_switches_the_named_slots_only() -> None:
    slots = [SlotConfig("user_id", 1, DIM, optimizer=ADAM),
             SlotConfig("item_id", 2, DIM, optimizer=ADAM)]
    shard = ShardServer(slots)
    shard.set_optimizers({"user_id": ONLINE})
    assert shard.tables["user_id"].slot.optimizer == ONLINE
    assert shard.tables["item_id"].slot.optimizer == ADAM
    with pytest.raises(KeyError, match="no slot 'genres'"):
        shard.set_optimizers({"item_id": ONLINE, "genres": ONLINE})
    assert shard.tables["item_id"].slot.optimizer == ADAM  # all or nothing
