"""Over real Serve HTTP: an experiment arm pinned to a snapshot (``model: snapshot:...``)
scores with that snapshot's parameters while the other arm scores with the live ones, and
requests without candidates are retrieved from the towers' index of the catalogue."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import pytest
import ray
import requests

from monolith_ray.config import ConfigError, load_config
from monolith_ray.config.inputs import check_inputs
from monolith_ray.features import make_fids
from monolith_ray.policy.decisions import Decisions
from monolith_ray.ps.client import ShardClient
from monolith_ray.serve.pinned import pinned_model, resolve_pinned
from monolith_ray.serve.sync import check_sources
from monolith_ray.train.job import start_servers
from monolith_ray.train.snapshots import take_snapshot

POOL = range(200, 220)
RETRIEVAL = "retrieval={user_slots: [user_id], item_slots: [item_id, genres], candidates: 8}"


def _snapshot(root: str) -> str:
    """A snapshot whose item rows make items 200..219 score apart (a fresh model scores
    them all alike: its rows are all the zero default)."""
    cfg = load_config(overrides=["train.shard_cpus=0"])
    shards, dense = start_servers(cfg)
    try:
        client = ShardClient(shards, ["item_id"])
        fids = make_fids(cfg.slot("item_id").slot_id, np.arange(200, 220, dtype=np.int64))
        client.pull({"item_id": fids}, 100)
        grads = np.linspace(-1, 1, fids.size)[:, None] * np.ones(
            (1, cfg.slot("item_id").dim + 1), np.float32)
        for _ in range(20):
            client.push({"item_id": fids}, {"item_id": grads.astype(np.float32)}, 100)
        params, _ = ray.get(dense.pull.remote())  # a dense step: not the fresh parameters
        ray.get(dense.push.remote(jax.tree.map(np.ones_like, params)))
        return take_snapshot(root, shards, dense), ray.get(dense.pull.remote())[0]
    finally:
        for actor in [*shards, dense]:
            ray.kill(actor)


@pytest.fixture(scope="module")
def app(deploy_recommender, ray_session, tmp_path_factory) -> Iterator[Any]:
    root = str(tmp_path_factory.mktemp("pinned"))
    folder, params = _snapshot(root)
    experiment = (f"experiments=[{{name: ab, arms: [{{name: live}}, "
                  f"{{name: pinned, model: 'snapshot:{root}'}}]}}]")
    with deploy_recommender("pinned-test", "/pinned", [experiment, RETRIEVAL], POOL) as app:
        app.folder, app.snapshot_params = folder, params
        yield app


def users_in(cfg: Any, arm: int, count: int) -> list[int]:
    decisions = Decisions(cfg.policy, cfg.experiments)
    return [u for u in range(10_000) if decisions.arm_of(u) == (0, arm)][:count]


def recommend(app: Any, user: int, **extra: Any) -> dict[str, Any]:
    r = requests.post(app.url + "/recommend", json={"user": {"id": user}, "k": 5, **extra},
                      timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_pinned_arm_scores_with_its_snapshot_and_the_live_arm_with_the_sync(app) -> None:
    given = {"candidates": list(POOL)}
    for user in users_in(app.cfg, 1, 3):
        body = recommend(app, user, **given)
        assert body["model_version"]["snapshot"] == app.folder
        scores = [i["score"] for i in body["items"]]
        assert max(scores) - min(scores) > 1e-4  # the snapshot's item rows tell them apart
    for user in users_in(app.cfg, 0, 3):
        body = recommend(app, user, **given)
        assert body["model_version"].get("snapshot") is None
        scores = [i["score"] for i in body["items"]]
        assert max(scores) - min(scores) < 1e-6  # nothing trained live: all alike
    arms = {a["arm"]: a for e in requests.get(app.url + "/experiments", timeout=30).json()[
        "experiments"] for a in e["arms"]}
    assert arms["ab/live"]["model"] == "live"
    assert arms["ab/pinned"]["model"] == f"snapshot:{app.folder}"  # the root, resolved once


def test_the_pinned_model_holds_the_snapshots_rows(app) -> None:
    model, folder = pinned_model(app.cfg, app.folder)
    assert folder == app.folder
    fids = make_fids(app.cfg.slot("item_id").slot_id, np.arange(200, 220, dtype=np.int64))
    rows = model.store.lookup("item_id", fids)
    assert np.abs(rows).sum() > 0 and not np.allclose(rows[0], rows[-1])
    for held, saved in zip(jax.tree.leaves(model.params), jax.tree.leaves(app.snapshot_params)):
        np.testing.assert_allclose(held, saved)
    with pytest.raises(FileNotFoundError, match="no complete snapshot"):
        pinned_model(app.cfg, app.folder + "-missing")


def test_serving_refuses_training_servers_of_other_retrieval_settings(app) -> None:
    check_sources(app.cfg.table_slots, app.shards, app.dense, ["tower"])  # as deployed
    with pytest.raises(ConfigError, match="shards hold tables"):
        check_sources(app.cfg.slots, app.shards, app.dense, [])
    with pytest.raises(ConfigError, match="no part 'other'"):
        check_sources(app.cfg.table_slots, app.shards, app.dense, ["tower", "other"])


def test_requests_without_candidates_are_retrieved_from_the_catalogue(app) -> None:
    before = requests.get(app.url + "/healthz", timeout=30).json()["retrieval"]
    assert before["items"] == len(POOL) and before["rebuilds"] >= 1
    for user in users_in(app.cfg, 0, 4):
        items = recommend(app, user)["items"]
        assert len(items) == 5 and {i["item_id"] for i in items} <= set(POOL)
    after = requests.get(app.url + "/healthz", timeout=30).json()["retrieval"]
    assert after["searches"] == before["searches"] + 4 and after["fallbacks"] == 0
    assert after["p99_ms"] > 0


def test_a_pinned_arm_needs_a_snapshot_that_exists(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"experiments\[0\]\.arms\[0\]\.model"):
        load_config(overrides=["experiments=[{name: x, arms: [{name: a, model: yesterday}]}]"])
    cfg = load_config(overrides=[
        f"experiments=[{{name: x, arms: [{{name: a, model: 'snapshot:{tmp_path}/none'}}]}}]"])
    with pytest.raises(ConfigError, match=r"experiments\[0\]\.arms\[0\]\.model: no file"):
        check_inputs(cfg, ("experiments",))
    (tmp_path / "none").mkdir()  # there, but no complete snapshot in it
    with pytest.raises(ConfigError, match=r"experiments\[0\]\.arms\[0\]\.model: no complete"):
        resolve_pinned(cfg)
    assert dataclasses.replace(cfg).experiments[0].arms[0].snapshot == f"{tmp_path}/none"
