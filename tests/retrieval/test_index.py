"""ItemIndex: recall of the exhaustive top 100, upsert and remove, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest

from monolith_ray.retrieval.index import ItemIndex


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(rng: np.random.Generator, n: int, dim: int = 32) -> np.ndarray:
    centers = rng.normal(size=(50, dim))
    return _unit(centers[rng.integers(0, 50, n)] + 0.5 * rng.normal(size=(n, dim)))


def _exhaustive(vectors: np.ndarray, queries: np.ndarray, n: int) -> np.ndarray:
    return np.argsort(-(queries @ vectors.T), axis=1)[:, :n]


def test_recall_of_the_exhaustive_top_100_on_random_vectors():
    rng = np.random.default_rng(0)
    vectors = _clustered(rng, 5000)
    ids = rng.permutation(10 ** 6)[:5000].astype(np.int64)  # ids need not be positions
    queries = _clustered(rng, 50)
    index = ItemIndex.build(ids, vectors)
    found, scores = index.search(queries, 100)
    truth = ids[_exhaustive(vectors, queries, 100)]
    recall = np.mean([np.intersect1d(f, t).size / 100 for f, t in zip(found, truth)])
    assert recall >= 0.95
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    by_id = dict(zip(ids.tolist(), range(ids.size)))
    expected = np.einsum("bd,bkd->bk", queries, vectors[[[by_id[i] for i in row]
                                                         for row in found]])
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_upsert_replaces_and_remove_drops_an_item():
    rng = np.random.default_rng(1)
    vectors = _clustered(rng, 300)
    index = ItemIndex.build(np.arange(300), vectors)
    query = _unit(rng.normal(size=(1, 32)))
    index.upsert(np.array([7]), query)  # item 7 now points where the query does
    found, scores = index.search(query, 5)
    assert found[0, 0] == 7 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert len(index) == 300
    assert index.remove(np.array([7, 12345])) == 1
    assert len(index) == 299
    found, _ = index.search(query, 299)
    assert 7 not in found and found.shape == (1, 299)
    found, _ = index.search(query, 1000)  # more than held: all of them
    assert found.shape == (1, 299) and np.unique(found).size == 299
    with pytest.raises(ValueError, match="distinct"):
        index.upsert(np.array([1, 1]), vectors[:2])
    with pytest.raises(ValueError, match="shape"):
        index.upsert(np.array([1]), vectors[:1, :8])


def test_removed_ids_make_room_for_new_ones():
    rng = np.random.default_rng(2)
    index = ItemIndex.build(np.arange(4000), _clustered(rng, 4000))
    start = index.memory_bytes
    for r in range(1, 5):
        index.remove(np.arange((r - 1) * 1000, r * 1000))
        index.upsert(np.arange(10 ** 6 * r, 10 ** 6 * r + 1000), _clustered(rng, 1000))
    assert len(index) == 4000
    assert index.memory_bytes <= start


def test_an_empty_index_finds_nothing():
    found, scores = ItemIndex(8).search(np.ones((2, 8), np.float32), 10)
    assert found.shape == (2, 0) and scores.shape == (2, 0)
