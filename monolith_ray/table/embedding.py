"""EmbeddingTable: one feature slot's collisionless, growing, expiring embedding store.

Rows live in dense float32 matrices indexed by the cuckoo map's rows: weights (R, dim) and the
optimizer's state matrices, plus per row its id (``EMPTY``, -2**63, for a free row: every
other int64 is a valid id), last update time (seconds), occurrence count (uint32, held at
2**32 - 1 once reached: a row read 100,000 times a second, a genre most examples carry,
reaches it in 12 hours, and would start again from 0 if it wrapped) and the table version
of its last change (for parameter sync). Every call takes a whole batch.

Policies worth knowing:

- Unadmitted and unknown ids read the slot's default embedding, all zeros; their gradients
  are dropped and counted.
- Duplicate ids in one ``apply_gradients`` call have their gradients summed first, so the
  optimizer steps once per row.
- Non-finite gradients (NaN or Inf) reject the whole call with ``ValueError`` before anything
  changes: one poisoned batch never corrupts a table.
- ``version`` counts the calls that changed the table; ``export_since(v)`` returns the rows
  changed and the ids evicted after version ``v``. Eviction records wait for their reader's
  ``forget_evictions``; past ``max_eviction_records`` (16M, 16 bytes each: 256 MiB) unread,
  the oldest half go and ``eviction_floor`` names the newest version dropped: a reader
  behind it would miss evictions, so the shard makes its readers read it whole
  (``ps.shard``). Without a reader (training with no sync) the records so stay bounded.

Memory: the per-row arrays sit over reserved address space (``monolith_ray.table.rows``):
growing never copies, and the process holds only the rows handed out. Per row of width
``dim`` (the slot's ``dim + 1``): ``4 * dim`` bytes of weights, ``4 * dim`` per optimizer state
matrix (Adagrad: one), 28 bytes of id, time, count and version, plus the cuckoo map's 14-20
bytes per id: about 180 bytes an id at dim 16 with Adagrad (181 measured at 50M ids, and
process RSS grew by 1.05x that). ``stats()["bytes"]`` counts them all.

What a table takes beyond ``stats()["bytes"]``, and so the bound on its peak:

- growth: only the map grows by copying, one segment of it at a time (``CuckooMap``: at
  most about 131,072 keys, old and new buckets side by side while it rehashes: a few MB);
  rows never move.
- ``snapshot``: one chunk's copy, ``SNAPSHOT_CHUNK_ROWS`` rows (8,192 x 164 bytes = 1.3 MB
  at dim 17 with Adagrad), and the caller's file buffer; nothing grows with the table, so
  a snapshot's peak is the table's own bytes plus a few MB. What does grow during a
  snapshot is the table itself, by the ids trained in while it is written (a 100-s snapshot
  beside a trainer inserting 0.3 million new ids a second adds 30M ids, 5.4 GB).
- ``export_since``: the delta twice at its end (the chunks' parts and their concatenation):
  2 x (8 + 4 x dim) bytes per changed row, 0.15 GB for a million rows at dim 17.
- ``restore``: a chunk read at a time into a new table: the new table's bytes and one
  chunk; a shard restoring into tables it already holds has both for the time of it.

Snapshot format (``snapshot``/``restore``, format tag ``monolith_ray.table/2``): a stream of
NumPy ``.npy`` frames, read back with ``allow_pickle=False`` and every shape checked before
its data is read. A uint8 UTF-8 JSON header (format tag, slot and admission config, field
names, widths and dtypes, rows at the start), then chunks of live rows (an int64 count, then
one array per field: ids, weights, optimizer state, update time, count, version), an end
marker (count -1), a JSON trailer (version, counters), the admission sketch and the eviction
log. The map is not stored: restore inserts the ids again.

A snapshot is written chunk by chunk (``SNAPSHOT_CHUNK_ROWS`` rows a chunk), each chunk
copied under the caller's lock and written outside it, so training goes on while a
snapshot of any size is written: the lock is held a few milliseconds at a time. The price
is a fuzzy cut: every row is whole, but rows are taken at different moments between the
snapshot's start and end, and an id evicted and inserted again meanwhile may appear twice
(restore keeps the copy with the higher row version). A consistent cut would need the
whole table copied under the lock (seconds at tens of millions of rows, and twice the
memory) or copy-on-write of every row written while it runs. Online training replays the
stream from offsets committed before the snapshot starts, so every update a snapshot misses
is applied again: at least once, as everywhere else in the loop. Without concurrent
writers the restored table answers exactly as the original.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO, NamedTuple

import numba as nb
import numpy as np

from monolith_ray.config import AdmissionConfig, OptimizerConfig, SlotConfig, from_dict
from monolith_ray.table.admission import AdmissionFilter
from monolith_ray.table.cuckoo import EMPTY, CuckooMap
from monolith_ray.table.initializers import fill_rows
from monolith_ray.table.optimizers import make_optimizer
from monolith_ray.table.rows import MAX_ROWS, committed_bytes, reserve

FORMAT = "monolith_ray.table/2"
FORMAT_NPZ = "monolith_ray.table/1"  # the earlier whole-table .npz format: restore_npz
SNAPSHOT_CHUNK_ROWS = 1 << 13  # rows copied per lock hold: ~1.3 MB, under 1 ms, at dim 17 + Adagrad
EXPORT_CHUNK_ROWS = 1 << 16  # rows scanned per lock hold by export_since (512 KB of versions)
_MAX_FRAME_ROWS = 1 << 24  # a snapshot frame larger than this is refused as corrupt
_MAX_META_BYTES = 1 << 20
Lock = contextlib.AbstractContextManager


class TableDelta(NamedTuple):
    """What changed in a table after some version: rows to upsert and ids to drop."""

    ids: np.ndarray  # int64 (k,)
    weights: np.ndarray  # float32 (k, dim)
    evicted: np.ndarray  # int64 (e,), ids evicted and not re-inserted since
    version: int  # the table's version this delta brings a reader up to


@nb.njit(cache=True, nogil=True)
def _count(counts: np.ndarray, rows: np.ndarray) -> None:
    """Add one to ``counts`` (uint32) at each of ``rows`` (int64, repeats count each time),
    held at the largest uint32 rather than wrapping to 0."""
    top = np.uint32(0xFFFFFFFF)
    for r in rows:
        if counts[r] < top:
            counts[r] += np.uint32(1)


@nb.njit(cache=True, nogil=True)
def _gather(weights: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    """out[i] = weights[rows[i]], zeros where rows[i] < 0."""
    for i in range(rows.shape[0]):
        r = rows[i]
        if r >= 0:
            for j in range(weights.shape[1]):
                out[i, j] = weights[r, j]
        else:
            for j in range(weights.shape[1]):
                out[i, j] = 0.0


MAX_EVICTION_RECORDS = 1 << 24  # unread eviction records a table keeps (module docstring)


class EmbeddingTable:
    """Embedding rows of one slot, keyed by int64 feature id."""

    max_eviction_records = MAX_EVICTION_RECORDS

    def __init__(self, slot: SlotConfig, admission: AdmissionConfig = AdmissionConfig(),
                 capacity: int = 1024) -> None:
        self.slot = slot
        self.admission = admission
        self.dim = int(slot.dim)
        self._map = CuckooMap(capacity)
        self._optimizer = make_optimizer(slot.optimizer)
        self._filter = AdmissionFilter(slot, admission)
        self.version = 0
        self.counters = {"admitted": 0, "filtered": 0, "evicted": 0, "dropped_grads": 0}
        self._evicted_ids: list[np.ndarray] = []
        self._evicted_versions: list[np.ndarray] = []
        self.eviction_floor = 0  # the newest version whose eviction records were dropped unread
        self.floor_seen = 0  # the eviction_floor its shard last acted on
        self._reserved = False
        self._alloc_rows(max(16, capacity))

    def _fields(self) -> dict[str, tuple[int, np.dtype]]:
        """Per-row array name -> (width, 0 for a 1-D array; dtype)."""
        fields = {"weights": (self.dim, np.dtype(np.float32)), "ids": (0, np.dtype(np.int64)),
                  "updated_at": (0, np.dtype(np.float64)), "count": (0, np.dtype(np.uint32)),
                  "version": (0, np.dtype(np.int64))}
        fields.update({f"state/{k}": (w, np.dtype(np.float32))
                       for k, (w, _) in self._optimizer.state_spec(self.dim).items()})
        return fields

    def _alloc_rows(self, n: int) -> None:
        """Make room for ``n`` rows: the first call reserves ``MAX_ROWS`` (committed as rows
        are written); without a reservation, arrays grown by copying, 1.5x a step."""
        old = getattr(self, "_rows", None)
        if old is not None and (self._reserved or old["ids"].shape[0] >= n):
            if n > old["ids"].shape[0]:
                raise MemoryError(f"slot {self.slot.name!r}: a table holds at most "
                                  f"{MAX_ROWS} rows per shard; add shards")
            return
        if old is None:
            rows = {k: reserve(MAX_ROWS, w, dt) for k, (w, dt) in self._fields().items()}
            self._reserved = all(a is not None for a in rows.values())
            if self._reserved:
                self._rows = rows
                return
        m = 0 if old is None else old["ids"].shape[0]
        n = max(n, int(1.5 * m))
        rows = {k: np.zeros((n, w) if w else n, dtype=dt) for k, (w, dt) in self._fields().items()}
        if old is not None:
            for k, a in rows.items():
                a[:m] = old[k]
        self._rows = rows

    @property
    def _weights(self) -> np.ndarray:
        return self._rows["weights"]

    @property
    def _state(self) -> dict[str, np.ndarray]:
        return {k[6:]: v for k, v in self._rows.items() if k.startswith("state/")}

    def __len__(self) -> int:
        return self._map.size

    def __reduce__(self) -> None:
        raise TypeError("an EmbeddingTable is not pickled or copied (its arrays span their "
                        "whole reservation): write it with snapshot() and read it with "
                        "restore()")

    # ------------------------------------------------------------------ lookups

    def lookup_train(self, ids: np.ndarray, now: float) -> np.ndarray:
        """Rows for training: ids (n,) int64 -> float32 (n, dim); inserts ids admitted now.

        Each occurrence counts towards admission; an id admitted by one of its occurrences
        reads its row at all of them in this batch, as ``apply_gradients`` will apply all their
        gradients to it. New rows are initialized from the slot's initializer (a function of
        the id alone) and stamped with ``now`` (seconds).
        """
        ids = _check_ids(ids)
        rows = self._map.find(ids).astype(np.int64)
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            cand = ids[missing]
            admit = self._filter.observe(cand)
            if admit.any():
                self._insert(cand[admit], now)
                rows[missing] = self._map.find(cand)
            self.counters["filtered"] += int(np.count_nonzero(rows[missing] < 0))
        known = rows[rows >= 0]
        _count(self._rows["count"], known)
        out = np.empty((ids.shape[0], self.dim), dtype=np.float32)
        _gather(self._weights, rows, out)
        return out

    def lookup_serve(self, ids: np.ndarray) -> np.ndarray:
        """Rows for serving: ids (n,) int64 -> float32 (n, dim); never inserts or counts."""
        ids = _check_ids(ids)
        out = np.empty((ids.shape[0], self.dim), dtype=np.float32)
        _gather(self._weights, self._map.find(ids), out)
        return out

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Whether each id (n,) has a row -> bool (n,)."""
        return self._map.find(_check_ids(ids)) >= 0

    def _check_room(self, ids: np.ndarray) -> None:
        """MemoryError, before anything changes, if inserting ``ids`` would hand out rows
        past ``MAX_ROWS``."""
        bound = self._map.row_bound
        if bound + ids.size <= MAX_ROWS:
            return
        new = np.unique(ids[self._map.find(ids) < 0]).size
        if bound + max(0, new - self._map.free_rows) > MAX_ROWS:
            raise MemoryError(f"slot {self.slot.name!r}: a table holds at most {MAX_ROWS} "
                              f"rows per shard, and {new} new ids would pass it; add shards")

    def _insert(self, ids: np.ndarray, now: float) -> np.ndarray:
        self._check_room(ids)
        rows, inserted = self._map.find_or_insert(ids)
        rows = rows.astype(np.int64)
        if self._map.row_bound > self._rows["ids"].shape[0]:
            self._alloc_rows(self._map.row_bound)
        fresh = rows[inserted]
        if fresh.size:
            self.version += 1
            fill_rows(self._weights, fresh, ids[inserted], self.slot.initializer)
            self._optimizer.init_state_rows(self._weights, self._state, fresh)
            self._rows["ids"][fresh] = ids[inserted]
            self._rows["updated_at"][fresh] = now
            self._rows["count"][fresh] = 0
            self._rows["version"][fresh] = self.version
            self.counters["admitted"] += int(fresh.size)
        return rows

    # ------------------------------------------------------------------ updates

    def set_optimizer(self, cfg: OptimizerConfig) -> None:
        """Train on with ``cfg`` from now on, e.g. the slot's ``online`` optimizer once batch
        training ends. Weights stay. The same kind keeps every row's state (Adam at a new
        rate keeps each row's moments); another kind starts every live row's state as for a
        new row (FTRL's ``z`` matched to the weights), except that Adagrad's and FTRL's
        accumulators take each row's sum of squared gradients so far, as the previous kind's
        state tells it (``RowOptimizer.squared_sums``): rows trained long keep small steps,
        fresh ids take the new rate in full. The table's slot config records ``cfg``, so a
        snapshot restores with it (the format is unchanged)."""
        new, old = make_optimizer(cfg), self._optimizer
        self._optimizer = new
        self.slot = dataclasses.replace(self.slot, optimizer=cfg)
        if new.state_spec(self.dim) == old.state_spec(self.dim):
            return
        live = np.flatnonzero(self._rows["ids"][:self._map.row_bound] != EMPTY)
        squared_sums = old.squared_sums(self._state, live)
        n = self._rows["ids"].shape[0]
        for key in [k for k in self._rows if k.startswith("state/")]:
            del self._rows[key]
        for key, (width, dtype) in self._fields().items():
            if key not in self._rows:
                array = reserve(MAX_ROWS, width, dtype) if self._reserved else None
                self._rows[key] = np.zeros((n, width), dtype) if array is None else array
        new.init_state_rows(self._weights, self._state, live, squared_sums)

    def apply_gradients(self, ids: np.ndarray, grads: np.ndarray, now: float) -> int:
        """Apply the slot's optimizer: ids (n,) int64, grads float32 (n, dim) -> rows updated.

        Gradients of ids without a row are dropped (counted in ``counters``); duplicate ids are
        summed; any NaN or Inf rejects the whole call with ValueError and changes nothing.
        """
        ids = _check_ids(ids)
        grads = np.asarray(grads)
        if grads.dtype.kind != "f":
            raise TypeError(f"grads must be float32, got dtype {grads.dtype}")
        if grads.shape != (ids.shape[0], self.dim):
            raise ValueError(f"grads must have shape ({ids.shape[0]}, {self.dim}) for "
                             f"{ids.shape[0]} ids of slot {self.slot.name!r}, got {grads.shape}")
        grads = grads.astype(np.float32, copy=False)
        bad = ~np.isfinite(grads).all(axis=1)
        if bad.any():
            raise ValueError(f"grads of slot {self.slot.name!r} hold NaN or Inf in "
                             f"{int(bad.sum())} of {bad.size} rows; nothing was applied")
        rows = self._map.find(ids).astype(np.int64)
        known = rows >= 0
        self.counters["dropped_grads"] += int(ids.shape[0] - np.count_nonzero(known))
        rows, grads = rows[known], grads[known]
        if rows.size == 0:
            return 0
        uniq, inverse = np.unique(rows, return_inverse=True)
        if uniq.size != rows.size:
            summed = np.zeros((uniq.size, self.dim), dtype=np.float32)
            np.add.at(summed, inverse, grads)
            rows, grads = uniq, summed
        self._optimizer.apply(self._weights, self._state, rows, np.ascontiguousarray(grads))
        self.version += 1
        self._rows["updated_at"][rows] = now
        self._rows["version"][rows] = self.version
        return int(rows.size)

    def evict_expired(self, now: float, lock: Lock | None = None,
                      chunk_rows: int | None = None) -> np.ndarray:
        """Evict rows not updated for the slot's ``expire_s`` seconds before ``now`` ->
        evicted ids int64. With a ``lock`` (the one every writer holds) the rows are scanned
        ``chunk_rows`` at a time and each chunk's stale ids evicted under it, so writers go
        on meanwhile; a row updated between the scan and the eviction of its chunk cannot
        happen (both under one hold)."""
        if self.slot.expire_s <= 0:
            return np.empty(0, dtype=np.int64)
        lock = lock or contextlib.nullcontext()
        chunk_rows = chunk_rows or EXPORT_CHUNK_ROWS
        with lock:
            bound = self._map.row_bound
        gone = []
        for start in range(0, bound, chunk_rows):
            with lock:
                stop = min(start + chunk_rows, self._map.row_bound)
                ids = self._rows["ids"][start:stop]
                stale = (ids != EMPTY) & (self._rows["updated_at"][start:stop]
                                          < now - self.slot.expire_s)
                if stale.any():
                    gone.append(self.evict(ids[stale]))
            time.sleep(0)
        return _concat(gone)

    def evict(self, ids: np.ndarray) -> np.ndarray:
        """Remove these ids' rows (freed for reuse) -> the ids that had rows, int64."""
        ids = _check_ids(ids)
        freed = self._map.erase(ids).astype(np.int64)
        gone = ids[freed >= 0]
        if gone.size:
            self.version += 1
            self._rows["ids"][freed[freed >= 0]] = EMPTY
            self._evicted_ids.append(gone)
            self._evicted_versions.append(np.full(gone.size, self.version, dtype=np.int64))
            self.counters["evicted"] += int(gone.size)
            self._bound_eviction_records()
        return gone

    def _bound_eviction_records(self) -> None:
        """Past ``max_eviction_records`` unread, drop the oldest half (``eviction_floor``
        moves to the newest version dropped); the records' arrays are joined into one past
        256 of them. Cost, while records go unread: a join of up to ``max_eviction_records``
        records (two int64 arrays) every 256 calls of :meth:`evict` (``evict_expired`` calls
        it once a chunk), under the caller's lock: 60-490 ms at 16M, measured (warm and
        first-touch memory), and twice their memory while it runs."""
        held = self._evicted_ids
        if len(held) <= 256 and sum(a.size for a in held) <= self.max_eviction_records:
            return
        ids, versions = _concat(held), _concat(self._evicted_versions)
        if ids.size > self.max_eviction_records:
            cut = ids.size - self.max_eviction_records // 2
            self.eviction_floor = max(self.eviction_floor, int(versions[cut - 1]))
            ids, versions = ids[cut:].copy(), versions[cut:].copy()  # not a view of it all
        self._evicted_ids, self._evicted_versions = [ids], [versions]

    # ------------------------------------------------------------------ sync

    def export_since(self, version: int, lock: Lock | None = None,
                     chunk_rows: int | None = None, duty: float = 1.0) -> TableDelta:
        """Rows changed and ids evicted after ``version`` (the parameter-sync delta).

        With a ``lock`` (the one every writer of this table holds), the rows are scanned
        ``chunk_rows`` at a time, the lock held only per chunk, so writers go on meanwhile.
        ``duty`` in (0, 1]: after each chunk the scan sleeps (1 / duty - 1) times the chunk's
        lock hold (its work, not its wait for the lock), so it uses at most that share of a
        core: a sync's read leaves the node's cores to training and its scan takes 1 / duty
        times as long.
        The delta's ``version`` is the table's at the start: rows changed during the scan may
        already be in it and come again in the next delta (from that version), and evictions
        after it wait for the next delta, so a reader that applies deltas in order converges.
        """
        if not 0.0 < duty <= 1.0:
            raise ValueError(f"duty must be in (0, 1], got {duty}")
        lock = lock or contextlib.nullcontext()
        chunk_rows = chunk_rows or EXPORT_CHUNK_ROWS
        rest = 1.0 / duty - 1.0
        with lock:
            upto, bound = self.version, self._map.row_bound
        ids_parts, weight_parts = [], []
        for start in range(0, bound, chunk_rows):
            with lock:
                t0 = time.perf_counter()
                stop = min(start + chunk_rows, self._map.row_bound)
                ids = self._rows["ids"][start:stop]
                changed = np.flatnonzero((ids != EMPTY)
                                         & (self._rows["version"][start:stop] > version))
                ids_parts.append(ids[changed])
                weight_parts.append(self._weights[start + changed])
                held = time.perf_counter() - t0
            # sleep(0) at least: let the shard's other threads (trainers' calls) take the GIL
            time.sleep(held * rest)
        ids = _concat(ids_parts)
        with lock:
            if self._evicted_ids:
                ev = np.concatenate(self._evicted_ids)
                ev_v = np.concatenate(self._evicted_versions)
                evicted = np.unique(ev[(ev_v > version) & (ev_v <= upto)])
                evicted = evicted[~self.contains(evicted)]
                # Only an id not held now can be one of them: the rest need no search.
                gone = np.flatnonzero(~self.contains(ids)) if evicted.size else None
            else:
                evicted, gone = np.empty(0, dtype=np.int64), None
        weights = (np.concatenate(weight_parts) if weight_parts
                   else np.empty((0, self.dim), dtype=np.float32))
        del weight_parts  # the delta is held twice at most: its parts, then their concatenation
        if gone is not None and gone.size:  # scanned while live, evicted before the scan ended
            drop = gone[np.isin(ids[gone], evicted)]  # evicted wins
            ids, weights = np.delete(ids, drop), np.delete(weights, drop, axis=0)
        return TableDelta(ids, weights, evicted, upto)

    def forget_evictions(self, upto_version: int) -> None:
        """Drop eviction records at or before ``upto_version`` (every reader has them)."""
        ids, versions = _concat(self._evicted_ids), _concat(self._evicted_versions)
        newer = versions > upto_version
        self._evicted_ids = [ids[newer]] if newer.any() else []
        self._evicted_versions = [versions[newer]] if newer.any() else []

    # ------------------------------------------------------------------ stats, snapshot

    def stats(self) -> dict[str, int]:
        """Rows held, bytes (map + committed row pages + optimizer state + admission), and
        counters."""
        bound = self._map.row_bound
        row_bytes = sum(committed_bytes(a, bound) for a in self._rows.values())
        return {"rows": len(self), "version": self.version,
                "bytes": self._map.nbytes + row_bytes + self._filter.nbytes, **self.counters}

    def snapshot(self, file: str | BinaryIO, lock: Lock | None = None,
                 chunk_rows: int | None = None,
                 pace: Callable[[int], None] | None = None) -> int:
        """Write the table to ``file`` (a path or a writable binary stream) -> rows written.

        With a ``lock`` (the one every writer of this table holds), each chunk of
        ``chunk_rows`` rows is copied under it and written after releasing it: a fuzzy cut
        (see the module docstring), and writers wait at most one chunk's copy. ``pace``, if
        given, is called with each chunk's bytes once it is written (to slow the writer).
        The same as ``write_parts(file, snapshot_parts(lock, chunk_rows), pace)``: a caller
        may copy (``snapshot_parts``) on one thread and write on another."""
        if isinstance(file, str):
            with open(file, "wb") as f:
                return self.snapshot(f, lock, chunk_rows, pace)
        return write_parts(file, self.snapshot_parts(lock, chunk_rows), pace)

    def snapshot_parts(self, lock: Lock | None = None, chunk_rows: int | None = None
                       ) -> Iterator[SnapshotPart]:
        """The table's snapshot as parts to write in order (``write_parts``): the header, then
        chunks of ``chunk_rows`` rows each copied under ``lock`` (one hold a chunk, taken as
        the iteration reaches it, on the iterating thread), then the trailer. Each part is
        a copy: the table may change while it waits to be written."""
        lock = lock or contextlib.nullcontext()
        chunk_rows = chunk_rows or SNAPSHOT_CHUNK_ROWS
        with lock:
            bound, live = self._map.row_bound, len(self)
        fields = self._fields()
        yield SnapshotPart(header={
            "format": FORMAT, "slot": dataclasses.asdict(self.slot),
            "admission": dataclasses.asdict(self.admission), "rows": live,
            "fields": {k: [w, dt.str] for k, (w, dt) in fields.items()}})
        for start in range(0, bound, chunk_rows):
            with lock:
                stop = min(start + chunk_rows, self._map.row_bound)
                live = self._rows["ids"][start:stop] != EMPTY
                if live.all():  # no free rows: plain copies, the cheapest hold of the lock
                    chunk = {k: self._rows[k][start:stop].copy() for k in fields}
                else:
                    sel = start + np.flatnonzero(live)
                    chunk = {k: self._rows[k][sel] for k in fields}
            yield SnapshotPart(arrays=[chunk[k] for k in fields])
            del chunk  # handed on: one chunk's copy at a time here, not the next beside it
            time.sleep(0)  # let the shard's other threads (trainers' calls) take the GIL
        with lock:
            trailer = {"version": self.version, "counters": dict(self.counters)}
            sketch = self._filter.sketch.copy()
            evicted = _concat(self._evicted_ids), _concat(self._evicted_versions)
        yield SnapshotPart(trailer=trailer, arrays=[sketch, *evicted])

    @classmethod
    def restore(cls, file: str | BinaryIO) -> "EmbeddingTable":
        """Read a table written by ``snapshot``; the result is writable and answers every
        lookup as the table did (bit-exact rows) if nothing wrote to it while it was written.

        Anything else (another format, a truncated or corrupt stream) raises ValueError.
        """
        if isinstance(file, str):
            with open(file, "rb") as f:
                return cls.restore(f)
        header = _read_header(file)
        try:
            table = cls(from_dict(SlotConfig, header["slot"]),
                        from_dict(AdmissionConfig, header["admission"]), capacity=1)
            fields = table._fields()
            if header["fields"] != {k: [w, dt.str] for k, (w, dt) in fields.items()}:
                raise ValueError(f"its fields {header['fields']} do not match the slot's")
            # A hint only (a file may lie): at most 4M keys reserved, the map grows past it.
            table._map.reserve(min(max(int(header["rows"]), 0), 1 << 22))
            for chunk in _read_chunks(file, fields):
                table._restore_rows(chunk)
            trailer = _read_json(file)
            table.version = int(trailer["version"])
            table.counters = {k: int(v) for k, v in trailer["counters"].items()}
            sketch = _read_frame(file, np.uint8, table._filter.sketch.shape)
            table._filter.sketch = sketch.copy()
            ev_ids = _read_frame(file, np.int64, None)
            ev_versions = _read_frame(file, np.int64, ev_ids.shape)
        except (KeyError, TypeError, EOFError, ValueError, AttributeError, OverflowError,
                RecursionError, MemoryError) as err:
            if isinstance(err, ValueError) and "table snapshot" in str(err):
                raise
            raise ValueError(f"corrupt table snapshot: {type(err).__name__}: {err}") from None
        if ev_ids.size:
            table._evicted_ids, table._evicted_versions = [ev_ids.copy()], [ev_versions.copy()]
            table._drop_evicted_after_copy(ev_ids, ev_versions)
        return table

    @staticmethod
    def snapshot_rows(file: BinaryIO) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The live rows of a ``snapshot`` stream a chunk at a time -> (ids int64 (n,),
        weights float32 (n, dim)), without building a table (a serving copy needs neither the
        optimizer state nor the map of a training one). A fuzzy snapshot may hold an id twice;
        its later copy comes later. ValueError for another format or a corrupt stream."""
        header = _read_header(file)
        try:
            fields = {k: (int(w), np.dtype(dt)) for k, (w, dt) in header["fields"].items()}
            if set(fields) < {"ids", "weights"} or fields["ids"] != (0, np.dtype(np.int64)) \
                    or fields["weights"][1] != np.dtype(np.float32):
                raise ValueError(f"unexpected fields {header['fields']}")
            for chunk in _read_chunks(file, fields):
                yield chunk["ids"], chunk["weights"]
        except (KeyError, TypeError, EOFError, AttributeError, OverflowError,
                RecursionError, MemoryError) as err:
            raise ValueError(f"corrupt table snapshot: {type(err).__name__}: {err}") from None

    @classmethod
    def restore_npz(cls, file: str | BinaryIO) -> "EmbeddingTable":
        """Read a table written in the earlier format ``monolith_ray.table/1`` (an ``.npz``
        archive of the whole table, map included; ``file`` seekable), so that snapshots taken
        before format /2 still restore. ValueError on anything else."""
        not_snapshot = "not a table snapshot: expected an .npz archive holding 'meta'"
        try:
            loaded = np.load(file, allow_pickle=False)
        except (ValueError, EOFError, zipfile.BadZipFile):
            raise ValueError(not_snapshot) from None
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError(not_snapshot)
        with loaded as z:
            if "meta" not in z.files:
                raise ValueError(not_snapshot)
            arrays = {k: z[k] for k in z.files}
        try:
            meta = json.loads(arrays["meta"].tobytes().decode())
            if meta.get("format") != FORMAT_NPZ:
                raise ValueError(f"not a table snapshot: format {meta.get('format')!r}, "
                                 f"expected {FORMAT_NPZ!r}")
            table = cls(from_dict(SlotConfig, meta["slot"]),
                        from_dict(AdmissionConfig, meta["admission"]), capacity=1)
            table._map = CuckooMap.from_state({k[4:]: v for k, v in arrays.items()
                                               if k.startswith("map/")})
            bound = arrays["rows/ids"].shape[0]
            if bound > MAX_ROWS or table._map.row_bound > bound:
                raise ValueError(f"{bound} rows for a map handing out {table._map.row_bound}")
            table._alloc_rows(max(16, bound))
            for k in table._rows:
                table._rows[k][:bound] = arrays[k if k.startswith("state/") else f"rows/{k}"]
            table._filter.sketch = np.array(arrays["filter/sketch"])
            table.version = int(meta["version"])
            table.counters = dict(meta["counters"])
        except (KeyError, TypeError, AttributeError, OverflowError, MemoryError) as err:
            raise ValueError(f"corrupt table snapshot: {type(err).__name__}: {err}") from None
        if arrays["evicted/ids"].size:
            table._evicted_ids = [np.array(arrays["evicted/ids"])]
            table._evicted_versions = [np.array(arrays["evicted/versions"])]
        return table

    def _drop_evicted_after_copy(self, ids: np.ndarray, versions: np.ndarray) -> None:
        """Erase the restored ids evicted after their row was copied (a fuzzy snapshot copies
        a row, then the trailer's eviction log records a later eviction of it): an eviction
        newer than the row wins, as it did in the table the snapshot was taken from."""
        rows = self._map.find(ids).astype(np.int64)
        present = np.flatnonzero(rows >= 0)
        stale = present[versions[present] > self._rows["version"][rows[present]]]
        if stale.size:
            gone = np.unique(ids[stale])
            freed = self._map.erase(gone).astype(np.int64)
            self._rows["ids"][freed[freed >= 0]] = EMPTY

    def _restore_rows(self, chunk: dict[str, np.ndarray]) -> None:
        """Insert one snapshot chunk's rows; an id already restored keeps the copy with the
        higher row version (a fuzzy snapshot may hold an id twice)."""
        ids = _check_ids(chunk["ids"])
        try:
            self._check_room(ids)
        except MemoryError as err:
            raise ValueError(f"corrupt table snapshot: {err}") from None
        rows, inserted = self._map.find_or_insert(ids)
        rows = rows.astype(np.int64)
        self._alloc_rows(self._map.row_bound)
        if inserted.all() and rows.size and rows[-1] - rows[0] == rows.size - 1 \
                and (np.diff(rows) == 1).all():  # the usual case: fresh rows in a run
            for k, a in chunk.items():
                self._rows[k][rows[0]:rows[-1] + 1] = a
            return
        keep = inserted | (chunk["version"] > self._rows["version"][rows])
        rows = rows[keep]
        for k, a in chunk.items():
            self._rows[k][rows] = a[keep]


@dataclasses.dataclass
class SnapshotPart:
    """One piece of a table's snapshot stream: its header, a chunk of rows (``arrays``, one
    per field), or its trailer (``trailer`` with the admission sketch and evictions)."""

    header: dict | None = None
    arrays: list[np.ndarray] = dataclasses.field(default_factory=list)
    trailer: dict | None = None


def write_parts(file: BinaryIO, parts: Iterable[SnapshotPart],
                pace: Callable[[int], None] | None = None) -> int:
    """Write a table's snapshot parts (``EmbeddingTable.snapshot_parts``) to ``file`` -> rows
    written. ``pace``, if given, is called with each chunk's bytes once it is written."""
    written = 0
    parts = iter(parts)
    while (part := next(parts, None)) is not None:
        if part.header is not None:
            _write_json(file, part.header)
        elif part.trailer is not None:
            _write_frame(file, np.array([-1], dtype=np.int64))
            _write_json(file, part.trailer)
            _write_frames(file, part.arrays)
        else:
            n = part.arrays[0].shape[0]
            _write_frame(file, np.array([n], dtype=np.int64))
            _write_frames(file, part.arrays)
            written += n
            if pace is not None:
                pace(sum(a.nbytes for a in part.arrays))
        del part  # written: its copy goes before the next part's is made
    return written


