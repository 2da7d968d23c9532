"""The serving decision over real Serve HTTP: each item's policy, arm and propensity (exact
for greedy and epsilon-greedy), arms stable per user, the logged impressions and joined
examples carry them, /experiments counts move with recommend and feedback; bad policy or
experiment config is refused when it loads."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from monolith_ray.config import ConfigError, JoinerConfig, load_config
from monolith_ray.policy.decisions import Decisions
from monolith_ray.serve.app import REPORT_INTERVAL_S
from monolith_ray.stream import read_range
from monolith_ray.stream.joiner import run_joiners

EPS = 0.5
EXPERIMENT = ("experiments=[{name: ab, arms: [{name: greedy}, "
              f"{{name: eps, policy: {{kind: epsilon, epsilon: {EPS}}}}}, "
              "{name: sated, satiation: true}]}]")
POOL = range(100, 120)
WINDOW_S = 200  # below limits.max_event_skew_s (300): a client's clock may run past it


@pytest.fixture(scope="module")
def app(deploy_recommender) -> Iterator[Any]:
    with deploy_recommender("policy-test", "/policy", [
            "serve.max_k=100", "serve.max_candidates=3000", "policy.draws=1000", EXPERIMENT,
            "policy.evaluate=[greedy, thompson]",
            f"policy.satiation.feedback_window_s={WINDOW_S}"], POOL) as deployed:
        yield deployed


def users_in(cfg: Any, arm: str, count: int) -> list[int]:
    decisions = Decisions(cfg.policy, cfg.experiments)
    index = [a.name for a in cfg.experiments[0].arms].index(arm)
    return [u for u in range(10_000) if decisions.arm_of(u) == (0, index)][:count]


def recommend(app: Any, user: int, k: int) -> dict[str, Any]:
    r = requests.post(app.url + "/recommend", json={"user": {"id": user}, "k": k}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def experiments(app: Any) -> dict[str, dict[str, Any]]:
    r = requests.get(app.url + "/experiments", timeout=30)
    assert r.status_code == 200, r.text
    return {a["arm"]: a for e in r.json()["experiments"] for a in e["arms"]}


def test_items_carry_exact_propensities_and_arms_are_stable(app) -> None:
    greedy_user = users_in(app.cfg, "greedy", 1)[0]
    body = recommend(app, greedy_user, 20)
    items = body["items"]
    assert body["request_id"].endswith(".0.0")
    assert {(i["policy"], i["arm"], i["propensity"]) for i in items} == {
        ("greedy", "ab/greedy", 1.0)}
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True) and len(items) == len(POOL)
    for user in users_in(app.cfg, "eps", 3):
        answers = [recommend(app, user, 20)["items"] for _ in range(2)]
        assert {i["arm"] for a in answers for i in a} == {"ab/eps"}  # stable per user
        for items in answers:  # k = the whole pool: each slot's remaining items are visible
            for slot, item in enumerate(items):
                left = len(items) - slot
                best = item["score"] >= max(i["score"] for i in items[slot:])
                high, low = 1 - EPS + EPS / left, EPS / left
                assert item["policy"] == "epsilon"
                # the best remaining (of tied scores, the first in candidate order) has the
                # high propensity, any other the low one
                assert item["propensity"] == pytest.approx(high if best else low) or (
                    best and item["propensity"] == pytest.approx(low))


def test_items_carry_their_inclusion_under_the_serving_and_evaluated_policies(app) -> None:
    """policy.evaluate: each item's probability of being in the list under the policy that
    served and under greedy and Thompson, on the same scores."""
    greedy = recommend(app, users_in(app.cfg, "greedy", 1)[0], 5)["items"]
    assert all(i["inclusion"]["served"] == 1.0 == i["inclusion"]["greedy"] for i in greedy)
    assert all(0.0 <= i["inclusion"]["thompson"] <= 1.0 for i in greedy)
    eps = recommend(app, users_in(app.cfg, "eps", 1)[0], 5)["items"]
    assert {frozenset(i["inclusion"]) for i in eps} == {
        frozenset({"served", "greedy", "thompson"})}
    # every item has a chance under epsilon-greedy (at least one uniform slot's 1/20)
    assert all(EPS / len(POOL) <= i["inclusion"]["served"] <= 1.0 for i in eps)
    assert all(i["inclusion"]["greedy"] in (0.0, 1.0) for i in eps)


def test_experiments_count_impressions_and_feedback_over_http(app) -> None:
    before = experiments(app)
    assert set(before) == {"ab/greedy", "ab/eps", "ab/sated"}
    assert before["ab/eps"]["policy"] == "epsilon" and before["ab/sated"]["satiation"]
    user = users_in(app.cfg, "sated", 1)[0]
    body = recommend(app, user, 3)
    item = body["items"][0]
    report = {"request_id": body["request_id"], "item_id": item["item_id"],
              "action": "click", "token": item["token"]}
    r = requests.post(app.url + "/feedback", timeout=30, json=report)
    assert r.status_code == 200 and r.json()["repeat"] is False, r.text
    # a client's retry is taken (logged for the joiner) and counted once
    again = requests.post(app.url + "/feedback", timeout=30, json=report)
    assert again.status_code == 200 and again.json()["repeat"] is True, again.text
    after = experiments(app)["ab/sated"]
    was = before["ab/sated"]
    assert (after["impressions"], after["clicks"], after["rewards"]) == (
        was["impressions"] + 3, was["clicks"] + 1, was["rewards"] + 1)
    assert after["ctr_low"] <= after["ctr"] <= after["ctr_high"]
    assert after["reward_low"] <= after["reward"] <= after["reward_high"]
    assert experiments(app)["ab/greedy"]["impressions"] == before["ab/greedy"]["impressions"]
    health = requests.get(app.url + "/healthz", timeout=30).json()
    assert health["policy"]["satiation"]["users"] >= 1
    assert health["policy"]["repeated_feedback"] >= 1


def test_a_clients_clock_ahead_does_not_end_held_impressions_windows(app) -> None:
    """Feedback may carry an event time up to ``limits.max_event_skew_s`` ahead; the
    impressions a replica holds for the satiation fit wait out their window by the
    replica's clock, not by that time."""
    body = recommend(app, users_in(app.cfg, "sated", 1)[0], 3)

    def held() -> int:
        health = requests.get(app.url + "/healthz", timeout=30).json()
        return health["policy"]["satiation"]["pending_impressions"]

    assert held() >= 3
    item = body["items"][0]
    r = requests.post(app.url + "/feedback", timeout=30, json={
        "request_id": body["request_id"], "item_id": item["item_id"], "action": "skip",
        "token": item["token"], "time": int(time.time()) + WINDOW_S + 50})
    assert r.status_code == 200, r.text
    assert held() >= 3  # this request's were not counted as non-clicks before their window


