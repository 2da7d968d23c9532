"""TowerTrainer against in-process ShardServers: the tower tables of their own, the pairs it
trains on, and a loss that falls on learnable positives."""

from __future__ import annotations

import numpy as np
import optax

from monolith_ray.config import AdmissionConfig, InitializerConfig, OptimizerConfig, SlotConfig
from monolith_ray.data.batches import Batch
from monolith_ray.features import make_fids
from monolith_ray.model import two_tower
from monolith_ray.ps import ShardClient, ShardServer
from monolith_ray.retrieval import (
    TowerTrainer,
    pooled_rows,
    positive_pairs,
    table_name,
    tower_slots,
)

SLOTS = (SlotConfig("user_id", 1, 8), SlotConfig("item_id", 2, 6),
         SlotConfig("genres", 3, 4, combiner="mean", max_values=2))
SPEC = two_tower.spec_of(SLOTS, ["user_id"], ["item_id", "genres"], dim=8, hidden=(16,),
                         temperature=0.1)
N_GROUPS, PER_GROUP, B = 4, 10, 32
SLOT_IDS = {s.name: s.slot_id for s in SLOTS}


def _examples(users: np.ndarray, items: np.ndarray, t: int) -> Batch:
    """A batch of (user, item) examples: an item's genres are its group and one shared value;
    the label is 1 iff the item is of the user's group."""
    genres = np.stack([items % N_GROUPS, np.full(items.size, 99)], axis=1)
    fids, idx = {}, {}
    for slot, values in (("user_id", users[:, None]), ("item_id", items[:, None]),
                         ("genres", genres)):
        f = make_fids(SLOT_IDS[slot], values.ravel())
        fids[slot], inverse = np.unique(f, return_inverse=True)
        idx[slot] = inverse.reshape(values.shape).astype(np.int32)
    labels = (items % N_GROUPS == users % N_GROUPS).astype(np.float32)
    return Batch(fids, idx, labels, np.ones(users.size, np.float32),
                 np.full(users.size, t, np.int64))


def _batch(rng: np.random.Generator, size: int, t: int) -> Batch:
    """Random users, 70 % of them with an item of their group."""
    users = rng.integers(0, N_GROUPS * PER_GROUP, size)
    same = rng.random(size) < 0.7
    groups = np.where(same, users % N_GROUPS, rng.integers(0, N_GROUPS, size))
    return _examples(users, groups + N_GROUPS * rng.integers(0, PER_GROUP, size), t)


def _shards():
    towers = tower_slots(SLOTS, ["user_id", "item_id", "genres"],
                         optimizer=OptimizerConfig(kind="adam", learning_rate=0.02),
                         initializer=InitializerConfig(kind="normal", scale=0.1))
    shards = [ShardServer((*SLOTS, *towers), AdmissionConfig(sketch_width=1 << 10))
              for _ in range(2)]
    return shards, ShardClient(shards, [s.name for s in (*SLOTS, *towers)])


def test_positive_pairs_keep_only_positives_and_reindex_their_rows():
    batch = _batch(np.random.default_rng(0), 20, 1)
    pairs = positive_pairs(batch, SPEC, B)
    positives = np.flatnonzero(batch.labels == 1)
    n = positives.size
    assert pairs.weights.sum() == n and pairs.idx["user_id"].shape == (B, 1)
    for slot in ("user_id", "item_id", "genres"):
        idx = pairs.idx[slot]
        assert (idx[n:] == -1).all()
        np.testing.assert_array_equal(pairs.fids[slot][idx[:n]],
                                      batch.fids[slot][batch.idx[slot][positives]])
    np.testing.assert_array_equal(pairs.items,
                                  batch.fids["item_id"][batch.idx["item_id"][positives, 0]])
    assert positive_pairs(Batch({k: v for k, v in batch.fids.items()}, batch.idx,
                                np.zeros(20, np.float32), batch.weights, batch.time),
                          SPEC, B) is None


def test_training_uses_its_own_tables_and_the_loss_falls():
    rng = np.random.default_rng(1)
    shards, client = _shards()
    trainer = TowerTrainer(SPEC, client, B, optax.adam(0.01), seed=0)
    losses = [trainer.train_batch(_batch(rng, B, t)) for t in range(1, 301)]
    assert np.mean(losses[-30:]) < 0.8 * np.mean(losses[:30])
    stats = client.stats()
    assert stats[table_name("user_id")]["rows"] == N_GROUPS * PER_GROUP
    assert stats["user_id"]["rows"] == 0  # the ranking table is not touched

    # users now rank their group's items first
    users = np.arange(N_GROUPS * PER_GROUP)
    items = np.arange(N_GROUPS * PER_GROUP)
    user_rows = pooled_rows(client.lookup, _examples(users, np.zeros_like(users), 400), SPEC.user)
    item_rows = pooled_rows(client.lookup, _examples(np.zeros_like(items), items, 400), SPEC.item)
    u = np.asarray(two_tower.user_vectors(trainer.params, SPEC, user_rows))
    v = np.asarray(two_tower.item_vectors(trainer.params, SPEC, item_rows))
    top = np.argsort(-(u @ v.T), axis=1)[:, :PER_GROUP]
    assert (items[top] % N_GROUPS == (users % N_GROUPS)[:, None]).mean() > 0.8
