"""History slots in the live loop on real Ray Serve and Kafka: serving reads the user's history
shard strictly before the request's time, logs what it read with the impression, the joiner
writes it into the example unchanged, and the shard, following the examples topic, learns
the clicked item for the user's next request. Two history shards, each holding only its own
users. A client cannot set a history slot."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import ray
import requests
import yaml

from monolith_ray.config import DEFAULT_CONFIG, JoinerConfig
from monolith_ray.config.loader import load_yaml
from monolith_ray.stream.user_partitions import history_shard_of
from monolith_ray.stream import read_range
from monolith_ray.stream.joiner import run_joiners

APP, PREFIX = "history-test", "/history-test"
MANY = 2400  # /predict pairs of distinct users: more than MAX_READ on some history shard
USER = 901
SHARDS = 2
# a user the other history shard holds
OTHER = next(u for u in range(USER + 1, USER + 100)
             if history_shard_of(np.array([u]), SHARDS, 2)[0] != history_shard_of(
                 np.array([USER]), SHARDS, 2)[0])


def history_overrides() -> list[str]:
    """The default config plus ``recent_items``: a user's last 5 positive item ids."""
    slots = load_yaml(DEFAULT_CONFIG)["slots"] + [
        {"name": "recent_items", "slot_id": 101, "dim": 16, "max_values": 5}]
    history = {"slots": [{"name": "recent_items", "source": "item_id", "max_len": 5}],
               "read_timeout_s": 2.0, "retry_s": 10.0, "shards": SHARDS}
    return [f"{key}={yaml.safe_dump(value, default_flow_style=True, width=1 << 20)}"
            for key, value in (("slots", slots), ("history", history))] + [
        "serve.exclude_seen=recent_items", f"serve.max_candidates={MANY}"]


@pytest.fixture(scope="module")
def app(deploy_recommender) -> Iterator[Any]:
    with deploy_recommender(APP, PREFIX, history_overrides(), range(100, 200)) as deployed:
        yield deployed


def shard(app: Any, user: int) -> Any:
    """The history shard holding ``user``."""
    return app.history[int(history_shard_of(np.array([user]), SHARDS,
                                            app.cfg.kafka.partitions)[0])]


def post(app: Any, path: str, body: Any) -> requests.Response:
    return requests.post(app.url + path, json=body, timeout=30)


