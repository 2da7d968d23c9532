"""MovieLens-100K quality: DeepFM on collisionless tables, against the same model on hashed ids.

Data: ``data/ml-100k/parquet/{train,valid,test}.parquet`` (``make data``), split by time
80/10/10; label = rating >= 4. The slots are ``monolith_ray/defaults/movielens.yaml``.
Training runs in this process on 2 ``ShardServer`` shards through ``ShardClient`` and
``TrainLoop``, exactly the code a Ray trainer runs; the train split is shuffled each epoch.

Protocol (the test split is read only by the final runs):

1. Search: each setting of ``GRID`` trains for up to ``MAX_EPOCHS`` epochs on train and is
   scored on valid after every epoch; the (setting, epoch count) with the best valid AUC wins.
2. Final: the winner is retrained from scratch with each seed of ``SEEDS`` (dense init,
   embedding init and shuffling all follow the seed) and scored on test; figures are the
   seeds' means.
3. Hashed baseline: the same winner and seeds, but user and item raw ids are first replaced by
   ``mix64(raw) % M`` (a fixed-size table of M rows shared by colliding ids), with a hash seed
   that also follows the seed. Per seed and slot, M is the size nearest the expected one whose
   measured collision rate over all distinct ids in the data (the fraction of ids sharing a
   bucket with another id) is within one id of the Monolith paper's Table 1: 7.73% of users,
   2.86% of items. Which ids collide moves test AUC by several thousandths, more than the
   collisions' average effect here, hence averaging over hash seeds too.

Online figures (``test_auc_online*``): after that training, valid and then test are streamed
in time order, each batch predicted with the parameters of the moment and then trained on
(prequential, as the online trainer runs); the AUC is over the test predictions.

Test ids the tables never saw (86% of test examples have a user absent from train) read the
all-zero default row; in the hashed run such a user may instead land on a trained user's row.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import compilation_cache
from monolith_ray.config import (
    AdmissionConfig,
    InitializerConfig,
    ModelConfig,
    OptimizerConfig,
    SlotConfig,
    TrainConfig,
    load_config,
)
from monolith_ray.data.batches import Batch, iter_batches
from monolith_ray.features import mix64
from monolith_ray.model import StreamingAUC, StreamingLogLoss
from monolith_ray.ps import ShardClient, ShardServer
from monolith_ray.train import TrainLoop

DATA = Path("data/ml-100k/parquet")
SLOTS_YAML = Path(__file__).resolve().parents[1] / "monolith_ray/defaults/movielens.yaml"
N_SHARDS = 2
MAX_EPOCHS = 4
SEEDS = (0, 1, 2, 3, 4)
TARGET_COLLISION = {"user_id": 0.0773, "item_id": 0.0286}
HASH_SEED = 0xB0C4E7
ADMISSION = AdmissionConfig(sketch_width=1 << 16)
# Embedding optimizer (every slot), initializer scale, and batch size; dense params use Adam 1e-3.
GRID: tuple[dict[str, Any], ...] = (
    {"optimizer": OptimizerConfig(kind="adagrad", learning_rate=0.05), "scale": 0.01,
     "batch_size": 2048},
    {"optimizer": OptimizerConfig(kind="adagrad", learning_rate=0.05), "scale": 0.001,
     "batch_size": 512},
    {"optimizer": OptimizerConfig(kind="adam", learning_rate=3e-4), "scale": 0.001,
     "batch_size": 512},
    {"optimizer": OptimizerConfig(kind="adam", learning_rate=1e-3), "scale": 0.001,
     "batch_size": 256},
)


def bucket_of(ids: np.ndarray, buckets: int, seed: int) -> np.ndarray:
    """The hashed baseline's bucket of each raw id under hash ``seed``: int64 (n,) -> int64
    (n,) in [0, buckets)."""
    return (mix64(ids, seed=HASH_SEED + seed) % np.uint64(buckets)).astype(np.int64)


def collision_rate(ids: np.ndarray, buckets: int, seed: int) -> float:
    """Fraction of the distinct ``ids`` whose bucket holds at least one other distinct id."""
    unique = np.unique(ids)
    _, inverse, counts = np.unique(bucket_of(unique, buckets, seed), return_inverse=True,
                                   return_counts=True)
    return float((counts[inverse] > 1).mean())


def buckets_for(ids: np.ndarray, target: float, seed: int) -> tuple[int, float]:
    """A table size M whose measured collision rate over ``ids`` is ``target`` to within one id
    -> (M, that rate): the nearest such M to the size that gives ``target`` in expectation,
    1 - (1 - 1/M)^(n-1) for n distinct ids (the rate of one M scatters around that)."""
    n = np.unique(ids).size
    expected = 1.0 / (1.0 - (1.0 - target) ** (1.0 / (n - 1)))
    for step in range(int(0.3 * expected)):
        for m in {int(expected) + step, int(expected) - step}:
            rate = collision_rate(ids, m, seed)
            if abs(rate - target) <= 1.0 / n:
                return m, rate
    raise RuntimeError(f"no table size within 30% of {expected:.0f} collides {target:.2%} of ids")


def hashed(table: pa.Table, buckets: dict[str, int], seed: int) -> pa.Table:
    """``table`` with each column of ``buckets`` replaced by its raw ids' buckets."""
    for name, m in buckets.items():
        column = bucket_of(table.column(name).to_numpy(), m, seed)
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(column))
    return table


