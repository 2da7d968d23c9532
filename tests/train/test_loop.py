import dataclasses

import jax
import numpy as np
import pyarrow as pa
import pytest

from monolith_ray.config import (AdmissionConfig, ConfigError, InitializerConfig, ModelConfig,
                                 OptimizerConfig, SlotConfig, TrainConfig, load_config)
from monolith_ray.data.batches import iter_batches
from monolith_ray.features import make_fids
from monolith_ray.ps import ShardClient, ShardServer
from monolith_ray.train import TrainLoop

ADMISSION = AdmissionConfig(sketch_width=1024, sketch_depth=2)
SLOTS = tuple(
    SlotConfig(name=name, slot_id=i + 1, dim=4, max_values=m, combiner="mean",
               optimizer=OptimizerConfig(kind="adagrad", learning_rate=0.3),
               initializer=InitializerConfig(kind="normal", scale=0.1))
    for i, (name, m) in enumerate([("user", 1), ("item", 1), ("tags", 2)]))
BATCH = 64


def synthetic(n=1024, seed=0):
    """Clicks when a user's taste (user % 2) matches an item's kind (item % 2)."""
    rng = np.random.default_rng(seed)
    user, item = rng.integers(0, 30, n), rng.integers(0, 40, n)
    tags = [[int(i % 2), int(i % 5) + 10] for i in item]
    return pa.table({
        "time": pa.array(np.arange(n), pa.int64()),
        "label": pa.array((user % 2 == item % 2).astype(np.float32)),
        "weight": pa.array(np.ones(n, np.float32)),
        "user": pa.array(user), "item": pa.array(item),
        "tags": pa.array(tags, pa.list_(pa.int64())),
    })


def make_loop(slots=SLOTS):
    client = ShardClient([ShardServer(slots, ADMISSION) for _ in range(2)], [s.name for s in slots])
    train = TrainConfig(batch_size=BATCH, stats_every=4,
                        dense_optimizer=OptimizerConfig(kind="adam", learning_rate=1e-2))
    return TrainLoop(slots, client, ModelConfig(hidden=(8,)), train)


def test_training_reduces_loss_and_learns_the_pattern():
    loop = make_loop()
    data = list(iter_batches(synthetic(), SLOTS, BATCH))
    first = loop.evaluate(data)
    losses = [m["loss"] for _ in range(3) for m in loop.train(data)]
    last = loop.evaluate(data)
    assert np.mean(losses[-8:]) < 0.5 * np.mean(losses[:8])
    assert last["logloss"] < 0.5 * first["logloss"] and last["auc"] > 0.95
    assert loop.steps == 3 * len(data)


def test_step_metrics_and_table_growth():
    loop = make_loop()
    data = list(iter_batches(synthetic(n=200), SLOTS, BATCH))  # last batch is short (8)
    metrics = list(loop.train(data))
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert [m["examples"] for m in metrics] == [64, 64, 64, 8]
    assert all(np.isfinite(m["loss"]) and m["examples_per_s"] > 0 for m in metrics)
    seen = {s.name: np.unique(np.concatenate([b.fids[s.name] for b in data])).size for s in SLOTS}
    assert loop.client.stats()["user"]["rows"] == seen["user"]
    # Refreshed at step 1, when batch 2's pull had already been issued (the overlap).
    first_two = np.union1d(data[0].fids["item"], data[1].fids["item"]).size
    assert metrics[0]["table_rows"]["item"] == first_two
    assert metrics[1]["table_rows"] == metrics[0]["table_rows"]
    one = loop.train_batch(data[0])
    assert one["step"] == 5 and one["table_rows"] == seen  # refreshed at step 5


def test_each_step_makes_one_call_per_shard_carrying_the_last_push():
    calls = []

    class Logged:
        def __init__(self, shard):
            self.shard = shard

        def __getattr__(self, method):
            calls.append((id(self), method))
            return getattr(self.shard, method)

    shards = [Logged(ShardServer(SLOTS, ADMISSION)) for _ in range(2)]
    loop = TrainLoop(SLOTS, ShardClient(shards, [s.name for s in SLOTS]), ModelConfig(hidden=(8,)),
                     TrainConfig(batch_size=BATCH))
    del calls[:]  # the client's probe of the shards' kind
    for _ in loop.train(list(iter_batches(synthetic(n=5 * BATCH), SLOTS, BATCH))):
        pass
    for shard in shards:
        # Batch k's pull (issued in step k-1) carries step k-2's gradients; the last two
        # steps' gradients are pushed alone.
        assert [m for s, m in calls if s == id(shard) and m != "stats"] == [
            "pull", "pull", *["push_pull"] * 3, "push", "push"]


