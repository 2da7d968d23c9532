"""The HTTP API on real Ray Serve, fed by a ParameterSync actor from real shard and dense
actors: fresh rows and evictions served after a sync, dense swaps in place, bad input
refused with 4xx, and the closed loop serve -> feedback -> join -> examples."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import pytest
import ray
import requests
from ray import serve

from monolith_ray.config import Config, ConfigError, JoinerConfig, KafkaConfig, load_config
from monolith_ray.features import make_fids
from monolith_ray.ps.client import ShardClient
from monolith_ray.serve.app import CandidatePool, build_app, recommender_deployment
from monolith_ray.serve.model import ServingModel, SlotRows
from monolith_ray.stream import read_range
from monolith_ray.stream.joiner import run_joiners

APP = "serve-test"
USER = {"id": 1, "features": {"gender": "F", "age": 25}}
FEEDBACK_KEY = "feedback-key-of-the-test-app"  # so a test can make a token of its own
ITEM = {"id": 2, "features": {"genres": ["Drama"], "release_year": 1995}}


@dataclasses.dataclass
class Deployment:
    url: str
    cfg: Config
    client: ShardClient
    shards: list[Any]
    dense: Any
    sync: Any

    def post(self, path: str, body: Any, **kwargs: Any) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=30, **kwargs)

    def predict(self, user: dict = USER, item: dict = ITEM) -> dict[str, Any]:
        r = self.post("/predict", {"pairs": [{"user": user, "item": item}]})
        assert r.status_code == 200, r.text
        return r.json()

    def health(self) -> dict[str, Any]:
        return requests.get(self.url + "/healthz", timeout=30).json()

    def wait_for(self, kind: str, version: int, timeout_s: float = 20.0) -> dict[str, Any]:
        """Poll /predict until its ``kind`` version reaches ``version`` -> that answer."""
        deadline = time.monotonic() + timeout_s
        while True:
            answer = self.predict()
            if answer["model_version"][kind] >= version:
                return answer
            assert time.monotonic() < deadline, f"{kind} version stuck at {answer}"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def deployment(deploy_recommender) -> Iterator[Deployment]:
    with deploy_recommender(APP, "/", ["serve.poll_interval_s=0.2", "serve.max_candidates=256",
                                       "serve.max_k=20", "serve.max_body_bytes=65536",
                                       "serve.body_timeout_s=1.0",
                                       f"serve.feedback_key={FEEDBACK_KEY}",
                                       "dense=[{name: price, transform: log1p, max_abs: 1000},"
                                       " {name: views, default: 3}]"],
                            range(100, 400)) as app:
        client = ShardClient(app.shards, [s.name for s in app.cfg.slots])
        yield Deployment(app.url, app.cfg, client, app.shards, app.dense, app.sync)


def _train_item(dep: Deployment, item: int, scale: float, steps: int = 1) -> np.ndarray:
    """Push ``steps`` gradients of ``scale`` to ``item``'s row (Adagrad moves each element by
    about the learning rate a step, whatever the scale)."""
    slot = dep.cfg.slot("item_id")
    fids = make_fids(slot.slot_id, np.array([item], dtype=np.int64))
    dep.client.pull({"item_id": fids}, 100.0)
    for _ in range(steps):
        dep.client.push({"item_id": fids},
                        {"item_id": np.full((1, slot.dim + 1), scale, np.float32)}, 100.0)
    return fids


def _expected_score(dep: Deployment) -> float:
    """The score of (USER, ITEM) from the sync's current state, computed in this process."""
    model = ServingModel(dep.cfg)
    model.apply(ray.get(dep.sync.updates.remote(0, 0)))
    row = {"user_id": USER["id"], **USER["features"], "item_id": ITEM["id"], **ITEM["features"]}
    return float(model.score(SlotRows.of([row], dep.cfg.slots))[0])