def read(kafka: Any, topic: str, request_ids: set[str], at_least: int,
         timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """The messages of ``topic`` for ``request_ids``, polled until ``at_least`` are there."""
    deadline, found = time.monotonic() + timeout_s, []
    while len(found) < at_least and time.monotonic() < deadline:
        found = [m for p in range(kafka.partitions)
                 for m in map(json.loads, (r.value for r in read_range(kafka, topic, p, 0)))
                 if m["request_id"] in request_ids]
        time.sleep(0.1)
    return found


def recommend(app: Any, user: int) -> tuple[str, list[dict[str, Any]]]:
    r = post(app, "/recommend", {"user": {"id": user}, "k": 2, "candidates": [5, 6, 7]})
    assert r.status_code == 200, r.text
    return r.json()["request_id"], r.json()["items"]


def join(app: Any) -> None:
    """Run one joiner over what the app logged, closing every window at the end."""
    cfg = dataclasses.replace(app.cfg, joiner=JoinerConfig(
        window_s=60, allowed_lateness_s=5, commit_interval_s=0.3, cpus=0,
        group_id=f"{APP}-joiner"))
    run_joiners(cfg, 1, stop_when_idle_s=1.0, drain=True)


def test_served_history_is_logged_joined_and_learned_from_the_stream(app) -> None:
    now = int(time.time())
    # Held before the request: two past actions, and one dated after it, which no read at
    # the request's time may return; and one action of a user the other shard holds. Both
    # shards are fed it all, as both read the whole examples topic: each keeps its users.
    past = pa.table({
        "time": pa.array([now - 100, now - 50, now + 3600, now - 70], pa.int64()),
        "label": pa.array([1.0, 1.0, 1.0, 1.0], pa.float32()),
        "user_id": pa.array([USER] * 3 + [OTHER], pa.int64()),
        "item_id": pa.array([11, 12, 13, 21], pa.int64())})
    assert ray.get([h.observe.remote(past) for h in app.history]) in ([3, 1], [1, 3])
    with pytest.raises(ray.exceptions.RayTaskError, match="not held by history shard"):
        ray.get(shard(app, OTHER).read.remote([USER], [now]))
    rid, items = recommend(app, USER)
    other, _ = recommend(app, OTHER)
    kafka, topics = app.cfg.kafka, app.cfg.kafka.topics
    logged = read(kafka, topics.features, {rid}, 2)
    assert len(logged) == 2
    t0 = logged[0]["time"]
    held = ray.get(shard(app, USER).read.remote([USER], [t0]))["recent_items"][0]
    assert held == [12, 11]
    assert all(f["slots"]["recent_items"] == held for f in logged)
    assert all(f["slots"]["recent_items"] == [21]
               for f in read(kafka, topics.features, {other}, 2))

    # A click joins into an example holding the served value, which the history actor then
    # reads from the examples topic: the user's next request (a later second) sees the item.
    clicked = items[0]
    r = post(app, "/feedback", {"request_id": rid, "item_id": clicked["item_id"],
                                "token": clicked["token"], "action": "click"})
    assert r.status_code == 200, r.text
    join(app)
    examples = read(kafka, topics.examples, {rid}, 2)
    assert sorted(e["label"] for e in examples) == [0.0, 1.0]
    assert all(e["slots"]["recent_items"] == held for e in examples)
    deadline = time.monotonic() + 30
    while ray.get(shard(app, USER).stats.remote())["observed"] < 3 + 2:  # fed, then joined
        assert time.monotonic() < deadline, ray.get(shard(app, USER).stats.remote())
        time.sleep(0.2)
    while int(time.time()) <= t0:
        time.sleep(0.1)
    second, _ = recommend(app, USER)
    logged = read(kafka, topics.features, {second}, 2)
    assert logged and all(f["slots"]["recent_items"] == [clicked["item_id"], 12, 11]
                          for f in logged)


def test_items_the_user_acted_on_are_not_recommended_again(app) -> None:
    """``serve.exclude_seen``: the pool draw (here the whole pool of 100) leaves out the items
    of the user's ``recent_items``; when fewer than k would be left, seen ones fill up to k;
    a candidate list the client gives is kept whole."""
    user, now = 907, int(time.time())
    acted = [150, 151, 152, 153, 154]
    past = pa.table({"time": pa.array([now - 100 + i for i in range(5)], pa.int64()),
                     "label": pa.array([1.0] * 5, pa.float32()),
                     "user_id": pa.array([user] * 5, pa.int64()),
                     "item_id": pa.array(acted, pa.int64())})
    assert sum(ray.get([h.observe.remote(past) for h in app.history])) == 5

    def served(k: int) -> set[int]:
        r = post(app, "/recommend", {"user": {"id": user}, "k": k})
        assert r.status_code == 200, r.text
        return {item["item_id"] for item in r.json()["items"]}

    def counts() -> dict[str, int]:
        return requests.get(app.url + "/healthz", timeout=30).json()["served"]

    before = counts()
    got = served(90)
    assert len(got) == 90 and not got & set(acted)
    after = counts()
    assert after["seen_excluded"] == before["seen_excluded"] + 5
    assert len(served(100)) == 100  # 95 unseen are fewer than k: the 5 seen fill up
    assert counts()["seen_kept"] == after["seen_kept"] + 5
    given = acted[:2] + [101, 102, 103]
    other = post(app, "/recommend", {"user": {"id": user}, "k": 5, "candidates": given})
    assert {item["item_id"] for item in other.json()["items"]} == set(given)  # kept whole


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/recommend", {"user": {"id": 1, "features": {"recent_items": [5]}}},
     "user.features.recent_items"),
    ("/recommend", {"user": {"id": 1}, "candidates": [{"id": 5, "features": {
        "recent_items": [5]}}]}, "candidates[0].features.recent_items"),
    ("/predict", {"pairs": [{"user": {"id": 1, "features": {"recent_items": []}}, "item": 5}]},
     "pairs[0].user.features.recent_items"),
])
def test_a_client_cannot_set_a_history_slot(app, path, body, field) -> None:
    r = post(app, path, body)
    assert r.status_code == 422 and r.json()["error"].startswith(f"{field}: a history slot"), \
        r.text


