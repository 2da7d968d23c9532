"""Retrieval over a replica's whole catalogue (the candidate pool): the serving side of the
config's ``retrieval`` section, between the sync's updates and ``/recommend``.

- **Catalogue**: the candidate pool's items, each keyed in the ANN index by its position in
  the pool (``CandidatePool.ids``), so a search answers positions ``/recommend`` ranks
  directly. Its item-slot values are gathered once into a batch (``ServingModel.batch_of``).
- **Refresh** (a thread of its own, so the replica's ranking updates never wait for it):
  the replica's poll thread hands each committed update to :meth:`on_updates`, which only
  notes what it asks for; the refresh thread then does it, the newest first. A new tower
  part (its version changed; the sync sends the part with every dense update) or a whole
  table re-embeds the whole catalogue into a new index, built aside and swapped in
  (``Retriever.install``); a sparse update re-embeds only the items one of whose item-slot
  tower rows changed or was evicted, upserted in place, unless they are more than
  ``retrieval.rebuild_share`` of the catalogue (e.g. a category row most items read), then
  it rebuilds aside. Updates that arrive during a refresh accumulate: the next one takes
  them all, reading the rows the store holds by then.
- **Search** (``/recommend`` without candidates): the user's tower rows from the store,
  pooled, the user tower, the index -> ``retrieval.candidates`` pool positions.
- **With ``serve.store: sharded``** the serving shards hold the tower tables too: a search
  reads the user's rows through the replica's cache, as ranking does; a refresh reads the
  catalogue's rows from the shards straight, past the cache (``ShardedRows.fetch_blocking``:
  a rebuild of n items reads n rows per item slot and must not evict the rows requests
  use).
- **A refresh that fails** (a serving shard down or still catching up) keeps the index as it
  was; its work is noted again at once (so :meth:`CatalogueRetrieval.wait_idle` does not call
  it done) and tried again, with whatever updates came meanwhile, after a pause that doubles
  from ``REFRESH_RETRY_S`` to ``REFRESH_RETRY_MAX_S`` while it keeps failing.
- **A search runs off the event loop** (a thread): an upsert holds the index's lock for a
  chunk of ``UPSERT_CHUNK`` items (about 90 ms at 0.7 ms an item, an estimate), which must
  not stall the replica's other requests.

Costs (n items in the catalogue, N retrieved, d the tower dim): a rebuild embeds the
catalogue ``CHUNK`` items at a time (the store read under its lock a chunk at a time, so
requests wait at most one chunk's lookup, about 30 ms for 65,536 items) and builds the HNSW
graph, about 0.5 s for 1,682 items and 31 s for 200,000 on this machine (usearch, one
thread: ``benchmarks.retrieval``); finding the items a sparse update of c rows touched is
O(c log c + c log F + t log t) on the poll thread (F the catalogue's distinct item-slot
fids, t the values found: :class:`Readers`, built once per replica in O(v) for the
catalogue's v item-slot values); a search is one user-tower pass and one HNSW query (``/healthz``'s
``retrieval.p99_ms``). Memory: the index, about ``4·d + 128`` bytes per item, the catalogue's
fids, :class:`Readers`' 4 bytes a value and 8 a fid, and one chunk's rows during a rebuild.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from typing import Any

import numba as nb
import numpy as np

from monolith_ray.config import Config
from monolith_ray.retrieval.configured import TOWER_PART, index_config, tower_spec
from monolith_ray.retrieval.retriever import Retriever
from monolith_ray.retrieval.tables import pool_rows, pooled_rows, table_name, tower_fids
from monolith_ray.serve.model import ServingModel, SlotRows
from monolith_ray.serve.store import SparseStore
from monolith_ray.serve.sync import Updates

logger = logging.getLogger(__name__)

LATENCY_SAMPLES = 10_000  # the most recent searches /healthz's percentiles are over
CHUNK = 1 << 16  # catalogue items embedded (and their rows read) at a time
REFRESH_RETRY_S = 5.0  # pause before a failed refresh is tried again, doubled while failing
REFRESH_RETRY_MAX_S = 300.0  # the longest such pause


@nb.njit(cache=True, nogil=True)
def _place_readers(idx: np.ndarray, starts: np.ndarray, items: np.ndarray) -> None:
    """A counting sort of the catalogue's values by fid: item i into ``items`` at the next
    free place of each fid it reads (``idx[i]``), items in order within a fid. O(v)."""
    cursor = starts[:-1].copy()
    for i in range(idx.shape[0]):
        for j in range(idx.shape[1]):
            f = idx[i, j]
            if f >= 0:
                items[cursor[f]] = i
                cursor[f] += 1


class Readers:
    """Which catalogue items read each fid of one item slot: the inverse of a batch's
    ``idx`` (int (n, L), rows of the sorted distinct ``fids`` (F,), -1 for none), kept as
    the items sorted by the fid they read (``items``, int32 (v,)) and each fid's start in it
    (``starts``, int64 (F + 1,)). Built once, O(v) for v values; :meth:`of` costs
    O(c log c + c log F + t log t) for c fids asked and t values found, O(c log c + c log F
    + n) past t = n / 16 for n items."""

    def __init__(self, fids: np.ndarray, idx: np.ndarray) -> None:
        self.fids = np.asarray(fids, dtype=np.int64)
        idx = np.asarray(idx)
        self.n = idx.shape[0]
        if self.n >= 2**31:
            raise ValueError(f"{self.n} catalogue items: positions are int32, at most 2^31 - 1")
        idx = idx.reshape(self.n, idx.shape[1] if idx.ndim == 2 else 1)  # int32: no copy
        self.starts = np.zeros(self.fids.size + 1, np.int64)
        np.cumsum(np.bincount(idx[idx >= 0], minlength=self.fids.size), out=self.starts[1:])
        self.items = np.empty(int(self.starts[-1]), np.int32)
        _place_readers(idx, self.starts, self.items)

    def of(self, fids: np.ndarray) -> np.ndarray:
        """Items int64 (t,), sorted and distinct, that read any of ``fids`` (int64 (c,),
        fids the catalogue lacks ignored)."""
        asked = np.sort(np.asarray(fids, dtype=np.int64).reshape(-1))  # near lookups in turn
        if not asked.size or not self.fids.size:
            return np.empty(0, np.int64)
        pos = np.minimum(np.searchsorted(self.fids, asked), self.fids.size - 1)
        pos = np.unique(pos[self.fids[pos] == asked])
        begin, end = self.starts[pos], self.starts[pos + 1]
        counts = end - begin
        if not counts.sum():
            return np.empty(0, np.int64)
        # each found fid's run of items in ``items``, laid end to end
        at = np.repeat(begin - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        return distinct(self.items[at], self.n)


def distinct(items: np.ndarray, n: int) -> np.ndarray:
    """Sorted distinct int64 of ``items`` (ints in [0, n)): a sort when they are few, one
    pass over an n-bool mask when they are many (a row most items read)."""
    if items.size * 16 < n:
        return np.unique(items).astype(np.int64)
    mask = np.zeros(n, bool)
    mask[items] = True
    return np.flatnonzero(mask).astype(np.int64)


class CatalogueRetrieval:
    """The ANN index of a replica's catalogue (``pool_rows``: the pool's slot values, row i
    pool item i) and its searches; see the module doc. ``background``: refresh on a thread
    of its own (False: :meth:`on_updates` refreshes before it returns)."""

    def __init__(self, cfg: Config, model: ServingModel, pool_rows: SlotRows,
                 background: bool = True) -> None:
        self.n = cfg.retrieval.candidates
        self.share = cfg.retrieval.rebuild_share
        self.model = model
        self.spec = tower_spec(cfg)
        self.retriever = Retriever(self.spec, config=index_config(cfg))
        self.catalogue = model.batch_of(pool_rows, now=0)
        self._readers = {slot.name: Readers(self.catalogue.fids[slot.name],
                                            self.catalogue.idx[slot.name])
                         for slot in self.spec.item}
        self.size = len(pool_rows)
        self._pool_rows = pool_rows
        self._lock = threading.Lock()
        self._latency_ms: collections.deque[float] = collections.deque(maxlen=LATENCY_SAMPLES)
        self.counts = {"searches": 0, "fallbacks": 0, "search_failures": 0, "rebuilds": 0,
                       "upserted": 0, "refresh_failures": 0}
        # What the updates noted so far ask of the refresh thread, under ``_lock``.
        self._params: Any = None  # the newest tower parameters and their key
        self._key: Any = None
        self._rebuild = False
        # Pool items an update changed since the last refresh took them (None: none): one bool
        # an item, however many updates come while a rebuild runs.
        self._touched: np.ndarray | None = None
        self._busy = False
        self._wake = threading.Condition(self._lock)
        self._thread = None
        if background:
            self._thread = threading.Thread(target=self._run, name="retrieval-refresh",
                                            daemon=True)
            self._thread.start()

    @property
    def ready(self) -> bool:
        """Whether searches answer: tower parameters and a non-empty index are held."""
        return self.retriever.params is not None and len(self.retriever) > 0

    # -- refresh

    def on_updates(self, updates: Updates) -> None:
        """Note what ``updates`` (already committed to ``model``) asks of the index; the
        refresh thread does it (or this call, without one)."""
        part = (updates.parts or {}).get(TOWER_PART)
        sparse = updates.sparse
        whole = isinstance(sparse, SparseStore) or (sparse is not None and sparse.reset)
        touched = None
        if part is None and not whole and sparse is not None and self.size:
            touched = self._touched_by(sparse)
        with self._lock:
            if part is not None and part[1] != self._key:
                self._params, self._key, self._rebuild = part[0], part[1], True
            elif whole and self._params is not None:
                self._rebuild = True
            elif touched is not None and touched.size:
                if self._touched is None:
                    self._touched = np.zeros(self.size, bool)
                self._touched[touched] = True
            self._wake.notify()
        if self._thread is None:
            self._refresh_pending()

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until every update noted so far is in the index -> False on timeout."""
        with self._lock:
            return self._wake.wait_for(
                lambda: not (self._busy or self._rebuild or self._touched is not None), timeout_s)

    def _run(self) -> None:
        pause = REFRESH_RETRY_S
        while True:
            with self._lock:
                self._wake.wait_for(lambda: self._rebuild or self._touched is not None)
            if self._refresh_pending():
                pause = REFRESH_RETRY_S
            else:  # noted again: tried after a pause (a serving shard may be back by then)
                time.sleep(pause)
                pause = min(2 * pause, REFRESH_RETRY_MAX_S)

    def _refresh_pending(self) -> bool:
        """Take what is noted and bring the index up to it -> whether it did. After a failure
        (logged and counted; the index stays as it was, serving goes on) the work it took is
        noted again, merged with what came meanwhile."""
        with self._lock:
            params, rebuild, touched = self._params, self._rebuild, self._touched
            self._rebuild, self._touched, self._busy = False, None, True
        try:
            if params is None or not self.size:
                return True  # nothing to do yet: the tower part's arrival rebuilds
            changed = (np.flatnonzero(touched).astype(np.int64) if touched is not None
                       else np.empty(0, np.int64))
            if rebuild or changed.size > self.share * self.size:
                self._install(np.arange(self.size, dtype=np.int64), params)
                self.counts["rebuilds"] += 1
            elif changed.size:
                self._install(changed, None)
                self.counts["upserted"] += int(changed.size)
            return True
        except Exception as err:  # noqa: BLE001 - retrieval must never stop serving
            self.counts["refresh_failures"] += 1
            logger.warning("retrieval index not refreshed, to be tried again: %r", err)
            with self._lock:  # before _busy clears: wait_idle must not see it done
                self._rebuild = self._rebuild or rebuild
                if touched is not None:
                    self._touched = (touched if self._touched is None
                                     else self._touched | touched)
            return False
        finally:
            with self._lock:
                self._busy = False
                self._wake.notify_all()

    def _install(self, which: np.ndarray, params: Any) -> None:
        """Embed pool items ``which`` (with ``params``, a rebuild; None: the parameters
        held, an upsert) ``CHUNK`` at a time and put them in the index."""
        using = params if params is not None else self.retriever.params
        vectors = np.empty((which.size, self.spec.dim), np.float32)
        for start in range(0, which.size, CHUNK):
            part = which[start:start + CHUNK]
            vectors[start:start + part.size] = self.retriever.item_vectors(
                self._item_rows(part), using)
        self.retriever.install(which, vectors, params)

    def _touched_by(self, sparse: Any) -> np.ndarray:
        """Pool positions int64, sorted and distinct, of the items reading a tower row
        ``sparse`` changed or evicted."""
        found = []
        for slot in self.spec.item:
            name = table_name(slot.name)
            changed = [sparse.ids.get(name), sparse.evicted.get(name)]
            changed = [c for c in changed if c is not None and len(c)]
            if changed:
                found.append(self._readers[slot.name].of(np.concatenate(changed)))
        if not found:
            return np.empty(0, np.int64)
        return found[0] if len(found) == 1 else distinct(np.concatenate(found), self.size)

    def _item_rows(self, which: np.ndarray) -> dict[str, np.ndarray]:
        """Pool items ``which``'s pooled tower rows per item slot, read from the store."""
        batch = self.model.batch_of(self._pool_rows, take=which, now=0)
        return pooled_rows(self.model.tower_lookup, batch, self.spec.item)

    # -- search (requests)

    async def search(self, user: SlotRows, now: int, extra: int = 0) -> np.ndarray | None:
        """Up to ``retrieval.candidates`` + ``extra`` pool positions int64 for the one-row
        ``user``, best first (``extra``: items the caller will leave out, e.g. those the user
        acted on); None (counted as a fallback) before the index is ready or if the search
        fails (counted, logged)."""
        if not self.ready:
            self.counts["fallbacks"] += 1
            return None
        start = time.perf_counter()
        try:
            batch = self.model.batch_of(user, now=now)
            found = await self.model.tower_rows(tower_fids(batch, self.spec.user))
            ids = await asyncio.to_thread(self._nearest, batch, found, self.n + max(extra, 0))
        except Exception as err:  # noqa: BLE001 - a request is served without it, not failed
            self.counts["search_failures"] += 1
            self.counts["fallbacks"] += 1
            logger.warning("retrieval failed, a random draw serves the request: %r", err)
            return None
        found = ids[0][ids[0] >= 0]
        with self._lock:
            self._latency_ms.append((time.perf_counter() - start) * 1e3)
            self.counts["searches"] += 1
        return found

    def _nearest(self, batch: Any, found: dict[str, np.ndarray], n: int) -> np.ndarray:
        """The nearest pool positions int64 (1, m), m = min(n, items indexed), of the
        one-example ``batch`` whose user tower rows are ``found``: pooled, the user tower,
        the index."""
        return self.retriever.search_batch(pool_rows(found, batch, self.spec.user), n)[0]

    def stats(self) -> dict[str, Any]:
        """Counts, items indexed, its version, and search latency percentiles (ms) over the
        last ``LATENCY_SAMPLES`` searches."""
        with self._lock:
            samples = np.asarray(self._latency_ms)
        out: dict[str, Any] = {**self.counts, "items": len(self.retriever),
                               "version": self.retriever.version}
        if samples.size:
            out["p50_ms"] = round(float(np.percentile(samples, 50)), 3)
            out["p99_ms"] = round(float(np.percentile(samples, 99)), 3)
        return out
