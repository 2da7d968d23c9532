"""``serve.store: sharded`` on real Ray Serve, serving-shard actors, shard actors and a sync:
a row trained after a sync reaches an answer through a replica cache that held its old
value, ``/healthz`` reports the cache, retrieval embeds the catalogue from the serving shards'
tower tables, and a serving shard killed under load comes back from a snapshot plus the
deltas since while every request is answered."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import ray
import requests

from monolith_ray.features import make_fids
from monolith_ray.ps.client import ShardClient
from monolith_ray.ps.routing import shard_of
from monolith_ray.train.snapshots import take_snapshot

APP = "sharded-test"
USER = {"id": 1, "features": {"gender": "F", "age": 25}}
CACHE_ROWS = 64
TOWER_CACHE_ROWS = 24
RETRIEVAL = "retrieval={user_slots: [user_id], item_slots: [item_id, genres], candidates: 8}"
SMALL = ["serve.poll_interval_s=0.1", "serve.max_candidates=16", "serve.pool_draw=16",
         "serve.max_k=16"]  # one scorer size to compile


@pytest.fixture(scope="module")
def app(deploy_recommender, tmp_path_factory) -> Iterator[Any]:
    out = tmp_path_factory.mktemp("sharded-run")
    with deploy_recommender(APP, "/sharded", [
            *SMALL, "serve.store=sharded", f"serve.cache_rows={CACHE_ROWS}",
            f"serve.tower_cache_rows={TOWER_CACHE_ROWS}", RETRIEVAL,
            f"data.output_dir={out}", f"data.snapshot_root={out}/snapshots"],
            range(100, 400)) as deployed:
        yield deployed


def _predict(url: str, item: int) -> dict[str, Any]:
    r = requests.post(url + "/predict", json={"pairs": [{"user": USER, "item": item}]},
                      timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _health(url: str) -> dict[str, Any]:
    r = requests.get(url + "/healthz", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _train(app: Any, items: list[int], scale: float, steps: int = 1) -> np.ndarray:
    """Push ``steps`` gradients of ``scale`` to ``items``' rows -> their fids."""
    client = ShardClient(app.shards, [s.name for s in app.cfg.slots])
    slot = app.cfg.slot("item_id")
    fids = make_fids(slot.slot_id, np.asarray(items, dtype=np.int64))
    client.pull({"item_id": fids}, 100.0)
    for _ in range(steps):
        client.push({"item_id": fids},
                    {"item_id": np.full((fids.size, slot.dim + 1), scale, np.float32)}, 100.0)
    return fids


def _until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``check()`` every 0.1 s until it returns something truthy -> that; fail naming
    ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what} not within {timeout_s} s"
        time.sleep(0.1)


def test_a_row_trained_after_a_sync_reaches_an_answer_through_the_cache(app) -> None:
    item = 5000
    before = _predict(app.url, item)  # the cache fills with the item's (default) row
    hits = _health(app.url)["cache"]["hits"]
    assert _predict(app.url, item) == before
    assert _health(app.url)["cache"]["hits"] > hits  # the repeat came from the cache
    _train(app, [item], scale=-40.0, steps=20)
    assert _predict(app.url, item) == before  # not served before a sync
    ray.get(app.sync.sync_now.remote("sparse"))

    def moved() -> dict[str, Any] | None:
        answer = _predict(app.url, item)
        return answer if answer["scores"][0] != pytest.approx(before["scores"][0],
                                                              abs=1e-4) else None

    after = _until(moved, 10.0, "the trained row in /predict")
    assert after["model_version"]["sparse"] > before["model_version"]["sparse"]


def test_healthz_reports_the_cache_and_replica_mode_has_none(app, deploy_recommender) -> None:
    for item in range(200, 210):
        _predict(app.url, item)
    _predict(app.url, 200)
    health = _health(app.url)
    cache = health["cache"]
    assert health["store"] == "sharded"
    assert cache["capacity"] == CACHE_ROWS
    assert 0 < cache["rows"] <= CACHE_ROWS
    towers = cache["towers"]  # the users' tower rows (retrieval), a cache of their own
    assert towers["capacity"] == TOWER_CACHE_ROWS
    assert cache["bytes"] > 0 and health["store_bytes"] == cache["bytes"] + towers["bytes"]
    assert 0 < cache["hit_rate"] < 1
    assert cache["hit_rate"] == pytest.approx(cache["hits"] / (cache["hits"] + cache["misses"]))
    with deploy_recommender(APP + "-replica", "/replica", SMALL, range(100, 120)) as replica:
        health = _health(replica.url)
    assert health["store"] == "replica" and health["cache"] is None


