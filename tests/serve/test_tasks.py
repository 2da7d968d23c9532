"""Several tasks served on real Ray Serve: ``/recommend`` ranks by ``serve.score`` and returns
every task's probability per item, ``/predict`` returns them per pair beside the scores."""

from __future__ import annotations

import time

import numpy as np
import pytest
import ray
import requests

from monolith_ray.features import make_fids
from monolith_ray.ps.client import ShardClient
from monolith_ray.serve.model import ServingModel, SlotRows

USER = {"id": 1, "features": {"gender": "F", "age": 25}}
TASKS = "tasks=[{name: click, actions: [click]}, {name: like, actions: [like], weight: 0.5}]"


@pytest.fixture(scope="module")
def app(deploy_recommender):
    with deploy_recommender("tasks-test", "/tasks", [
            TASKS, "serve.score=click + 0.5 * like", "serve.poll_interval_s=0.2"],
            range(100, 120)) as deployed:
        yield deployed


def test_recommend_and_predict_return_every_task_and_rank_by_the_score(app) -> None:
    assert app.cfg.task_names == ("click", "like")
    # Items 100..107 get rows of different values, so their probabilities differ by item
    # and, through the two tasks' heads, by task.
    slot = app.cfg.slot("item_id")
    client = ShardClient(app.shards, [s.name for s in app.cfg.slots])
    items = list(range(100, 108))
    fids = make_fids(slot.slot_id, np.array(items, dtype=np.int64))
    client.pull({"item_id": fids}, 100.0)
    grads = np.linspace(-30, 30, len(items), dtype=np.float32)[:, None] * np.linspace(
        -1, 1, slot.dim + 1, dtype=np.float32)[None, :]
    for _ in range(10):
        client.push({"item_id": fids}, {"item_id": grads}, 100.0)
    ray.get(app.sync.sync_now.remote("sparse"))

    url = app.url
    pairs = [{"user": USER, "item": i} for i in items]
    deadline = time.monotonic() + 30
    while True:
        predicted = requests.post(url + "/predict", json={"pairs": pairs}, timeout=30).json()
        if predicted["model_version"]["sparse"] >= 1:
            break
        assert time.monotonic() < deadline, predicted
        time.sleep(0.2)
    probs = {t: np.array(p) for t, p in predicted["probs"].items()}
    assert set(probs) == {"click", "like"}
    np.testing.assert_allclose(predicted["scores"], probs["click"] + 0.5 * probs["like"],
                               rtol=1e-6)
    assert np.ptp(probs["click"]) > 1e-4 and not np.allclose(probs["click"], probs["like"])

    # The same numbers as a ServingModel at the sync's state, in this process.
    model = ServingModel(app.cfg)
    model.apply(ray.get(app.sync.updates.remote(0, 0)))
    rows = SlotRows.of([{"user_id": 1, **USER["features"], "item_id": i,
                         "genres": ["Comedy"], "release_year": 1990 + i % 10} for i in items],
                       app.cfg.slots)
    expected = model.batch_of(rows)
    assert np.allclose(model.predict(expected), probs["click"], atol=1e-6)

    answer = requests.post(url + "/recommend", json={"user": USER, "candidates": items,
                                                     "k": len(items)}, timeout=30).json()
    ranked = answer["items"]
    assert [set(item["probs"]) for item in ranked] == [{"click", "like"}] * len(items)
    for item in ranked:
        i = items.index(item["item_id"])
        assert item["probs"]["click"] == pytest.approx(probs["click"][i], abs=1e-6)
        assert item["probs"]["like"] == pytest.approx(probs["like"][i], abs=1e-6)
        assert item["score"] == pytest.approx(
            item["probs"]["click"] + 0.5 * item["probs"]["like"], abs=1e-6)
    scores = [item["score"] for item in ranked]
    assert scores == sorted(scores, reverse=True)
