"""The serving side of retrieval: the two-tower parameters and the ANN index of the whole
catalogue's item vectors, refreshed on the sync schedule and searched per request. No Ray.

What a serving process calls (the slots of each side are ``spec.user`` and ``spec.item``; a
slot's rows come from its *tower* table, ``monolith_ray.retrieval.train.table_name``, pooled
per user or item with the slot's combiner as ``monolith_ray.model.pool`` does):

- on a **dense** sync (new tower parameters): ``refresh(all_item_ids, their_rows,
  tower_params)``: every vector changes, so a new index of exactly those items is built
  aside and swapped in;
- on a **sparse** sync: ``refresh(changed_item_ids, their_rows)``: the items whose tower rows
  changed are re-embedded with the parameters held and upserted in place, ``UPSERT_CHUNK``
  at a time (cost per item changed, not per catalogue); ``remove(item_ids)`` for items gone
  from the catalogue;
- per **request**: ``search(user_rows, n) -> (item_ids (k,), scores (k,))``.

Threads: searches, upserts (a chunk at a time) and removes of the index take one short lock
(the index must not change under a search); a full rebuild is built without it and swapped under it; refreshes
run one at a time. A search reads (parameters, index) together, so it never mixes two
versions.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import jax
import numpy as np

from monolith_ray.model import two_tower
from monolith_ray.model.api import Params, SlotSpec
from monolith_ray.model.pooling import bucket_size
from monolith_ray.model.two_tower import TwoTowerSpec
from monolith_ray.retrieval.index import IndexConfig, ItemIndex

SlotRows = Mapping[str, np.ndarray]

UPSERT_CHUNK = 128
"""Items upserted per hold of the lock: an HNSW insert costs about 0.3-1.5 ms on a busy
2-core machine (``benchmarks.retrieval``: 2,000 of 200,000 in 1.4 to 3.1 s), so a sparse sync of
thousands of items lets searches in between every ~0.1 s instead of stalling them for
seconds. A search may then see some of a sync's items re-embedded and others not yet, each
item's vector whole."""

EMBED_CHUNK = 1 << 16
"""Items the item tower embeds in one pass: a catalogue of millions is embedded in chunks, so
memory and compiled shapes stay bounded (powers of two up to this)."""

_user_vectors = jax.jit(two_tower.user_vectors, static_argnums=1)
_item_vectors = jax.jit(two_tower.item_vectors, static_argnums=1)