def test_requests_without_candidates_are_retrieved_from_the_serving_shards_rows(app) -> None:
    """The catalogue's index was built from the serving shards' tower rows, past the cache;
    a search reads the user's tower rows through the replica's tower cache."""
    before = _health(app.url)
    assert before["retrieval"]["items"] == 300 and before["retrieval"]["rebuilds"] >= 1
    for user in range(4):
        r = requests.post(app.url + "/recommend", json={"user": {"id": 7000 + user}, "k": 5},
                          timeout=30)
        assert r.status_code == 200, r.text
        assert len(r.json()["items"]) == 5
        assert {i["item_id"] for i in r.json()["items"]} <= set(range(100, 400))
    after = _health(app.url)
    assert after["retrieval"]["searches"] == before["retrieval"]["searches"] + 4
    assert after["retrieval"]["fallbacks"] == before["retrieval"]["fallbacks"]
    towers = after["cache"]["towers"]
    assert towers["misses"] >= before["cache"]["towers"]["misses"] + 4  # four new users
    assert after["retrieval"]["refresh_failures"] == 0


def test_a_serving_shard_killed_under_load_comes_back_from_snapshot_and_deltas(app) -> None:
    """Runs last in this module: it kills a serving shard."""
    items = list(range(1000, 1200))
    _train(app, items, scale=1.0)
    ray.get(app.sync.sync_now.remote("sparse"))
    snapshot = take_snapshot(app.cfg, app.shards, app.dense)
    fids = _train(app, items[:50], scale=-3.0)  # after the snapshot
    ray.get(app.sync.sync_now.remote("sparse"))
    victim = 0
    mine = np.sort(fids[shard_of(fids, len(app.shards)) == victim])
    assert mine.size > 0
    old_pid = ray.get(app.serving[victim].pid.remote())

    answered: list[tuple[float, int]] = []  # (monotonic time, status); -1: no answer
    stop = threading.Event()

    def load(seed: int) -> None:
        """Rank 16 of the items at a time: the cache holds fewer rows than there are items,
        so requests keep asking the serving shards."""
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            candidates = rng.choice(items, 16, replace=False).tolist()
            try:
                status = requests.post(app.url + "/recommend", timeout=30, json={
                    "user": USER, "candidates": candidates, "k": 3}).status_code
            except requests.RequestException:
                status = -1
            answered.append((time.monotonic(), status))

    threads = [threading.Thread(target=load, args=(seed,)) for seed in range(2)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        killed_at = time.monotonic()
        ray.kill(app.serving[victim], no_restart=False)  # a crash: Ray restarts it

        def restored() -> dict[str, Any] | None:
            try:
                stats = ray.get(app.serving[victim].stats.remote(), timeout=5)
            except ray.exceptions.RayError:  # restarting
                return None
            return stats if stats["pid"] != old_pid and stats["ready"] else None

        stats = _until(restored, 30.0, "the restarted serving shard")
        back_at = time.monotonic()
        ray.get(app.sync.sync_now.remote("sparse"))
        time.sleep(0.3)  # load on the restored shard too
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    assert stats["restored_from"] == f"{snapshot}/shard-{victim}"
    served = ray.get(app.serving[victim].get.remote({"item_id": mine}))
    trained = ray.get(app.shards[victim].lookup.remote({"item_id": mine}))
    assert served.ready
    np.testing.assert_array_equal(served.rows["item_id"], trained["item_id"])
    after = ray.get(app.serving[victim].stats.remote())
    assert after["whole_loads"] == 0  # snapshot + deltas: never read whole
    assert after["rows_applied"] == mine.size  # only the rows changed since the snapshot
    statuses = [s for _, s in answered]
    assert len(statuses) > 10 and set(statuses) == {200}
    assert sum(killed_at < t < back_at for t, _ in answered) > 0  # answered meanwhile
    cache = _health(app.url)["cache"]
    assert cache["shard_failures"] + cache["shard_timeouts"] + cache["not_ready"] > 0
