"""``cluster.yaml`` against the cluster-config schema shipped inside the ray wheel."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA.read_text())


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_matches_rays_schema(schema, cluster):
    jsonschema.validate(cluster, schema)


def test_node_types_are_consistent(cluster):
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] in types
    workers = {k: v for k, v in types.items() if k != cluster["head_node_type"]}
    assert workers and all(0 <= t["min_workers"] <= t["max_workers"] for t in workers.values())
    assert sum(t["min_workers"] for t in workers.values()) <= cluster["max_workers"]


@pytest.mark.parametrize("breaks", ["misspelled key", "wrong type"])
def test_a_broken_copy_fails_validation(schema, cluster, breaks):
    broken = copy.deepcopy(cluster)
    if breaks == "misspelled key":
        broken["idle_timeout_minute"] = broken.pop("idle_timeout_minutes")
    else:
        broken["available_node_types"]["memory_worker"]["max_workers"] = "8"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_serving_workers_offer_the_resource_replicas_can_ask_for(cluster):
    from monolith_ray.config import load_config

    types = cluster["available_node_types"]
    offering = [name for name, t in types.items() if t["resources"].get("serving", 0) > 0]
    assert offering == ["serving_worker"]
    cfg = load_config(overrides=["serve.replica_resources.serving=1"])
    assert set(cfg.serve.replica_resources) <= set(types["serving_worker"]["resources"])


def offering(cluster: dict[str, Any], resources: dict[str, float]) -> list[str]:
    """The node types that offer every one of ``resources``, enough for one actor."""
    return sorted(name for name, t in cluster["available_node_types"].items()
                  if resources and all(t["resources"].get(r, 0) >= amount
                                       for r, amount in resources.items()))


def the_sets_in_its_comments() -> list[str]:
    """Every ``--set key.path=value`` of a ``*_resources`` key that the comments of
    cluster.yaml tell a job to use."""
    found = (s.rstrip(".,;") for s in re.findall(r"--set (\S+=\S+)", CLUSTER_YAML.read_text()))
    return [s for s in found if "_resources." in s.partition("=")[0]]


def test_each_role_lands_on_the_node_type_its_comment_names(cluster):
    from monolith_ray.config import load_config
    from monolith_ray.train.job import trainer_options

    sets = the_sets_in_its_comments()
    cfg = load_config(overrides=[s for s in sets if "actor_resources" not in s])
    roles = {"shard": cfg.train.resources("shard"), "dense": cfg.train.resources("dense"),
             "trainer": trainer_options(cfg)["resources"],
             "replica": dict(cfg.serve.replica_resources),
             "sync": dict(cfg.serve.sync_resources)}
    assert {role: offering(cluster, r) for role, r in roles.items()} == {
        "shard": ["memory_worker"], "dense": ["memory_worker"], "trainer": ["compute_worker"],
        "replica": ["serving_worker"], "sync": ["head"]}


def test_actor_resources_alone_keeps_every_training_role_on_the_training_workers(cluster):
    from monolith_ray.config import load_config

    fallback = [s for s in the_sets_in_its_comments() if "actor_resources" in s]
    assert fallback == ["train.actor_resources.training=0.01"]
    cfg = load_config(overrides=fallback)
    for role in ("shard", "dense", "trainer"):
        assert offering(cluster, cfg.train.resources(role)) == ["compute_worker",
                                                                 "memory_worker"]