def test_trained_row_is_served_after_a_sparse_sync_then_evicted(deployment) -> None:
    dep = deployment
    before = dep.predict()
    fids = _train_item(dep, ITEM["id"], scale=-40.0, steps=20)
    assert dep.predict() == before  # not served before a sync
    ray.get(dep.sync.sync_now.remote("sparse"))
    after = dep.wait_for("sparse", before["model_version"]["sparse"] + 1)
    assert after["scores"][0] != pytest.approx(before["scores"][0], abs=1e-4)
    assert after["scores"][0] == pytest.approx(_expected_score(dep), abs=1e-6)

    ray.get([s.evict.remote({"item_id": fids}) for s in dep.shards])
    ray.get(dep.sync.sync_now.remote("sparse"))
    evicted = dep.wait_for("sparse", after["model_version"]["sparse"] + 1)
    never_seen = dep.predict(item={**ITEM, "id": 987654321})
    assert evicted["scores"][0] == pytest.approx(never_seen["scores"][0], abs=1e-6)
    assert evicted["scores"][0] == pytest.approx(_expected_score(dep), abs=1e-6)


def test_dense_swap_in_place_without_a_restart_or_a_failed_request(deployment) -> None:
    dep = deployment
    pid, before = dep.health()["pid"], dep.predict()
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            statuses.append(dep.post("/recommend", {"user": USER, "k": 5}).status_code)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        for round_ in range(2):
            params, _ = ray.get(dep.dense.pull.remote())
            ray.get(dep.dense.push.remote(jax.tree.map(lambda p: np.ones_like(p), params)))
            ray.get(dep.sync.sync_now.remote("dense"))
            after = dep.wait_for("dense", before["model_version"]["dense"] + round_ + 1)
    finally:
        stop.set()
        thread.join()
    assert after["scores"][0] != pytest.approx(before["scores"][0], abs=1e-4)
    assert dep.health()["pid"] == pid  # the same replica process: swapped in place
    assert len(statuses) > 0 and set(statuses) == {200}


