"""ParameterSync with in-process shards and dense server: deltas, evictions, versions, and
what a replica is sent for the versions it holds."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from monolith_ray.config import load_config
from monolith_ray.features import hash_str, make_fids
from monolith_ray.ps.client import ShardClient
from monolith_ray.ps.dense import DenseServer
from monolith_ray.ps.shard import ShardServer
from monolith_ray.serve.model import ServingModel, SlotRows
from monolith_ray.serve.store import SparseStore
from monolith_ray.serve.sync import _ARRAY_BYTES, _ENTRY_BYTES, ParameterSync
from monolith_ray.train.job import dense_server_args

CFG = load_config(overrides=["serve.store_dtype=float32"])
NAMES = [s.name for s in CFG.slots]


@pytest.fixture()
def training() -> tuple[ShardClient, DenseServer]:
    shards = [ShardServer(CFG.slots, CFG.admission) for _ in range(2)]
    return ShardClient(shards, NAMES), DenseServer(*dense_server_args(CFG))


def _train(client: ShardClient, slot: str, values: list[int], scale: float = 1.0,
           now: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    """Pull ``values`` of ``slot`` (inserting them) and push a gradient -> (fids, rows after)."""
    fids = np.unique(make_fids(CFG.slot(slot).slot_id, np.asarray(values, dtype=np.int64)))
    client.pull({slot: fids}, now)
    grads = np.full((fids.size, CFG.slot(slot).dim + 1), scale, dtype=np.float32)
    client.push({slot: fids}, {slot: grads}, now)
    return fids, client.lookup({slot: fids})[slot]


def _item_fids(n: int) -> np.ndarray:
    """The fids of items 0..n-1."""
    return make_fids(CFG.slot("item_id").slot_id, np.arange(n, dtype=np.int64))


def _served_as_trained(sync: ParameterSync, client: ShardClient, fids: np.ndarray) -> None:
    """The serving store holds exactly the shards' rows of item ``fids``."""
    np.testing.assert_array_equal(sync.store.lookup("item_id", fids),
                                  client.lookup({"item_id": fids})["item_id"])


def _sync(client: ShardClient, dense: DenseServer) -> ParameterSync:
    return ParameterSync(CFG.slots, client.shards, dense, start=False, dtype="float32")


def test_changed_rows_reach_the_serving_store_and_the_version_moves(training) -> None:
    client, dense = training
    sync = _sync(client, dense)
    assert sync.versions() == {"sparse": 0, "dense": 1}
    fids, rows = _train(client, "item_id", [1, 2, 3])
    sync.sync_now("sparse")
    assert sync.versions()["sparse"] == 1
    np.testing.assert_array_equal(sync.store.lookup("item_id", fids), rows)
    sync.sync_now("sparse")  # nothing changed: no new version
    assert sync.versions()["sparse"] == 1 and sync.counters["sparse_syncs"] == 3


def test_replica_gets_whole_state_then_only_what_changed(training) -> None:
    client, dense = training
    sync = _sync(client, dense)
    _train(client, "user_id", list(range(100)))
    sync.sync_now("sparse")
    first = sync.updates(0, 0, sync.incarnation)
    assert first.sparse.reset and first.sparse.ids["user_id"].size == 100
    assert first.dense is not None and first.dense[1] == 1
    replica = SparseStore(CFG.slots, "float32")
    replica.apply(first.sparse)
    current = sync.updates(1, 1, sync.incarnation)
    assert current.sparse is None and current.dense is None  # nothing to send
    other = sync.updates(1, 1, "an earlier incarnation")  # a restarted sync's replica
    assert other.sparse.reset and other.dense is not None and other.incarnation == sync.incarnation

    fids, rows = _train(client, "user_id", [5, 500], scale=-3.0)
    gone = make_fids(CFG.slot("user_id").slot_id, np.array([7], dtype=np.int64))
    client.shards[0].evict({"user_id": gone})
    client.shards[1].evict({"user_id": gone})
    sync.sync_now("sparse")
    delta = sync.updates(1, 1, sync.incarnation).sparse
    assert not delta.reset and delta.version == 2
    assert set(delta.ids["user_id"].tolist()) == set(fids.tolist())
    assert delta.evicted["user_id"].tolist() == gone.tolist()
    replica.apply(delta)
    probe = np.concatenate([fids, gone])
    np.testing.assert_array_equal(replica.lookup("user_id", probe),
                                  sync.store.lookup("user_id", probe))
    assert not replica.lookup("user_id", gone).any()  # evicted: the default embedding
    # The shards' eviction records were taken, then dropped.
    assert all(s.tables["user_id"].export_since(0).evicted.size == 0 for s in client.shards)


