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
    out = learnability(sim, config, requests=2000, epochs=2, k=3, seed=0)
    assert out["examples"] == 6000
    assert out["lift_personal"] >= out["lift_popular"] > 1.0
    assert out["lift_personal"] >= out["lift"] > 1.1
    assert 0.5 < out["auc"] <= out["auc_truth"] + 0.02
