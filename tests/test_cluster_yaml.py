"""``cluster.yaml`` against the cluster-config schema shipped inside the ray wheel."""

from __future__ import annotations

import copy
import json
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
        broken["available_node_types"]["cpu_worker"]["max_workers"] = "8"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_serving_workers_offer_the_resource_replicas_can_ask_for(cluster):
    from monolith_ray.config import load_config

    types = cluster["available_node_types"]
    offering = [name for name, t in types.items() if t["resources"].get("serving", 0) > 0]
    assert offering == ["serving_worker"]
    cfg = load_config(overrides=["serve.replica_resources.serving=1"])
    assert set(cfg.serve.replica_resources) <= set(types["serving_worker"]["resources"])


def test_cpu_workers_offer_the_resource_training_actors_can_ask_for(cluster):
    from monolith_ray.config import load_config
    from monolith_ray.train.job import trainer_options

    types = cluster["available_node_types"]
    offering = [name for name, t in types.items() if t["resources"].get("training", 0) > 0]
    assert offering == ["cpu_worker"]
    cfg = load_config(overrides=["train.actor_resources.training=0.01"])
    assert set(cfg.train.actor_resources) <= set(types["cpu_worker"]["resources"])
    assert trainer_options(cfg)["resources"] == {"training": 0.01}
