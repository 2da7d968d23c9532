"""Retrieval on MovieLens-100K: the two-tower model trained against tower tables in 2
in-process ``ShardServer`` shards, its item vectors in the ANN index, and the index libraries
compared.

Data: ``data/ml-100k/parquet/{train,valid,test}.parquet`` (``make data``), slots of
``monolith_ray/defaults/movielens.yaml``. User side: ``user_id``, ``gender``, ``age``,
``occupation``, ``zip_prefix``; item side: ``item_id``, ``genres``, ``release_year``.

1. Train: ``EPOCHS`` shuffled epochs of the train split in batches of ``BATCH`` examples;
   each batch's positives (label 1) are the pairs of ``TowerTrainer``'s corrected in-batch
   softmax. Once with the logQ correction, once without (``hit_rate_at_100_no_logq``).
2. Catalogue: every item of the three splits, its tower rows looked up (serving lookups) and
   pooled, refreshed into a ``Retriever`` (index built over all items).
3. Test users: every user of the test split. ``recall_at_100``: mean share of the exhaustive
   top 100 (the same two-tower scores, all items) that the index returns;
   ``retrieval_p99_ms``: per query, one user at a time in this process (the test users cycled
   for ``TIMED_QUERIES`` queries), user tower and index search; ``hit_rate_at_100``: share of test positives (label 1) whose item is among its
   user's 100 retrieved, against ``hit_rate_at_100_popular``, the 100 items with most train
   positives for everyone. ``_seen_users``: the same over test users who also appear in train
   (most test users do not: their ``user_id`` row is the zero default, and only their
   demographic slots speak for them).
4. Libraries: usearch, hnswlib and faiss-cpu HNSW (M = 16, efConstruction = 128, efSearch =
   256, one thread each: the machine is shared) over (a) the trained item vectors with the
   test users as queries and (b) ``N_SYNTHETIC`` clustered unit vectors (default 200,000,
   ``N_SYNTHETIC=1000000`` for a million) with 200 random queries: build seconds, query p99
   ms, recall@100 of the exhaustive top 100; and the chosen library's upsert of 1 % of the
   items (ms, what a sparse sync costs).

Ends with one JSON line of the figures.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import optax
import pyarrow as pa
import pyarrow.compute as pc

from monolith_ray.config import (
    AdmissionConfig,
    InitializerConfig,
    OptimizerConfig,
    SlotConfig,
    load_config,
)
from monolith_ray.data.batches import iter_batches, make_batch
from monolith_ray.experiments.training import load_splits
from monolith_ray.model import two_tower
from monolith_ray.ps import ShardClient, ShardServer
from monolith_ray.retrieval import (
    IndexConfig,
    ItemIndex,
    Retriever,
    StreamingFrequency,
    TowerTrainer,
    pooled_rows,
    tower_slots,
)
from monolith_ray.retrieval.tables import TOWER_PREFIX
from monolith_ray.schemas import LABEL

USER = ("user_id", "gender", "age", "occupation", "zip_prefix")
ITEM = ("item_id", "genres", "release_year")
EPOCHS = int(os.environ.get("EPOCHS", 20))
BATCH = 1024
DIM, HIDDEN, TEMPERATURE = 32, (64,), 0.05
TOWER_OPTIMIZER = OptimizerConfig(kind="adam", learning_rate=0.01)
TOWER_INIT_SCALE = 0.1
DENSE_RATE = 3e-3
N = 100
TIMED_QUERIES = 2000  # per timing: the queries cycled, so a p99 is not one slow query
SEED = 0
HNSW = IndexConfig(connectivity=16, expansion_add=128, expansion_search=256)


def train(splits: dict[str, pa.Table], slots: tuple[SlotConfig, ...], correct: bool
          ) -> tuple[TowerTrainer, ShardClient, float]:
    """A two-tower model trained on the train split -> (trainer, its shards' client, s)."""
    towers = tower_slots(slots, (*USER, *ITEM), optimizer=TOWER_OPTIMIZER)
    towers = tuple(dataclasses.replace(
        t, initializer=InitializerConfig(kind="normal", scale=TOWER_INIT_SCALE,
                                         seed=SEED * 1000 + t.slot_id)) for t in towers)
    shards = [ShardServer((*slots, *towers), AdmissionConfig(sketch_width=1 << 16))
              for _ in range(2)]
    client = ShardClient(shards, [s.name for s in (*slots, *towers)])
    spec = two_tower.spec_of(slots, USER, ITEM, DIM, HIDDEN, TEMPERATURE)
    trainer = TowerTrainer(spec, client, BATCH, optax.adam(DENSE_RATE), seed=SEED,
                           frequency=StreamingFrequency(buckets=1 << 16), correct=correct)
    rng = np.random.default_rng(SEED)
    start = time.perf_counter()
    for _ in range(EPOCHS):
        order = rng.permutation(splits["train"].num_rows)
        for batch in iter_batches(splits["train"].take(order), slots, BATCH):
            trainer.train_batch(batch)
    return trainer, client, time.perf_counter() - start


def first_rows(table: pa.Table, column: str) -> tuple[np.ndarray, pa.Table]:
    """(the distinct values of ``column``, sorted; one row of ``table`` for each)."""
    values = table.column(column).to_numpy()
    distinct, first = np.unique(values, return_index=True)
    return distinct, table.take(first)


def exhaustive_top(users: np.ndarray, items: np.ndarray, n: int) -> np.ndarray:
    """Positions of the ``n`` items of highest inner product per user -> (B, n)."""
    scores = users @ items.T
    top = np.argpartition(-scores, n, axis=1)[:, :n]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), 1), 1)


