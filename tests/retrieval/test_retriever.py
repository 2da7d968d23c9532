"""Retriever: refresh (rebuild with new parameters, upsert with the ones held), search, and
swaps under concurrent searches."""

from __future__ import annotations

import threading

import jax
import numpy as np
import pytest

from monolith_ray.model import two_tower
from monolith_ray.model.api import SlotSpec
from monolith_ray.retrieval import Retriever

SPEC = two_tower.TwoTowerSpec(user=(SlotSpec("user_id", 6),),
                              item=(SlotSpec("item_id", 4), SlotSpec("genres", 3, "mean")),
                              dim=8, hidden=(16,))


def _items(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"item_id": rng.normal(size=(n, 5)).astype(np.float32),
            "genres": rng.normal(size=(n, 4)).astype(np.float32)}


def _user(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"user_id": rng.normal(size=7).astype(np.float32)}


def test_search_before_any_refresh_finds_nothing_and_upsert_needs_parameters():
    retriever = Retriever(SPEC)
    ids, scores = retriever.search(_user(np.random.default_rng(0)), 10)
    assert ids.shape == (0,) and scores.shape == (0,)
    with pytest.raises(ValueError, match="parameters"):
        retriever.refresh(np.arange(3), _items(np.random.default_rng(0), 3))


def test_refresh_then_search_returns_the_refreshed_items_with_their_scores():
    rng = np.random.default_rng(1)
    params = two_tower.init(jax.random.key(0), SPEC)
    retriever = Retriever(SPEC)
    ids = np.arange(100, 300)
    rows = _items(rng, 200)
    assert retriever.refresh(ids, rows, params) == 1
    user = _user(rng)
    u = retriever.user_vectors({"user_id": user["user_id"][None]})[0]
    exact = retriever.item_vectors(rows) @ u

    found, scores = retriever.search(user, 20)
    # HNSW is approximate (and its multi-threaded build differs run to run): each answer
    # carries its exact score, best first, and the answers hold most of the exact top 20
    assert found.size == 20 and np.isin(found, ids).all()
    np.testing.assert_allclose(scores, exact[found - 100], atol=1e-5)
    assert (np.diff(scores) <= 1e-6).all()
    assert np.isin(ids[np.argsort(-exact)[:20]], found).sum() >= 18

    # a sparse sync: item 150's rows changed and item 999 is new; the parameters stay
    changed = _items(rng, 2)
    assert retriever.refresh(np.array([150, 999]), changed) == 2
    assert len(retriever) == 201
    np.testing.assert_allclose(retriever.vectors(np.array([150, 999])),
                               retriever.item_vectors(changed), atol=1e-5)
    found, scores = retriever.search(user, 201)
    held = found >= 0
    np.testing.assert_allclose(scores[held], retriever.vectors(found[held]) @ u, atol=1e-5)

    assert retriever.remove(np.array([999, 5])) == 1
    assert len(retriever) == 200
    found, _ = retriever.search(user, 500)
    assert 999 not in found and found.size == 200
    assert np.isnan(retriever.vectors(np.array([999]))).all()

    # new parameters: a rebuild of exactly the items given
    retriever.refresh(np.arange(10), _items(rng, 10), two_tower.init(jax.random.key(1), SPEC))
    found, _ = retriever.search(user, 50)
    assert sorted(found.tolist()) == list(range(10))


def test_rows_of_the_wrong_width_are_refused():
    retriever = Retriever(SPEC, two_tower.init(jax.random.key(0), SPEC))
    with pytest.raises(ValueError, match="item_id"):
        retriever.refresh(np.arange(2), {"item_id": np.zeros((2, 4)), "genres": np.zeros((2, 4))})
    with pytest.raises(KeyError, match="genres"):
        retriever.refresh(np.arange(2), {"item_id": np.zeros((2, 5))})


def test_searches_during_swaps_and_upserts_see_one_catalogue_at_a_time():
    rng = np.random.default_rng(2)
    catalogues = [(np.arange(0, 300), _items(rng, 300), two_tower.init(jax.random.key(0), SPEC)),
                  (np.arange(1000, 1300), _items(rng, 300),
                   two_tower.init(jax.random.key(1), SPEC))]
    retriever = Retriever(SPEC)
    retriever.refresh(*catalogues[0])
    users = [_user(rng) for _ in range(8)]
    retriever.search(users[0], 5)  # compile before the race
    failures: list[str] = []
    stop = threading.Event()
    searched = [0]

    def search() -> None:
        while not stop.is_set():
            for user in users:
                found, scores = retriever.search(user, 50)
                in_first = found < 1000
                if found.size != 50 or in_first.any() != in_first.all():
                    failures.append(f"mixed or short answer: {found}")
                if not (np.diff(scores) <= 1e-6).all():
                    failures.append("scores not best first")
                searched[0] += 1

    threads = [threading.Thread(target=search) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for r in range(20):
            ids, rows, params = catalogues[r % 2]
            retriever.refresh(ids, rows, params)
            pick = rng.choice(ids.size, 30, replace=False)
            retriever.refresh(ids[pick], _items(rng, 30))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:3]
    assert searched[0] > 0


def test_an_upsert_of_more_items_than_a_chunk_reembeds_them_all():
    rng = np.random.default_rng(3)
    retriever = Retriever(SPEC, two_tower.init(jax.random.key(0), SPEC))
    ids = np.arange(400)
    retriever.refresh(ids, _items(rng, 400))
    changed = _items(rng, 300)
    retriever.refresh(ids[:300], changed)
    # every upserted item holds its new vector (read back, not searched: an HNSW search
    # for all 400 may fall short after 300 removals and adds)
    np.testing.assert_allclose(retriever.vectors(ids[:300]), retriever.item_vectors(changed),
                               atol=1e-5)
    user = _user(rng)
    u = retriever.user_vectors({"user_id": user["user_id"][None]})[0]
    found, scores = retriever.search(user, 50)
    assert found.size == 50 and (found >= 0).all()
    np.testing.assert_allclose(scores, retriever.vectors(found) @ u, atol=1e-5)
    with pytest.raises(ValueError, match="distinct"):
        retriever.refresh(np.array([1, 1]), _items(rng, 2))