def _write_frame(file: BinaryIO, array: np.ndarray) -> None:
    np.lib.format.write_array(file, np.ascontiguousarray(array), allow_pickle=False)


def _write_frames(file: BinaryIO, arrays: list[np.ndarray]) -> None:
    """Each array as a frame (a function of its own: no name outlives it holding an array)."""
    for a in arrays:
        _write_frame(file, a)


def _write_json(file: BinaryIO, value: dict) -> None:
    _write_frame(file, np.frombuffer(json.dumps(value).encode(), dtype=np.uint8))


def _read_frame(file: BinaryIO, dtype: type | np.dtype, shape: tuple[int, ...] | None,
                width: int = -1, max_rows: int = _MAX_FRAME_ROWS) -> np.ndarray:
    """One ``.npy`` frame of ``dtype``: of ``shape`` if given, else 1-D of any length (or 2-D
    ``(n, width)`` for ``width`` > 0), at most ``_MAX_FRAME_ROWS`` rows. Checked before its
    data is read; ValueError on anything else."""
    try:
        version = np.lib.format.read_magic(file)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError(f"npy format version {version}")
        got_shape, fortran, got_dtype = read_header(file)
    except (ValueError, EOFError, SyntaxError) as err:
        raise ValueError(f"corrupt table snapshot frame: {err}") from None
    want = np.dtype(dtype)
    ok = got_dtype == want and not fortran and got_dtype.hasobject is False
    if shape is not None:
        ok = ok and tuple(got_shape) == tuple(shape)
    elif width > 0:
        ok = ok and len(got_shape) == 2 and got_shape[1] == width
    else:
        ok = ok and len(got_shape) == 1
    if not ok or (got_shape and got_shape[0] > max_rows):
        raise ValueError(f"corrupt table snapshot frame: {got_dtype}{tuple(got_shape)}, "
                         f"expected {want}{shape or ('n', width) if width > 0 else ('n',)}")
    n_bytes = int(np.prod(got_shape, dtype=np.int64)) * want.itemsize
    data = file.read(n_bytes)
    if len(data) != n_bytes:
        raise ValueError("truncated table snapshot")
    return np.frombuffer(data, dtype=want).reshape(got_shape)