def test_a_long_decision_does_not_hold_up_other_requests(app) -> None:
    """Thompson's inclusion of 100 of 3,000 candidates at 1,000 draws is 3·10^8 normals
    (seconds of CPU): /healthz is answered all the while, the decision being made on the
    replica's policy thread, not on its event loop."""
    heavy = {"user": {"id": users_in(app.cfg, "greedy", 1)[0]}, "k": 100,
             "candidates": list(range(10_000, 13_000))}
    waits = []  # each /healthz sent while the decision was under way: how long it took
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(requests.post, app.url + "/recommend", json=heavy, timeout=300)
        started = time.monotonic()
        while not slow.done():
            sent = time.monotonic()
            assert requests.get(app.url + "/healthz", timeout=300).status_code == 200
            waits.append(time.monotonic() - sent)
            time.sleep(0.01)
        took = time.monotonic() - started
    r = slow.result()
    assert r.status_code == 200 and len(r.json()["items"]) == 100, r.text
    assert took > 1.0 and len(waits) >= 5, (took, waits)  # the decision was long
    # on the event loop one /healthz would wait out nearly the whole decision
    assert max(waits) < took / 3, (max(waits), took)


def test_a_decision_its_client_gave_up_on_is_counted_as_it_is_logged(app) -> None:
    """A client that times out cancels its request's handler on the replica; the decision
    under way still ends, and /experiments counts of it what the features topic holds."""
    *_, other, user = users_in(app.cfg, "greedy", 40)  # asked for by no other test
    candidates = range(20_000, 23_000)
    body = {"user": {"id": other}, "k": 100, "candidates": list(candidates)}
    started = time.monotonic()  # the same work answered: scoring then a long decision
    assert requests.post(app.url + "/recommend", json=body, timeout=300).status_code == 200
    assert time.monotonic() - started > 2.0
    before = experiments(app)["ab/greedy"]["impressions"]
    with pytest.raises(requests.Timeout):  # given up on during the decision
        requests.post(app.url + "/recommend", timeout=(10, 1.0),
                      json={**body, "user": {"id": user}})

    def logged() -> int:
        return sum(m["user_id"] == user and m["item_id"] in candidates
                   for p in range(app.cfg.kafka.partitions)
                   for m in map(lambda r: json.loads(r.value),
                                read_range(app.cfg.kafka, app.cfg.kafka.topics.features, p, 0)))

    deadline = time.monotonic() + 60
    while (counted := experiments(app)["ab/greedy"]["impressions"] - before) < 100:
        assert time.monotonic() < deadline, counted
        time.sleep(0.5)
    assert counted == 100
    deadline = time.monotonic() + 30
    while (sent := logged()) < 100:
        assert time.monotonic() < deadline, sent
        time.sleep(0.5)
    assert sent == 100


