"""``serve.user_affinity`` on real Ray Serve: with two replicas, every request carrying a
user's ``x-session-id`` reaches the same replica, ``/feedback`` included, so per-replica user
state (satiation, show counts, shows waiting for their click) sees all of that user's
requests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests

APP, PREFIX = "affinity-test", "/affinity-test"
USERS = range(1000, 1016)
ROUNDS = 3


@pytest.fixture(scope="module")
def app(deploy_recommender) -> Iterator[Any]:
    overrides = ["serve.user_affinity=true", "serve.autoscaling.min_replicas=2",
                 "serve.autoscaling.max_replicas=2"]
    with deploy_recommender(APP, PREFIX, overrides, range(100, 200)) as deployed:
        yield deployed


def healthz(app: Any, user: int) -> dict[str, Any]:
    r = requests.get(app.url + "/healthz", headers={"x-session-id": str(user)}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_each_users_requests_reach_one_replica(app) -> None:
    for _ in range(ROUNDS):
        for user in USERS:
            r = requests.post(app.url + "/recommend", json={
                "user": {"id": user}, "k": 2, "candidates": [5, 6, 7]},
                headers={"x-session-id": str(user)}, timeout=30)
            assert r.status_code == 200, r.text
            item = r.json()["items"][0]
            r = requests.post(app.url + "/feedback", json={
                "request_id": r.json()["request_id"], "item_id": item["item_id"],
                "token": item["token"], "action": "click"},
                headers={"x-session-id": str(user)}, timeout=30)
            assert r.status_code == 200, r.text
    replica_of = {user: healthz(app, user)["replica"] for user in USERS}
    # the same header reaches the same replica again
    assert all(healthz(app, user)["replica"] == replica_of[user] for user in USERS[:4])
    users_on = Counter(replica_of.values())
    assert len(users_on) == 2  # 16 users on one of two replicas: chance 2^-15
    any_user = {replica: user for user, replica in replica_of.items()}
    for replica, n in users_on.items():
        served = healthz(app, any_user[replica])["served"]
        assert served["recommend"] == served["feedback"] == ROUNDS * n, (replica, served,
                                                                          users_on)