def hit_rate(test: pa.Table, retrieved: dict[int, set[int]], users: set[int] | None = None
             ) -> float:
    """Share of ``test``'s positives (of ``users``, default all) whose item is in its user's
    retrieved set."""
    pos = test.filter(pc.equal(test.column(LABEL), 1.0))
    pairs = zip(pos.column("user_id").to_pylist(), pos.column("item_id").to_pylist())
    hits = [item in retrieved[user] for user, item in pairs if users is None or user in users]
    return float(np.mean(hits)) if hits else float("nan")


def evaluate(trainer: TowerTrainer, client: ShardClient, splits: dict[str, pa.Table],
             slots: tuple[SlotConfig, ...]) -> dict[str, Any]:
    """Index the catalogue, retrieve for every test user -> the retrieval figures."""
    spec = trainer.spec
    everything = pa.concat_tables([splits["train"], splits["valid"], splits["test"]])
    item_ids, item_examples = first_rows(everything, "item_id")
    item_rows = pooled_rows(client.lookup, make_batch(item_examples, slots), spec.item)
    retriever = Retriever(spec, config=HNSW)
    start = time.perf_counter()
    retriever.refresh(item_ids, item_rows, trainer.params)
    build_s = time.perf_counter() - start

    user_ids, user_examples = first_rows(splits["test"], "user_id")
    user_rows = pooled_rows(client.lookup, make_batch(user_examples, slots), spec.user)
    user_vectors = retriever.user_vectors(user_rows)
    item_vectors = retriever.item_vectors(item_rows)
    truth = item_ids[exhaustive_top(user_vectors, item_vectors, N)]

    retriever.search({k: v[0] for k, v in user_rows.items()}, N)  # compile
    found, times = [], []
    for i in np.arange(TIMED_QUERIES) % user_ids.size:
        start = time.perf_counter()
        ids, _ = retriever.search({k: v[i] for k, v in user_rows.items()}, N)
        times.append(time.perf_counter() - start)
        if len(found) < user_ids.size:
            found.append(ids)
    recall = float(np.mean([np.intersect1d(f, t).size / N for f, t in zip(found, truth)]))

    retrieved = {int(u): set(f.tolist()) for u, f in zip(user_ids, found)}
    train_pos = splits["train"].filter(pc.equal(splits["train"].column(LABEL), 1.0))
    items, counts = np.unique(train_pos.column("item_id").to_numpy(), return_counts=True)
    popular = set(items[np.argsort(-counts, kind="stable")[:N]].tolist())
    seen = set(splits["train"].column("user_id").to_pylist())
    return {
        "recall_at_100": round(recall, 4),
        "retrieval_p99_ms": round(float(np.percentile(times, 99)) * 1e3, 3),
        "retrieval_p50_ms": round(float(np.percentile(times, 50)) * 1e3, 3),
        "hit_rate_at_100": round(hit_rate(splits["test"], retrieved), 4),
        "hit_rate_at_100_popular": round(hit_rate(splits["test"],
                                                  dict.fromkeys(retrieved, popular)), 4),
        "hit_rate_at_100_seen_users": round(hit_rate(splits["test"], retrieved, seen), 4),
        "hit_rate_at_100_popular_seen_users": round(hit_rate(
            splits["test"], dict.fromkeys(retrieved, popular), seen), 4),
        "items": int(item_ids.size), "test_users": int(user_ids.size),
        "index_build_s": round(build_s, 3),
        "_vectors": (item_vectors, user_vectors),
    }


# ---------------------------------------------------------------- library comparison

def _usearch(vectors: np.ndarray) -> Callable[[np.ndarray, int], np.ndarray]:
    from usearch.index import Index

    index = Index(ndim=vectors.shape[1], metric="ip", dtype="f32",
                  connectivity=HNSW.connectivity, expansion_add=HNSW.expansion_add,
                  expansion_search=HNSW.expansion_search)
    index.add(np.arange(vectors.shape[0], dtype=np.uint64), vectors, threads=1)
    return lambda q, n: np.asarray(index.search(q, n, threads=1).keys).reshape(1, -1)