def test_a_replica_too_far_behind_gets_the_whole_state(training) -> None:
    client, dense = training
    # Each sync changes one item row: 8 bytes of ids, a version's overhead and each slot's
    # two arrays' (changed, evicted); two kept.
    sync = ParameterSync(CFG.slots, client.shards, dense, start=False,
                         log_bytes=2 * (_ENTRY_BYTES + 8 + 2 * len(NAMES) * _ARRAY_BYTES))
    for k in range(4):
        _train(client, "item_id", [k])
        sync.sync_now("sparse")
    assert [c.version for c in sync._log] == [3, 4]
    assert sync.updates(3, 1, sync.incarnation).sparse.reset is False
    assert sync.updates(1, 1, sync.incarnation).sparse.reset is True
    assert sync.updates(99, 1, sync.incarnation).sparse.reset is True  # ahead: a restarted sync


def test_dense_swap_only_when_training_moved_the_weights(training) -> None:
    client, dense = training
    sync = _sync(client, dense)
    sync.sync_now("dense")
    assert sync.versions()["dense"] == 1  # same trained version: no swap
    params, _ = dense.pull()
    dense.push(jax.tree.map(lambda p: np.ones_like(p), params))
    sync.sync_now("dense")
    assert sync.versions()["dense"] == 2 and sync.counters["dense_swaps"] == 2
    new, version = sync.updates(0, 1, sync.incarnation).dense
    assert version == 2
    assert any(not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(new), jax.tree.leaves(params)))


def test_serving_model_scores_with_the_synced_rows(training) -> None:
    client, dense = training
    sync = _sync(client, dense)
    model = ServingModel(CFG)
    pair = SlotRows.of([{"user_id": 1, "item_id": 2, "genres": ["Drama"]}], CFG.slots)
    model.apply(sync.updates(0, 0, sync.incarnation))
    before = model.score(pair, now=0)
    _train(client, "item_id", [2], scale=50.0)
    sync.sync_now("sparse")
    assert model.apply(sync.updates(0, 1, sync.incarnation))
    assert model.versions == {"dense": 1, "sparse": 1}
    assert model.score(pair, now=0) != pytest.approx(before)
    with pytest.raises(ValueError, match="kind"):
        sync.sync_now("sideways")


def test_user_slots_fill_what_items_lack_as_one_row_each_would() -> None:
    model = ServingModel(CFG)
    rng = np.random.default_rng(0)
    for name in ("user_id", "item_id", "gender", "genres"):
        ids = make_fids(CFG.slot(name).slot_id, np.array([1, 2, 3, 5, 42], dtype=np.int64))
        ids = np.concatenate([ids, make_fids(CFG.slot(name).slot_id,
                                             np.array([hash_str(["F"])[0], hash_str(["Drama"])[0],
                                                       hash_str(["War"])[0]]))])
        model.store.upsert(name, ids, rng.normal(size=(ids.size, 17)).astype(np.float32))
    user = {"user_id": 42, "gender": "F", "genres": ["War"]}
    items = [{"item_id": 1, "genres": ["Drama", "War"]}, {"item_id": 2}, {"item_id": 3}]
    pool = SlotRows.of(items, CFG.slots)
    got = model.score(pool, SlotRows.of([user], CFG.slots), take=np.array([2, 0]))
    want = model.score(SlotRows.of([{**user, **items[2]}, {**user, **items[0]}], CFG.slots))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[0] != pytest.approx(got[1])


