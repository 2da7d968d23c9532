"""The closed-loop policy harness: deterministic runs, slates and their propensities, arms as
serving assigns them, serving's own policies in the loop, exploration and satiation-aware
re-ranking measured against the simulator's hidden truth, and IPS / SNIPS estimates that cover
the truth."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from monolith_ray import policy as serving
from monolith_ray.experiments.policies import (
    EpsilonGreedy,
    Greedy,
    SatiationAware,
    SatiationEstimate,
    SatiationFit,
    Scores,
    Serving,
    Thompson,
    compare,
    off_policy,
    run,
)
from monolith_ray.stream.producers import UserSimulator


def _sim(satiation: float = 0.0, seed: int = 0) -> UserSimulator:
    return UserSimulator(n_users=200, n_items=300, n_categories=20, satiation=satiation,
                         seed=seed)


def _scores(rng: np.random.Generator, n: int = 40, c: int = 30) -> Scores:
    mean = rng.random((n, c))
    return Scores(mean, rng.random((n, c)) * 0.2, mean, rng.integers(0, 50, (n, c)))


def test_same_seed_same_run() -> None:
    sim = _sim(satiation=1.0)
    arms = {"explore": EpsilonGreedy(0.2), "bandit": Thompson(scale=0.3)}
    first, again = run(sim, arms, rounds=15, seed=4), run(sim, arms, rounds=15, seed=4)
    np.testing.assert_array_equal(first.clicks, again.clicks)
    for field in dataclasses.fields(first.log):
        np.testing.assert_array_equal(getattr(first.log, field.name),
                                      getattr(again.log, field.name))
    other = run(sim, arms, rounds=15, seed=5)
    assert not np.array_equal(first.log.item, other.log.item)


def test_runs_of_different_policies_see_the_same_requests() -> None:
    sim = _sim(satiation=1.0)
    greedy, bandit = run(sim, Greedy(), rounds=10), run(sim, Thompson(), rounds=10)
    np.testing.assert_array_equal(greedy.log.request_user, bandit.log.request_user)
    np.testing.assert_array_equal(greedy.log.candidates, bandit.log.candidates)
    assert not np.array_equal(greedy.log.item, bandit.log.item)


def test_the_log_has_every_impression_with_its_truth() -> None:
    sim = _sim(satiation=1.0)
    result = run(sim, {"a": Greedy(), "b": EpsilonGreedy(0.3)}, rounds=12,
                 users_per_round=30, n_candidates=40, k=4)
    log = result.log
    assert len(log.request_user) == 12 * 30 and len(log.item) == 12 * 30 * 4 and log.k == 4
    assert result.clicks.sum() == log.click.sum() and result.impressions.sum() == len(log.item)
    np.testing.assert_allclose(result.expected.sum(), log.truth.sum())
    per_request = log.item.reshape(-1, 4)
    assert all(len(set(row)) == 4 for row in per_request.tolist()), "distinct items a slate"
    for row in range(0, len(log.request_user), 37):
        shown = per_request[row]
        assert np.isin(shown, log.candidates[row]).all()
        truth = log.candidate_truth[row][np.argmax(log.candidates[row][:, None] == shown, 0)]
        np.testing.assert_array_equal(truth, log.truth.reshape(-1, 4)[row])
    for r in range(12):
        users = log.request_user[log.request_round == r]
        assert len(np.unique(users)) == 30
    expected_arm = np.array(["a", "b"])[[serving.arm_of("policies", [1, 1], u)
                                          for u in log.user]]
    np.testing.assert_array_equal(log.arm, expected_arm)
    assert 0.35 < np.mean(log.arm == "a") < 0.65
    np.testing.assert_array_equal(log.policy == "greedy", log.arm == "a")
    assert np.all(log.propensity[log.arm == "a"] == 1.0)
    b = log.propensity[log.arm == "b"]
    assert np.all((b >= 0.3 * 4 / 40 - 1e-12) & (b <= 1.0))
    np.testing.assert_allclose(result.cumulative[-1], result.clicks.sum(axis=0))


@pytest.mark.parametrize("policy", [Greedy(), EpsilonGreedy(0.25), Thompson(draws=50),
                                    SatiationAware(Thompson())], ids=lambda p: p.name)
def test_slates_and_their_marginals(policy) -> None:
    rng = np.random.default_rng(0)
    scores = _scores(rng)
    slate = policy(scores, 5, rng)
    assert slate.chosen.shape == (40, 5) and slate.marginal.shape == (40, 30)
    assert all(len(set(row)) == 5 for row in slate.chosen.tolist())
    np.testing.assert_allclose(slate.marginal.sum(axis=1), 5.0)
    np.testing.assert_array_equal(np.take_along_axis(slate.marginal, slate.chosen, axis=1),
                                  slate.propensity)
    assert np.all(slate.propensity > 0)


def test_epsilon_greedy_marginals_match_its_frequencies() -> None:
    rng = np.random.default_rng(1)
    scores = _scores(rng, n=1, c=10)
    policy = EpsilonGreedy(0.3)
    counts = np.zeros(10)
    for _ in range(4000):
        slate = policy(scores, 3, rng)
        counts[slate.chosen[0]] += 1
    np.testing.assert_allclose(counts / 4000, slate.marginal[0], atol=0.03)
    top = np.argsort(-scores.mean[0])[:3]
    np.testing.assert_allclose(slate.marginal[0][top], 0.7 + 0.3 * 3 / 10)


def test_satiation_aware_ranks_by_the_satiated_scores() -> None:
    sim = _sim(satiation=1.0)
    estimate = SatiationEstimate.of(sim)
    users = np.array([3])
    candidates = np.arange(300)[None, :]
    mean = np.full((1, 300), 0.5)
    np.testing.assert_array_equal(estimate.satiated(users, candidates, mean), mean)
    tired_of = sim.categories[0]
    estimate.show(users, np.flatnonzero(sim.categories == tired_of)[:2][None, :])
    satiated = estimate.satiated(users, candidates, mean)
    same = sim.categories == tired_of
    lam = sim.satiation_lambda[tired_of]
    np.testing.assert_allclose(satiated[0, same], 1 / (1 + np.exp(lam)))
    np.testing.assert_array_equal(satiated[0, ~same], 0.5)
    slate = SatiationAware(Greedy())(Scores(mean, mean * 0, satiated, mean * 0), 5,
                                     np.random.default_rng(0))
    assert not np.any(same[slate.chosen[0]])


def test_without_satiation_the_satiation_aware_policy_is_greedy() -> None:
    sim = _sim(satiation=0.0)
    plain, aware = run(sim, Greedy(), rounds=20), run(sim, SatiationAware(Greedy()), rounds=20)
    np.testing.assert_array_equal(plain.log.item, aware.log.item)


def test_satiation_aware_beats_greedy_when_satiation_is_strong() -> None:
    sim = _sim(satiation=2.0)
    greedy = run(sim, Greedy(), rounds=100)
    aware = run(sim, SatiationAware(Greedy()), rounds=100)
    assert aware.expected_reward() > 1.15 * greedy.expected_reward()
    assert aware.reward() > greedy.reward()
    wrong = run(sim, SatiationAware(Greedy()), rounds=100,
                belief=lambda sim: SatiationEstimate(sim.n_users, sim.categories, 0.0, 0.0))
    np.testing.assert_array_equal(wrong.log.item, greedy.log.item)


def test_serving_satiation_fit_learns_lambda_and_beats_greedy() -> None:
    """Serving's online fit of gamma and lambda, fed the run's clicks, finds a penalty near
    the hidden one and wins part of what the oracle wins."""
    sim = _sim(satiation=2.0)
    fits: list[SatiationFit] = []

    def fit(sim: UserSimulator) -> SatiationFit:
        fits.append(SatiationFit.of(sim))
        return fits[-1]

    greedy = run(sim, Greedy(), rounds=100).expected_reward()
    fitted = run(sim, SatiationAware(Greedy()), rounds=100, belief=fit).expected_reward()
    assert fitted > 1.08 * greedy
    hidden = sim.satiation_lambda.mean()
    assert 0.5 * hidden < fits[0].model.lam < 1.5 * hidden
    assert fits[0].model.observed == 100 * 50 * 5


def test_exploring_beats_greedy() -> None:
    sim = _sim(satiation=0.0)
    greedy = run(sim, Greedy(), rounds=150).expected_reward()
    assert run(sim, Thompson(scale=0.3), rounds=150).expected_reward() > 1.03 * greedy
    assert run(sim, EpsilonGreedy(0.1), rounds=150).expected_reward() > greedy


def test_on_policy_log_weighs_one() -> None:
    sim = _sim(satiation=1.0)
    result = run(sim, Greedy(), rounds=20)
    est = off_policy(result.log, Greedy())
    assert est.ips.value == pytest.approx(result.reward())
    assert est.snips.value == pytest.approx(result.reward())
    assert est.truth == pytest.approx(result.expected_reward())


@pytest.mark.parametrize("target", [Greedy(), Thompson(scale=0.3),
                                    SatiationAware(Greedy())], ids=lambda p: p.name)
def test_off_policy_estimates_cover_the_truth(target) -> None:
    sim = _sim(satiation=1.0)
    logged = run(sim, EpsilonGreedy(0.3), rounds=200)
    est = off_policy(logged.log, target, estimate=SatiationEstimate.of(sim))
    for e in (est.ips, est.snips):
        assert e.low <= est.truth <= e.high
        assert e.high - e.low < 0.25 * est.truth
    assert abs(est.truth - logged.expected_reward()) > est.ips.high - est.ips.low, \
        "the target differs from the logging policy by more than the interval"


def test_compare_reports_estimates_and_on_policy_rewards() -> None:
    sim = _sim(satiation=0.0)
    out = compare(sim, EpsilonGreedy(0.3), {"greedy": Greedy()}, rounds=20)
    assert set(out) == {"logging", "greedy"}
    g = out["greedy"]
    assert g["ips_low"] <= g["ips"] <= g["ips_high"]
    assert g["on_policy"] == pytest.approx(run(sim, Greedy(), rounds=20).reward())


def test_serving_policies_run_in_the_loop() -> None:
    """Serving's own policies pick from the logits of the model's means with the candidates'
    impression counts, and log their per-slot propensities; their logs are not read by
    off_policy (no marginals)."""
    sim = _sim(satiation=1.0)
    greedy = run(sim, Serving(serving.Greedy()), rounds=20)
    assert np.all(greedy.log.propensity == 1.0) and set(greedy.log.policy) == {"greedy"}
    mine = run(sim, Greedy(), rounds=20)
    assert greedy.log.marginal is False and mine.log.marginal is True
    rng = np.random.default_rng(3)
    scores = _scores(rng)
    slate = Serving(serving.Greedy())(scores, 5, rng)
    np.testing.assert_array_equal(slate.chosen, np.argsort(-scores.mean, axis=1)[:, :5])
    assert slate.marginal is None
    result = run(sim, {"thompson": Serving(serving.Thompson(scale=1.0, draws=16)),
                       "epsilon": Serving(serving.EpsilonGreedy(0.2))}, rounds=20)
    for arm in ("thompson", "epsilon"):
        p = result.log.propensity[result.log.arm == arm]
        assert np.all((p > 0) & (p <= 1)) and np.any(p < 1)
    assert result.reward("thompson") > 0 and result.reward("epsilon") > 0
    with pytest.raises(ValueError, match="marginals"):
        off_policy(greedy.log, Greedy())
    with pytest.raises(ValueError, match="marginals"):
        off_policy(mine.log, Serving(serving.Greedy()))