class Retriever:
    """Two-tower retrieval over an :class:`ItemIndex` (see the module doc). ``params``: the
    two-tower parameters (``two_tower.init``'s form), None until the first refresh gives
    some; searching before any refresh returns nothing."""

    def __init__(self, spec: TwoTowerSpec, params: Params | None = None,
                 config: IndexConfig = IndexConfig()) -> None:
        self.spec = spec
        self.config = config
        self._lock = threading.Lock()
        self._refreshing = threading.RLock()
        self._params = params
        self._index = ItemIndex(spec.dim, config)
        self.version = 0

    def __len__(self) -> int:
        return len(self._index)

    def refresh(self, item_ids: np.ndarray, item_rows_by_slot: SlotRows,
                tower_params: Params | None = None) -> int:
        """Re-embed ``item_ids`` int64 (n,) (distinct) from ``item_rows_by_slot``: per item
        slot its pooled rows float32 (n, dim_s + 1), row i item i's. With ``tower_params``,
        they become the parameters and the index is rebuilt aside from exactly these items
        (pass the whole catalogue), then swapped; without, the items are upserted into the
        index held. -> the new version (+1 per refresh)."""
        item_ids = np.asarray(item_ids, np.int64)
        with self._refreshing:  # the parameters read here are the ones installed with
            params = self._params if tower_params is None else tower_params
            if params is None:
                raise ValueError("no tower parameters yet: the first refresh must give them")
            return self.install(item_ids, self.item_vectors(item_rows_by_slot, params),
                                tower_params)

    def install(self, item_ids: np.ndarray, vectors: np.ndarray,
                tower_params: Params | None = None) -> int:
        """:meth:`refresh` given the items' vectors float32 (n, dim), already embedded
        (e.g. a chunk at a time) with ``tower_params`` (a rebuild) or the parameters held
        (an upsert) -> the new version. Embed an upsert's vectors with the parameters held
        and install them from the one thread that refreshes (or call :meth:`refresh`, which
        holds the refresh lock over both): a rebuild between the two would mix versions."""
        item_ids = np.asarray(item_ids, np.int64)
        with self._refreshing:
            if tower_params is None and self._params is None:
                raise ValueError("no tower parameters yet: the first refresh must give them")
            if tower_params is not None:
                index = ItemIndex.build(item_ids, vectors, self.config)
                with self._lock:
                    self._params, self._index = tower_params, index
            else:
                if np.unique(item_ids).size != item_ids.size:
                    raise ValueError("refresh needs distinct item ids")
                for start in range(0, item_ids.size, UPSERT_CHUNK):
                    with self._lock:
                        self._index.upsert(item_ids[start:start + UPSERT_CHUNK],
                                           vectors[start:start + UPSERT_CHUNK])
            self.version += 1
            return self.version

    def remove(self, item_ids: np.ndarray) -> int:
        """Drop ``item_ids`` int64 (n,) from the index -> how many it held."""
        with self._refreshing, self._lock:
            return self._index.remove(np.asarray(item_ids, np.int64))

    def search(self, user_rows: SlotRows, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` items of highest score for one user, ``user_rows``: per user slot its
        pooled row float32 (dim_s + 1,) -> (item ids int64 (k,), scores float32 (k,)), best
        first, k = min(n, items held) (a graph search that falls short, rare, ends the
        answer in id -1, score -inf). A score is the cosine of the user's and the item's
        tower vectors, in [-1, 1]."""
        ids, scores = self.search_batch({k: np.asarray(v)[None] for k, v in user_rows.items()},
                                        n)
        return ids[0], scores[0]

    def search_batch(self, user_rows: SlotRows, n: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` for B users at once: rows float32 (B, dim_s + 1) per user slot ->
        (ids int64 (B, k), scores float32 (B, k))."""
        with self._lock:
            params, index = self._params, self._index
        batch = next(iter(user_rows.values())).shape[0]
        if params is None:
            return np.zeros((batch, 0), np.int64), np.zeros((batch, 0), np.float32)
        queries = self.user_vectors(user_rows, params)
        with self._lock:
            return index.search(queries, n)

    def user_vectors(self, user_rows: SlotRows, params: Params | None = None) -> np.ndarray:
        """The user tower's unit vectors float32 (B, dim) of rows (B, dim_s + 1) per user
        slot, with ``params`` (default: those held)."""
        return np.asarray(_user_vectors(self._params if params is None else params, self.spec,
                                        _only(user_rows, self.spec.user)))

    def item_vectors(self, item_rows: SlotRows, params: Params | None = None) -> np.ndarray:
        """The item tower's unit vectors float32 (n, dim) of rows (n, dim_s + 1) per item
        slot, with ``params`` (default: those held)."""
        rows = _only(item_rows, self.spec.item)
        params = self._params if params is None else params
        n = next(iter(rows.values())).shape[0]
        out = np.empty((n, self.spec.dim), np.float32)
        for start in range(0, n, EMBED_CHUNK):  # bounded memory and shapes
            m = min(EMBED_CHUNK, n - start)
            size = bucket_size(m)  # one compile per power of two, not per n
            chunk = {k: np.pad(v[start:start + m], ((0, size - m), (0, 0)))
                     for k, v in rows.items()}
            out[start:start + m] = np.asarray(_item_vectors(params, self.spec, chunk))[:m]
        return out

    def vectors(self, item_ids: np.ndarray) -> np.ndarray:
        """The index's vectors float32 (n, dim) of ``item_ids`` (NaN rows: not held)."""
        with self._lock:
            return self._index.get(item_ids)

    @property
    def params(self) -> Params | None:
        """The tower parameters held (None before the first refresh gives some)."""
        return self._params


def _only(rows: SlotRows, slots: tuple[SlotSpec, ...]) -> dict[str, np.ndarray]:
    """The rows of ``slots``, float32, checked present and of their width."""
    out = {}
    for s in slots:
        if s.name not in rows:
            raise KeyError(f"no rows for slot {s.name!r}; the tower reads "
                           f"{', '.join(t.name for t in slots)}")
        a = np.asarray(rows[s.name], np.float32)
        if a.ndim != 2 or a.shape[1] != s.width:
            raise ValueError(f"rows of slot {s.name!r} must be (n, {s.width}), got {a.shape}")
        out[s.name] = a
    return out
