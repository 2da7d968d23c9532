"""Satiation states decay per request step, are bounded per user and in users, expire; the
online fit recovers a known γ and λ from synthetic feedback; pending shows become clicks or
non-clicks."""

from __future__ import annotations

import numpy as np
import pytest

from monolith_ray.policy import PendingShows, SatiationModel


def test_state_rises_when_shown_and_decays_per_request_step() -> None:
    model = SatiationModel(gammas=(0.5, 0.9))
    assert model.states("u", ["a", "b", None], 0.0).tolist() == [[0, 0]] * 3
    model.show("u", ["a", "a"], 0.0)  # two items of one category in one request
    for steps in range(1, 4):
        s = model.states("u", ["a", "b", None], float(steps))
        assert s[0] == pytest.approx([2 * 0.5 ** steps, 2 * 0.9 ** steps])
        assert s[1].tolist() == [0, 0] and s[2].tolist() == [0, 0]
    model.show("u", ["a"], 3.0)
    assert model.states("u", ["a"], 4.0)[0] == pytest.approx(
        [(2 * 0.5 ** 3 + 1) * 0.5, (2 * 0.9 ** 3 + 1) * 0.9])
    assert model.states("v", ["a"], 4.0).tolist() == [[0, 0]]  # per user


def test_no_penalty_until_enough_feedback() -> None:
    model = SatiationModel(min_feedback=10)
    model.params[:, 2] = 2.0
    states = np.ones((2, 3))
    assert model.penalties(states).tolist() == [0, 0]
    model.observe(np.zeros((10, 3)), np.zeros(10), np.zeros(10))
    assert model.penalties(states)[0] > 0


def test_users_categories_and_time_are_bounded() -> None:
    model = SatiationModel(gammas=(0.9,), max_users=3, max_categories=2, ttl_s=100)
    for user in range(5):
        model.states(user, [], 0.0)
        model.show(user, ["a"], 0.0)
    assert len(model) == 3  # the least recently used went first
    assert model.states(0, ["a"], 1.0).tolist() == [[0.0]]
    model.show(4, ["b"], 1.0)
    model.states(4, [], 2.0)
    model.show(4, ["b"], 2.0)  # b is now more sated than a
    model.show(4, ["c"], 2.0)  # a third category replaces the least sated, a
    assert model.categories_of(4) == 2
    assert model.states(4, ["a", "b", "c"], 3.0)[:, 0].tolist() == pytest.approx(
        [0.0, (0.9 + 1) * 0.9, 0.9])
    # silent past ttl_s: starts over
    assert model.states(4, ["b"], 200.0).tolist() == [[0.0]]
    assert len(model) == 3 and model.evict_expired(1_000.0) == 3 and len(model) == 0


def test_fit_recovers_a_known_gamma_and_lambda() -> None:
    """Users are shown two of five categories at random per request and click with
    σ(−0.5 + z − λ·s) where s decays with γ = 0.7 and λ = 1.2: the fit picks γ = 0.7 from the
    grid and estimates λ within 0.25."""
    rng = np.random.default_rng(0)
    true_gamma, true_lam = 0.7, 1.2
    model = SatiationModel(gammas=(0.3, 0.7, 0.95), min_feedback=100)
    truth = model.gammas.tolist().index(true_gamma)
    for t in range(12_000):
        user = int(rng.integers(50))
        states = model.states(user, list(range(5)), float(t))
        shown = rng.choice(5, 2, replace=False)
        z = rng.normal(0, 1, 2)
        s = states[shown, truth]
        clicked = rng.random(2) < 1 / (1 + np.exp(-(-0.5 + z - true_lam * s)))
        model.observe(states[shown], z, clicked)
        model.show(user, shown.tolist(), float(t))
    assert model.gamma == true_gamma
    assert model.lam == pytest.approx(true_lam, abs=0.25)
    assert model.params[truth, 1] == pytest.approx(1.0, abs=0.25)


