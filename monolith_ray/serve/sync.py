"""ParameterSync: moves fresh parameters from the training servers to live serving replicas.

Two schedules, as Monolith runs them (paper section 2.4): sparse rows often, dense weights
rarely, since the rows of new and active ids change the most while the MLP moves slowly.

- Every ``sparse_sync_interval_s`` (default 60 s) the actor asks every training shard, in one
  call each and all at once, for the rows changed and the ids evicted since the last sync
  (``ShardServer.changes_since``), applies them to its own :class:`SparseStore` and, if
  anything changed, makes a new *sparse version*, recording which ids it changed. The shards'
  eviction records it has taken are then dropped (``forget_evictions``): the sync is their
  one reader.
- Every ``dense_sync_interval_s`` (default 86400 s) it pulls the dense server's parameters;
  if training moved them it makes a new *dense version*.
- ``sync_now("sparse" | "dense" | "both")`` runs one on demand.
- A shard started or restored since the last sync (its *incarnation* changed) is read whole
  again; with the ``replica`` store, the ids it no longer has (held by the store from it,
  absent from the whole read) are dropped as evicted (``ids_gone_on_whole_reads``).
- A shard that is down holds up none of the others: a sync applies and versions what the
  others sent, then fails naming it (counted in ``failed_syncs``); a sync that fails part way
  through applying still logs, as a version, what it applied. What was not taken is asked
  for again next time.

How replicas get versions, and why this way: replicas *pull versioned deltas*. Each replica
asks :meth:`updates` with the versions it holds about once a second and gets back only what
changed since (the ids changed in the versions it lacks, with their current rows, and the
ids evicted), or the whole state if it is too far behind or new. A replica applies an update
between two requests of its event loop, so every answer is computed with one version, and a
replica never restarts. Compared with Serve's ``reconfigure`` (a new ``user_config`` per
version: the whole table through the controller each minute) or ``broadcast`` (alpha, and a
replica that starts mid-broadcast misses it), pulling lets a replica that starts late load
the latest versions in its constructor, before it takes traffic, and keeps the sync off the
request path: if this actor dies, replicas keep answering with the versions they hold.
A whole table goes to at most ``max_full_loads`` named replicas at a time (the others are
told ``deferred`` and keep serving what they hold), so a restart of this actor never has
every replica loading at once; a replica builds it aside and swaps it in.

Two stores (``serve.store``):

- ``replica`` (above): this actor and every replica hold every row. Its change log holds
  changed ids only (8 bytes each), the rows are read from its store when a replica asks.
- ``sharded``: serving shards (``serve.serving_shard``) hold the rows, pair ``k`` with
  training shard ``k``; this actor keeps no copy. Each round it reads training shard ``k``'s
  changes since serving shard ``k``'s *position* and applies them there, pair by pair, then
  logs the changed ids *with their rows* (store dtype) and the evicted ids under a new
  version, so replicas' caches update in place without asking the shards. Every round that
  reached a serving shard makes a version, even an empty one: a shard's version then names
  exactly which changes its rows include, and a replica's cache can tell a row fetched
  before an update it has applied (``RowCache.fill``). A training shard read whole (it
  restarted) logs a reset: caches start over. A replica new or further behind than the log
  gets a reset (an empty cache), never a table. After a restart this actor resumes from the
  serving shards' versions and positions: no shard is read whole again.

The change log is bounded in bytes (``log_bytes``, ``serve.sync_log_mb``): ids, rows, 160
bytes an array and 1 kB a version; the newest version always stays. At 1M changed rows a
version (dim 16, float16: 42 MB with ids) 256 MB keep six versions, about six minutes at the default
interval; a replica more than that behind starts over. With ``retrieval`` the tower tables'
changed rows share the log (ids a version then count every table's), so size it for both.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from monolith_ray import metrics
from monolith_ray.config import SlotConfig, SupervisionConfig
from monolith_ray.ps.client import calls_for
from monolith_ray.serve.serving_shard import Position
from monolith_ray.serve.store import SparseStore, SparseUpdate
from monolith_ray.supervision import actor_options
from monolith_ray.table import TableDelta

logger = logging.getLogger(__name__)

KINDS = ("sparse", "dense", "both")


class _Change(NamedTuple):
    version: int
    changed: dict[str, np.ndarray]
    evicted: dict[str, np.ndarray]
    rows: dict[str, np.ndarray] | None = None  # sharded: the changed ids' rows, store dtype
    reset: bool = False  # sharded: a training shard was read whole; caches start over


_ENTRY_BYTES = 1024  # counted per logged version besides its arrays: empty versions cost too
# counted per array besides its data: the array object (112 bytes for a 1-D array) and its
# dict entry; an empty sharded version of 8 slots holds 24 arrays, some 3.8 kB in all
_ARRAY_BYTES = 160


def _change_bytes(change: _Change) -> int:
    """Bytes a logged change holds: ids, rows (sharded), each array's object and a fixed
    overhead."""
    parts = [*change.changed.values(), *change.evicted.values(),
             *(change.rows or {}).values()]
    return _ENTRY_BYTES + sum(a.nbytes + _ARRAY_BYTES for a in parts)


class Updates(NamedTuple):
    """An answer to :meth:`ParameterSync.updates`: each part ``None`` if the caller is
    current. ``dense`` is ``(params, dense_version)``; ``incarnation`` names the sync actor's
    incarnation, whose versions these are."""

    sparse: SparseUpdate | None
    dense: tuple[Any, int] | None
    incarnation: str = ""
    deferred: bool = False  # a whole state is due but others are loading one: ask again
    # With ``dense``: the dense server's other parts, name -> (params, (the server's
    # incarnation, its version of the part)): a reader tells whether the part itself changed.
    parts: dict[str, tuple[Any, tuple[str, int]]] | None = None


class ParameterSync:
    """The sync between ``shards`` (``ShardServer`` actors or objects) and ``dense`` (a
    ``DenseServer``) and the serving replicas. Runs its schedules on a thread; as a Ray
    actor give it ``max_concurrency`` >= 2 so :meth:`updates` answers meanwhile."""

    def __init__(self, slots: Sequence[SlotConfig], shards: Sequence[Any], dense: Any, *,
                 sparse_interval_s: float = 60.0, dense_interval_s: float = 86400.0,
                 dtype: str = "float16", log_bytes: int = 256 << 20,
                 call_timeout_s: float = 60.0, start: bool = True,
                 forget_evictions: bool = True, serving: Sequence[Any] = (),
                 max_full_loads: int = 1, full_load_timeout_s: float = 120.0,
                 parts: Sequence[str] = ()) -> None:
        """``parts``: the dense server's parts besides the model to carry (e.g. ``tower``,
        the retrieval model): read with it on the dense schedule, handed out with it."""
        if sparse_interval_s <= 0 or dense_interval_s <= 0:
            raise ValueError("sync intervals must be > 0 seconds")
        if serving and len(serving) != len(shards):
            raise ValueError(f"{len(serving)} serving shards for {len(shards)} training "
                             f"shards: serving shard k holds training shard k's rows")
        if max_full_loads < 1:
            raise ValueError(f"max_full_loads must be >= 1, got {max_full_loads}")
        self.names = tuple(s.name for s in slots)
        self.dtype = np.dtype(dtype)
        self._widths = {s.name: s.dim + 1 for s in slots}
        self.incarnation = uuid.uuid4().hex
        self._forget = forget_evictions  # False when other readers share the shards' records
        self.shards, self.dense = list(shards), dense
        self.sparse_interval_s, self.dense_interval_s = sparse_interval_s, dense_interval_s
        self._calls = calls_for(self.shards, method="export_since", timeout_s=call_timeout_s)
        self._dense_calls = calls_for([dense], method="pull", timeout_s=call_timeout_s)
        # Sharded: no copy here; serving shard k holds training shard k's rows and its own
        # position (``serving_shard.Position``), which this actor learns from it.
        self.serving = list(serving)
        self._serving_calls = calls_for(self.serving, method="apply", timeout_s=call_timeout_s)
        self._positions: list[Position | None] = [None] * len(self.serving)
        self._unsure = [False] * len(self.serving)  # an apply sent, its answer not back
        self.store = None if self.serving else SparseStore(slots, dtype)
        self._floor = 0  # the highest version a serving shard was seen holding
        self._version = self._serving_version() if self.serving else 0
        # Whole states handed to replicas and not yet confirmed (caller -> monotonic time):
        # at most ``max_full_loads`` at a time, so replicas never all load at once.
        self.max_full_loads, self.full_load_timeout_s = max_full_loads, full_load_timeout_s
        self._loading: dict[str, float] = {}
        self._shard_versions = [dict.fromkeys(self.names, 0) for _ in self.shards]
        self._incarnations: list[str | None] = [None] * len(self.shards)
        # The change log: changed and evicted ids (and, sharded, rows) per version, oldest
        # first, at most ``log_bytes`` (see the module docstring), never fewer than the
        # newest version. A replica further behind than the log reaches gets the whole
        # state (sharded: a reset) instead.
        if log_bytes < 1:
            raise ValueError(f"log_bytes must be >= 1, got {log_bytes}")
        self._log: collections.deque[_Change] = collections.deque()
        self._log_bytes, self._log_limit = 0, int(log_bytes)
        self.dense_params: Any = None
        self.dense_version = 0
        self.parts = tuple(parts)
        self.part_params: dict[str, Any] = {}
        self._trained_dense_version: tuple | None = None  # (incarnation, versions...)
        self.counters = {"sparse_syncs": 0, "dense_swaps": 0, "dense_syncs": 0,
                         "rows_synced": 0, "ids_evicted": 0, "failed_syncs": 0,
                         "shard_resets": 0, "ids_gone_on_whole_reads": 0,
                         "serving_refusals": 0, "full_loads": 0,
                         "full_loads_deferred": 0}
        self.last_sync = {"sparse": 0.0, "dense": 0.0}  # unix seconds
        self._lock = threading.Lock()  # store, log, versions: a sync's apply vs updates()
        self._sync_lock = threading.Lock()  # one sync at a time: on demand vs schedule
        self._stop = threading.Event()
        self._wake = threading.Event()
        try:
            self.sync_now("both")
        except Exception as err:  # noqa: BLE001 - e.g. a shard restarting; the schedule retries
            self.counters["failed_syncs"] += 1
            logger.warning("first sync failed, serving starts empty: %s", err)
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run, name="parameter-sync",
                                            daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ syncs

    def sync_now(self, kind: str = "both") -> dict[str, int]:
        """Run a sparse sync, a dense sync or both now -> :meth:`versions`."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        with self._sync_lock:
            failed: list[Exception] = []
            for part, sync in (("sparse", self._sync_sparse), ("dense", self._sync_dense)):
                if kind in (part, "both"):
                    try:
                        self._measured(part, sync)
                    except Exception as err:  # noqa: BLE001 - the other part still runs
                        failed.append(err)
            if failed:
                raise failed[0]
        return self.versions()

    def _measured(self, kind: str, sync: Callable[[], None]) -> None:
        """Run ``sync`` (of ``kind``) and record its metrics: its seconds and the version,
        then the time of a success or the count of a failure."""
        started, ok = time.perf_counter(), False
        try:
            sync()
            ok = True
        finally:
            metrics.SYNC_SECONDS.observe(time.perf_counter() - started, kind=kind)
            metrics.SYNC_VERSION.set(self.versions()[kind], kind=kind)
            if ok:
                metrics.SYNC_TIMESTAMP.set(time.time(), kind=kind)
            else:
                metrics.SYNC_FAILURES.inc(kind=kind)

    def _sync_sparse(self) -> None:
        if self.serving:
            self._sync_sharded()
        else:
            self._sync_replicated()

    def _serving_version(self) -> int:
        """The newest version any reachable serving shard holds (a restarted sync goes on
        from there); their positions are learnt as each is next synced."""
        calls = self._serving_calls
        found = 0
        for shard in self.serving:
            try:
                found = max(found, int(calls.gather([calls.submit(shard, "state")])[0][0]))
            except Exception as err:  # noqa: BLE001 - asked again at its next sync
                logger.warning("serving shard unreachable at the sync's start: %s", err)
        self._floor = max(self._floor, found)
        return found

    def _sync_sharded(self) -> None:
        """Read each training shard's changes since its serving shard's position and apply
        them there, one pair at a time; then log them under a new version (every round that
        reached a serving shard makes one, so a version names the rows a shard serves: a
        replica's cache tells a fetched row's age by it)."""
        # Past any version a serving shard was seen holding: a shard slow to answer at this
        # actor's start may hold a later one, and a version must never name two states.
        version = max(self._version, self._floor) + 1
        changed = {n: [np.empty(0, np.int64)] for n in self.names}
        evicted = {n: [np.empty(0, np.int64)] for n in self.names}
        rows = {n: [self._no_rows(n)] for n in self.names}
        failures, reached, reset = [], [], False
        for k in range(len(self.shards)):
            try:
                applied = self._sync_pair(k, version)
            except Exception as err:  # noqa: BLE001 - one pair down holds up none of the others
                self._positions[k] = None  # asked again next time
                failures.append(f"shard {k}: {err}")
                if self._unsure[k]:  # it may hold rows no version logs: caches start over
                    self._unsure[k] = False
                    reached.append(k)
                    reset = True
                continue
            reached.append(k)
            if applied is None:  # read whole: caches start over
                reset = True
                continue
            for name, delta in applied.items():
                changed[name].append(delta.ids)
                evicted[name].append(delta.evicted)
                rows[name].append(delta.weights)
        with self._lock:
            if reached:
                change = _Change(
                    version, {n: np.concatenate(a) for n, a in changed.items()},
                    {n: np.concatenate(a) for n, a in evicted.items()},
                    {n: np.concatenate(a) for n, a in rows.items()}, reset)
                self._version = version
                self._append(change)
                n_rows = sum(a.size for a in change.changed.values())
                n_evicted = sum(a.size for a in change.evicted.values())
                self.counters["rows_synced"] += int(n_rows)
                self.counters["ids_evicted"] += int(n_evicted)
                metrics.SYNC_ROWS.inc(int(n_rows + n_evicted))
            self.counters["sparse_syncs"] += 1
            self.last_sync["sparse"] = time.time()
        if failures:
            raise RuntimeError("sparse sync could not move " + "; ".join(failures))

    def _sync_pair(self, k: int, version: int) -> dict[str, TableDelta] | None:
        """Move training shard ``k``'s changes to serving shard ``k`` at ``version`` -> the
        deltas applied (rows in the store dtype), None if it was a whole state. A serving
        shard that stands elsewhere than this actor thought (it restarted) says where, and
        is read from there at once."""
        calls, serving = self._calls, self._serving_calls
        for _ in range(2):
            position = self._positions[k]
            if position is None:
                held, position = serving.gather([serving.submit(self.serving[k], "state")])[0]
                if held >= version:  # it holds a later version than this actor knew
                    self._floor = max(self._floor, int(held))
                    raise RuntimeError(f"its serving shard holds version {held}: the next "
                                       f"round is numbered past it")
                if position is None:
                    raise RuntimeError("its serving shard is loading a snapshot")
            incarnation, deltas = calls.gather([calls.submit(
                self.shards[k], "changes_since", position.versions, position.incarnation)])[0]
            whole = incarnation != position.incarnation
            if whole and position.incarnation is not None:
                self.counters["shard_resets"] += 1
            compact = {name: TableDelta(d.ids, d.weights.astype(self.dtype), d.evicted,
                                        d.version) for name, d in deltas.items()}
            upto = Position(incarnation, {name: d.version for name, d in deltas.items()})
            self._unsure[k] = True
            ok, now = serving.gather([serving.submit(self.serving[k], "apply", version,
                                                     position, upto, compact, whole)])[0]
            self._unsure[k] = False
            self._positions[k] = upto if ok else now
            if ok:
                if self._forget:
                    try:
                        calls.gather([calls.submit(self.shards[k], "forget_evictions",
                                                   upto.versions, incarnation)])
                    except Exception as err:  # noqa: BLE001 - applied: logged anyway
                        logger.warning("shard %d: eviction records kept: %s", k, err)
                return None if whole else compact
            self.counters["serving_refusals"] += 1
            if now is None:
                raise RuntimeError("its serving shard is loading a snapshot")
        raise RuntimeError("its serving shard refused the delta twice")

    def _sync_replicated(self) -> None:
        calls = self._calls
        failures, results = [], []
        # One shard at a time: a delta of millions of rows costs its shard CPU to gather and
        # serialize, and shards sharing a node with trainers would all take it at once.
        for k, shard in enumerate(self.shards):  # one shard down holds up none of the others
            try:
                handle = calls.submit(shard, "changes_since", self._shard_versions[k],
                                      self._incarnations[k])
                results.append((k, *calls.gather([handle])[0]))
            except Exception as err:  # noqa: BLE001 - reported below, after the others
                failures.append(f"shard {k}: {err}")
        read = []
        with self._lock:
            changed = {n: [np.empty(0, np.int64)] for n in self.names}
            evicted = {n: [np.empty(0, np.int64)] for n in self.names}
            try:
                for k, incarnation, deltas in results:
                    whole = self._incarnations[k] != incarnation
                    if self._incarnations[k] not in (None, incarnation):
                        self.counters["shard_resets"] += 1  # restarted or restored: read whole
                    for name, delta in deltas.items():  # slot by slot: logged as applied
                        if whole:
                            delta = self._with_gone(k, name, delta)
                        self.store.apply_deltas({name: delta}, owner=k)
                        changed[name].append(delta.ids)
                        evicted[name].append(delta.evicted)
                        self._shard_versions[k][name] = delta.version
                    self._incarnations[k] = incarnation
                    read.append(k)
            finally:  # log what was applied, even if a later delta failed
                change = _Change(self.store.version + 1,
                                 {n: np.unique(np.concatenate(a)) for n, a in changed.items()},
                                 {n: np.unique(np.concatenate(a)) for n, a in evicted.items()})
                n_rows = sum(a.size for a in change.changed.values())
                n_evicted = sum(a.size for a in change.evicted.values())
                if n_rows or n_evicted:
                    self.store.version = change.version
                    self._append(change)
                self.counters["rows_synced"] += int(n_rows)
                self.counters["ids_evicted"] += int(n_evicted)
                metrics.SYNC_ROWS.inc(int(n_rows + n_evicted))
            self.counters["sparse_syncs"] += 1
            self.last_sync["sparse"] = time.time()
        if self._forget and read:
            calls.gather([calls.submit(self.shards[k], "forget_evictions",
                                       dict(self._shard_versions[k]), self._incarnations[k])
                          for k in read])
        if failures:
            raise RuntimeError("sparse sync could not read " + "; ".join(failures))

    def _with_gone(self, k: int, name: str, delta: TableDelta) -> TableDelta:
        """``delta``, training shard ``k``'s whole table ``name``, with the ids the store
        holds from that shard (as it recorded at each upsert, whatever the routing) and the
        table no longer has added as evicted: a shard restored from a snapshot lacks what it
        evicted since, and without this those rows stayed served until they changed. O(rows
        held + delta), no sort, under the lock: once per whole read. An id evicted and
        inserted again while the whole read was scanned is dropped for one interval and
        comes back with the next delta."""
        gone = self.store.missing_from(name, k, delta.ids)
        if not gone.size:
            return delta
        self.counters["ids_gone_on_whole_reads"] += int(gone.size)
        return TableDelta(delta.ids, delta.weights, np.concatenate([delta.evicted, gone]),
                          delta.version)

    def _append(self, change: _Change) -> None:
        """Log ``change``, dropping the oldest versions while the log holds more than
        ``log_bytes`` of ids (the newest always stays)."""
        self._log.append(change)
        self._log_bytes += _change_bytes(change)
        while len(self._log) > 1 and self._log_bytes > self._log_limit:
            self._log_bytes -= _change_bytes(self._log.popleft())

    def _sync_dense(self) -> None:
        calls = self._dense_calls
        # Incarnation first (a caller's calls run in the order issued): parameters read after
        # it are at least as new as it names. Both in one round trip.
        incarnation, (params, version), *parts = calls.gather(
            [calls.submit(self.dense, "incarnation"), calls.submit(self.dense, "pull"),
             *(calls.submit(self.dense, "pull", part) for part in self.parts)])
        # A part's version joins the model's: a part may train while the model does not.
        trained = (incarnation, version, *(v for _, v in parts))
        with self._lock:
            if trained != self._trained_dense_version or self.dense_params is None:
                self.dense_params = params
                self.part_params = {name: (p, (incarnation, int(v)))
                                    for name, (p, v) in zip(self.parts, parts)}
                self._trained_dense_version = trained
                self.dense_version += 1
                self.counters["dense_swaps"] += 1
            self.counters["dense_syncs"] += 1
            self.last_sync["dense"] = time.time()

    # ------------------------------------------------------------------ replicas

    def updates(self, sparse_version: int, dense_version: int, incarnation: str = "",
                caller: str = "") -> Updates:
        """What a replica holding these versions, got from ``incarnation`` (one life of
        this actor), needs to be current: everything if they came from another incarnation
        (a restarted actor counts its versions from 1 again). A replica that names itself
        (``caller``) gets a whole table only while fewer than ``max_full_loads`` others are
        loading one (a load ends when its replica asks again, or after
        ``full_load_timeout_s``); else ``deferred`` and nothing else."""
        with self._lock:
            now = time.monotonic()
            self._loading.pop(caller, None)
            for other, since in list(self._loading.items()):
                if now - since > self.full_load_timeout_s:
                    del self._loading[other]
            if incarnation != self.incarnation:
                sparse_version, dense_version = 0, -1
            if self.store is not None and caller and self._whole_due(sparse_version):
                if len(self._loading) >= self.max_full_loads:
                    self.counters["full_loads_deferred"] += 1
                    return Updates(None, None, "", deferred=True)
                self._loading[caller] = now
                self.counters["full_loads"] += 1
            dense, parts = None, None
            if self.dense_params is not None and dense_version != self.dense_version:
                dense = (self.dense_params, self.dense_version)
                parts = dict(self.part_params) or None
            return Updates(self._sparse_since(sparse_version), dense, self.incarnation, parts=parts)

    def _whole_due(self, version: int) -> bool:
        """Whether a replica at sparse ``version`` needs the whole state (or, sharded, a
        cache reset): new, ahead, or behind what the log holds."""
        current = self._sparse_version
        return version != current and (version <= 0 or version > current or not self._log
                                       or version < self._log[0].version - 1)

    @property
    def _sparse_version(self) -> int:
        return self._version if self.store is None else self.store.version

    def _sparse_since(self, version: int) -> SparseUpdate | None:
        if version == self._sparse_version:
            return None
        if self.store is None:
            return self._sharded_since(version)
        current = self.store.version
        if self._whole_due(version):
            return self.store.whole_update()
        newer = [c for c in self._log if c.version > version]
        ids, rows, evicted = {}, {}, {}
        for name in self.names:
            wanted = np.unique(np.concatenate([c.changed[name] for c in newer]))
            ids[name], rows[name] = self.store.get(name, wanted)
            gone = np.unique(np.concatenate([c.evicted[name] for c in newer]))
            evicted[name] = gone[~self.store.contains(name, gone)]
        return SparseUpdate(current, False, ids, rows, evicted)

    def _sharded_since(self, version: int) -> SparseUpdate:
        """Sharded: the rows changed and ids evicted after ``version``, each id's last event
        across the versions (ids evicted then trained again are rows; rows evicted later
        are evictions); a reset without rows if the log does not reach back, or a training
        shard was read whole since."""
        current = self._version
        empty = {n: np.empty(0, np.int64) for n in self.names}
        reset = SparseUpdate(current, True, empty, {n: self._no_rows(n) for n in self.names},
                             empty)
        if self._whole_due(version):
            return reset
        newer = [c for c in self._log if c.version > version]
        if any(c.reset for c in newer):
            return reset
        ids, rows, evicted = {}, {}, {}
        for name in self.names:
            events = np.concatenate([a for c in newer for a in (c.changed[name],
                                                                c.evicted[name])])
            is_row = np.concatenate([np.full(a.size, r) for c in newer
                                     for a, r in ((c.changed[name], True),
                                                  (c.evicted[name], False))])
            # events' rows, in order: the k-th row event's row is held_rows[k]
            held_rows = [c.rows[name] for c in newer if c.changed[name].size]
            row_at = np.cumsum(is_row) - 1
            _, first_back = np.unique(events[::-1], return_index=True)
            last = events.size - 1 - first_back  # each id's last event
            kept = last[is_row[last]]
            ids[name] = events[kept]
            rows[name] = (np.concatenate(held_rows)[row_at[kept]] if held_rows
                          else self._no_rows(name))
            evicted[name] = events[last[~is_row[last]]]
        return SparseUpdate(current, False, ids, rows, evicted)

    def _no_rows(self, name: str) -> np.ndarray:
        return np.empty((0, self._widths[name]), self.dtype)

    def versions(self) -> dict[str, int]:
        """``{"sparse": .., "dense": ..}``: the versions a current replica holds."""
        return {"sparse": self._sparse_version, "dense": self.dense_version}

    def status(self) -> dict[str, Any]:
        """Versions, counters, last sync times (unix s), intervals and the store's size."""
        with self._lock:
            return {"versions": self.versions(), **self.counters,
                    "last_sync": dict(self.last_sync),
                    "sparse_interval_s": self.sparse_interval_s,
                    "dense_interval_s": self.dense_interval_s,
                    "store": "replica" if self.store is not None else "sharded",
                    "rows": {} if self.store is None else self.store.rows_per_slot(),
                    "bytes": self._log_bytes if self.store is None else self.store.nbytes,
                    "log_bytes": self._log_bytes, "log_versions": len(self._log),
                    "loading_replicas": len(self._loading)}

    def stop(self) -> None:
        """End the schedules (a sync in progress finishes)."""
        self._stop.set()
        self._wake.set()

    # ------------------------------------------------------------------ schedule

    def _run(self) -> None:
        due = {"sparse": time.monotonic() + self.sparse_interval_s,
               "dense": time.monotonic() + self.dense_interval_s}
        interval = {"sparse": self.sparse_interval_s, "dense": self.dense_interval_s}
        while not self._stop.is_set():
            self._wake.wait(max(0.0, min(due.values()) - time.monotonic()))
            if self._stop.is_set():
                return
            for kind in ("sparse", "dense"):
                if time.monotonic() < due[kind]:
                    continue
                due[kind] = time.monotonic() + interval[kind]
                try:
                    self.sync_now(kind)
                except Exception as err:  # noqa: BLE001 - the schedule must outlive any failure
                    # Serving keeps its versions; the next round tries again.
                    self.counters["failed_syncs"] += 1
                    logger.warning("%s sync failed: %s", kind, err)


