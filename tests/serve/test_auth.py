"""``serve.api_keys`` on a live deployment: a request without one of the keys gets 401
before its body is read; either key of a rotation is taken, on every path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

APP, PREFIX = "auth-test", "/auth-test"
KEYS = ("first-key-0123456789", "second-key-0123456789")


@pytest.fixture(scope="module")
def app(deploy_recommender) -> Iterator[Any]:
    with deploy_recommender(APP, PREFIX, [f"serve.api_keys=[{KEYS[0]}, {KEYS[1]}]",
                                          "serve.body_timeout_s=60"],
                            range(100, 150)) as deployed:
        yield deployed


def _recommend(app: Any, headers: dict[str, str]) -> requests.Response:
    return requests.post(app.url + "/recommend", json={"user": {"id": 1}, "k": 3},
                         headers=headers, timeout=30)


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer not-a-key-0123456789"}, {"Authorization": f"Basic {KEYS[0]}"},
    {"Authorization": f"Bearer {KEYS[0]}x"}, {"Authorization": f"Bearer  {KEYS[0]}"}])
def test_a_request_without_a_key_gets_401(app, headers: dict[str, str]) -> None:
    r = _recommend(app, headers)
    assert r.status_code == 401, r.text
    assert r.json() == {"error": "authorization: a Bearer key of serve.api_keys is required"}
    assert r.headers["www-authenticate"] == "Bearer"
    assert requests.get(app.url + "/healthz", headers=headers, timeout=30).status_code == 401


@pytest.mark.parametrize("key", KEYS)
def test_either_key_is_taken_on_every_path(app, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    r = _recommend(app, headers)
    assert r.status_code == 200, r.text
    assert len(r.json()["items"]) == 3
    assert requests.get(app.url + "/healthz", headers=headers, timeout=30).status_code == 200
    item = r.json()["items"][0]
    feedback = requests.post(app.url + "/feedback", headers=headers, timeout=30, json={
        "request_id": r.json()["request_id"], "item_id": item["item_id"],
        "token": item["token"], "action": "click"})
    assert feedback.status_code == 200, feedback.text


def test_the_key_is_checked_before_the_body_is_read(app, stalled_post) -> None:
    """A request that declares a body and sends none is answered 401 at once: with the
    body awaited first it would wait ``serve.body_timeout_s`` (60 s), past this socket's
    10 s timeout."""
    answer = stalled_post(app.url, "/recommend", 100_000, b"", 10)
    assert answer.startswith(b"HTTP/1.1 401"), answer


@pytest.mark.parametrize("key", ["", KEYS[1]])
def test_simulated_users_send_their_key(app, key: str) -> None:
    """The project's own client (``SimulatedUsers``, behind ``monolith-ray simulate`` and
    the demo) names its key: with it every request is answered, without it none is."""
    from monolith_ray.demo import SimulatedUsers
    from monolith_ray.stream.producers import UserSimulator

    users = SimulatedUsers(app.url, UserSimulator(n_users=20, n_items=200), rate_per_s=20,
                           requests_limit=6, api_key=key)
    users.start()
    assert users.done.wait(60)
    users.stop_event.set()
    users.join(30)
    totals = users.totals
    assert totals["requests"] == 6
    assert totals["failed"] == (6 if not key else 0), (totals, list(users.errors))
