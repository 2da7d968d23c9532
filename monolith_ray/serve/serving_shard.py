"""ServingShard: the serving copy of one training shard's sparse rows (``serve.store: sharded``).

Serving shard ``k`` holds what training shard ``k`` holds (the same routing,
``ps.routing.shard_of``), as a :class:`SparseStore`: rows in ``serve.store_dtype`` (float16 by
default), no optimizer state, no admission sketch, about 60 bytes an id at dim 16 against
training's ~180. Replicas fetch the rows their cache misses from it (:meth:`get`, one call a
shard a request); only the :class:`ParameterSync` writes it (:meth:`apply`).

Its *position* is where its rows stand against training shard ``k``: that shard's incarnation
and, per slot, the table version every change up to which it holds. The sync reads
``changes_since(position)`` from the training shard and hands the delta to :meth:`apply`
together with the position it starts from; a shard whose position differs (it restarted, or
a call was lost) refuses and says where it stands, and the sync reads from there. So the
shard, not the sync, owns its position, and a restarted sync resumes from the shards' own.

Restarts: when Ray restarts the actor after its process died, it loads the newest snapshot of
training shard ``k`` (the files ``ShardServer.snapshot`` wrote, streamed a chunk at a time;
``position.json`` names the incarnation and versions the copy began at) and the sync then
sends the changes since: snapshot + deltas, never a whole read of the training shard. Ids
evicted between that snapshot and the restart keep their rows here until they change or are
evicted again (the training shard dropped those eviction records once the sync took them).

No stalls: a load (snapshot at restart, or a whole state after the training shard restarted)
is built into a new store on a thread and swapped in under the lock; meanwhile :meth:`get`
answers from the old store, or, before a first state, ``ready=False``, which replicas treat as
a miss they answer with the default row and do not cache.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from monolith_ray.config import SlotConfig
from monolith_ray.files import filesystem_and_path
from monolith_ray.ps.shard import POSITION_FILE, TABLE_SUFFIX
from monolith_ray.serve.store import SparseStore
from monolith_ray.supervision import restarted_actor
from monolith_ray.table import EmbeddingTable, TableDelta

logger = logging.getLogger(__name__)


class Position(NamedTuple):
    """Where a serving shard's rows stand: the training shard's ``incarnation`` (None:
    unknown, read everything) and per slot the table version they hold every change up to."""

    incarnation: str | None
    versions: dict[str, int]


START = Position(None, {})  # holds nothing: the sync reads the training shard whole


class Fetched(NamedTuple):
    """An answer to :meth:`ServingShard.get`."""

    version: int  # the sync version of the last apply (0: none yet since this start)
    ready: bool  # False: no state yet (starting or loading); rows are all zeros
    rows: dict[str, np.ndarray]  # per slot (n, D+1) in the store dtype; zeros for ids not held


class ServingShard:
    """One serving shard. As a Ray actor give it ``max_concurrency`` >= 2, so that gets are
    answered while a load runs."""

    def __init__(self, slots: Sequence[SlotConfig], dtype: str = "float16",
                 restore_on_restart: Callable[[], str | None] | None = None) -> None:
        self.slots = list(slots)
        self.dtype = dtype
        self.store = SparseStore(self.slots, dtype)
        self.version = 0
        self.position = START
        self.ready = False
        self.restored_from: str | None = None
        self.incarnation = uuid.uuid4().hex
        self.counters = {"applies": 0, "refused": 0, "rows_applied": 0, "ids_evicted": 0,
                         "whole_loads": 0, "gets": 0, "ids_asked": 0}
        self._lock = threading.Lock()  # the store reference, version, position
        self._load_error: str | None = None
        folder = (restore_on_restart() if restore_on_restart is not None and restarted_actor()
                  else None)
        self.loading = folder is not None
        if folder is not None:
            threading.Thread(target=self.load_snapshot, args=(folder,), name="snapshot-load",
                             daemon=True).start()

    # ------------------------------------------------------------------ replicas

    def get(self, ids: Mapping[str, np.ndarray]) -> Fetched:
        """Rows of per slot ids int64 (n,) -> :class:`Fetched` (rows in the store dtype)."""
        with self._lock:
            self.counters["gets"] += 1
            self.counters["ids_asked"] += sum(int(a.size) for a in ids.values())
            rows = {name: self.store.take(name, a) for name, a in ids.items()}
            return Fetched(self.version, self.ready, rows)

    # ------------------------------------------------------------------ the sync

    def state(self) -> tuple[int, Position | None]:
        """``(version, position)``; position None while a snapshot loads."""
        with self._lock:
            return self.version, None if self.loading else self.position

    def apply(self, version: int, since: Position, upto: Position,
              deltas: Mapping[str, TableDelta], whole: bool = False
              ) -> tuple[bool, Position | None]:
        """Apply training-shard deltas (rows in the store dtype) read from ``since`` and take
        sync ``version`` and position ``upto`` -> ``(applied, position now)``. Refused
        (``applied`` False) while a snapshot loads (position None) or if ``since`` is not this
        shard's position. ``whole``: the deltas are the training shard's whole state: built
        into a new store and swapped in, whatever this shard held."""
        if whole:
            fresh = SparseStore(self.slots, self.dtype)
            fresh.apply_deltas(deltas)
            with self._lock:
                if self.loading:
                    self.counters["refused"] += 1
                    return False, None
                self.store, self.version, self.position = fresh, version, upto
                self.ready = True
                self.counters["whole_loads"] += 1
                self._count(deltas)
                return True, upto
        with self._lock:
            if self.loading or since != self.position:
                self.counters["refused"] += 1
                return False, None if self.loading else self.position
            self.store.apply_deltas(deltas)
            self.version, self.position, self.ready = version, upto, True
            self._count(deltas)
            return True, upto

    def stats(self) -> dict[str, Any]:
        """Rows per slot and bytes held, version, position, readiness and counters."""
        with self._lock:
            return {"rows": self.store.rows_per_slot(), "bytes": self.store.nbytes,
                    "dtype": self.dtype, "version": self.version,
                    "position": self.position._asdict(), "ready": self.ready,
                    "loading": self.loading, "restored_from": self.restored_from,
                    "load_error": self._load_error, "incarnation": self.incarnation,
                    "pid": os.getpid(), **self.counters}

    def pid(self) -> int:
        """This shard's process id."""
        return os.getpid()

    # ------------------------------------------------------------------ internals

    def _count(self, deltas: Mapping[str, TableDelta]) -> None:
        self.counters["applies"] += 1
        self.counters["rows_applied"] += sum(int(d.ids.size) for d in deltas.values())
        self.counters["ids_evicted"] += sum(int(d.evicted.size) for d in deltas.values())

    def load_snapshot(self, folder: str) -> None:
        """Build a store from training shard snapshot ``folder`` aside and swap it in (the
        sync then sends the changes since its position); on a failure start from nothing
        (the sync then reads the training shard whole). Runs by itself on a restart."""
        with self._lock:
            self.loading = True
        try:
            store, position = read_snapshot(folder, self.slots, self.dtype)
        except Exception as err:  # noqa: BLE001 - a bad snapshot must not keep the shard down
            logger.warning("serving shard could not load snapshot %s: %s", folder, err)
            store, position = SparseStore(self.slots, self.dtype), START
            self._load_error = f"{type(err).__name__}: {err}"
        with self._lock:
            self.store, self.position, self.version = store, position, 0
            self.ready = self._load_error is None  # the snapshot's rows: older, not wrong
            self.restored_from = folder if self._load_error is None else None
            self.loading = False