def test_each_batch_is_routed_once_and_queued_steps_train_as_sequential_ones():
    data = list(iter_batches(synthetic(n=6 * BATCH), SLOTS, BATCH))
    loop, reference = make_loop(), make_loop()
    routed = []
    route = loop.client.route
    loop.client.route = lambda fids: routed.append(fids) or route(fids)
    losses = [m["loss"] for m in loop.train(data)]
    assert len(routed) == len(data)  # its pull's routes also push its gradients

    # The same calls, each step finished before the next is dispatched.
    step = reference._dispatch(data[0], reference._pull_with_held_push(
        data[0], reference.client.route(data[0].fids)))
    expected = []
    for batch in data[1:]:
        pending = reference._pull_with_held_push(batch, reference.client.route(batch.fids))
        expected.append(reference._finish(step, 0.0)["loss"])
        step = reference._dispatch(batch, pending)
    expected.append(reference._finish(step, 0.0)["loss"])
    reference.flush()
    assert losses == expected
    for a, b in zip(jax.tree.leaves(loop.params), jax.tree.leaves(reference.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for batch in data:
        for name, rows in loop.client.lookup(batch.fids).items():
            np.testing.assert_array_equal(rows, reference.client.lookup(batch.fids)[name])


def test_evaluate_does_not_insert_unseen_ids():
    loop = make_loop()
    train = list(iter_batches(synthetic(n=128, seed=0), SLOTS, BATCH))
    for _ in loop.train(train):
        pass
    rows = loop.client.stats()["user"]["rows"]
    fresh = synthetic(n=64, seed=1)
    fresh = fresh.set_column(3, "user", pa.array(np.arange(1000, 1064)))
    result = loop.evaluate(iter_batches(fresh, SLOTS, BATCH))
    assert result["examples"] == 64 and np.isfinite(result["logloss"])
    assert loop.client.stats()["user"]["rows"] == rows


def test_model_and_train_sections_load_from_yaml():
    cfg = load_config("slots:\n  - {name: user, slot_id: 1, dim: 4}\n"
                      "model: {hidden: [16, 8]}\n"
                      "train: {batch_size: 256,\n"
                      "        dense_optimizer: {kind: adagrad, learning_rate: 0.1}}\n")
    assert cfg.model == ModelConfig(hidden=(16, 8))
    assert cfg.train.batch_size == 256 and cfg.train.dense_optimizer.kind == "adagrad"
    assert load_config("slots:\n  - {name: user, slot_id: 1, dim: 4}\n").train == TrainConfig()
    with pytest.raises(ConfigError, match=r"^train\.dense_optimizer\.kind: ftrl"):
        load_config("slots:\n  - {name: u, slot_id: 1, dim: 4}\n"
                    "train: {dense_optimizer: {kind: ftrl}}\n")
    with pytest.raises(ConfigError, match=r"^model\.hidden\[1\]"):
        load_config("slots:\n  - {name: u, slot_id: 1, dim: 4}\nmodel: {hidden: [4, 0]}\n")


def test_idle_finishes_the_step_in_flight_without_waiting_for_the_next_batch():
    """A quiet stream: each batch is followed by IDLE; its step's metrics come out before the
    next batch is drawn, and every batch is trained once, in order."""
    from monolith_ray.train.loop import IDLE

    loop = make_loop()
    data = list(iter_batches(synthetic(n=192), SLOTS, BATCH))
    drawn: list[int] = []

    def stream():
        yield IDLE  # idle before anything came: nothing to finish
        for k, batch in enumerate(data):
            drawn.append(k)
            yield batch
            yield IDLE
            yield IDLE

    seen = []
    for m in loop.train(stream()):
        seen.append((m["step"], len(drawn)))
    # Step k is reported while batch k is the last drawn: no read-ahead past an IDLE.
    assert seen == [(1, 1), (2, 2), (3, 3)]
    assert loop.steps == len(data)


def test_trainers_forget_ids_idle_for_their_slots_expire_s():
    """Users 0-9 are seen at event time 0..63, users 10-19 from 10,000 on: with user rows
    expiring after 1,000 s and a pass every 500 s, the first users' rows are evicted and the
    later ones' kept; items (no expire_s) keep every row."""
    slots = (dataclasses.replace(SLOTS[0], expire_s=1000.0), *SLOTS[1:])
    client = ShardClient([ShardServer(slots, ADMISSION) for _ in range(2)],
                         [s.name for s in slots])
    loop = TrainLoop(slots, client, ModelConfig(hidden=(8,)),
                     TrainConfig(batch_size=BATCH, expire_every_s=500.0))
    early, late = synthetic(n=BATCH), synthetic(n=3 * BATCH, seed=1)
    early = early.set_column(early.schema.get_field_index("user"), "user",
                             pa.array(np.arange(BATCH) % 10))
    late = late.set_column(late.schema.get_field_index("user"), "user",
                           pa.array(10 + np.arange(3 * BATCH) % 10))
    late = late.set_column(0, "time", pa.array(10_000 + np.arange(3 * BATCH), pa.int64()))
    list(loop.train([*iter_batches(early, slots, BATCH), *iter_batches(late, slots, BATCH)]))
    assert loop.expired["user"] == 10 and loop.expired["item"] == 0
    held = client.stats()
    assert held["user"]["rows"] == 10 and held["user"]["evicted"] == 10
    assert held["item"]["evicted"] == 0


def test_expiry_passes_count_tables_beyond_the_loops_slots():
    """Shards also holding another table (a retrieval tower's, trained by another step) with
    the same expiry: the loop's passes evict and count its rows too, never fail on it."""
    slots = (dataclasses.replace(SLOTS[0], expire_s=1000.0), *SLOTS[1:])
    tower = dataclasses.replace(slots[0], name="tower_user")
    client = ShardClient([ShardServer((*slots, tower), ADMISSION) for _ in range(2)],
                         [s.name for s in slots])
    loop = TrainLoop(slots, client, ModelConfig(hidden=(8,)),
                     TrainConfig(batch_size=BATCH, expire_every_s=500.0))
    tower_client = ShardClient(client.shards, ["tower_user"])
    fids = make_fids(slots[0].slot_id, np.arange(5, dtype=np.int64))
    tower_client.pull({"tower_user": fids}, 0)
    data = [dataclasses.replace(b, time=np.full_like(b.time, t))
            for t, b in zip((0, 600, 1200, 1800),
                            iter_batches(synthetic(n=4 * BATCH), slots, BATCH))]
    list(loop.train(data))
    assert loop.expired["tower_user"] == 5


def test_no_expiry_pass_without_an_expiring_slot():
    loop = make_loop()
    calls = []
    loop.client.evict_expired = lambda now: calls.append(now) or {}
    data = [dataclasses.replace(b, time=np.full_like(b.time, i * 10**7))  # far apart
            for i, b in enumerate(iter_batches(synthetic(n=256), SLOTS, BATCH))]
    list(loop.train(data))
    assert calls == []


def test_dense_features_are_learned_and_their_fitted_norm_never_moves():
    """Clicks depend only on a dense feature (a price far from the user's budget), which the
    sparse slots cannot see: the model learns it through the dense inputs, standardized with
    the fitted numbers, which training leaves as they are."""
    from monolith_ray.config import DenseFeature
    from monolith_ray.data.dense_values import dense_matrix, fit_norm

    features = (DenseFeature("price", transform="log1p_standardize"),
                DenseFeature("noise", transform="standardize"))
    rng = np.random.default_rng(1)
    table = synthetic(n=2048, seed=1)
    price = rng.lognormal(3.0, 1.0, table.num_rows)
    table = (table.set_column(1, "label", pa.array((price > 20).astype(np.float32)))
             .append_column("price", pa.array(price))
             .append_column("noise", pa.array(rng.normal(50, 10, table.num_rows))))
    norm = fit_norm(dense_matrix(table, features), features)
    loop = make_loop_with_dense(features)
    loop.params["dense_norm"] = {k: np.asarray(v) for k, v in norm.items()}
    data = list(iter_batches(table, SLOTS, BATCH, features))
    for _ in range(4):
        list(loop.train(data))
    assert loop.evaluate(data)["auc"] > 0.97
    for key in ("mean", "inv_std"):
        np.testing.assert_array_equal(np.asarray(loop.params["dense_norm"][key]), norm[key])
    blind = make_loop()  # the same data without its dense features
    for _ in range(4):
        list(blind.train(iter_batches(table, SLOTS, BATCH)))
    assert blind.evaluate(iter_batches(table, SLOTS, BATCH))["auc"] < 0.7


def make_loop_with_dense(features):
    client = ShardClient([ShardServer(SLOTS, ADMISSION) for _ in range(2)],
                         [s.name for s in SLOTS])
    train = TrainConfig(batch_size=BATCH, stats_every=4,
                        dense_optimizer=OptimizerConfig(kind="adam", learning_rate=1e-2))
    return TrainLoop(SLOTS, client, ModelConfig(hidden=(8,)), train, dense=features)


def test_a_step_reports_how_long_it_waited_for_its_rows():
    """``pull_wait_s`` is the part of a step spent waiting for the pulled rows: a pull made
    40 ms slower shows in it, and it never exceeds the step's own seconds."""
    import time

    loop = make_loop()
    data = list(iter_batches(synthetic(n=256), SLOTS, BATCH))
    fast = list(loop.train(data))
    wait = loop.client.wait

    def slow_wait(pending):
        time.sleep(0.04)
        return wait(pending)

    loop.client.wait = slow_wait
    slow = list(loop.train(data))
    assert all(0 <= m["pull_wait_s"] <= m["seconds"] for m in fast + slow)
    assert min(m["pull_wait_s"] for m in slow) >= 0.04
    assert np.median([m["pull_wait_s"] for m in fast]) < 0.04
