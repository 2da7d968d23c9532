"""The HTTP API fuzzed from its own OpenAPI schema, on real Ray Serve with the Kafka log live.

schemathesis reads ``/openapi.json`` from the running app and, for every operation, sends
requests that fit the schema and requests that break it (positive and negative generation,
``EXAMPLES`` of each, derandomized): none may get a 5xx, a status the schema does not
document, or an answer off its schema, and the invalid ones must be refused. The inputs that
once broke serving follow as plain requests, as raw JSON text where Python's encoder could
not write them (a lone surrogate, a thousand levels of nesting) or as undecodable bytes.
"""

from __future__ import annotations

from collections.abc import Iterator

import hypothesis
import pytest
import requests
import schemathesis

import monolith_ray.serve.app  # noqa: F401 - importing the deployment adds its endpoints to api
from monolith_ray.serve.api import api

APP, PREFIX = "serve-fuzz", "/fuzz"

FUZZED = [(f"{method.upper()} {path}", mode)
          for path, methods in api.openapi()["paths"].items()
          for method, spec in methods.items() for mode in schemathesis.GenerationMode
          if mode == schemathesis.GenerationMode.POSITIVE or "requestBody" in spec
          or spec.get("parameters")]
"""Every operation of the API ("POST /recommend", ...) with the generation modes it takes:
positive, and negative if it has an input to break (``GET /healthz`` has none)."""
EXAMPLES = 60
"""Requests per operation and generation mode; derandomized, so CI replays the same ones."""

CHECKS = {
    # Schema-valid requests may still be refused: bounds the schema cannot state (k at most
    # serve.max_k, feature names that are slots, a token the service issued).
    "positive_data_acceptance": {"enabled": False},
    "negative_data_rejection": {"expected-statuses": ["400", "413", "422"]},
}
"""schemathesis's checks: all on (no 5xx, documented statuses, content types and bodies that
match the schema, invalid requests refused) but the acceptance of every schema-valid one."""


@pytest.fixture(scope="module")
def app_url(deploy_recommender) -> Iterator[str]:
    """The recommender under its own name and route prefix, logging to its own topics ->
    its base URL."""
    with deploy_recommender(APP, PREFIX, ["serve.max_candidates=64", "serve.max_k=10"],
                            range(100, 200), partitions=1) as app:
        yield app.url


@pytest.fixture(scope="module")
def api_schema(app_url: str) -> schemathesis.BaseSchema:
    """The live app's OpenAPI schema, its requests sent to the app with ``CHECKS``."""
    config = schemathesis.Config.from_dict(
        {"base-url": app_url, "request-timeout": 30, "checks": CHECKS})
    return schemathesis.openapi.from_url(app_url + "/openapi.json", config=config, timeout=30)


def _post(url: str, raw: str | bytes) -> requests.Response:
    """POST ``raw`` as the body, a JSON text with its escapes as written, or bytes."""
    return requests.post(url, data=raw.encode() if isinstance(raw, str) else raw, timeout=60,
                         headers={"content-type": "application/json"})


DEEP = '{"a": ' * 1000 + "1" + "}" * 1000


