"""The sync-interval experiment's online phase: ``go_online`` puts the config's online
settings into effect, and ``replay`` syncs each replica every K stream examples and scores
every example before the trainer learns from it; ``user_coverage`` measures the stream's new
users, ``with_history`` adds the history slots to both models."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from monolith_ray.config import (
    Config,
    ModelConfig,
    OnlineConfig,
    OptimizerConfig,
    SlotConfig,
    TrainConfig,
)
from monolith_ray.data.batches import Batch
from monolith_ray.experiments import go_online, replay
from monolith_ray.experiments.history import history_config
from monolith_ray.experiments.sync_interval import user_coverage, with_history
from monolith_ray.ps import ShardClient, ShardServer
from monolith_ray.train import TrainLoop

BATCH = OptimizerConfig(kind="adam", learning_rate=1e-3)
ONLINE = OptimizerConfig(kind="ftrl", learning_rate=0.2)
MODEL = ModelConfig(hidden=(8,))


def config() -> Config:
    slots = (SlotConfig("user_id", 1, 4, optimizer=BATCH, online=ONLINE),
             SlotConfig("item_id", 2, 4, optimizer=BATCH))
    return Config(slots=slots, model=MODEL,
                  online=OnlineConfig(batch_size=5, dense_rate=0.25))


def stream(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"time": pa.array(np.arange(n) * 60, pa.int64()),
                     "label": pa.array(np.arange(n) % 2, pa.float32()),  # both in every window
                     "weight": pa.array(np.ones(n), pa.float32()),
                     "user_id": pa.array(rng.integers(0, 8, n), pa.int64()),
                     "item_id": pa.array(rng.integers(0, 20, n), pa.int64())})


def batch_trainer(cfg: Config) -> TrainLoop:
    shards = [ShardServer(cfg.slots) for _ in range(2)]
    loop = TrainLoop(cfg.slots, ShardClient(shards, [s.name for s in cfg.slots]), cfg.model,
                     TrainConfig(batch_size=32, n_shards=2))
    return loop


def test_go_online_switches_slots_batch_size_and_dense_rate() -> None:
    cfg = config()
    trainer = batch_trainer(cfg)
    online = go_online(trainer, cfg)
    tables = [shard.tables for shard in trainer.client.shards]
    assert all(t["user_id"].slot.optimizer == ONLINE for t in tables)
    assert all(t["item_id"].slot.optimizer == BATCH for t in tables)  # no online key
    assert online.client is trainer.client
    assert online.train_cfg.batch_size == 5
    assert online.train_cfg.dense_optimizer.learning_rate == 0.25 * 1e-3
    assert online.params is trainer.params


class Recorder:
    """A replica that records the stream positions it syncs at and what it scores."""

    def __init__(self, trainer: TrainLoop) -> None:
        self.trainer = trainer
        self.syncs: list[tuple[int, bool]] = []
        self.scored = 0

    def sync(self, dense: bool = True) -> int:
        self.syncs.append((self.scored, dense))
        return 0

    def predict(self, batch: Batch) -> np.ndarray:
        self.scored += len(batch)
        return np.full(len(batch), 0.5, np.float32)


def test_replay_syncs_every_k_examples_and_scores_before_training() -> None:
    cfg = dataclasses.replace(config(), online=OnlineConfig(batch_size=5))
    online = go_online(batch_trainer(cfg), cfg)
    replicas = {"k10": Recorder(online), "k20_dense": Recorder(online), "never": Recorder(online)}
    every = {"k10": 10, "k20_dense": 20, "never": None}
    figures = replay(online, stream(100), replicas, every, windows=10)
    assert replicas["k10"].syncs[0] == (0, True)  # before the stream, dense too
    assert [at for at, _ in replicas["k10"].syncs[1:]] == list(range(10, 100, 10))
    assert replicas["k20_dense"].syncs[1:] == [(at, True) for at in range(20, 100, 20)]
    assert replicas["never"].syncs == [(0, True)]
    # daily dense syncs: the stream spans 99 minutes, so the k10 replica never copies them
    assert all(not dense for _, dense in replicas["k10"].syncs[1:])
    assert all(r.scored == 100 for r in replicas.values())
    assert online.steps == 100 // 5
    assert figures["k10"]["syncs"] == 9 and figures["stream_examples"] == 100


def test_user_coverage_counts_new_users_the_replica_has_no_row_of() -> None:
    seen = pa.table({"user_id": pa.array([1], pa.int64())})
    users = pa.table({"user_id": pa.array([1, 2, 2, 3, 2, 3, 3, 3], pa.int64())})
    every = {"never": None, "k1": 1, "k2": 2, "k4": 4}
    coverage = user_coverage(seen, users, every)
    assert coverage["new_share"] == 7 / 8
    # k2 syncs at 0, 2, 4, 6: user 2 (first at 1) is unknown at 1, user 3 (first at 3) at 3
    assert coverage["without_own_row"] == {"never": 7 / 8, "k1": 2 / 8, "k2": 2 / 8,
                                           "k4": 3 / 8}


def test_with_history_adds_the_slots_going_online_as_their_sources() -> None:
    item_online = OptimizerConfig(kind="adagrad", learning_rate=0.01)
    slots = (SlotConfig("user_id", 1, 4, optimizer=BATCH, online=ONLINE),
             SlotConfig("item_id", 2, 4, optimizer=BATCH, online=item_online),
             SlotConfig("genres", 3, 4, optimizer=BATCH, max_values=3, combiner="mean"))
    cfg = Config(slots=slots, model=MODEL)
    table = stream(30).append_column("genres", pa.array([[g % 3] for g in range(30)],
                                                        pa.list_(pa.int64())))
    splits = {"train": table.slice(0, 20), "valid": table.slice(20, 5),
              "test": table.slice(25, 5)}
    history = history_config(4)
    with_cfg, with_splits = with_history(cfg, splits, history, epochs=3)
    online = {s.name: s.online for s in with_cfg.slots}
    assert online["recent_items"] == online["recent_passed_items"] == item_online
    assert online["recent_genres"] is None and online["user_id"] == ONLINE
    assert with_cfg.train.epochs == 3
    assert [with_splits[n].num_rows for n in ("train", "valid", "test")] == [20, 5, 5]
    # the test split's history holds the valid split's earlier positives (event time)
    user = with_splits["test"].column("user_id")[0].as_py()
    before = table.slice(0, 25).to_pylist()
    positives = [r["item_id"] for r in before if r["user_id"] == user and r["label"] == 1]
    assert with_splits["test"].column("recent_items")[0].as_py() == positives[-4:][::-1]
