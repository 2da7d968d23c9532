"""Retrieval over a replica's whole catalogue (the candidate pool): the serving side of the
config's ``retrieval`` section, between the sync's updates and ``/recommend``.

- **Catalogue**: the candidate pool's items, each keyed in the ANN index by its position in
  the pool (``CandidatePool.ids``), so a search answers positions ``/recommend`` ranks
  directly. Its item-slot values are gathered once into a batch (``ServingModel.batch_of``).
- **Refresh** (the replica's poll thread, after each update is committed): new tower
  parameters (the sync's ``tower`` part, on the dense schedule) or a whole table re-embed
  the whole catalogue into a new index, built aside and swapped in (``Retriever.refresh``);
  a sparse update re-embeds only the items one of whose item-slot tower rows changed or was
  evicted, upserted in place, unless they are more than ``retrieval.rebuild_share`` of the
  catalogue (e.g. a category row every item reads), then it rebuilds aside.
- **Search** (``/recommend`` without candidates): the user's tower rows from the store,
  pooled, the user tower, the index -> ``retrieval.candidates`` pool positions.

Costs (n items in the catalogue, N retrieved, d the tower dim): a full refresh is one item
tower pass over n items plus an HNSW build, measured about 3 s for 200,000 items on this
machine (``benchmarks.retrieval``), on the poll thread, never on a request; finding the
items a sparse update touched is O(n · slots) of NumPy per update; a search is one user-tower
pass and one HNSW query, O(log n) (``/healthz``'s ``retrieval.p99_ms``). Memory: the index,
about ``4·d + 128`` bytes per item, and the catalogue's fids.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

import numpy as np

from monolith_ray.config import Config
from monolith_ray.retrieval.configured import TOWER_PART, index_config, tower_spec
from monolith_ray.retrieval.retriever import Retriever
from monolith_ray.retrieval.tables import pooled_rows, table_name
from monolith_ray.serve.model import ServingModel, SlotRows
from monolith_ray.serve.store import SparseStore
from monolith_ray.serve.sync import Updates

logger = logging.getLogger(__name__)

LATENCY_SAMPLES = 10_000  # the most recent searches /healthz's percentiles are over


class CatalogueRetrieval:
    """The ANN index of a replica's catalogue (``pool_rows``: the pool's slot values, row i
    pool item i) and its searches; see the module doc."""

    def __init__(self, cfg: Config, model: ServingModel, pool_rows: SlotRows) -> None:
        self.n = cfg.retrieval.candidates
        self.share = cfg.retrieval.rebuild_share
        self.model = model
        self.spec = tower_spec(cfg)
        self.retriever = Retriever(self.spec, config=index_config(cfg))
        self.catalogue = model.batch_of(pool_rows, now=0)
        self.size = len(pool_rows)
        self._pool_rows = pool_rows
        self._lock = threading.Lock()
        self._latency_ms: collections.deque[float] = collections.deque(maxlen=LATENCY_SAMPLES)
        self.counts = {"searches": 0, "fallbacks": 0, "rebuilds": 0, "upserted": 0,
                       "refresh_failures": 0}

    @property
    def ready(self) -> bool:
        """Whether searches answer: tower parameters and a non-empty index are held."""
        return self.retriever.params is not None and len(self.retriever) > 0

    # -- refresh (the poll thread)

    def on_updates(self, updates: Updates) -> None:
        """Bring the index up to ``updates`` (already committed to ``model``). A failure is
        logged and counted, and the index stays as it was: serving goes on."""
        try:
            self._refresh(updates)
        except Exception as err:  # noqa: BLE001 - retrieval must never stop the poll thread
            self.counts["refresh_failures"] += 1
            logger.warning("retrieval index not refreshed: %r", err)

    def _refresh(self, updates: Updates) -> None:
        params = (updates.parts or {}).get(TOWER_PART)
        sparse = updates.sparse
        whole = isinstance(sparse, SparseStore) or (sparse is not None and sparse.reset)
        if params is not None or (whole and self.retriever.params is not None):
            self._rebuild(params if params is not None else self.retriever.params)
            return
        if sparse is None or self.retriever.params is None or not self.size:
            return
        touched = self._touched(sparse)
        if touched.size > self.share * self.size:
            self._rebuild(self.retriever.params)
        elif touched.size:
            self.retriever.refresh(touched, self._item_rows(touched))
            self.counts["upserted"] += int(touched.size)

    def _rebuild(self, params: Any) -> None:
        if not self.size:
            return
        every = np.arange(self.size, dtype=np.int64)
        self.retriever.refresh(every, self._item_rows(every), params)
        self.counts["rebuilds"] += 1

    def _touched(self, sparse: Any) -> np.ndarray:
        """Pool positions int64 of the items reading a tower row ``sparse`` changed or
        evicted."""
        hit = np.zeros(self.size, bool)
        for slot in self.spec.item:
            name = table_name(slot.name)
            changed = np.concatenate([sparse.ids.get(name, np.empty(0, np.int64)),
                                      sparse.evicted.get(name, np.empty(0, np.int64))])
            if not changed.size:
                continue
            fids, idx = self.catalogue.fids[slot.name], self.catalogue.idx[slot.name]
            read = np.isin(fids, changed)
            hit |= (np.where(idx >= 0, read[np.maximum(idx, 0)], False)).any(axis=1)
        return np.flatnonzero(hit).astype(np.int64)

    def _item_rows(self, which: np.ndarray) -> dict[str, np.ndarray]:
        batch = self.model.batch_of(self._pool_rows, take=which, now=0)
        return pooled_rows(self.model.tower_lookup, batch, self.spec.item)

    # -- search (requests)

    def search(self, user: SlotRows, now: int) -> np.ndarray | None:
        """Up to ``retrieval.candidates`` pool positions int64 for the one-row ``user``, best
        first; None (counted as a fallback) before the index is ready."""
        if not self.ready:
            self.counts["fallbacks"] += 1
            return None
        start = time.perf_counter()
        batch = self.model.batch_of(user, now=now)
        rows = pooled_rows(self.model.tower_lookup, batch, self.spec.user)
        ids, _ = self.retriever.search_batch(rows, self.n)
        found = ids[0][ids[0] >= 0]
        with self._lock:
            self._latency_ms.append((time.perf_counter() - start) * 1e3)
            self.counts["searches"] += 1
        return found

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
