"""A/B experiments: stable assignment of users to arms, and per-arm statistics.

Assignment hashes text with ``features.hash_str`` (BLAKE2b of the UTF-8 bytes, 48 bits),
never Python's salted ``hash()``, so a user lands in the same arm in every process, replica
and run. The user id is hashed as the model reads it (``schemas.value_text``): ``7``, ``"7"``
and ``"007"`` are one user, in one arm. Experiments are mutually exclusive: a user belongs
to one experiment, chosen by a hash of the user id alone (equal shares), and within it to
one arm, chosen by a hash of (experiment name, user id) against the arms' weights. Renaming
an experiment reshuffles its users; adding one moves users between experiments.

Statistics per arm: impressions, clicks (``click`` actions), rewards (impressions with a
positive action of any kind, ``messages.POSITIVE_ACTIONS``, each counted once, as the joiner
labels them); CTR = clicks / impressions with a Wilson score interval; mean reward per
impression with a normal-approximation interval, each impression's reward 0 or 1. Feedback
is counted as it comes; a report a replica received lately (the same request id, item and
action) is not counted again (``decisions.Decisions.feedback``, ``repeats.RecentKeys``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from monolith_ray.config.policy import EXPERIMENT_DRAW
from monolith_ray.features import VALUE_BITS, hash_str
from monolith_ray.schemas import value_text

__all__ = ["EXPERIMENT_DRAW", "ArmCounts", "arm_of", "experiment_of", "normal_interval",
           "report", "unit_hash", "wilson"]


def unit_hash(text: str) -> float:
    """A stable uniform number in [0, 1) of ``text``."""
    return float(hash_str([text])[0]) / float(1 << VALUE_BITS)


def experiment_of(count: int, user_id: int | str) -> int:
    """Which of ``count`` mutually exclusive experiments user ``user_id`` belongs to. The
    hashed text is :func:`arm_of`'s of an experiment named ``EXPERIMENT_DRAW``, a name config
    refuses, so the two draws stay independent."""
    return min(int(unit_hash(f"{EXPERIMENT_DRAW}\x1f{value_text(user_id)}") * count),
               count - 1)


def arm_of(experiment: str, weights: Sequence[float], user_id: int | str) -> int:
    """The arm (index into ``weights``, all > 0) of ``user_id`` in ``experiment``: arm ``i``
    with probability ``weights[i] / sum(weights)`` over users, the same on every call."""
    u = unit_hash(f"{experiment}\x1f{value_text(user_id)}") * sum(weights)
    total = 0.0
    for i, w in enumerate(weights):
        total += w
        if u < total:
            return i
    return len(weights) - 1


@dataclasses.dataclass
class ArmCounts:
    """One arm's counts; ``+`` merges those of several replicas."""

    impressions: int = 0
    clicks: int = 0
    rewards: int = 0

    def __add__(self, other: ArmCounts) -> ArmCounts:
        return ArmCounts(self.impressions + other.impressions, self.clicks + other.clicks,
                         self.rewards + other.rewards)


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) with no trials."""
    if n <= 0:
        return 0.0, 1.0
    p = min(successes / n, 1.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def normal_interval(total: float, n: int, z: float = 1.96) -> tuple[float, float, float]:
    """(mean, low, high) of a mean reward per impression from its sum, each impression's
    reward taken as 0 or 1 for the variance; (0, 0, inf) with no impressions."""
    if n <= 0:
        return 0.0, 0.0, math.inf
    mean = total / n
    half = z * math.sqrt(max(mean - mean * mean, 0.0) / n)
    return mean, mean - half, mean + half


def report(counts: ArmCounts, z: float = 1.96) -> dict[str, Any]:
    """An arm's counts with CTR (Wilson) and mean reward (normal) intervals, as JSON."""
    low, high = wilson(counts.clicks, counts.impressions, z)
    mean, r_low, r_high = normal_interval(counts.rewards, counts.impressions, z)
    return {"impressions": counts.impressions, "clicks": counts.clicks,
            "ctr": counts.clicks / counts.impressions if counts.impressions else 0.0,
            "ctr_low": low, "ctr_high": high, "rewards": counts.rewards,
            "reward": mean, "reward_low": r_low,
            "reward_high": r_high if math.isfinite(r_high) else None}