def read_snapshot(folder: str, slots: Sequence[SlotConfig], dtype: str = "float16"
                  ) -> tuple[SparseStore, Position]:
    """A serving store of training shard snapshot ``folder`` (``<slot>.table`` files, a
    local folder or ``pyarrow.fs`` URI) and the position it holds (``position.json``; absent
    in snapshots older than it: :data:`START`, everything is read again). Streams a chunk
    (64k rows) at a time, never the training table itself."""
    fs, path = filesystem_and_path(folder)
    store = SparseStore(slots, dtype)
    for slot in slots:
        with fs.open_input_stream(f"{path}/{slot.name}{TABLE_SUFFIX}",
                                  buffer_size=1 << 22) as f:
            for ids, weights in EmbeddingTable.snapshot_rows(f):
                if weights.shape[1] != slot.dim + 1:
                    raise ValueError(f"snapshot {folder}: slot {slot.name!r} rows are "
                                     f"{weights.shape[1]} wide, serving needs {slot.dim + 1}")
                store.upsert(slot.name, ids, weights.astype(store.dtype))
    try:
        with fs.open_input_stream(f"{path}/{POSITION_FILE}") as f:
            raw = json.loads(f.read(1 << 20).decode())
        position = Position(str(raw["incarnation"]),
                            {str(k): int(v) for k, v in raw["versions"].items()})
    except FileNotFoundError:
        position = START
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"snapshot {folder}: bad {POSITION_FILE}: {err}") from None
    return store, position


def start_serving_shards(cfg: Any, started_from: str | None = None) -> list[Any]:
    """One ``ServingShard`` actor per training shard (``train.n_shards``), placed by
    ``serve.shard_resources`` and spread over the nodes offering them, restarted by Ray up to
    ``supervision.max_restarts`` times, restoring the newest snapshot of this run (else
    ``started_from``) when they are."""
    import datetime as dt

    import ray

    from monolith_ray.supervision import actor_options
    from monolith_ray.train.snapshots import RunSnapshot, snapshot_root

    root = snapshot_root(cfg)
    since = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    options = {**actor_options(cfg.supervision), "max_task_retries": 0}
    actor = ray.remote(ServingShard).options(
        num_cpus=0, resources=dict(cfg.serve.shard_resources), max_concurrency=8,
        scheduling_strategy="SPREAD", **options)
    return [actor.remote(cfg.table_slots, cfg.serve.store_dtype,
                         RunSnapshot(root, since, started_from, f"shard-{k}"))
            for k in range(cfg.train.n_shards)]
