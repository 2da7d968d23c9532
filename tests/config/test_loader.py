"""The strict loader: error messages that name the key path, the field types it supports,
YAML files and text."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Optional

import pytest

from monolith_ray.config import ConfigError, from_dict, load_config


def _slots(*lines: str) -> str:
    """YAML with one slot per line, each a flow mapping."""
    return "slots:\n" + "".join(f"  - {line}\n" for line in lines)


ERRORS = {
    "unknown key, nested deep": (
        _slots("{name: a, slot_id: 0, dim: 4}", "{name: b, slot_id: 1, dim: 4}",
               "{name: c, slot_id: 2, dim: 4, optimizer: {learnin_rate: 0.1}}"),
        "slots[2].optimizer.learnin_rate: unknown key (allowed: kind, learning_rate,",
    ),
    "unknown top-level key": (
        _slots("{name: a, slot_id: 0, dim: 4}") + "admision: {}\n",
        "admision: unknown key",
    ),
    "wrong type": (
        _slots("{name: a, slot_id: 0, dim: eight}"),
        "slots[0].dim: expected int, got 'eight' (str)",
    ),
    "float given text": (
        _slots("{name: a, slot_id: 0, dim: 4, optimizer: {learning_rate: fast}}"),
        "slots[0].optimizer.learning_rate: expected float, got 'fast' (str)",
    ),
    "exponent without a dot": (
        _slots("{name: a, slot_id: 0, dim: 4, optimizer: {eps: 1e-8}}"),
        "slots[0].optimizer.eps: expected float, got '1e-8' (str); YAML reads exponents",
    ),
    "bool for int": (
        _slots("{name: a, slot_id: 0, dim: true}"),
        "slots[0].dim: expected int, got True (bool)",
    ),
    "bool for float": (
        _slots("{name: a, slot_id: 0, dim: 4, expire_s: yes}"),
        "slots[0].expire_s: expected float, got True (bool)",
    ),
    "missing required, nested": (
        _slots("{name: a, slot_id: 0}"),
        "slots[0].dim: missing required key",
    ),
    "missing required, top level": ("admission: {}\n", "slots: missing required key"),
    "not a list": (
        "slots: {name: a}\n",
        "slots: expected a list of a mapping (SlotConfig), got {'name': 'a'} (dict)",
    ),
    "not a mapping": (
        _slots("{name: a, slot_id: 0, dim: 4, optimizer: adam}"),
        "slots[0].optimizer: expected a mapping (OptimizerConfig), got 'adam' (str)",
    ),
    "empty document": ("# nothing\n", "expected a mapping (Config), got None"),
    "bad literal": (
        _slots("{name: a, slot_id: 0, dim: 4, optimizer: {kind: adamw}}"),
        "slots[0].optimizer.kind: expected one of 'sgd', 'adagrad', 'ftrl', 'adam', got 'adamw'",
    ),
    "bad transport": (
        _slots("{name: a, slot_id: 0, dim: 4}") + "train: {transport: grpc}\n",
        "train.transport: expected one of 'channel', 'ray', got 'grpc'",
    ),
    "actor resource not positive": (
        _slots("{name: a, slot_id: 0, dim: 4}") + "train: {actor_resources: {training: 0}}\n",
        "train.actor_resources.training: must be > 0 and finite, got 0.0",
    ),
    "negative XLA threads": (
        _slots("{name: a, slot_id: 0, dim: 4}") + "train: {xla_threads: -1}\n",
        "train.xla_threads: must be >= 0, got -1",
    ),
    "bad combiner": (
        _slots("{name: a, slot_id: 0, dim: 4, combiner: max}"),
        "slots[0].combiner: expected one of 'sum', 'mean', got 'max'",
    ),
    "learning rate out of range": (
        _slots("{name: a, slot_id: 0, dim: 4}", "{name: b, slot_id: 1, dim: 4, "
               "optimizer: {learning_rate: 0}}"),
        "slots[1].optimizer.learning_rate: must be > 0, got 0.0",
    ),
    "beta1 out of range": (
        _slots("{name: a, slot_id: 0, dim: 4, optimizer: {beta1: 1.0}}"),
        "slots[0].optimizer.beta1: must be >= 0 and < 1, got 1.0",
    ),
    "nan is no finite number": (
        _slots("{name: a, slot_id: 0, dim: 4, initializer: {scale: .nan}}"),
        "slots[0].initializer.scale: must be a finite number, got nan",
    ),
    "dim too large": (
        _slots("{name: a, slot_id: 0, dim: 5000}"),
        "slots[0].dim: must be >= 1 and <= 4096, got 5000",
    ),
    "slot id too large": (
        _slots("{name: a, slot_id: 32768, dim: 4}"),
        "slots[0].slot_id: must be >= 0 and <= 32767, got 32768",
    ),
    "threshold too large": (
        _slots("{name: a, slot_id: 0, dim: 4, occurrence_threshold: 256}"),
        "slots[0].occurrence_threshold: must be >= 0 and <= 255, got 256",
    ),
    "zero admit probability": (
        _slots("{name: a, slot_id: 0, dim: 4, admit_probability: 0}"),
        "slots[0].admit_probability: must be > 0 and <= 1, got 0.0",
    ),
    "bad slot name": (
        _slots("{name: 1st, slot_id: 0, dim: 4}"),
        "slots[0].name: must match",
    ),
    "sketch width not a power of two": (
        _slots("{name: a, slot_id: 0, dim: 4}") + "admission: {sketch_width: 1000}\n",
        "admission.sketch_width: must be a power of two, got 1000",
    ),
    "sketch depth out of range": (
        _slots("{name: a, slot_id: 0, dim: 4}") + "admission: {sketch_depth: 9}\n",
        "admission.sketch_depth: must be >= 1 and <= 8, got 9",
    ),
    "no slots": ("slots: []\n", "slots: must list at least one slot"),
    "duplicate slot name": (
        _slots("{name: a, slot_id: 0, dim: 4}", "{name: b, slot_id: 1, dim: 4}",
               "{name: a, slot_id: 2, dim: 4}"),
        "slots[2].name: duplicate 'a', already used by slots[0]",
    ),
    "duplicate slot id": (
        _slots("{name: a, slot_id: 5, dim: 4}", "{name: b, slot_id: 5, dim: 4}"),
        "slots[1].slot_id: duplicate 5, already used by slots[0]",
    ),
    "invalid yaml": ("slots: [\n", "invalid YAML"),
}


@pytest.mark.parametrize("text, message", ERRORS.values(), ids=ERRORS.keys())
def test_errors_name_the_key_path(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(text)
    assert message in str(info.value)


def test_unknown_key_suggests_the_close_match() -> None:
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        load_config(_slots("{name: a, slot_id: 0, dim: 4, optimizer: {learnin_rate: 0.1}}"))


def test_config_error_pickles() -> None:
    err = ConfigError("slots[0].dim", "missing required key")
    back = pickle.loads(pickle.dumps(err))
    assert (back.key, back.reason, str(back)) == (err.key, err.reason, str(err))


@dataclasses.dataclass(frozen=True)
class _Inner:
    weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class _Section:
    """Exercises the field types Config does not use yet."""

    enabled: bool
    tags: tuple[str, ...] = ()
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    limit: Optional[int] = None
    inner: _Inner | None = None


def test_generic_field_types() -> None:
    data = {"enabled": False, "tags": ["a", "b"], "weights": {"click": 1, "like": 0.5},
            "limit": None, "inner": {"weight": 2}}
    section = from_dict(_Section, data)
    assert section == _Section(False, ("a", "b"), {"click": 1.0, "like": 0.5}, None, _Inner(2.0))
    assert from_dict(_Section, {"enabled": True, "limit": 3}).limit == 3


@pytest.mark.parametrize(
    "data, message",
    [
        ({"enabled": 1}, "sec.enabled: expected bool, got 1 (int)"),
        ({"enabled": True, "tags": ["a", 2]}, "sec.tags[1]: expected str, got 2 (int)"),
        ({"enabled": True, "tags": "a"}, "sec.tags: expected a list of str, got 'a' (str)"),
        ({"enabled": True, "weights": {"click": "x"}}, "sec.weights.click: expected float"),
        ({"enabled": True, "weights": {1: 1.0}}, "sec.weights.1: keys must be str, got int"),
        ({"enabled": True, "limit": 1.5}, "sec.limit: expected int or null, got 1.5 (float)"),
        ({"enabled": True, "inner": {"w": 1}}, "sec.inner.w: unknown key (allowed: weight)"),
    ],
)
def test_generic_field_type_errors(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(_Section, data, "sec")
    assert message in str(info.value)
