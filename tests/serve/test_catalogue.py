"""Retrieval over a replica's catalogue, in process: towers trained through a dense server's
``tower`` part and the shards' tower tables (as the jobs' trainers do), carried by a
ParameterSync to a ServingModel, indexed and searched by CatalogueRetrieval."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import jax
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monolith_ray.config import load_config
from monolith_ray.data.batches import make_batch
from monolith_ray.data.slot_columns import examples_table
from monolith_ray.ps.client import ShardClient
from monolith_ray.ps.dense import DenseServer
from monolith_ray.ps.shard import ShardServer
from monolith_ray.retrieval.configured import TOWER_PART, dense_parts, synced_parts, tower_spec
from monolith_ray.retrieval.tables import pooled_rows, table_name
from monolith_ray.retrieval.train import TowerTrainer
from monolith_ray.schemas import LABEL
from monolith_ray.serve.catalogue import CatalogueRetrieval, Readers
from monolith_ray.serve.model import ServingModel, SlotRows
from monolith_ray.serve.serving_shard import ServingShard
from monolith_ray.serve.sync import ParameterSync
from monolith_ray.train.job import dense_server_args

CFG = load_config("""
slots:
  - {name: user_id, slot_id: 1, dim: 8}
  - {name: item_id, slot_id: 2, dim: 8}
  - {name: category, slot_id: 3, dim: 4}
retrieval:
  user_slots: [user_id]
  item_slots: [item_id, category]
  candidates: 10
  dim: 8
  hidden: [16]
  temperature: 0.1
  dense_rate: 0.01
serve: {store_dtype: float32}
""")
N_CATEGORIES, PER_CATEGORY, N_USERS = 4, 15, 40
ITEMS = np.arange(N_CATEGORIES * PER_CATEGORY)
POOL = [{"item_id": int(i), "category": int(i % N_CATEGORIES)} for i in ITEMS]


def _batch(rng: np.random.Generator, size: int, t: int):
    """Users who click items of their own category (user % 4) 80 % of the time."""
    users = rng.integers(0, N_USERS, size)
    own = rng.random(size) < 0.8
    category = np.where(own, users % N_CATEGORIES, rng.integers(0, N_CATEGORIES, size))
    items = category + N_CATEGORIES * rng.integers(0, PER_CATEGORY, size)
    rows = [{"user_id": int(u), "item_id": int(i), "category": int(i % N_CATEGORIES)}
            for u, i in zip(users, items)]
    table = examples_table(rows, CFG.slots, t)
    labels = pa.array((items % N_CATEGORIES == users % N_CATEGORIES).astype(np.float32))
    table = table.set_column(table.schema.get_field_index(LABEL), LABEL, labels)
    return make_batch(table, CFG.slots)


@pytest.fixture(scope="module")
def trained():
    """Shards with the tower tables, a dense server with the tower part, 150 tower steps."""
    shards = [ShardServer(CFG.table_slots, CFG.admission) for _ in range(2)]
    dense = DenseServer(*dense_server_args(CFG), parts=dense_parts(CFG))
    spec = tower_spec(CFG)
    tables = [table_name(s.name) for s in (*spec.user, *spec.item)]
    trainer = TowerTrainer(spec, ShardClient(shards, tables), 128, dense=dense)
    rng = np.random.default_rng(0)
    losses = [trainer.train_batch(_batch(rng, 128, 100 + t)) for t in range(150)]
    trainer.flush()
    return shards, dense, trainer, losses


def _replica(shards, dense):
    sync = ParameterSync(CFG.table_slots, shards, dense, start=False, dtype="float32",
                         parts=synced_parts(CFG))
    model = ServingModel(CFG)
    retrieval = CatalogueRetrieval(CFG, model, SlotRows.of(POOL, CFG.slots), background=False)
    return sync, model, retrieval


def _search(retrieval: CatalogueRetrieval, rows: SlotRows, now: int, extra: int = 0):
    return asyncio.run(retrieval.search(rows, now, extra))


def _pull(sync, model, retrieval):
    versions = model.versions
    staged = model.stage(sync.updates(versions["sparse"], versions["dense"], model.sync_incarnation))
    model.commit(staged)
    retrieval.on_updates(staged)
    return staged


def _exhaustive(retrieval: CatalogueRetrieval, user: int, n: int) -> np.ndarray:
    """The pool positions of the ``n`` best items by the towers' cosine, over every item."""
    r = retrieval.retriever
    every = np.arange(len(POOL))
    items = r.item_vectors(retrieval._item_rows(every))
    batch = retrieval.model.batch_of(SlotRows.of([{"user_id": user}], CFG.slots), now=0)
    users = r.user_vectors(pooled_rows(retrieval.model.tower_lookup, batch, r.spec.user))
    return np.argsort(-(items @ users[0]), kind="stable")[:n]


