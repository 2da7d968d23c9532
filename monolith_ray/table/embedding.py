"""EmbeddingTable: one feature slot's collisionless, growing, expiring embedding store.

Rows live in dense float32 matrices indexed by the cuckoo map's rows: weights (R, dim) and the
optimizer's state matrices, plus per row its id (``EMPTY``, -2**63, for a free row: every
other int64 is a valid id), last update time (seconds), occurrence count and the table version
of its last change (for parameter sync). Every call takes a whole batch.

Policies worth knowing:

- Unadmitted and unknown ids read the slot's default embedding, all zeros; their gradients
  are dropped and counted.
- Duplicate ids in one ``apply_gradients`` call have their gradients summed first, so the
  optimizer steps once per row.
- Non-finite gradients (NaN or Inf) reject the whole call with ``ValueError`` before anything
  changes: one poisoned batch never corrupts a table.
- ``version`` counts the calls that changed the table; ``export_since(v)`` returns the rows
  changed and the ids evicted after version ``v``.

Snapshot format (``snapshot``/``restore``): an uncompressed NumPy ``.npz`` archive, read with
``allow_pickle=False``. ``meta`` is UTF-8 JSON (format tag, slot config, version, counters)
stored as uint8; ``map/*`` is the cuckoo map's state; ``rows/weights``, ``rows/ids``,
``rows/updated_at``, ``rows/count``, ``rows/version`` and ``state/<name>`` hold the first
``row_bound`` rows; ``filter/sketch`` the admission counters; ``evicted/ids`` and
``evicted/versions`` the eviction log. Restore is bit-exact.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from typing import BinaryIO, NamedTuple

import numba as nb
import numpy as np

from monolith_ray.config import AdmissionConfig, SlotConfig, from_dict
from monolith_ray.table.admission import AdmissionFilter
from monolith_ray.table.cuckoo import EMPTY, CuckooMap
from monolith_ray.table.initializers import fill_rows
from monolith_ray.table.optimizers import make_optimizer

FORMAT = "monolith_ray.table/1"


class TableDelta(NamedTuple):
    """What changed in a table after some version: rows to upsert and ids to drop."""

    ids: np.ndarray  # int64 (k,)
    weights: np.ndarray  # float32 (k, dim)
    evicted: np.ndarray  # int64 (e,), ids evicted and not re-inserted since
    version: int  # the table's version this delta brings a reader up to


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


class EmbeddingTable:
    """Embedding rows of one slot, keyed by int64 feature id."""

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
        self._alloc_rows(max(16, capacity))

    def _alloc_rows(self, n: int) -> None:
        old = getattr(self, "_rows", None)
        spec = self._optimizer.state_spec(self.dim)
        rows = {
            "weights": np.zeros((n, self.dim), dtype=np.float32),
            "ids": np.full(n, EMPTY, dtype=np.int64),
            "updated_at": np.zeros(n, dtype=np.float64),
            "count": np.zeros(n, dtype=np.uint32),
            "version": np.zeros(n, dtype=np.int64),
        }
        rows.update({f"state/{k}": np.full((n, w), fill, dtype=np.float32)
                     for k, (w, fill) in spec.items()})
        if old is not None:
            m = old["ids"].shape[0]
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
        np.add.at(self._rows["count"], known, 1)
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

    def _insert(self, ids: np.ndarray, now: float) -> np.ndarray:
        rows, inserted = self._map.find_or_insert(ids)
        rows = rows.astype(np.int64)
        if self._map.row_bound > self._rows["ids"].shape[0]:
            self._alloc_rows(max(self._map.row_bound, 2 * self._rows["ids"].shape[0]))
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

    def evict_expired(self, now: float) -> np.ndarray:
        """Evict rows not updated for the slot's ``expire_s`` seconds -> evicted ids int64."""
        if self.slot.expire_s <= 0:
            return np.empty(0, dtype=np.int64)
        bound = self._map.row_bound
        ids = self._rows["ids"][:bound]
        stale = (ids != EMPTY) & (self._rows["updated_at"][:bound] < now - self.slot.expire_s)
        return self.evict(ids[stale])

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
        return gone

    # ------------------------------------------------------------------ sync

    def export_since(self, version: int) -> TableDelta:
        """Rows changed and ids evicted after ``version`` (the parameter-sync delta)."""
        bound = self._map.row_bound
        ids = self._rows["ids"][:bound]
        changed = np.flatnonzero((ids != EMPTY) & (self._rows["version"][:bound] > version))
        live_ids = ids[changed]
        if self._evicted_ids:
            ev = np.concatenate(self._evicted_ids)
            ev_v = np.concatenate(self._evicted_versions)
            evicted = np.unique(ev[ev_v > version])
            evicted = evicted[~self.contains(evicted)]
        else:
            evicted = np.empty(0, dtype=np.int64)
        return TableDelta(live_ids.copy(), self._weights[changed], evicted, self.version)

    def forget_evictions(self, upto_version: int) -> None:
        """Drop eviction records at or before ``upto_version`` (every reader has them)."""
        ids, versions = _concat(self._evicted_ids), _concat(self._evicted_versions)
        newer = versions > upto_version
        self._evicted_ids = [ids[newer]] if newer.any() else []
        self._evicted_versions = [versions[newer]] if newer.any() else []

    # ------------------------------------------------------------------ stats, snapshot

    def stats(self) -> dict[str, int]:
        """Rows held, bytes (map + rows + optimizer state + admission), and counters."""
        bound = self._map.row_bound
        row_bytes = sum(a[:bound].nbytes for a in self._rows.values())
        return {"rows": len(self), "version": self.version,
                "bytes": self._map.nbytes + row_bytes + self._filter.nbytes, **self.counters}

    def snapshot(self, file: str | BinaryIO) -> None:
        """Write the whole table to ``file`` (a path or a writable binary file)."""
        bound = self._map.row_bound
        meta = {"format": FORMAT, "slot": dataclasses.asdict(self.slot),
                "admission": dataclasses.asdict(self.admission),
                "version": self.version, "counters": self.counters}
        arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
        arrays.update({f"map/{k}": v for k, v in self._map.state().items()})
        arrays.update({f"rows/{k}" if not k.startswith("state/") else k: v[:bound]
                       for k, v in self._rows.items()})
        arrays["filter/sketch"] = self._filter.sketch
        arrays["evicted/ids"] = _concat(self._evicted_ids)
        arrays["evicted/versions"] = _concat(self._evicted_versions)
        np.savez(file, **arrays)

    @classmethod
    def restore(cls, file: str | BinaryIO) -> "EmbeddingTable":
        """Read a table written by ``snapshot``; the result is bit-exact and writable.

        Anything else (not an ``.npz`` archive holding ``meta``) raises ValueError.
        """
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
        meta = json.loads(arrays["meta"].tobytes().decode())
        if meta.get("format") != FORMAT:
            raise ValueError(f"not a table snapshot: format {meta.get('format')!r}, "
                             f"expected {FORMAT!r}")
        table = cls(from_dict(SlotConfig, meta["slot"]),
                    from_dict(AdmissionConfig, meta["admission"]), capacity=1)
        table._map = CuckooMap.from_state({k[4:]: v for k, v in arrays.items()
                                           if k.startswith("map/")})
        bound = arrays["rows/ids"].shape[0]
        table._alloc_rows(max(16, bound))
        for k in table._rows:
            table._rows[k][:bound] = arrays[k if k.startswith("state/") else f"rows/{k}"]
        table._filter.sketch = np.array(arrays["filter/sketch"])
        table.version = int(meta["version"])
        table.counters = dict(meta["counters"])
        if arrays["evicted/ids"].size:
            table._evicted_ids = [np.array(arrays["evicted/ids"])]
            table._evicted_versions = [np.array(arrays["evicted/versions"])]
        return table


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