def test_a_shard_restored_from_a_snapshot_is_read_whole_again(training, tmp_path) -> None:
    client, dense = training
    sync = _sync(client, dense)
    _train(client, "item_id", list(range(20)))
    client.shards[0].snapshot(tmp_path)
    for _ in range(3):
        _train(client, "item_id", list(range(20)), scale=-1.0)
    sync.sync_now("sparse")
    client.shards[0].restore(tmp_path)  # as a restarted shard does: back to the snapshot
    sync.sync_now("sparse")
    assert sync.counters["shard_resets"] == 1
    fids = make_fids(CFG.slot("item_id").slot_id, np.arange(20, dtype=np.int64))
    np.testing.assert_array_equal(sync.store.lookup("item_id", fids),
                                  client.lookup({"item_id": fids})["item_id"])


def test_a_restored_shard_is_read_whole_even_once_its_versions_passed_the_old_ones(
        training, tmp_path) -> None:
    client, dense = training
    sync = _sync(client, dense)
    _train(client, "item_id", list(range(20)))
    client.shards[0].snapshot(tmp_path)  # holds items 0..19 as first trained
    _train(client, "item_id", list(range(20)), scale=-1.0)
    sync.sync_now("sparse")
    old = dict(sync._shard_versions[0])
    client.shards[0].restore(tmp_path)
    for _ in range(4):  # the restored shard's versions climb past those the sync holds
        _train(client, "item_id", list(range(100, 110)))
    assert client.shards[0].stats()["item_id"]["version"] > old["item_id"]
    sync.sync_now("sparse")
    assert sync.counters["shard_resets"] == 1
    _served_as_trained(sync, client, _item_fids(20))


def test_a_sync_failing_part_way_still_versions_what_it_applied(training, monkeypatch) -> None:
    client, dense = training
    sync = _sync(client, dense)
    before = sync.versions()["sparse"]
    _train(client, "item_id", list(range(40)))
    apply, calls = sync.store.apply_deltas, []

    def fail_on_the_second_shard(deltas, owner=-1):  # slot by slot, shard 0's slots first
        calls.append(1)
        if len(calls) == len(NAMES) + 1:
            raise RuntimeError("bad delta")
        return apply(deltas, owner)

    monkeypatch.setattr(sync.store, "apply_deltas", fail_on_the_second_shard)
    with pytest.raises(RuntimeError, match="bad delta"):
        sync.sync_now("sparse")
    first = sync.versions()["sparse"]
    assert first == before + 1  # shard 0's rows were applied: they are a version
    update = sync.updates(before, sync.dense_version, sync.incarnation).sparse
    got = update.ids["item_id"]
    mine = client.route({"item_id": _item_fids(40)}).ids[0].unpack()["item_id"]
    assert set(mine.tolist()) <= set(got.tolist())
    monkeypatch.setattr(sync.store, "apply_deltas", apply)
    sync.sync_now("sparse")  # shard 1 is asked again from where it was
    _served_as_trained(sync, client, _item_fids(40))


def test_a_shard_that_is_down_holds_up_none_of_the_others(training, monkeypatch) -> None:
    client, dense = training
    sync = _sync(client, dense)
    _train(client, "item_id", list(range(40)))
    down = client.shards[1]

    def unreachable(*args):
        raise ConnectionError("shard process gone")

    monkeypatch.setattr(down, "changes_since", unreachable)
    with pytest.raises(RuntimeError, match="shard 1: shard process gone"):
        sync.sync_now("sparse")
    up = client.route({"item_id": _item_fids(40)}).ids[0].unpack()["item_id"]
    assert sync.versions()["sparse"] == 1 and up.size
    np.testing.assert_array_equal(sync.store.lookup("item_id", up),
                                  client.shards[0].lookup({"item_id": up})["item_id"])
    monkeypatch.undo()
    sync.sync_now("sparse")  # back: read from where it was, nothing lost
    _served_as_trained(sync, client, _item_fids(40))


def test_evictions_are_forgotten_only_by_the_incarnation_they_were_read_from(training) -> None:
    client, _ = training
    shard = client.shards[0]
    fids, _ = _train(client, "item_id", list(range(40)))
    mine = client.route({"item_id": fids}).ids[0].unpack()["item_id"]
    shard.evict({"item_id": mine})
    incarnation, deltas = shard.changes_since({}, None)
    assert deltas["item_id"].evicted.size == mine.size
    shard._incarnation = "restored-since"  # as a restore between the read and the forget does
    shard.forget_evictions({"item_id": deltas["item_id"].version}, incarnation)
    assert shard.export_since(0)["item_id"].evicted.size == mine.size  # still there to read
    shard.forget_evictions({"item_id": deltas["item_id"].version}, "restored-since")
    assert shard.export_since(0)["item_id"].evicted.size == 0