def check_sources(slots: Sequence[SlotConfig], shards: Sequence[Any], dense: Any,
                  parts: Sequence[str], timeout_s: float = 60.0) -> None:
    """ConfigError naming ``retrieval`` unless the training job's shards hold exactly the
    tables ``slots`` name and its dense server the ``parts``: a job and a serving config
    that disagree on retrieval would fail every sync, and serving would start empty. Servers
    that do not answer within ``timeout_s`` are not checked (logged): a sync started while
    they restart finds them later."""
    import ray

    from monolith_ray.config import ConfigError

    try:
        tables = set(ray.get(shards[0].stats.remote(), timeout=timeout_s)) if shards else None
        held = set(ray.get(dense.parts.remote(), timeout=timeout_s)) if parts else set()
    except Exception as err:  # noqa: BLE001 - a restarting server is checked by its sync
        logger.warning("could not check the training servers' tables and parts: %r", err)
        return
    wanted = {s.name for s in slots}
    if tables is not None and tables != wanted:
        raise ConfigError("retrieval", f"the training job's shards hold tables "
                          f"{sorted(tables)}, this config syncs {sorted(wanted)}: serve with the "
                          f"job's retrieval settings")
    missing = sorted(set(parts) - held)
    if missing:
        raise ConfigError("retrieval", f"the training job's dense server holds no part "
                          f"{missing[0]!r} (it trains without retrieval): serve with the job's "
                          f"retrieval settings")


