"""Serving shards and the sharded sync, in process: deltas moved without a copy in the sync,
positions, snapshot + deltas after a restart, what a replica's cache is sent, and the
replica's rows through its cache."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from monolith_ray.config import load_config
from monolith_ray.features import make_fids
from monolith_ray.ps.client import ShardClient
from monolith_ray.ps.dense import DenseServer
from monolith_ray.ps.shard import ShardServer
from monolith_ray.serve.model import ServingModel, SlotRows
from monolith_ray.serve.serving_shard import START, ServingShard, read_snapshot
from monolith_ray.serve.sync import ParameterSync
from monolith_ray.train.job import dense_server_args

CFG = load_config(overrides=["serve.store_dtype=float32", "serve.store=sharded",
                             "serve.cache_rows=64", "serve.cache_policy=lru"])
NAMES = [s.name for s in CFG.slots]
ITEM = CFG.slot("item_id").slot_id


@pytest.fixture()
def sharded() -> tuple[ShardClient, list[ServingShard], ParameterSync]:
    shards = [ShardServer(CFG.slots, CFG.admission) for _ in range(2)]
    serving = [ServingShard(CFG.slots, "float32") for _ in range(2)]
    dense = DenseServer(*dense_server_args(CFG))
    sync = ParameterSync(CFG.slots, shards, dense, start=False, dtype="float32",
                         serving=serving)
    return ShardClient(shards, NAMES), serving, sync


def _train(client: ShardClient, values: list[int], scale: float = 1.0) -> np.ndarray:
    """Insert items ``values`` and push a gradient -> their fids."""
    fids = np.unique(make_fids(ITEM, np.asarray(values, dtype=np.int64)))
    client.pull({"item_id": fids}, 100.0)
    grads = np.full((fids.size, CFG.slot("item_id").dim + 1), scale, dtype=np.float32)
    client.push({"item_id": fids}, {"item_id": grads}, 100.0)
    return fids


def _served(serving: list[ServingShard], fids: np.ndarray) -> np.ndarray:
    """The serving shards' rows of item ``fids`` (each shard answers for what it holds)."""
    return sum(s.get({"item_id": fids}).rows["item_id"] for s in serving)


def test_deltas_reach_the_serving_shards_and_the_sync_holds_no_table(sharded) -> None:
    client, serving, sync = sharded
    fids = _train(client, list(range(50)))
    sync.sync_now("sparse")
    np.testing.assert_array_equal(_served(serving, fids),
                                  client.lookup({"item_id": fids})["item_id"])
    assert sync.store is None and sync.status()["store"] == "sharded"
    held = [s.stats()["rows"]["item_id"] for s in serving]
    assert sum(held) == 50 and min(held) > 0  # both shards hold their part
    # The first read at the sync's start (empty tables) was whole: a reset without rows;
    # the next holds the 50 changed ids and their rows, counted in the log's bytes.
    assert [c.reset for c in sync._log] == [True, False]
    assert sync.status()["log_bytes"] >= 50 * (8 + 17 * 4)
    _train(client, [3, 4], scale=-2.0)
    sync.sync_now("sparse")
    np.testing.assert_array_equal(_served(serving, fids),
                                  client.lookup({"item_id": fids})["item_id"])
    assert sync._log[-1].changed["item_id"].size == 2


def test_a_replica_gets_each_ids_last_event_across_versions(sharded) -> None:
    client, serving, sync = sharded
    fids = _train(client, list(range(10)))
    sync.sync_now("sparse")
    start = sync.versions()["sparse"]
    client.shards[0].evict({"item_id": fids})  # shard 0 drops its part...
    client.shards[1].evict({"item_id": fids})
    sync.sync_now("sparse")
    again = _train(client, [1, 2])  # ...two come back
    sync.sync_now("sparse")
    update = sync.updates(start, 1, sync.incarnation).sparse
    assert not update.reset and update.version == start + 2
    assert set(update.ids["item_id"].tolist()) == set(again.tolist())
    assert set(update.evicted["item_id"].tolist()) == set(fids.tolist()) - set(again.tolist())
    np.testing.assert_array_equal(update.rows["item_id"][np.argsort(update.ids["item_id"])],
                                  client.lookup({"item_id": np.sort(again)})["item_id"])
    assert sync.updates(0, 1, sync.incarnation).sparse.reset  # new: a reset, no rows
    assert sync.updates(start + 2, 1, sync.incarnation).sparse is None


def test_a_serving_shard_out_of_step_refuses_and_is_read_from_its_position(sharded) -> None:
    client, serving, sync = sharded
    _train(client, list(range(20)))
    sync.sync_now("sparse")
    serving[0].position = START  # as if it lost its state
    serving[0].store.clear()
    fids = _train(client, [7])
    sync.sync_now("sparse")
    assert sync.counters["serving_refusals"] == 1
    all_fids = make_fids(ITEM, np.arange(20, dtype=np.int64))
    np.testing.assert_array_equal(_served(serving, all_fids),
                                  client.lookup({"item_id": all_fids})["item_id"])
    assert fids.size == 1