def test_recommend_ranks_candidates_and_reports_versions(deployment) -> None:
    r = deployment.post("/recommend", {
        "user": {"id": 424242},  # never seen: default embedding, still served
        "candidates": [7, {"id": 8, "features": {"genres": ["War", "Drama"]}}, 9], "k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    scores = [i["score"] for i in body["items"]]
    assert len(scores) == 2 and scores == sorted(scores, reverse=True)
    assert {i["item_id"] for i in body["items"]} <= {7, 8, 9}
    assert set(body["model_version"]) == {"dense", "sparse"} and body["request_id"]
    pooled = deployment.post("/recommend", {"user": USER, "k": 20}).json()
    assert len(pooled["items"]) == 20
    assert all(100 <= i["item_id"] < 400 for i in pooled["items"])
    schema = requests.get(deployment.url + "/openapi.json", timeout=30).json()
    assert {"/recommend", "/predict", "/feedback", "/healthz"} <= set(schema["paths"])


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/recommend", {"k": 3}, 422, "user: Field required"),
    ("/recommend", {"user": {"id": 1.5}}, 422, "user.id"),
    ("/recommend", {"user": {"id": 1, "features": {"gendr": "F"}}}, 422,
     "user.features.gendr: not a slot"),
    ("/recommend", {"user": USER, "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ("/recommend", {"user": USER, "k": 21}, 422, "k: at most 20 (serve.max_k)"),
    ("/recommend", {"user": USER, "candidates": list(range(257))}, 422,
     "candidates: at most 256 (serve.max_candidates), got 257"),
    ("/recommend", {"user": USER, "candidates": []}, 422, "candidates: empty"),
    ("/recommend", {"user": USER, "candidates": [1] * 10_001}, 422,
     "candidates: List should have at most 10000 items"),

    ("/recommend", {"user": USER, "candidates": [{"id": 1, "features": {"genres": ["a"] * 7}}]},
     422, "genres"),
    ("/recommend", {"user": USER, "surprise": 1}, 422, "surprise: Extra inputs"),
    ("/recommend", {"user": USER, "candidates": [{"id": 1, "features": {"user_id": 987654}}]},
     422, "candidates[0].features.user_id: the user slot, set by the user's id"),
    ("/predict", {"pairs": [{"user": {"id": 1, "features": {"item_id": 3}}, "item": 2}]}, 422,
     "pairs[0].user.features.item_id: the item slot, set by the item's id"),
    ("/predict", {"pairs": []}, 422, "pairs"),
    ("/predict", {"pairs": [{"user": {"id": 1, "dense": {"prize": 1}}, "item": 2}]}, 422,
     "pairs[0].user.dense.prize: not a dense feature of the model; dense features: price, "
     "views"),
    ("/predict", {"pairs": [{"user": {"id": 1}, "item": {"id": 2, "dense": {"price": 1001}}}]},
     422, "pairs[0].item.dense.price: expected a finite number within ±1000"),
    ("/predict", {"pairs": [{"user": {"id": 1, "dense": {"price": True}}, "item": 2}]}, 422,
     "price"),
    ("/recommend", {"user": {"id": 1, "dense": {"views": "7"}}, "candidates": [1]}, 422,
     "views"),
    ("/recommend", {"user": USER, "candidates": [{"id": 1, "dense": {"price": -1e9}}]}, 422,
     "candidates[0].dense.price"),
    ("/recommend", {"user": USER, "context": {"a": "x" * 5000}}, 422,
     "more than limits.max_context_bytes 4096"),
    ("/feedback", {"request_id": "r", "item_id": 1, "action": "stare", "token": "0" * 32}, 422,
     "action"),
    ("/feedback", {"item_id": 1, "action": "click", "token": "0" * 32}, 422,
     "request_id: Field required"),
    ("/feedback", {"request_id": "r", "item_id": 1, "action": "click"}, 422,
     "token: Field required"),
    ("/feedback", {"request_id": "r", "item_id": 1, "action": "click", "time": -5,
                   "token": "0" * 32}, 422, "time: Input should be greater than or equal to 0"),
])
def test_bad_input_gets_4xx_naming_the_problem(deployment, path, body, status, message) -> None:
    r = deployment.post(path, body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_malformed_and_oversized_bodies(deployment) -> None:
    r = requests.post(deployment.url + "/recommend", data=b"{not json", timeout=30,
                      headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["error"]
    r = requests.post(deployment.url + "/recommend", timeout=30,  # NaN: JSON to Python only
                      data=b'{"user": {"id": 1}, "context": {"x": NaN}}',
                      headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"].startswith("context:")
    big = {"user": USER, "candidates": [{"id": i, "features": {"genres": ["x" * 200]}}
                                         for i in range(300)]}
    r = deployment.post("/recommend", big)
    assert r.status_code == 413 and "serve.max_body_bytes" in r.json()["error"]
    chunks = (json.dumps(big)[i:i + 4096].encode() for i in range(0, len(json.dumps(big)), 4096))
    r = requests.post(deployment.url + "/recommend", data=chunks, timeout=30,  # no length
                      headers={"content-type": "application/json"})
    assert r.status_code == 413 and "serve.max_body_bytes" in r.json()["error"]
    small = json.dumps({"user": USER, "k": 3})
    r = requests.post(deployment.url + "/recommend", data=(c.encode() for c in small), timeout=30,
                      headers={"content-type": "application/json"})
    assert r.status_code == 200 and len(r.json()["items"]) == 3
    assert deployment.predict()["scores"]  # still answering


def test_request_ids_carry_their_issue_time_under_the_token() -> None:
    from monolith_ray.serve.tokens import FeedbackTokens, issued_at

    rid = FeedbackTokens.new_request_id(1_765_000_000.7)
    assert len(rid) == 32 and issued_at(rid) == 1_765_000_000
    assert issued_at(rid + ".exp.1") == 1_765_000_000  # an arm's suffix
    assert rid != FeedbackTokens.new_request_id(1_765_000_000.7)  # 96 random bits
    assert issued_at("r") is None and issued_at("Z" * 32) is None


def test_feedback_too_late_to_join_or_dated_before_its_request_is_refused(deployment) -> None:
    """A token replayed after its impression can no longer join (``joiner.window_s +
    allowed_lateness_s``: 630 s by default), or an action dated more than
    ``limits.max_event_skew_s`` before its request, gets 422 and reaches no topic."""
    from monolith_ray.serve.tokens import FeedbackTokens

    tokens = FeedbackTokens(FEEDBACK_KEY)
    now = time.time()
    old = tokens.new_request_id(now - 700)
    r = deployment.post("/feedback", {"request_id": old, "item_id": 5, "action": "click",
                                      "token": tokens.token(old, 5)})
    assert r.status_code == 422 and "feedback is taken within 630 s" in r.json()["error"], r.text
    ahead = tokens.new_request_id(now + 3600)
    r = deployment.post("/feedback", {"request_id": ahead, "item_id": 5, "action": "click",
                                      "token": tokens.token(ahead, 5)})
    assert r.status_code == 422 and "after now" in r.json()["error"], r.text
    r = deployment.post("/feedback", {"request_id": "r" * 32, "item_id": 5, "action": "click",
                                      "token": tokens.token("r" * 32, 5)})
    assert r.status_code == 422 and "not a request id this service issued" in r.json()[
        "error"], r.text
    fresh = tokens.new_request_id(now)
    r = deployment.post("/feedback", {"request_id": fresh, "item_id": 5, "action": "click",
                                      "token": tokens.token(fresh, 5), "time": int(now) - 400})
    assert r.status_code == 422 and r.json()["error"].startswith("time:"), r.text
    r = deployment.post("/feedback", {"request_id": fresh, "item_id": 5, "action": "click",
                                      "token": tokens.token(fresh, 5), "time": int(now) - 200})
    assert r.status_code == 200, r.text  # within the clock skew
    kafka = deployment.cfg.kafka
    deadline = time.monotonic() + 30
    while not [a for a in _read(kafka, kafka.topics.actions) if a["request_id"] == fresh]:
        assert time.monotonic() < deadline, "the accepted action never reached the topic"
        time.sleep(0.1)
    assert not [a for a in _read(kafka, kafka.topics.actions)
                if a["request_id"] in (old, ahead)]  # sent before it, and refused


def test_closed_loop_served_impressions_and_feedback_become_examples(deployment) -> None:
    dep = deployment
    served: dict[str, list[int]] = {}
    tokens: dict[tuple[str, int], str] = {}
    for user in (11, 12, 13):
        body = dep.post("/recommend", {"user": {"id": user}, "k": 3,
                                       "context": {"page": "home"}}).json()
        served[body["request_id"]] = [i["item_id"] for i in body["items"]]
        tokens.update({(body["request_id"], i["item_id"]): i["token"] for i in body["items"]})
    clicked = {(rid, items[0]) for rid, items in served.items()}
    for rid, item in clicked:
        r = dep.post("/feedback", {"request_id": rid, "item_id": item, "action": "click",
                                   "token": tokens[rid, item]})
        assert r.status_code == 200 and r.json()["accepted"], r.text
    # Feedback on an impression that was not served, or with another request's token, is
    # refused: it never reaches the actions topic.
    (rid, item), (other, _) = sorted(clicked)[:2]
    not_served = next(i for i in range(100, 400) if i not in served[rid])
    for bad in ({"request_id": rid, "item_id": not_served, "token": tokens[rid, item]},
                {"request_id": other, "item_id": item, "token": tokens[rid, item]}):
        r = dep.post("/feedback", {**bad, "action": "click"})
        assert r.status_code == 422 and r.json()["error"].startswith("token:"), r.text
    assert dep.health()["kafka_failed"] == 0
    cfg = dataclasses.replace(dep.cfg, joiner=JoinerConfig(
        window_s=60, allowed_lateness_s=5, commit_interval_s=0.3, cpus=0,
        group_id="serve-test-joiner"))
    deadline = time.monotonic() + 30
    features: list[dict] = []
    while len(features) < 9 and time.monotonic() < deadline:  # the log is flushed within ms
        # (other tests' requests are on the topic too)
        features = [f for f in _read(cfg.kafka, cfg.kafka.topics.features)
                    if f["request_id"] in served]
        time.sleep(0.2)
    assert len(features) == 9 and all(f["context"] == {"page": "home"} for f in features)
    run_joiners(cfg, 1, stop_when_idle_s=1.0, drain=True)
    examples = [e for e in _read(cfg.kafka, cfg.kafka.topics.examples)
                if e["request_id"] in served]
    got = {(e["request_id"], e["item_id"]): e["label"] for e in examples}
    assert got == {(rid, item): float((rid, item) in clicked)
                   for rid, items in served.items() for item in items}
    assert all(e["slots"]["user_id"] in (11, 12, 13) for e in examples)


def test_impressions_are_logged_with_the_features_they_were_scored_with(deployment) -> None:
    dep = deployment
    body = dep.post("/recommend", {"user": {"id": 31, "features": {"age": 40}}, "k": 1,
                                   "candidates": [{"id": 5, "features": {"genres": ["War"]}}]})
    rid = body.json()["request_id"]
    logged = _logged(dep, rid, 1)
    assert len(logged) == 1
    assert logged[0]["slots"] == {"user_id": 31, "age": 40, "item_id": 5, "genres": ["War"]}


def test_dense_features_reach_the_score_and_the_logged_impression(deployment) -> None:
    dep = deployment
    plain = dep.predict()["scores"][0]
    assert dep.predict(user={**USER, "dense": {"views": 3}})["scores"][0] == plain  # default 3
    assert dep.predict(user={**USER, "dense": {"views": None}})["scores"][0] == plain
    pricey = dep.predict(user={**USER, "dense": {"price": 900}})["scores"][0]
    assert pricey != plain
    # An item's own value takes precedence over the user's.
    assert dep.predict(user={**USER, "dense": {"price": 900}},
                       item={**ITEM, "dense": {"price": 0}})["scores"][0] == plain
    body = dep.post("/recommend", {"user": {"id": 33, "dense": {"price": 5, "views": 1}},
                                   "k": 2, "candidates": [{"id": 8, "dense": {"price": 7}}, 9]})
    assert body.status_code == 200, body.text
    rid = body.json()["request_id"]
    logged = _logged(dep, rid, 2)
    dense = {f["item_id"]: f["dense"] for f in logged}
    assert dense == {8: {"price": 7, "views": 1}, 9: {"price": 5, "views": 1}}


def test_pairs_are_cut_at_the_schema_before_each_is_validated() -> None:
    """A /predict body of more pairs than any config allows fails in the schema (422),
    before it costs the replica's event loop a validation of each pair."""
    import pydantic

    from monolith_ray.serve.api import PredictIn

    with pytest.raises(pydantic.ValidationError, match="at most 10000 items"):
        PredictIn.model_validate({"pairs": [{"user": {"id": 1}, "item": 2}] * 10_001})
    assert len(PredictIn.model_validate({"pairs": [{"user": {"id": 1}, "item": 2}] * 3}).pairs) == 3


def test_a_body_that_does_not_arrive_whole_in_time_gets_408(deployment, stalled_post) -> None:
    """A client that sends part of its body and stalls is answered 408 once
    ``serve.body_timeout_s`` has passed, rather than hold a replica's request slot."""
    answer = stalled_post(deployment.url, "/recommend", 100, b'{"user": ', 30)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"not received whole within 1 s (serve.body_timeout_s)" in answer
    assert deployment.post("/recommend", {"user": USER, "k": 3}).status_code == 200


def test_an_item_listed_twice_is_ranked_returned_and_logged_once(deployment) -> None:
    """However it is spelt: 5, "5" and "005" are one id to the model (and to the joiner,
    which would take a second impression of it as a duplicate). A pool item named by another
    spelling gets the pool's features."""
    dep = deployment
    body = dep.post("/recommend", {"user": {"id": 32}, "k": 10, "candidates": [
        {"id": 5, "features": {"genres": ["War"]}}, 6, 5, {"id": 6, "features": {"genres": []}},
        7, "5", "005", "150", 150]})
    assert body.status_code == 200, body.text
    items = body.json()["items"]
    assert sorted(str(i["item_id"]) for i in items) == ["150", "5", "6", "7"]
    rid = body.json()["request_id"]
    logged = _logged(dep, rid, 4)
    time.sleep(0.5)  # a fifth impression, if one were logged, would have arrived by now
    logged = [f for f in _read(dep.cfg.kafka, dep.cfg.kafka.topics.features)
              if f["request_id"] == rid]
    assert sorted(str(f["item_id"]) for f in logged) == ["150", "5", "6", "7"]
    assert next(f for f in logged if f["item_id"] == 5)["slots"]["genres"] == ["War"]  # first
    pooled = next(f for f in logged if f["item_id"] == "150")["slots"]  # pool item 150
    assert pooled["genres"] == ["Comedy"] and pooled["release_year"] == 1990


def _logged(dep: Deployment, rid: str, at_least: int, timeout_s: float = 30.0
            ) -> list[dict[str, Any]]:
    """The impressions logged for request ``rid``, polled until ``at_least`` are there (or
    ``timeout_s`` passes)."""
    deadline, logged = time.monotonic() + timeout_s, []
    while len(logged) < at_least and time.monotonic() < deadline:
        logged = [f for f in _read(dep.cfg.kafka, dep.cfg.kafka.topics.features)
                  if f["request_id"] == rid]
        time.sleep(0.1)
    return logged


def _read(kafka: KafkaConfig, topic: str) -> list[dict[str, Any]]:
    return [json.loads(r.value) for p in range(kafka.partitions)
            for r in read_range(kafka, topic, p, 0)]


def test_serving_slots_are_checked_when_serving_starts() -> None:
    cfg = load_config(overrides=["serve.item_slot=movie"])  # loads: training never reads it
    with pytest.raises(ConfigError, match="serve.item_slot: 'movie' is not a slot"):
        build_app(cfg, sync=None)


def test_candidate_pool_from_config(tmp_path) -> None:
    path = tmp_path / "pool.jsonl"
    path.write_text('{"item_id": 5, "slots": {"genres": ["War"]}}\n\n{"item_id": "x"}\n')
    cfg = load_config(overrides=[f"serve.candidate_pool={path}"])
    pool = CandidatePool.configured(cfg)
    assert pool.ids == [5, "x"] and pool.slots[5] == {"genres": ["War"]}
    path.write_text('{"id": 5}\n')
    with pytest.raises(ValueError, match="pool.jsonl:1"):
        CandidatePool.configured(cfg)
    missing = load_config(overrides=[f"serve.candidate_pool={tmp_path}/none.jsonl"])
    with pytest.raises(FileNotFoundError, match="serve.candidate_pool"):
        CandidatePool.configured(missing)
    with pytest.raises(ConfigError, match="serve.candidate_pool: item 'x' sets the user slot"):
        build_app(cfg, sync=None, pool=CandidatePool([(5, {}), ("x", {"user_id": 3})]))
    with pytest.raises(ConfigError, match="serve.candidate_pool: items 7 and '007' are one id"):
        build_app(cfg, sync=None, pool=CandidatePool([(7, {}), ("x", {}), ("007", {})]))
    # The configured pool (no pool given, as `monolith-ray serve` builds it) is checked too.
    path.write_text('{"item_id": 5, "slots": {"user_id": 9}}\n')
    with pytest.raises(ConfigError, match="serve.candidate_pool: item 5 sets the user slot"):
        build_app(cfg, sync=None)


def test_a_replica_started_late_serves_the_latest_versions_from_its_first_answer(
        deployment) -> None:
    dep = deployment
    _train_item(dep, 77, scale=5.0)
    ray.get(dep.sync.sync_now.remote("both"))
    current = ray.get(dep.sync.versions.remote())
    assert current["sparse"] >= 1
    serve.run(build_app(dep.cfg, dep.sync, CandidatePool([(1, {})])), name=APP + "-late",
              route_prefix="/late")
    try:
        first = dep.post("/late/predict", {"pairs": [{"user": USER, "item": ITEM}]}).json()
        assert first["model_version"] == current
        assert first["scores"] == pytest.approx(dep.predict()["scores"], abs=1e-6)
    finally:
        serve.delete(APP + "-late")


def test_serving_outlives_the_sync_actor_and_the_training_side(deployment, kill_actor) -> None:
    """Runs last in this module: it kills the module's actors."""
    dep = deployment
    before = dep.predict()
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            statuses.append(dep.post("/predict", {"pairs": [{"user": USER, "item": ITEM}]})
                            .status_code)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        ray.kill(dep.sync, no_restart=False)  # a crash: Ray restarts it
        versions = ray.get(dep.sync.versions.remote(), timeout=60)  # restarted, rebuilt
        for actor in [*dep.shards, dep.dense]:
            kill_actor(actor, "ray.kill")  # the training side is gone for good
        with pytest.raises(Exception, match="dead|unreachable"):
            ray.get(dep.sync.sync_now.remote("sparse"), timeout=60)
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join()
    assert versions["dense"] >= 1
    assert len(statuses) > 10 and set(statuses) == {200}
    after = dep.predict()
    assert after["scores"] == pytest.approx(before["scores"], abs=1e-6)


def test_replica_settings_come_from_config() -> None:
    cfg = load_config(overrides=["serve.replica_cpus=0.5", "serve.replica_resources.serving=1",
                                 "serve.autoscaling.max_replicas=4"])
    deployment = recommender_deployment(cfg)
    assert deployment.ray_actor_options["num_cpus"] == 0.5
    assert deployment.ray_actor_options["resources"] == {"serving": 1.0}
    with pytest.raises(ConfigError, match="serve.replica_resources.serving: must be > 0"):
        load_config(overrides=["serve.replica_resources.serving=0"])


def test_scores_that_are_not_finite_answer_503_and_are_counted() -> None:
    """A diverged model's NaN or inf cannot go out as JSON (it was a 500) nor be ranked: the
    request gets 503 naming the task and the versions. A unit test of the replica's scoring
    step with a stand-in model; the 503 through the API's own handler."""
    import asyncio
    import types

    from monolith_ray.serve import api as api_module
    from monolith_ray.serve.api import Unavailable

    class Diverged:
        async def score_tasks_async(self, *_: Any) -> tuple[dict[str, np.ndarray], dict]:
            return ({"click": np.array([0.5, np.nan]), "like": np.array([0.1, 0.2])},
                    {"dense": 3, "sparse": 9})

    score = recommender_deployment(load_config()).func_or_class._score
    replica = types.SimpleNamespace(model=Diverged(), served={"not_finite": 0})
    with pytest.raises(Unavailable, match="versions .*'dense': 3.* scored click as NaN"):
        asyncio.run(score(replica, None, None, None, 0))
    assert replica.served["not_finite"] == 1
    replica.model.score_tasks_async = lambda *_: _finite()

    async def _finite() -> tuple[dict[str, np.ndarray], dict]:
        return {"click": np.array([0.5])}, {"dense": 3}

    assert asyncio.run(score(replica, None, None, None, 0))[0]["click"].tolist() == [0.5]
    answer = asyncio.run(api_module._unavailable(None, Unavailable("scored click as NaN")))
    assert answer.status_code == 503 and json.loads(answer.body) == {
        "error": "scored click as NaN"}
