"""Training the two-tower model (``monolith_ray.model.two_tower``) from the ranking trainer's
batches, with its embedding rows on the same parameter servers.

**Tables of its own.** Each slot a tower reads gets a table of its own in the same shards,
named ``tower_<slot>`` (``retrieval.tables.tower_slots``), keyed by the *same* fids as the
ranking slot's table (same ``slot_id``, so a request's fids reach both), with its own rows and
optimizer state. Why not share the ranking model's rows: the two objectives want different geometry
(the towers' rows feed a softmax over cosines, DeepFM's an FM dot product and a logistic
loss), two trainers pushing into one row would step one Adam state with two losses'
gradients, and the ranking figures measured elsewhere stay as they are. The price: one more
row per tower slot and id (``dim + 1`` floats plus the optimizer's slots), and a sync that
carries those tables too (``ShardServer.changes_since`` reports every table it holds).

**A step** (:meth:`TowerTrainer.train_batch`, unpipelined): the batch's positives (examples
whose first task's label is 1, of weight > 0) become B pairs, padded to ``batch_size`` with
weight 0 (one compiled shape per row bucket); the unique fids the positives reference are
pulled from the tower tables (routed once, one call per shard, ``ShardClient.pull``), the
loss's row gradients pushed back (``ShardClient.push``), the dense tower parameters updated
locally with optax. The item-frequency estimate (``retrieval.frequency``) counts every batch's
positive items before its loss reads their log q.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
import optax

from monolith_ray.data.batches import Batch
from monolith_ray.model import two_tower
from monolith_ray.model.pooling import bucket_size, pad_rows
from monolith_ray.model.two_tower import TwoTowerSpec
from monolith_ray.ps.client import ShardClient
from monolith_ray.retrieval.frequency import StreamingFrequency
from monolith_ray.retrieval.tables import table_name
from monolith_ray.train.loop import DenseLink


@dataclasses.dataclass(frozen=True)
class Pairs:
    """The positive pairs of a batch, as a step takes them (P pairs padded to B):

    - ``fids[slot]`` int64 (U_s,): the unique fids the pairs reference, sorted;
    - ``idx[slot]`` int32 (B, L_s) into them, -1 padding;
    - ``items`` int64 (P,): each pair's item (the fid of the spec's first item slot);
    - ``item_key`` int32 (B,): a pair's item as a position (equal items, equal keys);
    - ``weights`` float32 (B,): 1 for the P pairs, 0 for padding.
    """

    fids: dict[str, np.ndarray]
    idx: dict[str, np.ndarray]
    items: np.ndarray
    item_key: np.ndarray
    weights: np.ndarray


def positive_pairs(batch: Batch, spec: TwoTowerSpec, size: int) -> Pairs | None:
    """The examples of ``batch`` whose first task's label is 1 (weight > 0) as pairs padded to
    ``size`` -> :class:`Pairs`, or None when there are none."""
    rows = np.flatnonzero((batch.labels == 1) & (batch.weights > 0))
    if rows.size == 0:
        return None
    if rows.size > size:
        raise ValueError(f"{rows.size} positives for pairs of size {size}")
    fids, idx = {}, {}
    for slot in (*spec.user, *spec.item):
        taken = batch.idx[slot.name][rows]
        used = np.unique(taken[taken >= 0])
        remapped = np.where(taken >= 0, np.searchsorted(used, taken), -1).astype(np.int32)
        idx[slot.name] = np.pad(remapped, ((0, size - rows.size), (0, 0)), constant_values=-1)
        fids[slot.name] = batch.fids[slot.name][used]
    key_slot = spec.item[0].name
    first = idx[key_slot][:rows.size, 0]
    items = fids[key_slot][first]
    weights = np.zeros(size, np.float32)
    weights[:rows.size] = 1.0
    item_key = np.full(size, -1, np.int32)
    item_key[:rows.size] = first
    return Pairs(fids, idx, items, item_key, weights)


class TowerTrainer:
    """The two-tower model's dense parameters and their optimizer, trained against the tower
    tables (``retrieval.tables.tower_slots``) that ``client``'s shards hold. ``batch_size``:
    the most positives a batch can hold (the ranking batch size); ``client``'s slots must
    include every tower slot's ``table_name``. ``frequency``: the item-frequency estimate
    (default: 2^20 buckets); ``correct``: apply the logQ correction (False: the plain in-batch
    softmax, the benchmark's comparison).

    ``dense``: a ``DenseServer`` holding the towers' parameters as its ``part`` (the
    training jobs: several trainers share them, snapshots and the sync read them there).
    Each step then pushes its parameter gradients there without waiting and takes the
    parameters its pull (every ``pull_every`` steps) brings at the next step, as the ranking
    model's ``DenseLink`` does, and ``optimizer`` is the server's, not this object's."""

    def __init__(self, spec: TwoTowerSpec, client: ShardClient, batch_size: int,
                 optimizer: optax.GradientTransformation | None = None, seed: int = 0,
                 frequency: StreamingFrequency | None = None, correct: bool = True,
                 dense: Any = None, part: str = "tower",
                 timeout_s: float | None = 60.0, pull_every: int = 1) -> None:
        self.spec = spec
        self.client = client
        self.batch_size = batch_size
        self.frequency = frequency if frequency is not None else StreamingFrequency()
        self.correct = correct
        optimizer = optimizer if optimizer is not None else optax.adam(1e-3)
        self.params = two_tower.init(jax.random.key(seed), spec)
        self.opt_state = optimizer.init(self.params)
        self.steps = 0
        self._padded = {s.name: 0 for s in (*spec.user, *spec.item)}
        self.dense = None if dense is None else DenseLink(dense, timeout_s, part)
        self.pull_every = max(1, pull_every)
        if self.dense is not None:
            self.params, _ = self.dense.pull()

        def grads(params, slot_rows, slot_idx, log_q, item_key, weights):
            loss, (param_grads, row_grads) = jax.value_and_grad(
                two_tower.loss_fn, argnums=(0, 2))(params, spec, slot_rows, slot_idx, log_q,
                                                   item_key, weights)
            return param_grads, row_grads, loss

        def step(params, opt_state, slot_rows, slot_idx, log_q, item_key, weights):
            param_grads, row_grads, loss = grads(params, slot_rows, slot_idx, log_q, item_key,
                                                 weights)
            updates, opt_state = optimizer.update(param_grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, row_grads, loss

        self._step = jax.jit(step)
        self._grads = jax.jit(grads)

    def train_batch(self, batch: Batch) -> float | None:
        """One step on ``batch``'s positives -> its loss before the update, or None (and no
        step) when the batch has no positive."""
        pairs = positive_pairs(batch, self.spec, self.batch_size)
        if pairs is None:
            return None
        routes = self.client.route({table_name(n): f for n, f in pairs.fids.items()})
        rows = self.client.pull(routes, batch.now)
        slot_rows = {}
        for name, fids in pairs.fids.items():
            size = max(bucket_size(fids.size, cap=pairs.idx[name].size), self._padded[name])
            self._padded[name] = size
            slot_rows[name] = pad_rows(rows[table_name(name)], size)
        self.frequency.update(pairs.items)
        log_q = np.zeros(self.batch_size, np.float32)
        if self.correct:
            log_q[:pairs.items.size] = self.frequency.log_q(pairs.items)
        if self.dense is None:
            self.params, self.opt_state, row_grads, loss = self._step(
                self.params, self.opt_state, slot_rows, pairs.idx, log_q, pairs.item_key,
                pairs.weights)
        else:
            param_grads, row_grads, loss = self._grads(
                self.params, slot_rows, pairs.idx, log_q, pairs.item_key, pairs.weights)
            fresh = self.dense.step(param_grads, pull=self.steps % self.pull_every == 0)
            if fresh is not None:
                self.params = fresh[0]
        self.client.push(routes, {table_name(n): np.asarray(row_grads[n])[:f.size]
                                  for n, f in pairs.fids.items()}, batch.now)
        self.steps += 1
        return float(loss)

    def flush(self) -> None:
        """Wait for the dense push in flight (and take the parameters of a pull): every
        step so far is then in the dense server. Row pushes are waited for in each step."""
        if self.dense is not None:
            fresh = self.dense.drain()
            if fresh is not None:
                self.params = fresh[0]

