"""SparseStore: serving's copy of the embedding rows, changed only by parameter-sync updates.

Serving needs less than training: no optimizer state, no admission sketch, no timestamps, and
one store holds every training shard's rows (ids never repeat across shards, and a replica
answers from its own memory without calling the training side). Per slot it keeps a
``CuckooMap`` (collisionless, as in training) and a row matrix in ``dtype``: float16 by
default, half of training's float32, a serving compression as Monolith offers. Rows are
``D + 1`` wide, as the training tables' (column 0 the first-order weight).

An id the store lacks reads the default embedding: a zero row, the same as an id the training
tables lack (``ShardServer.lookup``), so unknown users and items are served, never refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from monolith_ray.config import SlotConfig
from monolith_ray.table import CuckooMap, TableDelta

EMPTY_ID = np.iinfo(np.int64).min


class SparseUpdate(NamedTuple):
    """What a serving copy applies to reach ``version``: per slot rows to upsert and ids to
    drop. ``reset`` means the update is the whole state: drop everything else first."""

    version: int
    reset: bool
    ids: dict[str, np.ndarray]  # per slot int64 (k,)
    rows: dict[str, np.ndarray]  # per slot (k, D+1) in the store's dtype
    evicted: dict[str, np.ndarray]  # per slot int64 (e,)


class SparseStore:
    """Per slot: ids -> rows ``(D+1,)`` in ``dtype`` (``float16`` or ``float32``)."""

    def __init__(self, slots: Sequence[SlotConfig], dtype: str = "float16") -> None:
        if dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
        self.dtype = np.dtype(dtype)
        self.widths = {s.name: s.dim + 1 for s in slots}
        self.version = 0
        self._maps: dict[str, CuckooMap] = {}
        self._rows: dict[str, np.ndarray] = {}
        self._ids: dict[str, np.ndarray] = {}
        self._owner: dict[str, np.ndarray] = {}  # per row the training shard it came from
        self.clear()

    def clear(self) -> None:
        """Drop every row (the version is kept)."""
        for name, width in self.widths.items():
            self._maps[name] = CuckooMap(capacity=64)
            self._rows[name] = np.zeros((64, width), dtype=self.dtype)
            self._ids[name] = np.full(64, EMPTY_ID, dtype=np.int64)
            self._owner[name] = np.full(64, -1, dtype=np.int16)

    def __len__(self) -> int:
        return sum(len(m) for m in self._maps.values())

    def rows_per_slot(self) -> dict[str, int]:
        return {name: len(m) for name, m in self._maps.items()}

    @property
    def nbytes(self) -> int:
        """Bytes held: maps, row matrices, the row -> id and row -> shard arrays."""
        return sum(self._maps[n].nbytes + self._rows[n].nbytes + self._ids[n].nbytes
                   + self._owner[n].nbytes for n in self._maps)

    def upsert(self, name: str, ids: np.ndarray, rows: np.ndarray, owner: int = -1) -> None:
        """Set the rows of ``ids`` int64 (k,) to ``rows`` (k, D+1), inserting new ids, from
        training shard ``owner`` (-1: not known)."""
        table = self._table(name)
        if rows.shape != (ids.shape[0], self.widths[name]):
            raise ValueError(f"slot {name!r}: rows of shape {rows.shape} for {ids.shape[0]} ids "
                             f"of width {self.widths[name]}")
        at, _ = table.find_or_insert(np.ascontiguousarray(ids, dtype=np.int64))
        if table.row_bound > self._rows[name].shape[0]:
            size = max(table.row_bound, 2 * self._rows[name].shape[0])
            self._rows[name] = _grown(self._rows[name], size, 0)
            self._ids[name] = _grown(self._ids[name], size, EMPTY_ID)
            self._owner[name] = _grown(self._owner[name], size, -1)
        self._rows[name][at] = rows
        self._ids[name][at] = ids
        self._owner[name][at] = owner

    def erase(self, name: str, ids: np.ndarray) -> int:
        """Drop ``ids`` (absent ones are ignored) -> ids dropped."""
        freed = self._table(name).erase(np.ascontiguousarray(ids, dtype=np.int64))
        freed = freed[freed >= 0]
        self._ids[name][freed] = EMPTY_ID
        self._rows[name][freed] = 0
        self._owner[name][freed] = -1
        return int(freed.size)

    def missing_from(self, name: str, owner: int, ids: np.ndarray) -> np.ndarray:
        """The ids of slot ``name`` held from training shard ``owner`` that are not among
        ``ids`` (that shard's whole table) -> int64 (g,). O(rows held + ids), no sort."""
        table = self._table(name)
        bound = table.row_bound
        mine = self._owner[name][:bound] == owner
        if not mine.any():
            return np.empty(0, np.int64)
        at = table.find(np.ascontiguousarray(ids, dtype=np.int64))
        mine[at[at >= 0]] = False
        return self._ids[name][:bound][mine]

    def lookup(self, name: str, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` int64 (n,) -> float32 (n, D+1); zeros for ids not held."""
        at = self._table(name).find(np.ascontiguousarray(ids, dtype=np.int64))
        out = self._rows[name][np.maximum(at, 0)].astype(np.float32)
        out[at < 0] = 0.0
        return out

    def take(self, name: str, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` int64 (n,) in the store's dtype (n, D+1); zeros for ids not held.
        What a serving shard ships: half of ``lookup``'s bytes in float16."""
        at = self._table(name).find(np.ascontiguousarray(ids, dtype=np.int64))
        out = self._rows[name][np.maximum(at, 0)]
        out[at < 0] = 0
        return out

    def get(self, name: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The held ones of ``ids`` and their rows in the store's dtype -> (ids (k,), rows)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        at = self._table(name).find(ids)
        held = at >= 0
        return ids[held], self._rows[name][at[held]]

    def contains(self, name: str, ids: np.ndarray) -> np.ndarray:
        """bool (n,): whether each id is held."""
        return self._table(name).find(np.ascontiguousarray(ids, dtype=np.int64)) >= 0

    def whole_update(self) -> SparseUpdate:
        """The whole store as a ``reset`` update at this version."""
        ids, rows = {}, {}
        for name, table in self._maps.items():
            keys, at = table.items()
            ids[name], rows[name] = keys, self._rows[name][at]
        empty = {name: np.empty(0, dtype=np.int64) for name in self._maps}
        return SparseUpdate(self.version, True, ids, rows, empty)

    def apply(self, update: SparseUpdate) -> int:
        """Apply a sync update (evictions first, then upserts) and take its version -> rows
        written."""
        if update.reset:
            self.clear()
        for name, gone in update.evicted.items():
            self.erase(name, gone)
        written = 0
        for name, ids in update.ids.items():
            self.upsert(name, ids, update.rows[name])
            written += int(ids.size)
        self.version = update.version
        return written

    def apply_deltas(self, deltas: Mapping[str, TableDelta], owner: int = -1) -> int:
        """Apply training shard ``owner``'s ``export_since`` deltas (rows float32, converted
        to the store's dtype) -> rows written. The version is left to the caller."""
        written = 0
        for name, delta in deltas.items():
            self.erase(name, delta.evicted)
            self.upsert(name, delta.ids, delta.weights.astype(self.dtype), owner)
            written += int(delta.ids.size)
        return written

    def _table(self, name: str) -> CuckooMap:
        try:
            return self._maps[name]
        except KeyError:
            raise KeyError(f"no slot {name!r} in the serving store; slots: "
                           f"{', '.join(self._maps)}") from None


def _grown(a: np.ndarray, size: int, fill: float | int) -> np.ndarray:
    out = np.full((size, *a.shape[1:]), fill, dtype=a.dtype)
    out[:a.shape[0]] = a
    return out
