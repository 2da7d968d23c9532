"""An approximate inner-product index over item vectors, keyed by int64 item id.

Backed by usearch (Unum's HNSW, Malkov & Yashunin 2016), chosen over hnswlib and faiss-cpu
by ``python -m benchmarks.retrieval`` (figures in the README's *Retrieval* section): at its
settings here it reaches the recall the issue asks for at sub-millisecond queries, it upserts
and removes single keys (faiss's HNSW removes none), and it is maintained (hnswlib's last
release is of 2023).

- **Scores** are inner products ``<query, vector>`` (for the two-tower's unit vectors, the
  cosine), highest first; usearch's ``ip`` distance is ``1 - <q, v>``.
- **Upsert** of an id already held replaces its vector (remove, then add); **remove** of an
  id not held is a no-op.
- **Memory** is bounded by the ids held: a removed id's node is reused by a later add
  (measured: 20,000 ids with 5 rounds of 4,000 removed and 4,000 new keep usearch's
  ``memory_usage`` and capacity where they were), about ``4·dim + 2·connectivity·4`` bytes
  per id plus the upper layers.
- **Threads**: not safe to upsert or remove while another thread searches; the
  ``Retriever`` serializes them with a lock and builds full rebuilds aside.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from usearch.index import Index


@dataclass(frozen=True)
class IndexConfig:
    """HNSW settings: ``connectivity`` (M, links per node), ``expansion_add`` (efConstruction)
    and ``expansion_search`` (ef: candidates kept per query; usearch raises it to the ``n``
    asked for when smaller). Defaults: measured by ``benchmarks.retrieval``."""

    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int = 256


class ItemIndex:
    """Item vectors float32 (dim,) by int64 item id, searched by inner product."""

    def __init__(self, dim: int, config: IndexConfig = IndexConfig()) -> None:
        self.dim = dim
        self.config = config
        self._index = Index(ndim=dim, metric="ip", dtype="f32",
                            connectivity=config.connectivity,
                            expansion_add=config.expansion_add,
                            expansion_search=config.expansion_search)

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray,
              config: IndexConfig = IndexConfig()) -> ItemIndex:
        """A new index of ``ids`` int64 (n,) (distinct) and ``vectors`` float32 (n, dim)."""
        index = cls(vectors.shape[1], config)
        index.upsert(ids, vectors)
        return index

    def __len__(self) -> int:
        return len(self._index)

    @property
    def memory_bytes(self) -> int:
        """What the index holds in memory, bytes (usearch's own count)."""
        return int(self._index.memory_usage)

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add or replace ``ids`` int64 (n,) (distinct) with ``vectors`` float32 (n, dim)."""
        ids = np.ascontiguousarray(ids, np.int64)
        vectors = np.ascontiguousarray(vectors, np.float32)
        if vectors.shape != (ids.size, self.dim):
            raise ValueError(f"{ids.size} ids need vectors of shape ({ids.size}, {self.dim}), "
                             f"got {vectors.shape}")
        if ids.size == 0:
            return
        if np.unique(ids).size != ids.size:
            raise ValueError("upsert needs distinct ids")
        self.remove(ids)
        self._index.add(ids.astype(np.uint64), vectors)

    def remove(self, ids: np.ndarray) -> int:
        """Remove those of ``ids`` int64 (n,) held -> how many were."""
        ids = np.ascontiguousarray(ids, np.int64)
        if ids.size == 0 or len(self._index) == 0:
            return 0
        held = ids[np.asarray(self._index.contains(ids.astype(np.uint64)), bool)]
        if held.size:
            self._index.remove(held.astype(np.uint64))
        return int(held.size)

    def get(self, ids: np.ndarray) -> np.ndarray:
        """The vectors float32 (n, dim) held for ``ids`` int64 (n,); NaN rows for ids not
        held."""
        ids = np.ascontiguousarray(ids, np.int64)
        out = np.full((ids.size, self.dim), np.nan, np.float32)
        if ids.size and len(self._index):
            for i, vector in enumerate(self._index.get(ids.astype(np.uint64))):
                if vector is not None:
                    out[i] = vector
        return out

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` ids of highest inner product with each of ``queries`` float32 (B, dim) ->
        (ids int64 (B, k), scores float32 (B, k)), best first, k = min(n, len(self)); a row
        the graph search fills short (rare, after many removals) ends in id -1, score -inf.
        Asking for a quarter of the items or more searches exhaustively (about the graph
        search's cost there, and never short), so asking for all of them gives all."""
        queries = np.ascontiguousarray(queries, np.float32).reshape(-1, self.dim)
        k = min(n, len(self._index))
        if k == 0:
            return (np.zeros((queries.shape[0], 0), np.int64),
                    np.zeros((queries.shape[0], 0), np.float32))
        matches = self._index.search(queries, k, exact=4 * k >= len(self._index))
        keys, distances = np.asarray(matches.keys), np.asarray(matches.distances, np.float32)
        if keys.ndim == 1:  # usearch answers one query with its own (unpadded) form
            counts = np.array([keys.size])
            keys, distances = keys[None], distances[None]
        else:
            counts = np.asarray(matches.counts).reshape(-1)
        ids = np.full((queries.shape[0], k), -1, np.int64)
        scores = np.full((queries.shape[0], k), -np.inf, np.float32)
        filled = np.arange(k)[None, :] < counts[:, None]
        ids[filled] = keys[:, :k].astype(np.int64)[filled[:, :keys.shape[1]]]
        scores[filled] = 1.0 - distances[:, :k][filled[:, :keys.shape[1]]]
        return ids, scores

