"""The policy and experiments sections: defaults keep greedy serving; bad values fail at load
naming the key."""

from __future__ import annotations

import pytest

from monolith_ray.config import ConfigError, load_config
from monolith_ray.config.policy import ArmConfig, PolicyChoice

SLOTS = """
slots:
  - {name: user_id, slot_id: 1, dim: 8}
  - {name: item_id, slot_id: 2, dim: 8}
  - {name: genres, slot_id: 3, dim: 8, max_values: 6}
policy:
  kind: epsilon
  epsilon: 0.2
  satiation: {enabled: true, category_slot: genres, gammas: [0.6, 0.9], max_users: 50}
experiments:
  - name: explore
    arms:
      - {name: control}
      - {name: eps, weight: 2, policy: {kind: thompson, scale: 0.5}, satiation: false}
"""


def test_loads() -> None:
    cfg = load_config(SLOTS)
    assert cfg.policy.kind == "epsilon" and cfg.policy.epsilon == 0.2
    assert cfg.policy.satiation.gammas == (0.6, 0.9) and cfg.policy.satiation.max_users == 50
    arms = cfg.experiments[0].arms
    assert arms[0] == ArmConfig("control")
    assert arms[1] == ArmConfig("eps", 2.0, PolicyChoice("thompson", scale=0.5), False)


def test_default_is_greedy_without_experiments() -> None:
    cfg = load_config()
    assert cfg.policy.kind == "greedy" and not cfg.policy.satiation.enabled
    assert cfg.experiments == ()


@pytest.mark.parametrize("override, message", [
    ("policy.kind=softmax", "^policy.kind: expected one of 'greedy', 'epsilon'"),
    ("policy.epsilon=1.5", r"^policy.epsilon: must be >= 0 and <= 1, got 1.5$"),
    ("policy.draws=0", "^policy.draws: must be >= 1"),
    ("policy.scale=.inf", r"^policy.scale: must be a finite number, got inf$"),
    ("experiments=[{name: a, arms: [{name: x, weight: .inf}]}]",
     r"^experiments\[0\].arms\[0\].weight: must be a finite number, got inf$"),
    ('experiments=[{name: "a\\tb", arms: [{name: x}]}]',
     r"^experiments\[0\].name: 1 to 64 printable characters"),
    ("experiments=[{name: experiment, arms: [{name: x}, {name: y}]}]",
     r"^experiments\[0\].name: 'experiment' is reserved"),
    ("policy.satiation.gammas=[0.5, 1.0]", r"^policy.satiation.gammas\[1\]: must be >= 0 and < 1"),
    ("policy.satiation.gammas=[]", "^policy.satiation.gammas: 1 to 16 values"),
    ("policy.satiation.category_slot=genre",
     "^policy.satiation.category_slot: 'genre' is not a slot"),
    ("policy.satiation.max_users=0", "^policy.satiation.max_users: must be >= 1"),
    ("policy.satiation.ttl=5", "^policy.satiation.ttl: unknown key"),
    ("experiments=[{name: a, arms: []}]", r"^experiments\[0\].arms: 1 to 32 arms, got 0"),
    ("experiments=[{name: a, arms: [{name: x}, {name: x}]}]",
     r"^experiments\[0\].arms\[1\].name: duplicate 'x', already used by arms\[0\]"),
    ("experiments=[{name: a, arms: [{name: x, weight: 0}]}]",
     r"^experiments\[0\].arms\[0\].weight: must be > 0"),
    ("experiments=[{name: a, arms: [{name: x, policy: {kind: eps}}]}]",
     r"^experiments\[0\].arms\[0\].policy.kind: expected one of"),
    ("experiments=[{name: a, arms: [{name: x}]}, {name: a, arms: [{name: y}]}]",
     r"^experiments\[1\].name: duplicate 'a', already used by experiments\[0\]"),
])
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(SLOTS, [override])


def test_an_arm_with_satiation_needs_the_category_slot() -> None:
    text = ("slots:\n  - {name: user_id, slot_id: 1, dim: 4}\n"
            "experiments:\n  - {name: s, arms: [{name: sated, satiation: true}]}\n")
    with pytest.raises(ConfigError, match="^policy.satiation.category_slot: 'genres' is not"):
        load_config(text)
    load_config(text.replace("true", "false"))