def test_the_towers_train_through_the_dense_servers_part(trained) -> None:
    _, dense, trainer, losses = trained
    params, version = dense.pull(TOWER_PART)
    assert version == trainer.steps == 150  # every step's gradient reached the server
    assert np.mean(losses[-20:]) < np.mean(losses[:20]) - 0.3
    first_layer = params[0]["w"] if isinstance(params, list) else None
    assert first_layer is None or np.isfinite(first_layer).all()
    with pytest.raises(KeyError, match="no dense part 'nope'"):
        dense.pull("nope")


def test_the_sync_carries_the_tower_part_and_the_replica_indexes_its_catalogue(trained) -> None:
    shards, dense, _, _ = trained
    sync, model, retrieval = _replica(shards, dense)
    assert not retrieval.ready
    assert _search(retrieval, SlotRows.of([{"user_id": 1}], CFG.slots), 0) is None
    staged = _pull(sync, model, retrieval)
    assert TOWER_PART in staged.parts
    assert retrieval.ready and len(retrieval.retriever) == len(POOL)
    hits, own = 0, 0
    for user in range(N_USERS):
        found = _search(retrieval, SlotRows.of([{"user_id": user}], CFG.slots), 0)
        assert found.size == 10 and np.unique(found).size == 10
        assert ((found >= 0) & (found < len(POOL))).all()
        hits += np.intersect1d(found, _exhaustive(retrieval, user, 10)).size
        own += int((found % N_CATEGORIES == user % N_CATEGORIES).sum())
    assert hits / (10 * N_USERS) >= 0.9  # the ANN finds the exhaustive top 10
    assert own / (10 * N_USERS) >= 0.6  # and they are mostly of the user's category
    stats = retrieval.stats()
    assert stats["searches"] == N_USERS and stats["fallbacks"] == 1 and "p99_ms" in stats


def test_a_search_takes_extra_items_for_those_the_caller_leaves_out(trained) -> None:
    """``extra`` (serving's ``exclude_seen``: items the user acted on) widens the search, so
    that the candidates left stay ``retrieval.candidates``: the best 10 are still among the
    15 found."""
    shards, dense, _, _ = trained
    sync, model, retrieval = _replica(shards, dense)
    _pull(sync, model, retrieval)
    for user in range(0, N_USERS, 7):
        rows = SlotRows.of([{"user_id": user}], CFG.slots)
        plain, wider = _search(retrieval, rows, 0), _search(retrieval, rows, 0, extra=5)
        assert plain.size == 10 and wider.size == 15 and np.unique(wider).size == 15
        assert np.intersect1d(plain, wider).size >= 9  # the graph search may swap one


