"""Slot settings: defaults, types and the range rules of a dataclass built in code."""

from __future__ import annotations

import dataclasses

import pytest

from monolith_ray.config import (
    AdmissionConfig,
    ConfigError,
    InitializerConfig,
    OptimizerConfig,
    load_config,
)


def test_defaults() -> None:
    cfg = load_config("slots:\n  - {name: user_id, slot_id: 0, dim: 4}\n")
    slot = cfg.slots[0]
    assert slot.optimizer == OptimizerConfig()
    assert dataclasses.asdict(slot.optimizer) == {
        "kind": "adagrad", "learning_rate": 0.05, "initial_accumulator": 0.1, "eps": 1e-8,
        "beta1": 0.9, "beta2": 0.999, "l1": 0.0, "l2": 0.0, "beta": 1.0,
    }
    assert slot.initializer == InitializerConfig(kind="uniform", scale=0.01, seed=0)
    assert (slot.occurrence_threshold, slot.admit_probability, slot.expire_s) == (0, 1.0, 0.0)
    assert (slot.combiner, slot.max_values) == ("sum", 1)
    assert cfg.admission == AdmissionConfig(sketch_width=1 << 20, sketch_depth=4)


def test_ints_are_accepted_for_floats() -> None:
    cfg = load_config("slots:\n  - {name: a, slot_id: 0, dim: 4, optimizer: {learning_rate: 1}}\n")
    assert type(cfg.slots[0].optimizer.learning_rate) is float


def test_unused_hyper_parameters_are_allowed() -> None:
    cfg = load_config("slots:\n  - {name: a, slot_id: 0, dim: 4, optimizer: {kind: sgd, l1: 3}}\n")
    assert cfg.slots[0].optimizer.l1 == 3.0


def test_direct_construction_names_the_bare_field() -> None:
    with pytest.raises(ConfigError) as info:
        OptimizerConfig(learning_rate=-1.0)
    assert info.value.key == "learning_rate"
    assert str(info.value) == "learning_rate: must be > 0, got -1.0"