def test_whole_tables_go_to_max_full_loads_replicas_at_a_time(training) -> None:
    client, dense = training
    sync = ParameterSync(CFG.slots, client.shards, dense, start=False, dtype="float32",
                         max_full_loads=1)
    _train(client, "item_id", [1, 2])
    sync.sync_now("sparse")
    first = sync.updates(0, 0, "", caller="replica-a")
    assert first.sparse.reset and not first.deferred
    second = sync.updates(0, 0, "", caller="replica-b")
    assert second.deferred and second.sparse is None and second.incarnation == ""
    # replica-a asks again once loaded: its load is over, replica-b's may start
    assert sync.updates(first.sparse.version, first.dense[1], first.incarnation,
                        caller="replica-a").sparse is None
    assert sync.updates(0, 0, "", caller="replica-b").sparse.reset
    assert sync.counters["full_loads"] == 2 and sync.counters["full_loads_deferred"] == 1
    assert not sync.updates(0, 0, "").deferred  # an unnamed caller is never held back


def test_a_replica_builds_a_whole_table_aside_and_swaps_it_in(training) -> None:
    client, dense = training
    sync = _sync(client, dense)
    fids, rows = _train(client, "item_id", [1, 2, 3])
    sync.sync_now("sparse")
    model = ServingModel(CFG)
    old_store = model.store
    staged = model.stage(sync.updates(0, 0, sync.incarnation))
    assert model.store is old_store and len(old_store) == 0  # built aside, not yet served
    model.commit(staged)
    assert model.store is not old_store
    np.testing.assert_array_equal(model.store.lookup("item_id", fids), rows)


def test_ids_a_restored_shard_no_longer_has_leave_the_serving_store(training, tmp_path) -> None:
    from monolith_ray.ps.routing import shard_of

    client, dense = training
    sync = _sync(client, dense)
    _train(client, "item_id", list(range(20)))
    client.shards[0].snapshot(tmp_path)  # shard 0 before items 20..59
    newer, _ = _train(client, "item_id", list(range(20, 60)))
    sync.sync_now("sparse")
    assert np.abs(sync.store.lookup("item_id", newer)).sum(axis=1).min() > 0
    version = sync.store.version
    client.shards[0].restore(tmp_path)  # as a restarted shard does: back to the snapshot
    sync.sync_now("sparse")
    on_0 = shard_of(newer, 2) == 0
    assert on_0.any() and (~on_0).any()
    # shard 0's share of the newer items is gone from serving (read whole, they are absent);
    # shard 1's stays, and the rest is served as trained
    assert not np.abs(sync.store.lookup("item_id", newer[on_0])).any()
    assert sync.counters["ids_gone_on_whole_reads"] == int(on_0.sum())
    _served_as_trained(sync, client, _item_fids(60))
    # a replica at the version before is told they are evicted
    delta = sync.updates(version, 0, sync.incarnation).sparse
    assert not delta.reset and set(newer[on_0].tolist()) <= set(delta.evicted["item_id"].tolist())


def test_evictions_whose_records_a_shard_dropped_unread_still_leave_serving(training) -> None:
    from monolith_ray.ps.routing import shard_of

    client, dense = training
    sync = _sync(client, dense)
    fids, _ = _train(client, "item_id", list(range(60)))
    sync.sync_now("sparse")
    mine = fids[shard_of(fids, 2) == 0]
    client.shards[0].tables["item_id"].max_eviction_records = 4
    client.shards[0].evict({"item_id": mine[:10]})  # 10 records past 4: the oldest dropped
    assert client.shards[0].tables["item_id"].export_since(0).evicted.size < 10
    sync.sync_now("sparse")
    assert sync.counters["shard_resets"] == 1  # read whole: it changed its incarnation
    assert not np.abs(sync.store.lookup("item_id", mine[:10])).any()
    _served_as_trained(sync, client, fids)
