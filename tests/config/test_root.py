"""The whole config: every section loaded, dumped and reloaded, looked up by slot."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from monolith_ray.config import (
    AdmissionConfig,
    Config,
    InitializerConfig,
    LimitsConfig,
    OptimizerConfig,
    SlotConfig,
    load_config,
)


DEFAULTS = Path(__file__).resolve().parents[2] / "monolith_ray" / "defaults"

FULL_YAML = """
slots:
  - name: user_id
    slot_id: 1
    dim: 16
    optimizer: {kind: ftrl, learning_rate: 0.02, initial_accumulator: 0.5, l1: 0.1, l2: 0.2,
                beta: 0.5}
    initializer: {kind: normal, scale: 0.05, seed: 7}
    occurrence_threshold: 3
    admit_probability: 0.25
    expire_s: 86400
    combiner: mean
    max_values: 1
  - name: item_tags
    slot_id: 2
    dim: 8
    optimizer: {kind: adam, learning_rate: 0.001, eps: 1.0e-6, beta1: 0.8, beta2: 0.99}
    initializer: {kind: zeros}
    max_values: 20
admission:
  sketch_width: 4096
  sketch_depth: 2
"""

FULL = Config(
    slots=(
        SlotConfig(
            name="user_id",
            slot_id=1,
            dim=16,
            optimizer=OptimizerConfig(
                kind="ftrl", learning_rate=0.02, initial_accumulator=0.5, l1=0.1, l2=0.2, beta=0.5
            ),
            initializer=InitializerConfig(kind="normal", scale=0.05, seed=7),
            occurrence_threshold=3,
            admit_probability=0.25,
            expire_s=86400.0,
            combiner="mean",
            max_values=1,
        ),
        SlotConfig(
            name="item_tags",
            slot_id=2,
            dim=8,
            optimizer=OptimizerConfig(
                kind="adam", learning_rate=0.001, eps=1e-6, beta1=0.8, beta2=0.99
            ),
            initializer=InitializerConfig(kind="zeros"),
            max_values=20,
        ),
    ),
    admission=AdmissionConfig(sketch_width=4096, sketch_depth=2),
)


def test_full_yaml_loads_every_field() -> None:
    cfg = load_config(FULL_YAML)
    assert cfg == FULL
    assert isinstance(cfg.slots, tuple)
    assert type(cfg.slots[0].expire_s) is float


def test_dump_and_reload_round_trips() -> None:
    plain = json.loads(json.dumps(dataclasses.asdict(FULL)))
    assert load_config(yaml.safe_dump(plain)) == FULL


def test_load_from_file_path(tmp_path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(FULL_YAML)
    assert load_config(path) == FULL
    assert load_config(str(path)) == FULL


def test_slot_lookup() -> None:
    assert FULL.slot("item_tags").slot_id == 2
    with pytest.raises(KeyError, match="no slot named 'item'; slots: user_id, item_tags"):
        FULL.slot("item")


@pytest.mark.parametrize("name", ["movielens.yaml", "demo.yaml"])
def test_the_embedded_configs_load(name: str) -> None:
    cfg = load_config(DEFAULTS / name)
    assert cfg.slots and cfg.limits == LimitsConfig()


def test_only_the_movielens_config_names_movielens_data() -> None:
    assert "ml-100k" in load_config(DEFAULTS / "movielens.yaml").data.train
    assert load_config(DEFAULTS / "demo.yaml").data.train == ""