def test_a_predict_of_more_users_than_one_read_takes_reads_them_in_pieces(app) -> None:
    """More distinct users on one history shard than ``MAX_READ`` are read in several calls,
    not refused (which also marked the shard down for every other request a while)."""
    from monolith_ray.history.server import MAX_READ

    users = np.arange(100_000, 100_000 + MANY)
    held = np.bincount(history_shard_of(users, SHARDS, app.cfg.kafka.partitions))
    assert held.max() > MAX_READ
    served = requests.get(app.url + "/healthz", timeout=30).json()["served"]
    r = post(app, "/predict", {"pairs": [{"user": {"id": int(u)}, "item": 5} for u in users]})
    assert r.status_code == 200, r.text
    assert len(r.json()["scores"]) == MANY
    after = requests.get(app.url + "/healthz", timeout=30).json()["served"]
    assert after["history_failed"] == served["history_failed"]
    by_shard = requests.get(app.url + "/healthz", timeout=30).json()["history_shards"]
    assert all(s["failed"] == 0 for s in by_shard)


def test_with_one_shard_down_the_other_shards_users_keep_their_history(app) -> None:
    """A read that fails leaves out only the users of its shard: counted once a request."""
    ray.kill(shard(app, USER), no_restart=True)

    def failed() -> int:
        return requests.get(app.url + "/healthz", timeout=30).json()["served"]["history_failed"]

    before = failed()
    rid, _ = recommend(app, USER)
    other, _ = recommend(app, OTHER)
    assert failed() == before + 1
    by_shard = requests.get(app.url + "/healthz", timeout=30).json()["history_shards"]
    down = int(history_shard_of(np.array([USER]), SHARDS, app.cfg.kafka.partitions)[0])
    assert by_shard[down]["failed"] == 1 and by_shard[1 - down]["failed"] == 0
    assert by_shard[1 - down]["calls"] >= 2
    kafka = app.cfg.kafka
    assert all(not f["slots"].get("recent_items")
               for f in read(kafka, kafka.topics.features, {rid}, 2))
    assert all(f["slots"]["recent_items"] == [21]
               for f in read(kafka, kafka.topics.features, {other}, 2))


def test_without_the_history_actor_requests_are_served_and_the_failure_counted(app) -> None:
    """The first read fails; for history.retry_s after it requests are served without
    asking (skipped), counted as served without history too."""
    for h in app.history:
        ray.kill(h, no_restart=True)
    rid, items = recommend(app, USER)
    assert len(items) == 2
    served = requests.get(app.url + "/healthz", timeout=30).json()["served"]
    assert served["history_failed"] >= 1
    for _ in range(3):
        assert len(recommend(app, USER)[1]) == 2
    after = requests.get(app.url + "/healthz", timeout=30).json()["served"]
    # One replica serves this app: every request after its failed read is skipped.
    assert after["history_skipped"] >= served["history_skipped"] + 3
    assert after["history_failed"] == served["history_failed"] + 3


def test_a_request_with_bad_candidates_is_refused_before_its_history_is_read(app) -> None:
    """Every check of a request comes before the history read (an actor call): with the
    history actor gone, a bad candidate list is refused without a failed read counted, and
    a good request still counts one."""
    for h in app.history:
        with contextlib.suppress(Exception):
            ray.kill(h, no_restart=True)

    def failed_reads() -> int:
        return requests.get(app.url + "/healthz", timeout=30).json()["served"]["history_failed"]

    before = failed_reads()
    for candidates in ([], [{"id": 5, "features": {"recent_items": [5]}}]):
        r = post(app, "/recommend", {"user": {"id": USER}, "k": 2, "candidates": candidates})
        assert r.status_code == 422, r.text
    assert failed_reads() == before
    recommend(app, USER)
    assert failed_reads() == before + 1