def _tire(model: SatiationModel, lam: float, steps: int, rng: np.random.Generator,
          start: int = 0) -> None:
    """Users tiring with γ = 0.7 and ``lam``, as in the test above."""
    truth = model.gammas.tolist().index(0.7)
    for t in range(start, start + steps):
        user = int(rng.integers(50))
        states = model.states(user, list(range(5)), float(t))
        shown = rng.choice(5, 2, replace=False)
        z = rng.normal(0, 1, 2)
        clicked = rng.random(2) < 1 / (1 + np.exp(-(-0.5 + z - lam * states[shown, truth])))
        model.observe(states[shown], z, clicked)
        model.show(user, shown.tolist(), float(t))


def test_the_fit_follows_users_whose_tiring_changes_after_long_uptime() -> None:
    """After 30,000 impressions at λ = 2, users tire at λ = 0.3: with a memory of 2,000
    impressions the fit nears it within 16,000 more (0.37-0.40 over seeds 1-3); summing
    every squared gradient since the start (no forgetting) its steps have shrunk, and λ
    lags at 0.64-0.66."""
    fits = {}
    for memory in (2_000, 1e15):
        rng = np.random.default_rng(1)
        model = SatiationModel(gammas=(0.3, 0.7, 0.95), memory=memory)
        _tire(model, 2.0, 15_000, rng)
        _tire(model, 0.3, 8_000, rng, start=15_000)
        fits[memory] = model.params[1, 2]  # λ of the true γ, 0.7
    assert fits[2_000] == pytest.approx(0.3, abs=0.15), fits
    assert fits[1e15] > fits[2_000] + 0.15, fits


def test_a_gradient_long_zero_never_makes_the_fit_nan() -> None:
    """A state of 0 (a category never shown before, γ = 0) gives λ a gradient of 0: its
    forgotten sum must not decay to 0 and divide 0 by 0."""
    model = SatiationModel(gammas=(0.0, 0.5), memory=2, min_feedback=0)
    for _ in range(3000):
        model.observe(np.zeros((1, 2)), np.array([0.3]), np.array([1.0]))
    assert np.isfinite(model.params).all() and np.isfinite(model.loglik).all()
    assert np.isfinite(model.lam) and model.lam >= 0


def test_pending_shows_become_clicks_or_non_clicks() -> None:
    pending = PendingShows(window_s=10, max_impressions=2)
    pending.add("r1", 0.0, [7, 8], np.array([[1.0], [2.0]]), np.array([0.1, 0.2]))
    states, logit = pending.click("r1", "7")
    assert states.tolist() == [1.0] and logit == 0.1
    assert pending.click("r1", 7) is None  # taken once
    assert pending.click("r9", 7) is None
    assert pending.expired(5.0)[1].size == 0
    s, z = pending.expired(11.0)
    assert s.tolist() == [[2.0]] and z.tolist() == [0.2] and len(pending) == 0
    for i in range(3):
        pending.add(f"q{i}", 20.0, [i], np.array([[float(i)]]), np.array([0.0]))
    assert len(pending) == 2  # the oldest is pushed out, a non-click at once
    assert pending.expired(20.0)[0].tolist() == [[0.0]]


def test_pending_shows_are_capped_by_impressions_not_requests() -> None:
    pending = PendingShows(window_s=10, max_impressions=5)
    for i in range(3):  # 9 impressions of 3 a request: the two oldest requests go
        pending.add(f"r{i}", 0.0, [1, 2, 3], np.zeros((3, 1)), np.zeros(3))
    assert (len(pending), pending.impressions, pending.pushed_out) == (1, 3, 6)
    assert pending.expired(0.0)[1].size == 6  # the pushed out: non-clicks at once
    assert pending.click("r2", 1) is not None and pending.impressions == 2
    pending.add("r2", 1.0, [4], np.zeros((1, 1)), np.zeros(1))  # the same id again
    assert (len(pending), pending.impressions) == (1, 1)
    assert pending.expired(1.0)[1].size == 2  # the replaced request's held ones
    assert pending.expired(12.0)[1].size == 1 and pending.impressions == 0


def test_expired_users_are_dropped_oldest_first() -> None:
    model = SatiationModel(ttl_s=100)
    for user, t in ((0, 0.0), (1, 50.0), (2, 200.0)):
        model.states(user, [], t)
    assert model.evict_expired(160.0) == 2 and len(model) == 1
    assert model.evict_expired(300.0) == 0  # user 2 was last seen at 200