def test_a_restarted_serving_shard_comes_back_from_snapshot_plus_deltas(sharded,
                                                                         tmp_path) -> None:
    client, serving, sync = sharded
    fids = _train(client, list(range(40)))
    sync.sync_now("sparse")
    client.shards[0].snapshot(tmp_path / "shard-0")
    _train(client, list(range(40)), scale=-3.0)  # after the snapshot
    sync.sync_now("sparse")
    store, position = read_snapshot(str(tmp_path / "shard-0"), CFG.slots, "float32")
    assert position.incarnation == client.shards[0].incarnation()
    assert store.rows_per_slot()["item_id"] == serving[0].stats()["rows"]["item_id"]
    # The restart: a new shard loads the snapshot, the sync sends what changed since.
    fresh = ServingShard(CFG.slots, "float32")
    fresh.load_snapshot(str(tmp_path / "shard-0"))
    assert fresh.stats()["restored_from"] == str(tmp_path / "shard-0")
    sync.serving[0] = fresh
    sync.sync_now("sparse")
    rows = fresh.stats()["rows_applied"]
    assert 0 < rows < 40  # only the rows changed after the snapshot, never the whole shard
    assert fresh.stats()["whole_loads"] == 0
    np.testing.assert_array_equal(_served([fresh, serving[1]], fids),
                                  client.lookup({"item_id": fids})["item_id"])


def test_a_restarted_sync_resumes_from_the_serving_shards(sharded) -> None:
    client, serving, sync = sharded
    _train(client, list(range(30)))
    sync.sync_now("sparse")
    sync.sync_now("sparse")
    again = ParameterSync(CFG.slots, sync.shards, sync.dense, start=False, dtype="float32",
                          serving=serving)
    assert again.versions()["sparse"] >= sync.versions()["sparse"]
    assert all(s.stats()["whole_loads"] == 1 for s in serving)  # no second whole read
    fids = _train(client, [5], scale=4.0)
    again.sync_now("sparse")
    np.testing.assert_array_equal(_served(serving, fids),
                                  client.lookup({"item_id": fids})["item_id"])


def test_a_row_trained_after_a_sync_reaches_an_answer_through_the_cache(sharded) -> None:
    client, serving, sync = sharded
    model = ServingModel(CFG, serving)
    _train(client, [2])
    sync.sync_now("sparse")
    model.apply(sync.updates(0, 0, sync.incarnation))
    pair = SlotRows.of([{"user_id": 1, "item_id": 2}], CFG.slots)
    before = model.score(pair, now=0)
    assert model.score(pair, now=0) == before
    stats = model.cache_stats()
    assert stats["hits"] > 0 and stats["rows"] > 0  # the second answer came from the cache
    _train(client, [2], scale=50.0)
    sync.sync_now("sparse")
    assert model.score(pair, now=0) == before  # the cache follows versions, not shards
    model.apply(sync.updates(model.versions["sparse"], model.versions["dense"], sync.incarnation))
    after = model.score(pair, now=0)
    assert after != pytest.approx(before)
    fetched = model.cache_stats()["ids_fetched"]
    model.score(pair, now=0)
    assert model.cache_stats()["ids_fetched"] == fetched  # updated in place, not refetched


def test_an_evicted_id_reverts_to_the_default_at_serving(sharded) -> None:
    client, serving, sync = sharded
    model = ServingModel(CFG, serving)
    fids = _train(client, [9], scale=30.0)
    sync.sync_now("sparse")
    model.apply(sync.updates(0, 0, sync.incarnation))
    item = SlotRows.of([{"item_id": 9}], CFG.slots)
    unknown = SlotRows.of([{"item_id": 123456}], CFG.slots)
    assert model.score(item, now=0) != pytest.approx(model.score(unknown, now=0))
    for shard in client.shards:
        shard.evict({"item_id": fids})
    sync.sync_now("sparse")
    versions = model.versions
    model.apply(sync.updates(versions["sparse"], versions["dense"], sync.incarnation))
    assert model.cache_stats()["dropped"] == 1
    assert model.score(item, now=0) == pytest.approx(model.score(unknown, now=0))


def test_a_down_shard_gives_default_rows_and_is_not_cached(sharded) -> None:
    client, serving, sync = sharded
    model = ServingModel(CFG, serving)
    fids = _train(client, list(range(8)), scale=20.0)
    sync.sync_now("sparse")
    model.apply(sync.updates(0, 0, sync.incarnation))

    class Down:
        def get(self, ids):
            raise ConnectionError("shard process gone")

    owner = np.flatnonzero(serving[0].get({"item_id": fids}).rows["item_id"].any(axis=1))
    model.rows.shards[0] = Down()
    rows, _ = model.rows.lookup_blocking({"item_id": fids})
    assert not rows["item_id"][owner].any()  # shard 0's ids read the default row
    assert rows["item_id"].any()  # shard 1's do not
    stats = model.cache_stats()
    assert stats["shard_failures"] == 1 and stats["shards_down"] == 1
    assert stats["rows"] == fids.size - owner.size