def test_a_sparse_update_reembeds_the_items_whose_rows_changed(trained) -> None:
    shards, dense, trainer, _ = trained
    sync, model, retrieval = _replica(shards, dense)
    _pull(sync, model, retrieval)
    rebuilds = retrieval.counts["rebuilds"]
    before = retrieval.retriever.vectors(np.arange(len(POOL)))
    # One item's tower row moves: only it is re-embedded, in place.
    client = ShardClient(shards, [table_name("item_id")])
    fid = model.batch_of(SlotRows.of([POOL[5]], CFG.slots), now=0).fids["item_id"]
    row = client.lookup({table_name("item_id"): fid})[table_name("item_id")]
    client.push({table_name("item_id"): fid},
                {table_name("item_id"): np.full_like(row, 5.0)}, 500)
    sync.sync_now("sparse")
    _pull(sync, model, retrieval)
    assert retrieval.counts["upserted"] == 1 and retrieval.counts["rebuilds"] == rebuilds
    after = retrieval.retriever.vectors(np.arange(len(POOL)))
    moved = np.flatnonzero(np.abs(after - before).max(axis=1) > 1e-6)
    assert moved.tolist() == [5]
    np.testing.assert_allclose(after[5], retrieval.retriever.item_vectors(
        retrieval._item_rows(np.array([5])))[0], atol=1e-5)
    # Two category rows, read by half the catalogue: more than rebuild_share, rebuilt.
    fid = model.batch_of(SlotRows.of(POOL[:2], CFG.slots), now=0).fids["category"]
    client = ShardClient(shards, [table_name("category")])
    row = client.lookup({table_name("category"): fid})[table_name("category")]
    client.push({table_name("category"): fid},
                {table_name("category"): np.full_like(row, 5.0)}, 500)
    sync.sync_now("sparse")
    touched = retrieval._touched_by(sync.updates(0, -1).sparse)  # every row: every item
    assert touched.size == len(POOL)
    _pull(sync, model, retrieval)
    assert retrieval.counts["rebuilds"] == rebuilds + 1
    for user in range(0, N_USERS, 7):  # the index matches the rows it now holds
        found = _search(retrieval, SlotRows.of([{"user_id": user}], CFG.slots), 0)
        assert np.intersect1d(found, _exhaustive(retrieval, user, 10)).size >= 8


def test_with_a_sharded_store_the_catalogue_reads_the_serving_shards_past_the_cache(
        trained, monkeypatch) -> None:
    """``serve.store: sharded``: the serving shards hold the tower tables. The index holds
    the vectors a replica holding every row computes, the rebuild reads past the cache
    (it stays empty), a search reads the user's rows through it, and a refresh that finds a
    serving shard failing keeps the index as it was and is tried again once it answers."""
    import monolith_ray.serve.catalogue as catalogue_module

    monkeypatch.setattr(catalogue_module, "REFRESH_RETRY_S", 0.1)
    shards, dense, _, _ = trained
    whole_sync, whole_model, whole = _replica(shards, dense)  # a replica holding every row
    _pull(whole_sync, whole_model, whole)
    cfg = dataclasses.replace(CFG, serve=dataclasses.replace(CFG.serve, store="sharded"))
    serving = [ServingShard(cfg.table_slots, "float32") for _ in shards]
    sync = ParameterSync(cfg.table_slots, shards, dense, start=False, dtype="float32",
                         parts=synced_parts(cfg), serving=serving)
    model = ServingModel(cfg, serving)
    retrieval = CatalogueRetrieval(cfg, model, SlotRows.of(POOL, cfg.slots))
    _pull(sync, model, retrieval)
    assert retrieval.wait_idle(60) and retrieval.ready
    assert model.cache_stats()["towers"]["rows"] == 0  # the catalogue's rows went past it
    assert model.cache_stats()["towers"]["capacity"] == cfg.serve.cache_rows // 4  # default
    every = np.arange(len(POOL))
    np.testing.assert_allclose(retrieval.retriever.vectors(every),
                               whole.retriever.vectors(every), atol=1e-5)
    for user in range(0, N_USERS, 7):
        rows = SlotRows.of([{"user_id": user}], cfg.slots)
        assert np.intersect1d(_search(retrieval, rows, 0), _search(whole, rows, 0)).size >= 9
    assert model.cache_stats()["towers"]["rows"] > 0  # the users' tower rows
    # item 5's tower row changes while serving shard 0 fails every read
    fid = model.batch_of(SlotRows.of([POOL[5]], cfg.slots), now=0).fids["item_id"]
    client = ShardClient(shards, [table_name("item_id")])
    row = client.lookup({table_name("item_id"): fid})[table_name("item_id")]
    client.push({table_name("item_id"): fid}, {table_name("item_id"): row + 3.0}, 600)
    before = retrieval.retriever.vectors(every)
    broken = [serving[k].get for k in range(len(serving))]
    for shard in serving:
        monkeypatch.setattr(shard, "get", lambda ids: (_ for _ in ()).throw(
            RuntimeError("serving shard down")))
    sync.sync_now("sparse")
    _pull(sync, model, retrieval)
    deadline = time.monotonic() + 30
    while retrieval.counts["refresh_failures"] < 2:  # failed, and failed again on retry
        assert time.monotonic() < deadline, retrieval.counts
        time.sleep(0.05)
    np.testing.assert_array_equal(retrieval.retriever.vectors(every), before)
    assert not retrieval.wait_idle(0.2)  # the failed work waits to be tried again
    for shard, get in zip(serving, broken):
        monkeypatch.setattr(shard, "get", get)
    deadline = time.monotonic() + 30
    while retrieval.counts["upserted"] < 1:
        assert time.monotonic() < deadline, retrieval.counts
        time.sleep(0.05)
    assert retrieval.wait_idle(60)
    moved = np.flatnonzero(np.abs(retrieval.retriever.vectors(every) - before).max(axis=1)
                           > 1e-6)
    assert moved.tolist() == [5]
    # a serving shard restarted from a snapshot, not caught up: its rows are not taken
    wanted = {table_name("item_id"): np.concatenate([fid, fid])}
    assert model._towers.fetch_blocking(wanted, 10)[table_name("item_id")].shape[0] == 2
    for shard in serving:
        shard.version = 0
    with pytest.raises(RuntimeError, match="restarted and has not caught up"):
        model._towers.fetch_blocking(wanted, 10)