def _read_json(file: BinaryIO) -> dict:
    raw = _read_frame(file, np.uint8, None, max_rows=_MAX_META_BYTES)
    try:
        return json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"corrupt table snapshot metadata: {type(err).__name__}") from None


def _read_header(file: BinaryIO) -> dict:
    """A snapshot stream's JSON header, checked to be of this format (ValueError if not)."""
    try:
        header = _read_json(file)
    except ValueError:
        raise ValueError("not a table snapshot: expected a monolith_ray table "
                         "snapshot stream") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        got = header.get("format") if isinstance(header, dict) else None
        raise ValueError(f"not a table snapshot: format {got!r}, expected {FORMAT!r}")
    return header


def _read_chunks(file: BinaryIO, fields: dict[str, tuple[int, np.dtype]]
                 ) -> Iterator[dict[str, np.ndarray]]:
    """The snapshot's row chunks, each field's array of the chunk's rows, to the end marker."""
    while True:
        n = int(_read_frame(file, np.int64, (1,))[0])
        if n < 0:
            return
        yield {k: _read_frame(file, dt, (n, w) if w else (n,)) for k, (w, dt) in fields.items()}


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def _check_ids(ids: np.ndarray) -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim != 1:
        raise ValueError(f"ids must be a 1-D int64 array, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"ids must be int64, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.int64)
    if (a == EMPTY).any():
        raise ValueError("ids must not hold -2**63, the cuckoo map's reserved empty marker")
    return a
