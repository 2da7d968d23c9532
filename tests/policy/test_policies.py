"""Policies: greedy order, exact epsilon-greedy propensities, Thompson's Monte Carlo
propensities against the frequencies it shows with, UCB's optimism, bounded show counts."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monolith_ray.policy import (
    UCB,
    EpsilonGreedy,
    Greedy,
    ShowCounts,
    Thompson,
    make_policy,
)

values_st = st.lists(st.floats(-5, 5), min_size=1, max_size=30).map(np.array)


def test_greedy_takes_the_top_k_in_order_ties_by_position() -> None:
    choice = Greedy().choose(np.array([0.1, 2.0, 0.5, 2.0]), 3, np.random.default_rng(0))
    assert choice.indices.tolist() == [1, 3, 2]
    assert choice.propensities.tolist() == [1.0, 1.0, 1.0]


@settings(max_examples=50, deadline=None)
@given(values_st, st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_epsilon_zero_is_greedy(values: np.ndarray, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    got = EpsilonGreedy(0.0).choose(values, k, rng)
    want = Greedy().choose(values, k, rng)
    assert got.indices.tolist() == want.indices.tolist()
    assert np.all(got.propensities == 1.0)


@settings(max_examples=50, deadline=None)
@given(values_st, st.integers(1, 40), st.floats(0, 1), st.integers(0, 2**32 - 1))
def test_epsilon_picks_distinct_items_with_valid_propensities(
        values: np.ndarray, k: int, eps: float, seed: int) -> None:
    choice = EpsilonGreedy(eps).choose(values, k, np.random.default_rng(seed))
    assert len(choice.indices) == min(k, len(values))
    assert len(set(choice.indices.tolist())) == len(choice.indices)
    assert np.all((choice.propensities > 0) & (choice.propensities <= 1))
    left = len(values) - np.arange(len(choice.indices))
    # each slot's propensity is eps/left, plus 1 - eps if it took the best remaining
    assert np.all(np.isclose(choice.propensities, eps / left)
                  | np.isclose(choice.propensities, 1 - eps + eps / left))


def test_epsilon_propensities_are_the_frequencies_it_shows_with() -> None:
    values = np.array([0.3, 1.2, -0.4, 0.9])
    policy, rng = EpsilonGreedy(0.3), np.random.default_rng(1)
    firsts: collections.Counter[int] = collections.Counter()
    seconds: collections.Counter[int] = collections.Counter()  # given item 1 first
    claimed: dict[tuple[int, int], float] = {}
    trials = 20_000
    for _ in range(trials):
        c = policy.choose(values, 2, rng)
        a, b = c.indices.tolist()
        firsts[a] += 1
        claimed[(0, a)] = c.propensities[0]
        if a == 1:
            seconds[b] += 1
            claimed[(1, b)] = c.propensities[1]
    for item, count in firsts.items():
        assert count / trials == pytest.approx(claimed[(0, item)], abs=0.015)
    for item, count in seconds.items():
        assert count / firsts[1] == pytest.approx(claimed[(1, item)], abs=0.02)
    assert claimed[(0, 1)] == pytest.approx(0.7 + 0.3 / 4)


def test_thompson_propensities_match_its_frequencies() -> None:
    values, rng = np.array([0.5, 0.0, -0.3]), np.random.default_rng(2)
    policy = Thompson(scale=1.0, draws=400)
    counts: collections.Counter[int] = collections.Counter()
    claimed: dict[int, list[float]] = collections.defaultdict(list)
    trials = 3_000
    for _ in range(trials):
        c = policy.choose(values, 1, rng)
        counts[int(c.indices[0])] += 1
        claimed[int(c.indices[0])].append(float(c.propensities[0]))
    assert len(counts) == 3  # it explores every item
    for item, count in counts.items():
        assert np.mean(claimed[item]) == pytest.approx(count / trials, abs=0.03)


def test_thompson_without_noise_and_ucb_without_shows_are_greedy() -> None:
    values, rng = np.array([0.1, 2.0, 0.5, 2.0, -1.0]), np.random.default_rng(3)
    greedy = Greedy().choose(values, 3, rng).indices.tolist()
    c = Thompson(scale=0.0, draws=8).choose(values, 3, rng)
    assert c.indices.tolist() == greedy and np.all(c.propensities == 1.0)
    assert UCB(scale=1.0).choose(values, 3, rng).indices.tolist() == greedy


def test_ucb_favours_what_was_shown_less() -> None:
    values = np.array([1.0, 0.8])
    shows = np.array([10_000, 0])
    c = UCB(scale=1.0).choose(values, 1, np.random.default_rng(0), shows)
    assert c.indices.tolist() == [1] and c.propensities.tolist() == [1.0]


def test_show_counts_are_per_user_and_item_bounded_and_key_ids_as_the_project_does() -> None:
    counts = ShowCounts(buckets=1 << 16)
    counts.add(counts.slots(5, [7, "7", 8, "movie-3"]))
    assert counts.get(counts.slots("5", ["7"])).tolist() == [2]
    assert counts.get(counts.slots(5, ["movie-3", 8])).tolist() == [1, 1]
    # another user's shows are its own: a user new to an item is uncertain about it
    assert counts.get(counts.slots(6, [7, 8, "movie-3"])).tolist() == [0, 0, 0]
    counts.add(counts.slots(6, [7]))
    assert counts.get(counts.slots(6, [7])).tolist() == [1]
    assert counts.get(counts.slots(5, [7])).tolist() == [2]
    small = ShowCounts(buckets=64)
    small.add(small.slots(1, list(range(63))))
    assert small.counts.shape == (64,) and small.counts.sum() == 63
    before = small.counts.copy()
    small.add(small.slots(1, [0]))  # the 64th impression: every count halves
    before[small.slots(1, [0])] += 1
    np.testing.assert_array_equal(small.counts, before >> 1)


def test_show_counts_stay_bounded_over_any_number_of_impressions() -> None:
    """Many users over a few buckets: without forgetting every count would grow without end
    (and sigma shrink to 0 for every pair); halving keeps the mean about 2 at most."""
    counts = ShowCounts(buckets=256)
    for user in range(2_000):
        counts.add(counts.slots(user, list(range(50))))
    assert counts.counts.mean() <= 2.0 and counts.counts.max() < 20


def test_make_policy_by_name() -> None:
    policy = make_policy("epsilon", epsilon=0.2, scale=3.0, draws=5)
    assert isinstance(policy, EpsilonGreedy) and policy.epsilon == 0.2
    assert make_policy("thompson", scale=0.5, draws=7) == Thompson(scale=0.5, draws=7)
    with pytest.raises(KeyError, match="greedy, epsilon, thompson, ucb"):
        make_policy("softmax")
    with pytest.raises(ValueError, match="epsilon"):
        make_policy("epsilon", epsilon=1.5)


@pytest.mark.parametrize("policy", [Greedy(), EpsilonGreedy(0.3), Thompson(1.0, 4000),
                                    UCB(1.0)], ids=lambda p: p.name)
def test_inclusion_is_how_often_each_item_is_shown(policy) -> None:
    """Item marginals (slate IPS's weights) against the frequencies of 20,000 lists."""
    rng = np.random.default_rng(3)
    values, shows, k = rng.normal(size=12), rng.integers(0, 20, 12), 4
    inclusion = policy.inclusion(values, k, rng, shows)
    shown = np.zeros(12)
    for _ in range(20_000):
        shown[policy.choose(values, k, rng, shows).indices] += 1
    assert inclusion.sum() == pytest.approx(k)
    assert np.all((inclusion >= 0) & (inclusion <= 1))
    np.testing.assert_allclose(inclusion, shown / 20_000, atol=0.025)


@settings(max_examples=50, deadline=None)
@given(values_st, st.integers(1, 8), st.floats(0, 1))
def test_epsilon_inclusion_is_exact_at_the_edges(values, k, eps) -> None:
    """Every item has a chance when eps > 0; eps 0 is greedy's indicator, eps 1 is k/n."""
    rng = np.random.default_rng(0)
    inclusion = EpsilonGreedy(eps).inclusion(values, k, rng)
    n, k = len(values), min(k, len(values))
    assert inclusion.sum() == pytest.approx(k)
    if eps == 0:
        np.testing.assert_allclose(inclusion, Greedy().inclusion(values, k, rng))
    elif eps == 1:
        np.testing.assert_allclose(inclusion, np.full(n, k / n))
    else:
        # each slot is a uniform pick with probability eps: at least 1 - (1 - eps/n)^k
        assert np.all(inclusion >= 1 - (1 - eps / n) ** k - 1e-12)


@pytest.mark.parametrize("policy", [Greedy(), EpsilonGreedy(0.3), Thompson(1.0, 64),
                                    UCB(1.0)], ids=lambda p: p.name)
def test_inclusion_of_some_candidates_is_theirs_of_all(policy) -> None:
    values, shows, of = np.random.default_rng(5).normal(size=30), np.arange(30), [7, 0, 29]
    full = policy.inclusion(values, 5, np.random.default_rng(1), shows)
    some = policy.inclusion(values, 5, np.random.default_rng(1), shows, of=np.array(of))
    np.testing.assert_array_equal(some, full[of])