def test_a_decision_queued_for_a_client_that_gave_up_is_dropped(app) -> None:
    """A decision waiting behind another on the policy thread when its client times out
    never runs: nothing counted, nothing logged, and the thread moves on to live clients."""
    first, queued = users_in(app.cfg, "greedy", 42)[-2:]  # asked for by no other test
    candidates = range(30_000, 33_000)
    before = experiments(app)["ab/greedy"]["impressions"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        long = pool.submit(requests.post, app.url + "/recommend", timeout=300, json={
            "user": {"id": first}, "k": 100, "candidates": list(candidates)})
        time.sleep(0.3)  # the first is scored and decided on; the second queues behind it
        with pytest.raises(requests.Timeout):
            requests.post(app.url + "/recommend", timeout=(10, 1.0), json={
                "user": {"id": queued}, "k": 100, "candidates": list(candidates)})
        assert long.result().status_code == 200

    def logged() -> list[Any]:
        return [m["user_id"] for p in range(app.cfg.kafka.partitions)
                for m in map(lambda r: json.loads(r.value),
                             read_range(app.cfg.kafka, app.cfg.kafka.topics.features, p, 0))
                if m["item_id"] in candidates]

    deadline = time.monotonic() + 30
    while (users := logged()).count(first) < 100:
        assert time.monotonic() < deadline, users.count(first)
        time.sleep(0.5)
    time.sleep(3 * REPORT_INTERVAL_S)  # the replica's counts reach the statistics actor
    assert experiments(app)["ab/greedy"]["impressions"] - before == 100
    assert queued not in logged()


def test_logged_impressions_and_joined_examples_carry_the_decision(app) -> None:
    served = {}
    for arm in ("greedy", "eps"):
        body = recommend(app, users_in(app.cfg, arm, 1)[0], 4)
        served[body["request_id"]] = {i["item_id"]: (i["policy"], i["arm"], i["propensity"])
                                      for i in body["items"]}
    cfg = dataclasses.replace(app.cfg, joiner=JoinerConfig(
        window_s=60, allowed_lateness_s=5, commit_interval_s=0.3, cpus=0,
        group_id="policy-test-joiner"))

    def read(topic: str) -> list[dict[str, Any]]:
        return [m for p in range(cfg.kafka.partitions)
                for m in map(lambda r: json.loads(r.value), read_range(cfg.kafka, topic, p, 0))
                if m["request_id"] in served]

    deadline = time.monotonic() + 30
    while len(features := read(cfg.kafka.topics.features)) < 8:
        assert time.monotonic() < deadline, features
        time.sleep(0.2)
    decided = {(f["request_id"], f["item_id"]): (f["policy"], f["arm"], f["propensity"])
               for f in features}
    want = {(rid, item): d for rid, items in served.items() for item, d in items.items()}
    assert decided == want
    run_joiners(cfg, 1, stop_when_idle_s=1.0, drain=True)
    examples = read(cfg.kafka.topics.examples)
    assert {(e["request_id"], e["item_id"]): (e["policy"], e["arm"], e["propensity"])
            for e in examples} == want


@pytest.mark.parametrize("override, key", [
    ("policy.kind=bandit", "policy.kind"),
    ("policy.epsilon=-0.1", "policy.epsilon"),
    ("experiments=[{name: ab, arms: [{name: a, weight: -1}]}]", "experiments[0].arms[0].weight"),
    ("experiments=[{name: ab, arms: [{name: a, policy: {kind: epsilon, epsilon: 2}}]}]",
     "experiments[0].arms[0].policy.epsilon"),
])
def test_bad_policy_or_experiment_config_is_refused_at_load(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert err.value.key == key
