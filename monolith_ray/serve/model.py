"""ServingModel: a replica's model (``model.kind``), scoring requests with the versions the sync
handed it.

It holds the dense parameters and either a :class:`SparseStore` of every row or a
:class:`ShardedRows` cache over the serving shards (``serve.store``), and changes only through
:meth:`apply` (an ``Updates`` from the ``ParameterSync`` actor; a whole table is built aside
by :meth:`stage` and swapped in by :meth:`commit`), so each answer is computed with the
versions it reports. (With a cache, a row fetched from a shard may be newer than the cache's
version, never older: ``RowCache.fill``.) Scoring builds examples from slot values
with the steps of training's ``make_batch`` (``examples_table``, ``slot_values``,
``batch_of_values``), so an id means the same row on both sides; a candidate pool's values
are converted once (:class:`SlotRows`) and a request only gathers them.
"""

from __future__ import annotations

import threading
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
from monolith_ray.model import build, init_params, make_predict, spec_of
from monolith_ray.validation import MessageError
from monolith_ray.model.pooling import bucket_size, pad_rows
from monolith_ray.serve.sharded_rows import ShardedRows
from monolith_ray.serve.store import SparseStore
from monolith_ray.serve.sync import Updates

MIN_ROWS = 16
BULK_TIMEOUT_S = 60.0  # the longest a bulk read of tower rows waits for the serving shards


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
    """Each task's probabilities of slot-value rows with the synced parameters (``score``,
    ``predict``: the first task's)."""

    def __init__(self, cfg: Config, serving: Sequence[Any] = ()) -> None:
        """``serving``: the serving shards, with ``serve.store: sharded`` (rows through a
        :class:`ShardedRows` cache); else the replica holds every row (a ``SparseStore``)."""
        self.slots = cfg.slots
        self.tables = cfg.table_slots  # the slots' tables and, with retrieval, the towers'
        self.dense = cfg.dense
        model = build(cfg.model)
        self.spec = spec_of(cfg.slots, cfg.model, cfg.dense, cfg.tasks)
        self._predict = make_predict(model, self.spec)
        # Until the first dense sync: the initial parameters training starts from.
        self.params = jax.tree.map(np.asarray,
                                   init_params(model, self.spec, jax.random.key(cfg.train.seed)))
        serve = cfg.serve
        if serve.store == "sharded":
            if not serving:
                raise ValueError("serve.store is 'sharded': give the serving shards")
            self.store: SparseStore | None = None
            self.rows: ShardedRows | None = ShardedRows(
                cfg.slots, serving, serve.cache_rows, serve.cache_policy, serve.store_dtype,
                serve.shard_timeout_s)
            # The towers' tables (retrieval) share their slots' fids, so a cache of their
            # own: the users' tower rows, serve.tower_cache_rows more (0: a quarter of
            # serve.cache_rows).
            towers = self.tables[len(self.slots):]
            self._towers = ShardedRows(
                towers, serving, serve.tower_cache_rows or max(serve.cache_rows // 4, 1),
                serve.cache_policy,
                serve.store_dtype, serve.shard_timeout_s) if towers else None
        else:
            self.store, self.rows = SparseStore(self.tables, serve.store_dtype), None
            self._towers = None
        self.dense_version = 0
        self.sync_incarnation = ""  # the ParameterSync incarnation the versions come from
        # Taken around reading the store (or the dense parameters) and around swapping or
        # changing them; scoring itself runs outside it, on what it read.
        self.lock = threading.Lock()

    @property
    def versions(self) -> dict[str, int]:
        """``{"dense": .., "sparse": ..}`` of the parameters answers use now."""
        sparse = self.store.version if self.store is not None else self.rows.version
        return {"dense": self.dense_version, "sparse": sparse}

    def stage(self, updates: Updates) -> Updates:
        """The part of applying ``updates`` done outside the lock: a whole table (``reset``,
        replica store) is built into a new store here, so requests are answered meanwhile
        -> the updates to :meth:`commit`, the new store in place of its sparse part."""
        sparse = updates.sparse
        if sparse is not None and sparse.reset and self.store is not None:
            fresh = SparseStore(self.tables, str(self.store.dtype))
            fresh.apply(sparse)
            return updates._replace(sparse=fresh)
        return updates

    def commit(self, staged: Updates) -> bool:
        """Take staged updates, under :attr:`lock` for a moment -> whether anything changed."""
        changed = False
        with self.lock:
            self.sync_incarnation = staged.incarnation
            if isinstance(staged.sparse, SparseStore):
                self.store = staged.sparse
                changed = True
            elif staged.sparse is not None:
                if self.store is not None:
                    self.store.apply(staged.sparse)
                else:
                    self.rows.apply(staged.sparse)
                    if self._towers is not None:
                        self._towers.apply(staged.sparse)
                changed = True
            if staged.dense is not None:
                params, version = staged.dense
                self.params, self.dense_version = params, int(version)
                changed = True
            versions = self.versions
        for kind, version in versions.items():
            metrics.SERVING_VERSION.set(version, kind=kind)
        return changed

    def apply(self, updates: Updates) -> bool:
        """Take a sync's updates (:meth:`stage` then :meth:`commit`) -> whether anything
        changed."""
        if updates.deferred:
            return False
        return self.commit(self.stage(updates))

    def tower_lookup(self, wanted: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A bulk read (the retrieval catalogue's, on its refresh thread): rows float32
        (n, dim + 1) of fids int64 (n,) per table, zeros for fids not held
        (``retrieval.tables.Lookup``): from the whole-table store under :attr:`lock`, or
        with ``serve.store: sharded`` straight from the serving shards, past the cache
        (RuntimeError if one does not answer within ``BULK_TIMEOUT_S``)."""
        if self._towers is not None:
            return self._towers.fetch_blocking(wanted, BULK_TIMEOUT_S)
        with self.lock:
            return {name: self.store.lookup(name, fids) for name, fids in wanted.items()}

    async def tower_rows(self, wanted: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A request's read of tower rows (the user's, for a retrieval search), as
        :meth:`tower_lookup` gives them but, with ``serve.store: sharded``, through the
        replica's cache of tower rows (a shard down gives default rows)."""
        if self._towers is None:
            return self.tower_lookup(wanted)
        return (await self._towers.lookup(wanted))[0]

    def cache_stats(self) -> dict[str, Any] | None:
        """The replica cache's stats (``ShardedRows.stats``), with the tower rows' cache's
        under ``towers`` if retrieval is on; None with a whole-table store."""
        if self.rows is None:
            return None
        stats = self.rows.stats()
        if self._towers is not None:
            stats["towers"] = self._towers.stats()
        return stats

    def score(self, items: SlotRows, user: SlotRows | None = None,
              take: np.ndarray | None = None, now: int | None = None) -> np.ndarray:
        """The first task's probabilities float32 (n,) of ``items`` (rows ``take``, default
        all): each example is an item's slots, and for every slot an item has no value in, the
        ``user``'s (a one-row ``SlotRows``) if it has one; the same for each dense feature,
        then its default. MessageError naming the feature if a dense value is beyond its
        bound."""
        return self.predict(self.batch_of(items, user, take, now))

    async def score_async(self, items: SlotRows, user: SlotRows | None = None,
                          take: np.ndarray | None = None, now: int | None = None
                          ) -> tuple[np.ndarray, dict[str, int]]:
        """:meth:`score` on an event loop, where cache misses are fetched without blocking it
        -> (probabilities, the versions that produced them)."""
        probs, versions = await self.score_tasks_async(items, user, take, now)
        return probs[self.spec.tasks[0]], versions

    async def score_tasks_async(self, items: SlotRows, user: SlotRows | None = None,
                                take: np.ndarray | None = None, now: int | None = None
                                ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """:meth:`score_async` of every task -> ({task: probabilities float32 (n,)}, the
        versions that produced them)."""
        batch = self.batch_of(items, user, take, now)
        n = len(batch)
        padded = batch.padded(padded_size(n))
        if self.rows is None:
            found, params, versions = self._store_rows(padded)
        else:
            with self.lock:
                params, dense_version = self.params, self.dense_version
            found, sparse = await self.rows.lookup(padded.fids)
            versions = {"dense": dense_version, "sparse": sparse}
        return {task: p[:n] for task, p in self._run(padded, found, params).items()}, versions

    def batch_of(self, items: SlotRows, user: SlotRows | None = None,
                 take: np.ndarray | None = None, now: int | None = None) -> Batch:
        """The examples :meth:`score` scores, as a batch."""
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
        return batch_of_values(values, self.slots, np.zeros(n, np.float32),
                               np.zeros(n, np.float32), np.full(n, now, np.int64), dense)

    def predict(self, batch: Batch) -> np.ndarray:
        """The first task's probabilities float32 (B,) of ``batch``, padded to :func:`padded_size`
        examples and its rows to the most such a batch can have: one compile per size."""
        n = len(batch)
        padded = batch.padded(padded_size(n))
        if self.rows is None:
            found, params, _ = self._store_rows(padded)
        else:
            with self.lock:
                params = self.params
            found, _ = self.rows.lookup_blocking(padded.fids)
        return self._run(padded, found, params)[self.spec.tasks[0]][:n]

    def _store_rows(self, padded: Batch) -> tuple[dict[str, np.ndarray], Any, dict[str, int]]:
        """The whole-table store's rows of ``padded``'s fids, with the parameters and
        versions they go with, read under the lock (lookups copy)."""
        with self.lock:
            found = {slot.name: self.store.lookup(slot.name, padded.fids[slot.name])
                     for slot in self.slots}
            return found, self.params, self.versions

    def _run(self, padded: Batch, found: Mapping[str, np.ndarray], params: Any
             ) -> dict[str, np.ndarray]:
        """``{task: probabilities float32 (B,)}`` of the padded batch given its rows."""
        slot_rows, slot_idx = [], []
        for slot in self.slots:
            idx = padded.idx[slot.name]
            slot_rows.append(pad_rows(found[slot.name], bucket_size(idx.size)))
            slot_idx.append(idx)
        probs = self._predict(params, tuple(slot_rows), tuple(slot_idx),
                              padded.dense if self.dense else None)
        return {task: np.asarray(probs[task]) for task in self.spec.tasks}

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
