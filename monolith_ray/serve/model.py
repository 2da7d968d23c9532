"""ServingModel: a replica's DeepFM, scoring requests with the versions the sync handed it.

It holds the dense parameters and a :class:`SparseStore` and changes only through
:meth:`apply` (an ``Updates`` from the ``ParameterSync`` actor), so each answer is computed
with exactly the versions :attr:`versions` reports. Scoring builds examples from slot values
the way training does (``examples_table`` -> ``make_batch``), so an id means the same row on
both sides.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from monolith_ray.config import Config
from monolith_ray.data.batches import make_batch
from monolith_ray.data.slot_columns import examples_table
from monolith_ray.model import init, make_predict
from monolith_ray.model.pooling import bucket_size, pad_rows
from monolith_ray.serve.store import SparseStore
from monolith_ray.serve.sync import Updates
from monolith_ray.train.loop import deepfm_config

MIN_ROWS = 16


class ServingModel:
    """Click probabilities of slot-value rows with the synced parameters."""

    def __init__(self, cfg: Config) -> None:
        self.slots = cfg.slots
        self.model_cfg = deepfm_config(cfg.slots, cfg.model)
        self._predict = make_predict(self.model_cfg, tuple(s.combiner for s in cfg.slots))
        # Until the first dense sync: the initial parameters training starts from.
        self.params = jax.tree.map(np.asarray,
                                   init(jax.random.key(cfg.train.seed), self.model_cfg))
        self.store = SparseStore(cfg.slots, cfg.serve.store_dtype)
        self.dense_version = 0

    @property
    def versions(self) -> dict[str, int]:
        """``{"dense": .., "sparse": ..}`` of the parameters answers use now."""
        return {"dense": self.dense_version, "sparse": self.store.version}

    def apply(self, updates: Updates) -> bool:
        """Take a sync's updates -> whether anything changed."""
        changed = False
        if updates.sparse is not None:
            self.store.apply(updates.sparse)
            changed = True
        if updates.dense is not None:
            params, version = updates.dense
            self.params, self.dense_version = params, int(version)
            changed = True
        return changed

    def score(self, rows: Sequence[Mapping[str, Any]], now: int | None = None) -> np.ndarray:
        """Click probabilities float32 (n,) of ``rows`` (slot name -> raw value each).
        MessageError naming the slot if a value does not fit it."""
        now = int(time.time()) if now is None else now
        batch = make_batch(examples_table(rows, self.slots, now), self.slots)
        n = len(batch)
        padded = batch.padded(padded_size(n))
        slot_rows, slot_idx = [], []
        for slot in self.slots:
            idx = padded.idx[slot.name]
            found = self.store.lookup(slot.name, batch.fids[slot.name])
            # Rows padded to the most a batch of this size can have: one compile per size.
            slot_rows.append(pad_rows(found, bucket_size(idx.size)))
            slot_idx.append(idx)
        probs = self._predict(self.params, tuple(slot_rows), tuple(slot_idx), None)
        return np.asarray(probs)[:n]

    def warm_up(self, max_rows: int) -> None:
        """Compile the scorer for every padded batch size up to ``max_rows`` (about a
        second each), so that no request waits for a compile."""
        size = MIN_ROWS
        while True:
            self.score([{}] * size, now=0)
            if size >= max_rows:
                return
            size = padded_size(size + 1)


def padded_size(n: int) -> int:
    """Examples a batch of ``n`` is padded to: the next power of 4 >= max(n, 16), so a
    replica compiles the scorer for a handful of sizes (16, 64, 256, 1024, ...), and wastes
    at most 3/4 of a batch."""
    size = MIN_ROWS
    while size < n:
        size *= 4
    return size
