"""The user simulator's satiation: categories, the per user x category state that decays by the
hidden gamma at each request of the user and rises by 1 when a category is shown, clicks that
lose the hidden lambda * s of logit, and answers unchanged when satiation is off."""

from __future__ import annotations

import numpy as np
import pytest

from monolith_ray.stream.producers import (
    ACTIONS,
    FEATURES,
    SatiatedUsers,
    UserSimulator,
    satiation_step,
    simulated_events,
)

T0 = 1_700_000_000


def _items_of(sim: UserSimulator, category: int, n: int) -> np.ndarray:
    return np.flatnonzero(sim.categories == category)[:n]


def test_categories_and_hidden_truth_are_seeded() -> None:
    sim = UserSimulator(n_users=100, n_items=300, n_categories=6, satiation=1.0, seed=5)
    again = UserSimulator(n_users=100, n_items=300, n_categories=6, satiation=1.0, seed=5)
    other = UserSimulator(n_users=100, n_items=300, n_categories=6, satiation=1.0, seed=6)
    assert sim.categories.shape == (300,) and set(sim.categories.tolist()) == set(range(6))
    np.testing.assert_array_equal(sim.categories, again.categories)
    np.testing.assert_array_equal(sim.satiation_gamma, again.satiation_gamma)
    assert not np.array_equal(sim.categories, other.categories)
    assert np.all((0.5 <= sim.satiation_gamma) & (sim.satiation_gamma <= 0.9))
    assert np.all((0.5 <= sim.satiation_lambda) & (sim.satiation_lambda <= 1.5))
    np.testing.assert_array_equal(
        UserSimulator(n_users=100, n_items=300, n_categories=6, satiation=2.0,
                      seed=5).satiation_lambda, 2.0 * sim.satiation_lambda)
    assert not UserSimulator(seed=5).satiation_lambda.any(), "off by default"


def test_a_category_groups_items_the_same_users_like() -> None:
    sim = UserSimulator(n_users=200, n_items=400, n_categories=8, seed=1)
    users = np.repeat(np.arange(200), 400)
    p = sim.click_probability(users, np.tile(np.arange(400), 200), T0).reshape(200, 400)
    same = sim.categories[:, None] == sim.categories[None, :]
    corr = np.corrcoef(p.T)
    off_diagonal = ~np.eye(400, dtype=bool)
    assert corr[same & off_diagonal].mean() > corr[~same].mean() + 0.2


def test_without_satiation_every_answer_is_unchanged() -> None:
    """The draws and answers of a simulator without satiation, whatever its categories:
    satiation comes from a stream of its own, and lambda = 0 leaves clicks as they were."""
    plain = UserSimulator(n_users=300, n_items=200, seed=7)
    zero = UserSimulator(n_users=300, n_items=200, seed=7, n_categories=3)
    satiated = UserSimulator(n_users=300, n_items=200, seed=7, satiation=3.0)
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 300, 5000), rng.integers(0, 200, 5000)
    t = T0 + rng.integers(0, 10**6, 5000)
    p = plain.click_probability(users, items, t)
    for sim in (zero, satiated):
        assert np.array_equal(sim.click_probability(users, items, t), p)
        assert np.array_equal(sim.respond(users, items, t), plain.respond(users, items, t))
    state = SatiatedUsers(zero)
    state.state[:] = 5.0
    assert np.array_equal(state.click_probability(users, items, t), p)
    events = list(simulated_events(plain, 400, items_per_request=3, seed=2))
    assert events == list(simulated_events(zero, 400, items_per_request=3, seed=2))


def test_answers_without_satiation_are_those_before_satiation_existed() -> None:
    """Pinned from the simulator as it was before categories and satiation: benchmarks and
    tests that use the simulator without satiation get the same users, clicks and streams."""
    sim = UserSimulator(seed=11)
    u, i = np.array([0, 7, 999, 500]), np.array([3, 499, 0, 250])
    t = np.array([1_700_000_000, 0, 123456789, 1_700_003_600])
    assert sim.click_probability(u, i, t).tolist() == [
        0.01525307136934597, 0.17515555723637088, 0.1196359065162893, 0.06235482258439598]
    users = np.arange(1000)
    clicked = sim.respond(users, (users * 37) % 500, 1_700_000_000 + users * 13)
    assert int(clicked.sum()) == 268
    assert np.flatnonzero(clicked)[:20].tolist() == [4, 5, 6, 9, 10, 14, 24, 27, 30, 38, 39,
                                                     44, 45, 54, 55, 63, 67, 70, 83, 85]