def test_a_refresh_with_nothing_to_do_yet_is_no_failure(trained) -> None:
    """Sparse deltas noted before any tower part: nothing to embed yet, not a failure (a
    failure would pause the refresh thread, and the first index with it)."""
    retrieval = CatalogueRetrieval(CFG, ServingModel(CFG), SlotRows.of(POOL, CFG.slots),
                                   background=False)
    retrieval._touched = np.ones(len(POOL), bool)
    assert retrieval._refresh_pending() and retrieval.counts["refresh_failures"] == 0
    assert retrieval.wait_idle(1) and not retrieval.ready


def test_touched_items_are_those_reading_a_changed_row(trained) -> None:
    shards, dense, _, _ = trained
    _, model, retrieval = _replica(shards, dense)

    def fid(item: int, slot: str) -> np.ndarray:
        return model.batch_of(SlotRows.of([POOL[item]], CFG.slots), now=0).fids[slot]

    class Update:  # the fields of a SparseUpdate it reads
        ids = {table_name("item_id"): fid(7, "item_id"), "item_id": fid(3, "item_id")}
        evicted = {table_name("category"): np.empty(0, np.int64)}

    # item 7's tower row; item 3's ranking row is not the towers'
    assert retrieval._touched_by(Update).tolist() == [7]
    Update.ids = {}
    Update.evicted = {table_name("category"): fid(2, "category")}  # evicted counts too
    assert retrieval._touched_by(Update).tolist() == [i for i in ITEMS if i % 4 == 2]