def slots_for(base: tuple[SlotConfig, ...], setting: dict[str, Any],
              seed: int) -> tuple[SlotConfig, ...]:
    """The slots with the setting's embedding optimizer and initializer scale, seeded."""
    return tuple(dataclasses.replace(
        s, optimizer=setting["optimizer"],
        initializer=InitializerConfig(kind="normal", scale=setting["scale"],
                                      seed=seed * 1000 + s.slot_id))
        for s in base)


def train(splits: dict[str, pa.Table], base: tuple[SlotConfig, ...], model: ModelConfig,
          setting: dict[str, Any], seed: int, epochs: int, score_on: str,
          every_epoch: bool) -> tuple[TrainLoop, list[dict[str, float]]]:
    """Train a fresh model for ``epochs`` shuffled epochs; score on split ``score_on`` after
    every epoch (``every_epoch``) or only after the last -> (the trained loop, the scores)."""
    slots = slots_for(base, setting, seed)
    size = setting["batch_size"]
    shards = [ShardServer(slots, ADMISSION) for _ in range(N_SHARDS)]
    loop = TrainLoop(slots, ShardClient(shards, [s.name for s in slots]), model,
                     TrainConfig(batch_size=size, n_shards=N_SHARDS, seed=seed))
    scored: list[Batch] = list(iter_batches(splits[score_on], slots, size))
    rng = np.random.default_rng(seed)
    scores = []
    for epoch in range(1, epochs + 1):
        order = rng.permutation(splits["train"].num_rows)
        for _ in loop.train(iter_batches(splits["train"].take(order), slots, size)):
            pass
        if every_epoch or epoch == epochs:
            scores.append({"epoch": epoch, **loop.evaluate(scored)})
    return loop, scores


def online(loop: TrainLoop, splits: dict[str, pa.Table]) -> dict[str, float]:
    """Prequential test figures of a trained loop that keeps training: valid then test streamed
    in time order, each batch predicted with the parameters of the moment (serving
    lookups), then trained on -> test ``{"auc", "logloss"}``."""
    auc, logloss = StreamingAUC(), StreamingLogLoss()
    for name in ("valid", "test"):
        for batch in iter_batches(splits[name], loop.slots, loop.train_cfg.batch_size):
            if name == "test":
                probs = loop.predict(batch, loop.client.lookup(batch.fids))
                auc.update(probs, batch.labels, batch.weights)
                logloss.update(probs, batch.labels, batch.weights)
            loop.train_batch(batch)
    return {"auc": auc.result(), "logloss": logloss.result()}


