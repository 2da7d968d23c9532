"""ServingModel: a replica's DeepFM, scoring requests with the versions the sync handed it.

It holds the dense parameters and a :class:`SparseStore` and changes only through
:meth:`apply` (an ``Updates`` from the ``ParameterSync`` actor), so each answer is computed
with exactly the versions :attr:`versions` reports. Scoring builds examples from slot values
with the steps of training's ``make_batch`` (``examples_table``, ``slot_values``,
``batch_of_values``), so an id means the same row on both sides; a candidate pool's values
are converted once (:class:`SlotRows`) and a request only gathers them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from monolith_ray import metrics
from monolith_ray.config import Config, DenseFeature, SlotConfig
from monolith_ray.data.batches import Batch, SlotValues, batch_of_values, slot_values
from monolith_ray.data.dense_values import transformed
from monolith_ray.data.slot_columns import examples_table
from monolith_ray.model import init, make_predict
from monolith_ray.validation import MessageError
from monolith_ray.model.pooling import bucket_size, pad_rows
from monolith_ray.serve.store import SparseStore
from monolith_ray.serve.sync import Updates
from monolith_ray.train.loop import deepfm_config

MIN_ROWS = 16


class SlotRows:
    """Slot values of ``m`` examples (items, or a user) as raw value ids, per slot in CSR
    form: example ``i``'s values are ``values[offsets[i]:offsets[i+1]]``; and their raw
    dense values float64 (m, n_dense), NaN where not given (None: none given at all). Built
    once per candidate pool, so a request only gathers arrays."""

    def __init__(self, m: int, csr: Mapping[str, tuple[np.ndarray, np.ndarray]],
                 dense: np.ndarray | None = None) -> None:
        self.m = m
        self.csr = dict(csr)
        self.dense = dense

    @classmethod
    def of(cls, rows: Sequence[Mapping[str, Any]], slots: Sequence[SlotConfig],
           dense: Sequence[Mapping[str, Any]] | None = None,
           features: Sequence[DenseFeature] = ()) -> SlotRows:
        """From one mapping slot name -> raw value per example (missing slots: no value),
        and optionally one mapping dense feature name -> number per example (validated by
        ``validation.dense``; missing or None: not given). MessageError naming the slot if
        a value does not fit it."""
        table = examples_table(rows, slots, 0)
        csr = {}
        for slot in slots:
            raw, where, _ = slot_values(table.column(slot.name).combine_chunks(), slot)
            offsets = np.zeros(len(rows) + 1, dtype=np.int64)
            np.cumsum(np.bincount(where, minlength=len(rows)), out=offsets[1:])
            csr[slot.name] = offsets, raw.astype(np.int64)
        matrix = None
        if dense is not None and features and any(dense):
            index = {f.name: j for j, f in enumerate(features)}
            matrix = np.full((len(rows), len(features)), np.nan)
            for i, given in enumerate(dense):
                for name, value in given.items():
                    if value is not None:
                        matrix[i, index[name]] = value
        return cls(len(rows), csr, matrix)

    def __len__(self) -> int:
        return self.m

    def take(self, name: str, which: np.ndarray) -> SlotValues:
        """Slot ``name``'s values of examples ``which`` (k,) renumbered 0..k-1 -> (raw ids,
        example rows, positions), as ``slot_values`` gives them."""
        if name not in self.csr:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty, empty
        offsets, raw = self.csr[name]
        starts, counts = offsets[which], offsets[which + 1] - offsets[which]
        rows = np.repeat(np.arange(which.size), counts)
        pos = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
        return raw[np.repeat(starts, counts) + pos], rows, pos


class ServingModel:
    """Click probabilities of slot-value rows with the synced parameters."""

    def __init__(self, cfg: Config) -> None:
        self.slots = cfg.slots
        self.dense = cfg.dense
        self.model_cfg = deepfm_config(cfg.slots, cfg.model, cfg.dense)
        self._predict = make_predict(self.model_cfg, tuple(s.combiner for s in cfg.slots))
        # Until the first dense sync: the initial parameters training starts from.
        self.params = jax.tree.map(np.asarray,
                                   init(jax.random.key(cfg.train.seed), self.model_cfg))
        self.store = SparseStore(cfg.slots, cfg.serve.store_dtype)
        self.dense_version = 0
        self.sync_epoch = ""  # the ParameterSync incarnation the versions come from

    @property
    def versions(self) -> dict[str, int]:
        """``{"dense": .., "sparse": ..}`` of the parameters answers use now."""
        return {"dense": self.dense_version, "sparse": self.store.version}

    def apply(self, updates: Updates) -> bool:
        """Take a sync's updates -> whether anything changed."""
        self.sync_epoch = updates.epoch
        changed = False
        if updates.sparse is not None:
            self.store.apply(updates.sparse)
            changed = True
        if updates.dense is not None:
            params, version = updates.dense
            self.params, self.dense_version = params, int(version)
            changed = True
        for kind, version in self.versions.items():
            metrics.SERVING_VERSION.set(version, kind=kind)
        return changed

    def score(self, items: SlotRows, user: SlotRows | None = None,
              take: np.ndarray | None = None, now: int | None = None) -> np.ndarray:
        """Click probabilities float32 (n,) of ``items`` (rows ``take``, default all): each
        example is an item's slots, and for every slot an item has no value in, the ``user``'s
        (a one-row ``SlotRows``) if it has one; the same for each dense feature, then its
        default. MessageError naming the feature if a dense value is beyond its bound."""
        now = int(time.time()) if now is None else now
        take = np.arange(len(items)) if take is None else np.asarray(take, dtype=np.int64)
        n = take.size
        values = {}
        for slot in self.slots:
            raw, rows, pos = items.take(slot.name, take)
            if user is not None:
                mine = user.take(slot.name, np.zeros(1, dtype=np.int64))[0]
                if mine.size:
                    lacking = np.flatnonzero(np.bincount(rows, minlength=n) == 0)
                    raw = np.concatenate([raw, np.tile(mine, lacking.size)])
                    rows = np.concatenate([rows, np.repeat(lacking, mine.size)])
                    pos = np.concatenate([pos, np.tile(np.arange(mine.size), lacking.size)])
            values[slot.name] = raw, rows, pos
        dense = None
        if self.dense:
            raw = (np.full((n, len(self.dense)), np.nan) if items.dense is None
                   else items.dense[take])
            if user is not None and user.dense is not None:
                raw = np.where(np.isnan(raw), user.dense[0], raw)
            dense = request_matrix_of(raw, self.dense)
        batch = batch_of_values(values, self.slots, np.zeros(n, np.float32),
                                np.zeros(n, np.float32), np.full(n, now, np.int64), dense)
        return self.predict(batch)

    def predict(self, batch: Batch) -> np.ndarray:
        """Click probabilities float32 (B,) of ``batch``, padded to :func:`padded_size`
        examples and its rows to the most such a batch can have: one compile per size."""
        n = len(batch)
        padded = batch.padded(padded_size(n))
        slot_rows, slot_idx = [], []
        for slot in self.slots:
            idx = padded.idx[slot.name]
            found = self.store.lookup(slot.name, padded.fids[slot.name])
            slot_rows.append(pad_rows(found, bucket_size(idx.size)))
            slot_idx.append(idx)
        probs = self._predict(self.params, tuple(slot_rows), tuple(slot_idx),
                              padded.dense if self.dense else None)
        return np.asarray(probs)[:n]

    def warm_up(self, max_rows: int) -> None:
        """Compile the scorer for every padded batch size up to ``max_rows`` (about a
        second each), so that no request waits for a compile."""
        size = MIN_ROWS
        while True:
            self.score(SlotRows.of([{}] * size, self.slots), now=0)
            if size >= max_rows:
                return
            size = padded_size(size + 1)


def request_matrix_of(raw: np.ndarray, features: Sequence[DenseFeature]) -> np.ndarray:
    """Raw dense values (n, n_dense), NaN where not given -> the model's float32 matrix;
    MessageError naming the feature for a value beyond its ``max_abs``."""
    try:
        return transformed(raw, features)
    except ValueError as err:
        raise MessageError(f"dense.{err}") from None


def padded_size(n: int) -> int:
    """Examples a batch of ``n`` is padded to: the next power of 4 >= max(n, 16), so a
    replica compiles the scorer for a handful of sizes (16, 64, 256, 1024, ...), and wastes
    at most 3/4 of a batch."""
    size = MIN_ROWS
    while size < n:
        size *= 4
    return size
