"""IPS and SNIPS of a greedy target from ε-greedy logs with known click probabilities: within
their intervals of the truth, unbiased over repetitions, clipping bounds the weights."""

from __future__ import annotations

import numpy as np
import pytest

from monolith_ray.policy import EpsilonGreedy, Greedy, ips, snips

CLICK = np.array([0.05, 0.30, 0.10, 0.20, 0.15])  # true click probability per item
VALUES = np.array([0.0, 0.2, 1.0, 0.1, -0.5])     # the (wrong) model's ranking: best is item 2


def log(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n single-slot impressions of ε-greedy (ε = 0.5) -> rewards, logging and greedy
    target propensities."""
    rng = np.random.default_rng(seed)
    logging, target = EpsilonGreedy(0.5), Greedy()
    best = int(target.choose(VALUES, 1, rng).indices[0])
    rewards, p, q = np.empty(n), np.empty(n), np.empty(n)
    for i in range(n):
        c = logging.choose(VALUES, 1, rng)
        item = int(c.indices[0])
        rewards[i] = rng.random() < CLICK[item]
        p[i], q[i] = c.propensities[0], float(item == best)
    return rewards, p, q


def test_estimates_cover_the_truth_of_the_target() -> None:
    truth = CLICK[2]  # greedy always shows item 2
    rewards, p, q = log(20_000, seed=0)
    for estimate in (ips(rewards, p, q), snips(rewards, p, q)):
        assert estimate.low <= truth <= estimate.high
        assert estimate.high - estimate.low < 0.03
        assert estimate.n == 20_000 and 0 < estimate.effective_n < 20_000
    # the logging policy's own value is not the target's
    assert abs(rewards.mean() - truth) > 0.03


def test_ips_is_unbiased_and_its_interval_covers_about_95_percent() -> None:
    truth, runs = CLICK[2], 200
    estimates = [ips(*log(500, seed)) for seed in range(runs)]
    values = np.array([e.value for e in estimates])
    assert values.mean() == pytest.approx(truth, abs=3 * values.std() / np.sqrt(runs))
    covered = np.mean([e.low <= truth <= e.high for e in estimates])
    assert 0.88 <= covered <= 0.99


def test_clipping_bounds_the_weights_and_biases_downwards() -> None:
    rewards, p, q = log(5_000, seed=1)
    clipped = ips(rewards, p, q, clip=1.0)
    assert clipped.value <= ips(rewards, p, q).value
    assert clipped.value == pytest.approx(np.mean(np.minimum(q / p, 1.0) * rewards))


def test_bad_logs_are_refused() -> None:
    with pytest.raises(ValueError, match="propensities"):
        ips(np.ones(2), np.array([0.5, 0.0]), np.ones(2))
    with pytest.raises(ValueError, match="equal non-empty"):
        snips(np.ones(2), np.ones(3), np.ones(2))
    assert np.isnan(snips(np.ones(2), np.ones(2), np.zeros(2)).value)