def describe(setting: dict[str, Any]) -> str:
    opt = setting["optimizer"]
    return (f"{opt.kind} lr={opt.learning_rate:g} init_scale={setting['scale']:g} "
            f"batch={setting['batch_size']}")


def main() -> None:
    with compilation_cache():
        figures = experiment()
    print(json.dumps(figures))
    sys.stdout.flush()


def experiment() -> dict[str, Any]:
    """Search, final runs and hashed baseline -> the figures."""
    start = time.perf_counter()
    config = load_config(SLOTS_YAML)
    splits = {name: pq.read_table(DATA / f"{name}.parquet") for name in ("train", "valid", "test")}
    whole = pa.concat_tables(splits.values())

    best: tuple[float, int, dict[str, Any]] = (-1.0, 0, GRID[0])
    for setting in GRID:
        _, scores = train(splits, config.slots, config.model, setting, SEEDS[0], MAX_EPOCHS,
                          "valid", every_epoch=True)
        print(f"search {describe(setting)}: valid auc by epoch "
              f"{[round(s['auc'], 4) for s in scores]}", flush=True)
        for s in scores:
            if s["auc"] > best[0]:
                best = (s["auc"], s["epoch"], setting)
    valid_auc, epochs, setting = best
    print(f"chosen: {describe(setting)}, {epochs} epochs (valid auc {valid_auc:.4f})", flush=True)

    finals: dict[str, list[dict[str, float]]] = {"collisionless": [], "hashed": []}
    collisions: list[dict[str, dict[str, Any]]] = []
    for seed in SEEDS:
        buckets, rates = {}, {}
        for name, target in TARGET_COLLISION.items():
            buckets[name], rates[name] = buckets_for(whole.column(name).to_numpy(), target, seed)
            print(f"seed {seed} hashed {name}: M={buckets[name]}, collision rate "
                  f"{rates[name]:.4f}", flush=True)
        hashed_splits = {name: hashed(t, buckets, seed) for name, t in splits.items()}
        for variant, data in (("collisionless", splits), ("hashed", hashed_splits)):
            loop, scores = train(data, config.slots, config.model, setting, seed, epochs, "test",
                                 every_epoch=False)
            streamed = online(loop, data)
            finals[variant].append({**scores[-1], "online_auc": streamed["auc"]})
            print(f"seed {seed} {variant}: test auc {scores[-1]['auc']:.4f} "
                  f"logloss {scores[-1]['logloss']:.4f}, online {streamed['auc']:.4f}", flush=True)
        collisions.append({"buckets": buckets, "rates": rates})

    def mean(variant: str, key: str) -> float:
        return round(float(np.mean([s[key] for s in finals[variant]])), 4)

    return {
        "test_auc": mean("collisionless", "auc"),
        "test_logloss": mean("collisionless", "logloss"),
        "test_auc_hashed": mean("hashed", "auc"),
        "test_logloss_hashed": mean("hashed", "logloss"),
        "test_auc_online": mean("collisionless", "online_auc"),
        "test_auc_online_hashed": mean("hashed", "online_auc"),
        "collision_rate_user": round(np.mean([c["rates"]["user_id"] for c in collisions]), 4),
        "collision_rate_item": round(np.mean([c["rates"]["item_id"] for c in collisions]), 4),
        "buckets_user": [c["buckets"]["user_id"] for c in collisions],
        "buckets_item": [c["buckets"]["item_id"] for c in collisions],
        "test_auc_by_seed": [round(s["auc"], 4) for s in finals["collisionless"]],
        "test_auc_hashed_by_seed": [round(s["auc"], 4) for s in finals["hashed"]],
        "valid_auc": round(valid_auc, 4),
        "chosen": describe(setting),
        "epochs": epochs,
        "seconds": round(time.perf_counter() - start, 1),
    }


if __name__ == "__main__":
    main()
