"""IPS and SNIPS of a greedy target from ε-greedy logs with known click probabilities: within
their intervals of the truth, unbiased over repetitions, clipping bounds the weights; logs of
a greedy and an ε-greedy policy pooled by their mixture's propensity."""

from __future__ import annotations

import numpy as np
import pytest

from monolith_ray.policy import EpsilonGreedy, Greedy, ips, pooled, snips

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


def pooled_log(n_greedy: int, n_epsilon: int, seed: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Single-slot requests, ``n_greedy`` of greedy then ``n_epsilon`` of ε-greedy (ε = 0.5),
    a uniform target -> rewards, each impression's propensity under (greedy, ε-greedy)
    (n, 2), the serving policy's own propensity, and the target's."""
    rng = np.random.default_rng(seed)
    loggers = (Greedy(), EpsilonGreedy(0.5))
    both = np.stack([p.inclusion(VALUES, 1, rng) for p in loggers], axis=1)  # (items, 2)
    n = n_greedy + n_epsilon
    rewards, under, own = np.empty(n), np.empty((n, 2)), np.empty(n)
    for i in range(n):
        j = int(i >= n_greedy)
        item = int(loggers[j].choose(VALUES, 1, rng).indices[0])
        rewards[i] = rng.random() < CLICK[item]
        under[i], own[i] = both[item], both[item, j]
    return rewards, under, own, np.full(n, 1 / len(VALUES))


def test_pooled_logs_of_greedy_and_epsilon_estimate_a_target_neither_ran() -> None:
    """Greedy's log alone never shows four of the five items; pooled with ε-greedy's by the
    mixture's propensity (each policy weighed by its share of the requests, 3:1 here) the
    estimate is unbiased, while weighing each impression by the propensity of the policy
    that served it, or the two policies equally, is not."""
    truth, runs, shares = CLICK.mean(), 200, np.array([0.75, 0.25])
    values, naive, equal = np.empty(runs), np.empty(runs), np.empty(runs)
    for seed in range(runs):
        rewards, under, own, target = pooled_log(600, 200, seed)
        values[seed] = ips(rewards, pooled(under, shares), target).value
        naive[seed] = ips(rewards, own, target).value
        equal[seed] = ips(rewards, pooled(under, np.array([0.5, 0.5])), target).value
    assert values.mean() == pytest.approx(truth, abs=3 * values.std() / np.sqrt(runs))
    for wrong in (naive, equal):
        assert abs(wrong.mean() - truth) > 10 * wrong.std() / np.sqrt(runs)
    assert pooled(np.array([[1.0, 0.1]]), np.array([0.25, 0.75])) == pytest.approx([0.325])
    with pytest.raises(ValueError, match="summing to 1"):
        pooled(np.ones((3, 2)), np.array([0.5, 0.6]))
    with pytest.raises(ValueError, match=r"\(n, J\)"):
        pooled(np.ones((3, 2)), np.array([1.0]))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        pooled(np.array([[1.2, 0.1]]), np.array([0.5, 0.5]))


def test_bad_logs_are_refused() -> None:
    with pytest.raises(ValueError, match="propensities"):
        ips(np.ones(2), np.array([0.5, 0.0]), np.ones(2))
    with pytest.raises(ValueError, match="equal non-empty"):
        snips(np.ones(2), np.ones(3), np.ones(2))
    assert np.isnan(snips(np.ones(2), np.ones(2), np.zeros(2)).value)
    with pytest.raises(ValueError, match="no NaN"):
        ips(np.ones(2), np.array([0.5, np.nan]), np.ones(2))
    with pytest.raises(ValueError, match="no NaN"):
        snips(np.ones(2), np.ones(2), np.array([np.nan, 1.0]))
    with pytest.raises(ValueError, match="rewards: finite"):
        ips(np.array([1.0, np.inf]), np.ones(2), np.ones(2))
    for clip in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="clip: must be > 0"):
            ips(np.ones(2), np.ones(2), np.ones(2), clip=clip)