@pytest.mark.parametrize(("path", "raw", "statuses", "names"), [
    pytest.param("/recommend", r'{"user": {"id": "\ud800"}}', {422}, "user.id",
                 id="surrogate-user-id"),
    pytest.param("/recommend", r'{"user": {"id": 1, "features": {"gender": "\ud800"}}}', {422},
                 "user.features.gender", id="surrogate-feature-value"),
    pytest.param("/recommend",
                 r'{"user": {"id": 1}, "candidates": [{"id": 2, "features": {"genres": '
                 r'["Drama", "\udc00"]}}]}', {422}, "genres", id="surrogate-in-a-list"),
    pytest.param("/predict", r'{"pairs": [{"user": {"id": 1}, "item": "x\ud83d"}]}', {422},
                 "item", id="surrogate-item-id"),
    pytest.param("/recommend", r'{"user": {"id": 1, "features": {"\ud800": "F"}}}', {422},
                 "user.features", id="surrogate-feature-name"),
    pytest.param("/recommend", b'{"user": {"id": "\xff\xfe"}}', {400, 422}, "", id="not-utf8"),
    pytest.param("/recommend", '{"user": {"id": 1}, "context": %s}' % DEEP, {400, 422}, "",
                 id="context-1000-deep"),
    pytest.param("/recommend", '{"user": {"id": 1}, "context": {"blob": "%s"}}' % ("x" * 10**6),
                 {413, 422}, "", id="context-1MB"),
    pytest.param("/recommend", '{"user": {"id": 1}, "request_id": "mine"}', {422}, "request_id",
                 id="client-request-id"),
    pytest.param("/recommend", '{"user": {"id": 1, "features": {"gender": ""}}}', {422},
                 "user.features.gender", id="empty-gender"),
    pytest.param("/feedback", '{"request_id": "0123abcd", "item_id": 100, "action": "click", '
                              '"token": "%s"}' % ("0" * 32), {422}, "token", id="made-up-token"),
])
def test_inputs_that_once_broke_serving_get_a_documented_4xx(
        app_url: str, path: str, raw: str | bytes, statuses: set[int], names: str) -> None:
    r = _post(app_url + path, raw)
    assert r.status_code in statuses, r.text[:500]
    assert list(r.json()) == ["error"] and names in r.json()["error"], r.text[:500]
    assert requests.get(app_url + "/healthz", timeout=30).status_code == 200


def test_the_schema_states_the_int64_bounds_exactly(app_url: str) -> None:
    user_id = requests.get(app_url + "/openapi.json", timeout=30).json()[
        "components"]["schemas"]["UserIn"]["properties"]["id"]["anyOf"][0]
    assert (user_id["minimum"], user_id["maximum"]) == (-(1 << 63), (1 << 63) - 1)
    r = requests.post(app_url + "/predict", timeout=30, json={"pairs": [
        {"user": {"id": (1 << 63) - 1}, "item": 1}]})
    assert r.status_code == 200, r.text


def test_feedback_needs_the_token_of_a_served_item_and_a_sane_time(app_url: str) -> None:
    served = requests.post(app_url + "/recommend", json={"user": {"id": 7}, "k": 2},
                           timeout=30).json()
    (item, _), rid = served["items"], served["request_id"]
    fields = {"request_id": rid, "item_id": item["item_id"], "token": item["token"],
              "action": "click"}
    r = requests.post(app_url + "/feedback", json=fields, timeout=30)
    assert r.status_code == 200 and r.json() == {"accepted": True, "request_id": rid,
                                                 "repeat": False}, r.text
    not_served = next(i for i in range(100, 200)
                      if i not in {it["item_id"] for it in served["items"]})
    for bad, field in [({"item_id": not_served}, "token"), ({"request_id": rid[::-1]}, "token"),
                       ({"time": 10**18}, "time")]:
        r = requests.post(app_url + "/feedback", json={**fields, **bad}, timeout=30)
        assert r.status_code == 422 and r.json()["error"].startswith(field), (bad, r.text)


@pytest.mark.parametrize(("operation", "mode"), FUZZED, ids=[f"{o} {m}" for o, m in FUZZED])
def test_every_operation_answers_within_its_schema(
        api_schema: schemathesis.BaseSchema, operation: str,
        mode: schemathesis.GenerationMode) -> None:
    # A strategy per operation under plain Hypothesis: schemathesis's loader from a pytest
    # fixture (``schemathesis.pytest.from_fixture``, 4.32) fails on pytest 9.2's nodes.
    method, path = operation.split()
    strategy = api_schema[path][method].as_strategy(mode)

    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=[hypothesis.HealthCheck.too_slow])
    @hypothesis.given(case=strategy)
    def answers_within_its_schema(case: schemathesis.Case) -> None:
        case.call_and_validate()

    answers_within_its_schema()
