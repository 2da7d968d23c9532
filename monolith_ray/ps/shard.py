"""ShardServer: one parameter-server shard, holding its share of every slot's embedding rows.

A plain class so it runs in-process as is and becomes a Ray actor with
``ray.remote(ShardServer)``. Each method takes and returns one array per slot, so a training
step costs one call per shard however many slots the model has.

Row layout: a slot configured with ``dim = D`` has table rows ``D + 1`` wide. Column 0 is the
feature's first-order (linear) weight and columns ``1..D`` its embedding vector, the layout
``monolith_ray.model`` expects (one row serves the linear, FM and deep parts, so a step moves
one matrix per slot). Both parts share the slot's optimizer and initializer.

Inputs may be read-only (arrays from Ray's object store): they are made writable copies where
needed, and the tables never keep a reference to a caller's array.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from monolith_ray.config import AdmissionConfig, SlotConfig
from monolith_ray.files import replacing
from monolith_ray.table import EmbeddingTable, TableDelta


def table_slot(slot: SlotConfig) -> SlotConfig:
    """The config of ``slot``'s table: the same settings with rows ``slot.dim + 1`` wide."""
    return dataclasses.replace(slot, dim=slot.dim + 1)


class ShardServer:
    """One shard's ``EmbeddingTable`` per slot; every method handles all slots in one call."""

    def __init__(self, slots: Sequence[SlotConfig], admission: AdmissionConfig = AdmissionConfig(),
                 capacity: int = 1024) -> None:
        self.tables = {s.name: EmbeddingTable(table_slot(s), admission, capacity) for s in slots}

    def pull(self, ids: Mapping[str, np.ndarray], now: float) -> dict[str, np.ndarray]:
        """Training lookup: per slot ids int64 (n,) -> rows float32 (n, D+1), inserting admitted
        new ids stamped with event time ``now`` (seconds)."""
        return {name: self._table(name).lookup_train(_writable(a), now)
                for name, a in ids.items()}

    def push(self, ids: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray],
             now: float) -> int:
        """Apply per slot gradients float32 (n, D+1) to ids int64 (n,) -> rows updated in all."""
        if ids.keys() != grads.keys():
            raise ValueError(
                f"ids and grads name different slots: {sorted(ids)} vs {sorted(grads)}")
        return sum(self._table(name).apply_gradients(_writable(a), _writable(grads[name]), now)
                   for name, a in ids.items())

    def push_pull(self, ids: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray],
                  now: float, pull_ids: Mapping[str, np.ndarray], pull_now: float
                  ) -> dict[str, np.ndarray]:
        """``push(ids, grads, now)`` then ``pull(pull_ids, pull_now)`` -> the pulled rows: one
        call where a pipelined trainer would make two (each remote call has a fixed cost)."""
        self.push(ids, grads, now)
        return self.pull(pull_ids, pull_now)

    def lookup(self, ids: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Serving lookup: per slot ids (n,) -> rows (n, D+1); unknown ids read zeros, nothing
        is inserted or counted."""
        return {name: self._table(name).lookup_serve(_writable(a))
                for name, a in ids.items()}

    def evict_expired(self, now: float) -> dict[str, np.ndarray]:
        """Evict rows idle for their slot's ``expire_s`` -> per slot the evicted ids int64."""
        return {name: t.evict_expired(now) for name, t in self.tables.items()}

    def evict(self, ids: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Evict the given ids now, per slot (absent ones are ignored) -> per slot the ids
        evicted int64."""
        return {name: self._table(name).evict(_writable(a)) for name, a in ids.items()}

    def stats(self) -> dict[str, dict[str, int]]:
        """Per slot: rows, version, bytes and the table's counters."""
        return {name: t.stats() for name, t in self.tables.items()}

    def export_since(self, versions: Mapping[str, int] | int = 0) -> dict[str, TableDelta]:
        """Per slot the rows changed and ids evicted after that slot's version (a mapping; slots
        missing from it start at 0) or after one version for all slots (an int)."""
        if isinstance(versions, int):
            versions = dict.fromkeys(self.tables, versions)
        return {name: t.export_since(versions.get(name, 0)) for name, t in self.tables.items()}

    def forget_evictions(self, versions: Mapping[str, int]) -> None:
        """Drop each slot's eviction records at or before its version: the parameter sync
        (their one reader) has taken them."""
        for name, version in versions.items():
            self._table(name).forget_evictions(version)

    def snapshot(self, directory: str | os.PathLike[str]) -> None:
        """Write every slot's table to ``directory/<slot>.npz``; each file appears whole."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        for name, table in self.tables.items():
            with replacing(folder / f"{name}.npz") as f:
                table.snapshot(f)

    def restore(self, directory: str | os.PathLike[str]) -> None:
        """Replace every slot's table by its snapshot in ``directory``; all or nothing."""
        folder = Path(directory)
        restored = {}
        for name, table in self.tables.items():
            path = folder / f"{name}.npz"
            if not path.is_file():
                raise FileNotFoundError(f"no snapshot of slot {name!r} in {folder}")
            new = EmbeddingTable.restore(path)
            if new.dim != table.dim:
                raise ValueError(f"snapshot {path} has rows {new.dim} wide, slot {name!r} "
                                 f"needs {table.dim}")
            restored[name] = new
        self.tables = restored

    def _table(self, name: str) -> EmbeddingTable:
        try:
            return self.tables[name]
        except KeyError:
            raise KeyError(f"no slot {name!r} on this shard; slots: "
                           f"{', '.join(self.tables)}") from None


def _writable(a: np.ndarray) -> np.ndarray:
    """``a`` as a C-contiguous writable array, copied only if it is not one; the dtype is
    kept, for the table to check."""
    return np.require(a, requirements=["C", "W"])