def test_replica_memory_is_bounded_as_the_table_grows_tenfold() -> None:
    cfg = dataclasses.replace(CFG, serve=dataclasses.replace(CFG.serve, cache_rows=1000))
    serving = [ServingShard(CFG.slots, "float32") for _ in range(2)]
    model = ServingModel(cfg, serving)
    bound = model.cache_stats()["bytes"]
    for n in (2_000, 20_000):
        for shard in serving:
            ids = make_fids(ITEM, np.arange(n, dtype=np.int64))
            mine = ids[np.arange(n) % 2 == serving.index(shard)]
            shard.store.upsert("item_id", mine, np.ones((mine.size, 17), np.float32))
            shard.ready = True
        for start in range(0, n, 500):
            model.rows.lookup_blocking({"item_id": make_fids(
                ITEM, np.arange(start, start + 500, dtype=np.int64))})
        stats = model.cache_stats()
        assert stats["rows"] <= 1000 and stats["bytes"] == bound
    assert sum(s.stats()["bytes"] for s in serving) > 5 * bound


def test_snapshot_files_are_checked_and_a_bad_one_leaves_the_shard_empty(sharded,
                                                                          tmp_path) -> None:
    client, serving, sync = sharded
    _train(client, list(range(10)))
    folder = tmp_path / "shard-0"
    client.shards[0].snapshot(folder)
    (folder / "position.json").unlink()  # a snapshot from before positions: read whole
    store, position = read_snapshot(str(folder), CFG.slots, "float32")
    assert position is START and len(store) == client.shards[0].stats()["item_id"]["rows"]
    (folder / "position.json").write_text('{"incarnation": 1}')
    with pytest.raises(ValueError, match="position.json"):
        read_snapshot(str(folder), CFG.slots, "float32")
    (folder / "item_id.table").write_bytes(b"\x93NUMPY not a table at all")
    with pytest.raises(ValueError, match="table snapshot"):
        read_snapshot(str(folder), CFG.slots, "float32")
    shard = ServingShard(CFG.slots, "float32")
    shard.load_snapshot(str(folder))
    stats = shard.stats()
    assert stats["load_error"] and not stats["ready"] and stats["restored_from"] is None
    assert shard.state() == (0, START)  # the sync then reads its training shard whole


def test_a_bulk_read_of_actor_shards_comes_back_in_order_a_few_calls_at_a_time(
        ray_session, monkeypatch) -> None:
    """``ShardedRows.fetch_blocking`` over serving-shard actors, cut into calls of 3 ids, at
    most 2 in flight a shard: every row where it was asked, duplicates and ids no shard
    holds (zeros) included; a shard restarted and not caught up fails the read."""
    import ray

    import monolith_ray.serve.sharded_rows as sharded_rows
    from monolith_ray.ps.routing import shard_of
    from monolith_ray.serve.sharded_rows import ShardedRows

    monkeypatch.setattr(sharded_rows, "BULK_IDS", 3)
    slot = CFG.slot("item_id")
    fids = make_fids(ITEM, np.arange(40, dtype=np.int64))
    rows = np.arange(40 * (slot.dim + 1), dtype=np.float32).reshape(40, slot.dim + 1)
    actors = [ray.remote(ServingShard).options(num_cpus=0, max_concurrency=2).remote(
        [slot], "float32") for _ in range(2)]

    def fill(shard: ServingShard, ids: np.ndarray, held: np.ndarray, version: int) -> None:
        shard.store.upsert("item_id", ids, held)
        shard.ready, shard.version = True, version

    try:
        owner = shard_of(fids, 2)
        ray.get([a.__ray_call__.remote(fill, fids[owner == k], rows[owner == k], 5)
                 for k, a in enumerate(actors)])
        cache = ShardedRows([slot], actors, 16, "lru", "float32")
        cache.cache.version = 5
        asked = np.concatenate([fids[::-1], fids[:7], make_fids(ITEM, np.array([999]))])
        got = cache.fetch_blocking({"item_id": asked}, 30)["item_id"]
        np.testing.assert_array_equal(got[:40], rows[::-1])
        np.testing.assert_array_equal(got[40:47], rows[:7])
        assert not got[47].any() and len(cache.cache) == 0  # past the cache
        ray.get(actors[1].__ray_call__.remote(fill, fids[:0], rows[:0], 0))
        with pytest.raises(RuntimeError, match="serving shard 1 restarted"):
            cache.fetch_blocking({"item_id": asked}, 30)
    finally:
        for actor in actors:
            ray.kill(actor)
