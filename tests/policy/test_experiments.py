"""Arm assignment is stable across processes and follows the weights; Wilson and normal
intervals; counts merge."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from monolith_ray.policy import ArmCounts, arm_of, experiment_of, report, wilson
from monolith_ray.policy.experiments import EXPERIMENT_DRAW

USERS = [*range(200), *(f"user-{i}" for i in range(200))]


def test_assignment_is_the_same_in_another_process_with_another_hash_seed() -> None:
    code = ("import json, sys; from monolith_ray.policy import arm_of, experiment_of; "
            "users = json.loads(sys.argv[1]); "
            "print(json.dumps([[arm_of('exp', [1, 2, 1], u), experiment_of(3, u)] "
            "for u in users]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(USERS)], env=env,
                         capture_output=True, text=True, check=True).stdout
    here = [[arm_of("exp", [1, 2, 1], u), experiment_of(3, u)] for u in USERS]
    assert json.loads(out) == here
    assert len({a for a, _ in here}) == 3 and len({e for _, e in here}) == 3


def test_a_user_is_in_one_arm_however_the_id_is_spelled() -> None:
    """As the model reads it: 7, "7" and "007" are one user (``schemas.value_ids``)."""
    for user in range(50):
        spellings = (user, str(user), f"00{user}")
        assert len({(arm_of("exp", [1, 1, 1], u), experiment_of(5, u))
                    for u in spellings}) == 1
    assert len({arm_of("exp", [1] * 8, f"00{u}") for u in range(50)}) == 8


def test_arms_follow_their_weights_and_experiments_reshuffle() -> None:
    users = range(20_000)
    arms = [arm_of("exp", [1.0, 3.0], u) for u in users]
    assert sum(arms) / len(arms) == pytest.approx(0.75, abs=0.015)
    other = [arm_of("exp2", [1.0, 3.0], u) for u in users]
    agree = sum(a == b for a, b in zip(arms, other)) / len(arms)
    assert agree == pytest.approx(0.25 ** 2 + 0.75 ** 2, abs=0.02)  # independent hashes
    shares = [experiment_of(2, u) for u in users]
    assert sum(shares) / len(shares) == pytest.approx(0.5, abs=0.015)


@pytest.mark.parametrize("name", ["exp", "Experiment", "experiments", "\u00e9tude"])
def test_arms_split_the_users_of_their_experiment(name: str) -> None:
    """The draw of an experiment and the draw of an arm within it are independent for any
    name config allows; the one it refuses would put all of the experiment's users in one
    arm."""
    users = range(20_000)
    inside = [u for u in users if experiment_of(2, u) == 0]
    arms = [arm_of(name, [1.0, 1.0], u) for u in inside]
    assert sum(arms) / len(arms) == pytest.approx(0.5, abs=0.02)
    assert {arm_of(EXPERIMENT_DRAW, [1.0, 1.0], u) for u in inside} == {0}


def test_wilson_interval() -> None:
    assert wilson(0, 0) == (0.0, 1.0)
    low, high = wilson(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson(30, 100)
    assert low == pytest.approx(0.2189, abs=1e-3) and high == pytest.approx(0.3958, abs=1e-3)
    assert wilson(300, 1000)[1] - wilson(300, 1000)[0] < high - low


def test_report_merges_replicas_counts() -> None:
    counts = ArmCounts(60, 10, 12) + ArmCounts(40, 5, 6)
    out = report(counts)
    assert (out["impressions"], out["clicks"], out["rewards"]) == (100, 15, 18)
    assert out["ctr"] == 0.15 and out["ctr_low"] < 0.15 < out["ctr_high"]
    assert out["reward"] == 0.18
    assert out["reward_low"] == pytest.approx(0.18 - 1.96 * (0.18 * 0.82 / 100) ** 0.5)
    assert report(ArmCounts())["reward_high"] is None
