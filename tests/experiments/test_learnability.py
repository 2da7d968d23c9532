"""The learnability yardstick: random slates as the simulator clicks them, and a model that
learns from them picking better than a random slate."""

from __future__ import annotations

import numpy as np

from monolith_ray.demo import DEMO_CONFIG
from monolith_ray.experiments.learnability import RATE, learnability, slates
from monolith_ray.experiments.online_search import config_with
from monolith_ray.stream.producers import UserSimulator


def test_slates_are_distinct_random_items_clicked_by_the_users_tastes() -> None:
    sim = UserSimulator(n_users=30, n_items=40, drift_period_s=1e9, seed=3)
    table = slates(sim, 3000, 4, 1_000, np.random.default_rng(0))
    assert table.num_rows == 12_000
    items = table.column("item_id").to_numpy().reshape(-1, 4)
    assert all(len(set(row)) == 4 for row in items.tolist())
    times = table.column("time").to_numpy().reshape(-1, 4)
    assert times[0, 0] == 1_000 and times[-1, 0] == 1_000 + int(2999 / RATE)
    np.testing.assert_array_equal(table.column("category").to_numpy(),
                                  sim.categories[items.ravel()])
    users = table.column("user_id").to_numpy()
    truth = sim.click_probability(users, items.ravel(), times.ravel())
    labels = table.column("label").to_numpy()
    # clicks follow the truth: the likelier half clicks more than the other half
    likelier = truth > np.median(truth)
    assert labels[likelier].mean() > labels[~likelier].mean() + 0.05
    assert abs(labels.mean() - truth.mean()) < 0.02


def test_a_model_trained_on_random_slates_picks_better_than_a_random_slate() -> None:
    sim = UserSimulator(n_users=20, n_items=30, drift_period_s=1e9, seed=5)
    config = config_with(["experiments=[]"], DEMO_CONFIG)
    out = learnability(sim, config, requests=2000, epochs=2, k=3, seed=0, later_s=(100,))
    assert out["examples"] == 6000
    assert out["lift_personal"] >= out["lift_popular"] > 1.0
    assert out["lift_personal"] >= out["lift"] > 1.1
    assert 0.5 < out["auc"] <= out["auc_truth"] + 0.02
    # Without drift what was learnt stays true. With drift (a quarter turn while the 100 s
    # of slates are shown, their mean taste at 1/8 turn) it turns against the users half a
    # turn from that mean, 150 s after the end: worse than a random slate.
    assert abs(out["lift_later"]["100"] - out["lift"]) < 0.01
    turning = UserSimulator(n_users=20, n_items=30, drift_period_s=400.0, seed=5)
    drifted = learnability(turning, config, requests=2000, epochs=2, k=3, seed=0,
                           later_s=(150,))
    assert drifted["lift"] > 1.1 and drifted["lift_later"]["150"] < 1.0