def test_refreshes_run_on_their_own_thread_and_only_a_new_tower_part_rebuilds(trained) -> None:
    shards, dense, trainer, _ = trained
    sync = ParameterSync(CFG.table_slots, shards, dense, start=False, dtype="float32",
                         parts=synced_parts(CFG))
    model = ServingModel(CFG)
    retrieval = CatalogueRetrieval(CFG, model, SlotRows.of(POOL, CFG.slots))
    _pull(sync, model, retrieval)
    assert retrieval.wait_idle(60) and retrieval.ready
    assert retrieval.counts["rebuilds"] == 1
    # The ranking model moves, the towers do not: a dense update without a rebuild.
    dense.push(jax.tree.map(np.zeros_like, dense.pull()[0]))
    sync.sync_now("dense")
    staged = _pull(sync, model, retrieval)
    assert staged.dense is not None and staged.parts[TOWER_PART][1] == (dense.incarnation(),
                                                                        trainer.steps)
    assert retrieval.wait_idle(60) and retrieval.counts["rebuilds"] == 1
    # A tower step: the part's version moves, the index is rebuilt with it.
    trainer.train_batch(_batch(np.random.default_rng(5), 128, 400))
    trainer.flush()
    sync.sync_now("dense")
    _pull(sync, model, retrieval)
    assert retrieval.wait_idle(60) and retrieval.counts["rebuilds"] == 2
    assert retrieval.counts["refresh_failures"] == 0


def test_updates_noted_while_a_refresh_waits_are_one_mask_of_the_pool(trained,
                                                                        monkeypatch) -> None:
    """However many sparse updates come while a refresh waits (a long rebuild), what they
    touched is held as one bool an item, and the refresh takes their union."""
    shards, dense, _, _ = trained
    sync, model, retrieval = _replica(shards, dense)
    _pull(sync, model, retrieval)
    refresh = retrieval._refresh_pending
    monkeypatch.setattr(retrieval, "_refresh_pending", lambda: None)  # the refresh waits

    def fid(item: int, slot: str) -> np.ndarray:
        return model.batch_of(SlotRows.of([POOL[item]], CFG.slots), now=0).fids[slot]

    class Sparse:  # the fields of a SparseUpdate on_updates reads
        reset = False
        ids = {table_name("item_id"): fid(7, "item_id")}
        evicted: dict = {}

    class Staged:
        parts = None
        sparse = Sparse

    for _ in range(50):
        retrieval.on_updates(Staged)
    Sparse.ids = {table_name("item_id"): np.concatenate([fid(5, "item_id"),
                                                         fid(7, "item_id")])}
    retrieval.on_updates(Staged)
    held = retrieval._touched
    assert held.dtype == bool and held.shape == (len(POOL),)
    assert np.flatnonzero(held).tolist() == [5, 7]
    upserted = retrieval.counts["upserted"]
    refresh()
    assert retrieval._touched is None
    assert retrieval.counts["upserted"] == upserted + 2


def _readers_by_scan(fids: np.ndarray, idx: np.ndarray, asked: np.ndarray) -> list[int]:
    """The items reading any of ``asked``, by a scan of every item's values."""
    read = np.isin(fids, asked)
    return np.flatnonzero(np.where(idx >= 0, read[np.maximum(idx, 0)], False).any(axis=1)
                          ).tolist()


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_readers_finds_the_items_a_scan_finds(n: int, width: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    fids = np.unique(rng.integers(-50, 50, size=rng.integers(1, 30)))
    idx = rng.integers(-1, fids.size, size=(n, width)).astype(np.int32)  # -1: no value
    readers = Readers(fids, idx)
    asked = rng.integers(-60, 60, size=rng.integers(0, 20))  # some the catalogue lacks
    found = readers.of(asked)
    assert found.dtype == np.int64
    assert found.tolist() == _readers_by_scan(fids, idx, asked)


def test_readers_of_nothing_and_of_an_empty_catalogue() -> None:
    readers = Readers(np.array([3, 7]), np.array([[0], [1], [-1]]))
    assert readers.of(np.empty(0, np.int64)).tolist() == []
    assert readers.of(np.array([5])).tolist() == []  # between the fids
    assert readers.of(np.array([9, 7, 7])).tolist() == [1]  # past the last; asked twice
    empty = Readers(np.empty(0, np.int64), np.empty((0, 1), np.int32))
    assert empty.of(np.array([1])).tolist() == []