def start_parameter_sync(slots: Sequence[SlotConfig], shards: Sequence[Any], dense: Any,
                         serve_cfg: Any, call_timeout_s: float = 60.0, name: str | None = None,
                         forget_evictions: bool = True,
                         supervision: SupervisionConfig = SupervisionConfig(),
                         serving: Sequence[Any] = (), parts: Sequence[str] = ()) -> Any:
    """A ``ParameterSync`` Ray actor (carrying the dense server's ``parts`` too) with ``serve_cfg``'s intervals, store dtype and custom
    resources (``sync_resources``; a ``ServeConfig``); restarted by Ray if its process dies, up to
    ``supervision.max_restarts`` times (it rebuilds its store from the shards, and replicas
    then receive a whole state)."""
    import ray

    check_sources(slots, shards, dense, parts, call_timeout_s)
    actor = ray.remote(ParameterSync).options(
        num_cpus=0, resources=dict(serve_cfg.sync_resources), max_concurrency=4,
        **actor_options(supervision), name=name, get_if_exists=name is not None)
    return actor.remote(slots, shards, dense,
                        sparse_interval_s=serve_cfg.sparse_sync_interval_s,
                        dense_interval_s=serve_cfg.dense_sync_interval_s,
                        dtype=serve_cfg.store_dtype, call_timeout_s=call_timeout_s,
                        log_bytes=int(serve_cfg.sync_log_mb * 2**20),
                        forget_evictions=forget_evictions, serving=serving,
                        max_full_loads=serve_cfg.max_full_loads, parts=parts)
