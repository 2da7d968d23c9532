"""The collision experiment: DeepFM on collisionless embedding tables against the same model
whose user and item ids are first hashed into a fixed-size table, as a static-table system
would, at the collision rates of the Monolith paper's Table 1 (7.73% of users, 2.86% of
items share a row with another id).

Hashing replaces a raw id by ``mix64(raw) % M``; for each slot, M is the size nearest the
expected one whose measured collision rate over all distinct ids in the data (the fraction of
ids sharing a bucket with another id) is within one id of the target. Which ids collide moves
AUC by more than the collisions' average effect on MovieLens-100K, so the hash seed follows
the training seed and figures should be averaged over seeds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from monolith_ray.config import ModelConfig, SlotConfig
from monolith_ray.data.batches import iter_batches
from monolith_ray.experiments.training import Setting, train
from monolith_ray.features import mix64
from monolith_ray.model import StreamingAUC, StreamingLogLoss
from monolith_ray.train import TrainLoop

TARGET_COLLISION = {"user_id": 0.0773, "item_id": 0.0286}
HASH_SEED = 0xB0C4E7


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


def hashed(table: pa.Table, buckets: Mapping[str, int], seed: int) -> pa.Table:
    """``table`` with each column of ``buckets`` replaced by its raw ids' buckets."""
    for name, m in buckets.items():
        column = bucket_of(table.column(name).to_numpy(), m, seed)
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(column))
    return table


def prequential_test(loop: TrainLoop, splits: dict[str, pa.Table]) -> dict[str, float]:
    """Test figures of a trained loop that keeps training, as the online trainer runs: valid
    then test streamed in time order, each batch predicted with the parameters of the moment
    (serving lookups), then trained on -> test ``{"auc", "logloss"}``."""
    auc, logloss = StreamingAUC(), StreamingLogLoss()
    for name in ("valid", "test"):
        for batch in iter_batches(splits[name], loop.slots, loop.train_cfg.batch_size):
            if name == "test":
                probs = loop.predict(batch, loop.client.lookup(batch.fids))
                auc.update(probs, batch.labels, batch.weights)
                logloss.update(probs, batch.labels, batch.weights)
            loop.train_batch(batch)
    return {"auc": auc.result(), "logloss": logloss.result()}


def hashed_splits(splits: dict[str, pa.Table], targets: Mapping[str, float], seed: int
                  ) -> tuple[dict[str, pa.Table], dict[str, int], dict[str, float]]:
    """``splits`` with the ids of each slot of ``targets`` hashed into a table sized so that
    that fraction of the slot's distinct ids (over all splits) collide -> (the hashed splits,
    the table size M per slot, the measured collision rate per slot)."""
    whole = pa.concat_tables(splits.values())
    buckets, rates = {}, {}
    for name, target in targets.items():
        buckets[name], rates[name] = buckets_for(whole.column(name).to_numpy(), target, seed)
    return {name: hashed(t, buckets, seed) for name, t in splits.items()}, buckets, rates


def fit_and_score(splits: dict[str, pa.Table], slots: tuple[SlotConfig, ...],
                  model: ModelConfig, setting: Setting, seed: int,
                  epochs: int) -> dict[str, float]:
    """Train a fresh model on ``splits`` for ``epochs`` and score it on test, after training
    and then prequentially (``prequential_test``) -> ``{"epoch", "auc", "logloss",
    "examples", "online_auc"}``."""
    loop, scores = train(splits, slots, model, setting, seed, epochs, "test", every_epoch=False)
    return {**scores[-1], "online_auc": prequential_test(loop, splits)["auc"]}


def compare(splits: dict[str, pa.Table], slots: tuple[SlotConfig, ...], model: ModelConfig,
            setting: Setting, seed: int, epochs: int,
            targets: Mapping[str, float] = TARGET_COLLISION) -> dict[str, Any]:
    """One seed of the experiment: the collisionless model and the same model on ids hashed
    at the ``targets`` collision rates (hash seed following ``seed``), trained and scored
    alike (``fit_and_score``) -> ``{"buckets": {slot: M}, "rates": {slot: measured rate},
    "collisionless": scores, "hashed": scores}``."""
    hashed_data, buckets, rates = hashed_splits(splits, targets, seed)
    return {"buckets": buckets, "rates": rates,
            "collisionless": fit_and_score(splits, slots, model, setting, seed, epochs),
            "hashed": fit_and_score(hashed_data, slots, model, setting, seed, epochs)}