def test_satiation_rises_when_shown_and_decays_by_gamma_at_rest() -> None:
    sim = UserSimulator(n_users=10, n_items=200, n_categories=4, satiation=1.0, seed=3)
    users = SatiatedUsers(sim)
    shown = _items_of(sim, 2, 2)
    users.show([4], [shown], T0)
    np.testing.assert_array_equal(users.state[4], [0, 0, 1, 0])
    assert not users.state[[0, 1, 2, 3, 5, 6, 7, 8, 9]].any(), "other users are untouched"
    users.show([4], [shown], T0 + 1)
    gamma = sim.satiation_gamma[2]
    assert users.state[4, 2] == pytest.approx(gamma + 1.0)
    other = _items_of(sim, 0, 1)
    for rest in range(1, 4):
        users.show([4], [other], T0 + 1 + rest)
        assert users.state[4, 2] == pytest.approx((gamma + 1.0) * gamma ** rest)
    assert users.state[4, 0] == pytest.approx(sum(sim.satiation_gamma[0] ** j
                                                  for j in range(3)))
    with pytest.raises(ValueError, match="one request per user"):
        users.show([1, 1], [shown, shown], T0)


def test_satiation_step_counts_a_category_once_per_request() -> None:
    state = np.full((3, 4), 2.0)
    satiation_step(state, np.array([0.5, 0.5, 0.25, 0.0]), [2, 0], [[1, 1, 3], [0, 0, 0]])
    np.testing.assert_array_equal(state, [[2.0, 1.0, 0.5, 0.0],
                                          [2.0, 2.0, 2.0, 2.0],
                                          [1.0, 2.0, 0.5, 1.0]])


def test_clicks_lose_lambda_times_satiation_of_logit() -> None:
    sim = UserSimulator(n_users=50, n_items=100, n_categories=4, satiation=0.8, seed=4)
    users = SatiatedUsers(sim)
    u = np.repeat(np.arange(50), 100)
    i = np.tile(np.arange(100), 50)
    fresh = users.click_probability(u, i, T0)
    np.testing.assert_array_equal(fresh, sim.click_probability(u, i, T0))
    rng = np.random.default_rng(1)
    for step in range(5):
        users.show(np.arange(50), rng.integers(0, 100, (50, 3)), T0 + step)
    s = users.state[u, sim.categories[i]]
    assert s.max() > 1.0
    tired = users.click_probability(u, i, T0)
    logit = np.log(fresh / (1 - fresh)) - sim.satiation_lambda[sim.categories[i]] * s
    np.testing.assert_allclose(tired, 1 / (1 + np.exp(-logit)), rtol=1e-12)
    assert np.all(tired[s > 0] < fresh[s > 0]) and np.array_equal(tired[s == 0], fresh[s == 0])


def test_satiated_clicks_follow_the_satiated_probability() -> None:
    """The same users shown the same category again and again click less and less, at the
    rate the true probability says; and the same run gives the same clicks."""
    sim = UserSimulator(n_users=2000, n_items=200, n_categories=4, satiation=1.0, seed=8)
    item = _items_of(sim, 1, 1)
    users, again = SatiatedUsers(sim), SatiatedUsers(sim)
    everyone = np.arange(2000)
    rates, expected = [], []
    for step in range(6):
        p = users.click_probability(everyone, np.repeat(item, 2000), T0 + step)
        clicks = users.show(everyone, np.repeat(item, 2000)[:, None], T0 + step)
        np.testing.assert_array_equal(clicks, again.show(everyone, np.repeat(item, 2000)[:, None],
                                                         T0 + step))
        rates.append(clicks.mean())
        expected.append(p.mean())
    assert rates[-1] < 0.6 * rates[0]
    np.testing.assert_allclose(rates, expected, atol=0.03)