def _hnswlib(vectors: np.ndarray) -> Callable[[np.ndarray, int], np.ndarray]:
    import hnswlib

    index = hnswlib.Index(space="ip", dim=vectors.shape[1])
    index.init_index(max_elements=vectors.shape[0], M=HNSW.connectivity,
                     ef_construction=HNSW.expansion_add, allow_replace_deleted=True)
    index.set_num_threads(1)
    index.add_items(vectors, np.arange(vectors.shape[0]))
    index.set_ef(HNSW.expansion_search)
    return lambda q, n: index.knn_query(q, k=n)[0]


def _faiss(vectors: np.ndarray) -> Callable[[np.ndarray, int], np.ndarray]:
    import faiss

    faiss.omp_set_num_threads(1)
    index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW.connectivity, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW.expansion_add
    index.add(vectors)
    index.hnsw.efSearch = HNSW.expansion_search
    return lambda q, n: index.search(q, n)[1]


LIBRARIES = {"usearch": _usearch, "hnswlib": _hnswlib, "faiss": _faiss}


def compare_libraries(vectors: np.ndarray, queries: np.ndarray) -> dict[str, dict[str, float]]:
    """Per library: build s, query p50 and p99 ms (``TIMED_QUERIES`` one at a time, cycling
    through ``queries``), recall@100 of the exact top."""
    truth = exhaustive_top(queries, vectors, N)
    out = {}
    for name, make in LIBRARIES.items():
        try:
            start = time.perf_counter()
            search = make(vectors)
            build = time.perf_counter() - start
        except ImportError:
            out[name] = {"error": "not installed"}
            continue
        times, found = [], []
        for i in np.arange(TIMED_QUERIES) % queries.shape[0]:
            start = time.perf_counter()
            ids = search(queries[i][None], N)[0]
            times.append(time.perf_counter() - start)
            if len(found) < queries.shape[0]:
                found.append(ids)
        recall = np.mean([np.intersect1d(f, t).size / N for f, t in zip(found, truth)])
        out[name] = {"build_s": round(build, 3),
                     "query_p50_ms": round(float(np.percentile(times, 50)) * 1e3, 3),
                     "query_p99_ms": round(float(np.percentile(times, 99)) * 1e3, 3),
                     "recall_at_100": round(float(recall), 4)}
    return out


def clustered(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """``n`` unit vectors around 1,000 random centres (items come in kinds), float32."""
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    x = centres[rng.integers(0, 1000, n)] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def upsert_ms(vectors: np.ndarray, fraction: float = 0.01) -> float:
    """The chosen index's upsert of ``fraction`` of its items with new vectors, ms."""
    rng = np.random.default_rng(SEED)
    index = ItemIndex.build(np.arange(vectors.shape[0]), vectors, HNSW)
    pick = rng.choice(vectors.shape[0], max(1, int(fraction * vectors.shape[0])), replace=False)
    start = time.perf_counter()
    index.upsert(pick, vectors[rng.permutation(pick)])
    return (time.perf_counter() - start) * 1e3


def _progress(figures: dict[str, Any], what: str) -> None:
    """The figures so far, on stderr (a run on a busy machine is long)."""
    shown = {k: v for k, v in figures.items() if not k.startswith("_")}
    print(f"{what}: {json.dumps(shown)}", file=sys.stderr, flush=True)


def main() -> None:
    cfg = load_config("monolith_ray/defaults/movielens.yaml")
    slots = tuple(cfg.slots)
    splits = load_splits()
    figures: dict[str, Any] = {}

    trainer, client, train_s = train(splits, slots, correct=True)
    figures.update(evaluate(trainer, client, splits, slots))
    _progress(figures, "trained with logQ")
    item_vectors, user_vectors = figures.pop("_vectors")
    figures["train_s"] = round(train_s, 1)
    figures["train_steps"] = trainer.steps

    plain, plain_client, _ = train(splits, slots, correct=False)
    no_logq = evaluate(plain, plain_client, splits, slots)
    figures["hit_rate_at_100_no_logq"] = no_logq["hit_rate_at_100"]
    figures["hit_rate_at_100_no_logq_seen_users"] = no_logq["hit_rate_at_100_seen_users"]
    _progress(figures, "trained without logQ")

    rng = np.random.default_rng(SEED)
    n_synthetic = int(os.environ.get("N_SYNTHETIC", 200_000))
    synthetic = clustered(rng, n_synthetic, DIM)
    figures["libraries"] = {
        f"movielens_{item_vectors.shape[0]}": compare_libraries(item_vectors, user_vectors),
        f"synthetic_{n_synthetic}": compare_libraries(synthetic, clustered(rng, 200, DIM)),
    }
    figures[f"upsert_1pct_of_{n_synthetic}_ms"] = round(upsert_ms(synthetic), 1)
    figures["tower_tables"] = [TOWER_PREFIX + n for n in (*USER, *ITEM)]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