def test_simulated_stream_with_satiation_clicks_less_on_repeats() -> None:
    plain = UserSimulator(n_users=5, n_items=20, n_categories=2, seed=2)
    tired = UserSimulator(n_users=5, n_items=20, n_categories=2, satiation=2.0, seed=2)
    kwargs = dict(start_time=1000, items_per_request=4, seed=3)
    clicks = {name: sum(e.topic == ACTIONS for e in simulated_events(sim, 2000, **kwargs))
              for name, sim in (("plain", plain), ("tired", tired))}
    assert clicks["tired"] < 0.7 * clicks["plain"]
    events = list(simulated_events(tired, 300, **kwargs))
    assert events == list(simulated_events(tired, 300, **kwargs))
    assert sum(e.topic == FEATURES for e in events) == 1200


def test_coins_are_common_to_runs_whatever_their_clocks() -> None:
    """A user's n-th request shown the same item meets the same coin in two runs whose clocks
    differ (the coin is keyed by the user's request count), so two policies served the same
    users differ by what they show; the probability still reads the time (drift)."""
    sim = UserSimulator(n_users=2000, n_items=50, n_categories=4, satiation=1.0, seed=9,
                        drift_period_s=1000.0)
    early, late = SatiatedUsers(sim), SatiatedUsers(sim)
    rng = np.random.default_rng(2)
    users = rng.permutation(2000)
    items = rng.integers(0, 50, (2000, 1))
    for step in range(4):
        before = late.state.copy()
        a = early.show(users, items, T0 + 10 * step)[:, 0]
        b = late.show(users, items, T0 + 10 * step + 7)[:, 0]  # the same requests, 7 s later
        s = before[users, sim.categories[items[:, 0]]]
        p_a = sim.click_probability(users, items[:, 0], T0 + 10 * step, s)
        p_b = sim.click_probability(users, items[:, 0], T0 + 10 * step + 7, s)
        assert not np.allclose(p_a, p_b), "drift moved the probabilities"
        # Common coins disagree only where the probability moved past the coin (at most
        # |p_a - p_b| in expectation); time-keyed ones on about p_a + p_b - 2 p_a p_b.
        independent = sim.respond(users, items[:, 0], T0 + 10 * step + 7, s)
        assert np.mean(a != b) <= np.mean(np.abs(p_a - p_b)) + 0.02
        assert np.mean(a != independent) > 3 * np.mean(a != b)
        np.testing.assert_array_equal(b, sim.respond(users, items[:, 0], T0 + 10 * step + 7,
                                                s, draw=np.full(2000, step)))
    np.testing.assert_array_equal(early.steps, np.full(2000, 4))
    # A new request of the same user meets a new coin.
    again = SatiatedUsers(sim)
    first = again.show(users, np.zeros((2000, 1), dtype=np.int64), T0)
    second = again.show(users, np.zeros((2000, 1), dtype=np.int64), T0)
    assert not np.array_equal(first, second)


def test_simulated_stream_clicks_by_the_simulators_clock_and_names_categories() -> None:
    """A stream written at today's event times by users of another clock clicks as the stream
    written at that clock's times, event times aside; ``with_category`` adds each item's
    category among the slots."""
    sim = UserSimulator(n_users=30, n_items=40, n_categories=4, satiation=1.0,
                        drift_period_s=600.0, seed=5)
    kwargs = dict(requests_per_s=10.0, items_per_request=3, seed=4)
    now = 1_780_000_000
    shifted = list(simulated_events(sim, 500, start_time=now, sim_time_offset_s=T0 - now,
                                    with_category=True, **kwargs))
    native = list(simulated_events(sim, 500, start_time=T0, **kwargs))

    def untimed(events: list, origin: int) -> list:
        return [(e.topic, e.key, e.time - origin,
                 {k: v for k, v in e.message.items() if k not in ("time", "slots")})
                for e in events]

    assert untimed(shifted, now) == untimed(native, T0)
    # Drift makes the clock matter: without the offset the same users click otherwise.
    unshifted = list(simulated_events(sim, 500, start_time=now, **kwargs))
    clicked = [(e.key, e.message["item_id"]) for e in native if e.topic == ACTIONS]
    assert [(e.key, e.message["item_id"]) for e in unshifted if e.topic == ACTIONS] != clicked
    features = [e.message for e in shifted if e.topic == FEATURES]
    assert all(f["slots"]["category"] == int(sim.categories[f["item_id"]]) for f in features)
    assert all(set(e.message["slots"]) == {"user_id", "item_id"} for e in native
               if e.topic == FEATURES)
