"""How much of ``benchmarks.policies``' simulated users a model can learn from random traffic
alone, as a yardstick for what the closed loop's model learns (its ``lift_by_fifth``).

A fresh model with the demo config's slots, model and setting (``training.setting_of``: the
first slot's optimizer for every slot, the dense parameters at Adam 1e-3) is trained in
process for ``epochs`` passes over ``requests`` requests of random users, each shown ``k``
distinct random items, 20 requests a second of the simulator's time (the benchmark's pace),
clicked by the users' true tastes at that time. Satiation is left out: this measures what the
data teaches about tastes, not what showing does to users. Then:

- ``lift``: per user at the end time, the true click probability of the model's top ``k`` of
  the whole catalogue over a random slate's, as ``benchmarks.policies.lift_by_fifth`` reads
  a phase's log; ``lift_popular`` the same for the items with the highest mean probability
  over users, ``lift_personal`` for each user's own true top ``k``;
- ``auc`` on the next ``requests // 10`` random requests, and ``auc_truth``, the AUC of the
  true probabilities themselves on them (the most any model could score);
- ``lift_later``: the same model's ``lift``, kept frozen, ``later_s`` (s of the simulator's
  time) after the end: what the users' drift leaves of what it learnt (``benchmarks.
  policies`` warm starts its loops from such a past: 4,000 requests, 10 passes).

    python -m monolith_ray.experiments.learnability --requests 4000 --epochs 10 --seed 1
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from monolith_ray.config import Config
from monolith_ray.data.batches import make_batch
from monolith_ray.demo import DEMO_CONFIG
from monolith_ray.experiments.online_search import config_with
from monolith_ray.experiments.training import compilation_cache, setting_of, train
from monolith_ray.model import StreamingAUC
from monolith_ray.stream.producers import UserSimulator

RATE = 20.0  # requests a second of the simulator's time, as benchmarks.policies
ORIGIN = 1_700_000_000


def slates(sim: UserSimulator, requests: int, k: int, start: int,
           rng: np.random.Generator) -> pa.Table:
    """``requests`` random users each shown ``k`` distinct random items from ``start`` at
    :data:`RATE` a second, clicked by their true tastes -> examples (requests * k rows):
    ``user_id``, ``item_id``, ``category``, ``label``, ``weight``, ``time``."""
    users = np.repeat(rng.integers(0, sim.n_users, requests), k)
    items = np.concatenate([rng.choice(sim.n_items, k, replace=False) for _ in range(requests)])
    times = np.repeat(start + (np.arange(requests) / RATE).astype(np.int64), k)
    clicked = rng.random(users.size) < sim.click_probability(users, items, times)
    return pa.table({"user_id": users.astype(np.int64), "item_id": items.astype(np.int64),
                     "category": sim.categories[items].astype(np.int64),
                     "label": clicked.astype(np.float32),
                     "weight": np.ones(users.size, np.float32), "time": times})


def _lift(truth: np.ndarray, picks: np.ndarray) -> float:
    """Mean true probability of ``picks`` (U, k) per user over the mean of all (U, I)."""
    return float(np.take_along_axis(truth, picks, 1).mean() / truth.mean())


def learnability(sim: UserSimulator, config: Config, requests: int, epochs: int = 1,
                 k: int = 5, seed: int = 0,
                 later_s: Sequence[int] = (40, 80, 120, 160, 200)) -> dict[str, Any]:
    """Train on ``requests`` random requests for ``epochs``, measure at their end and
    ``later_s`` after -> ``{"lift", "lift_popular", "lift_personal", "auc", "auc_truth",
    "lift_later": {str(s): lift}, "examples"}`` (see the module)."""
    rng = np.random.default_rng(seed)
    data = slates(sim, requests, k, ORIGIN, rng)
    end = ORIGIN + int(requests / RATE)
    held = slates(sim, max(requests // 10, 1), k, end, rng)
    users = np.repeat(np.arange(sim.n_users), sim.n_items)
    items = np.tile(np.arange(sim.n_items), sim.n_users)
    every = pa.table({"user_id": users, "item_id": items, "category": sim.categories[items],
                      "label": np.zeros(users.size, np.float32),
                      "weight": np.ones(users.size, np.float32),
                      "time": np.full(users.size, end, np.int64)})
    with compilation_cache():
        loop, scores = train({"train": data, "held": held}, config.slots, config.model,
                             setting_of(config), seed, epochs, "held", every_epoch=False)
        batch = make_batch(every, loop.slots)
        probs = loop.predict(batch, loop.client.lookup(batch.fids)).reshape(sim.n_users, -1)
    truth = sim.click_probability(users, items, end).reshape(sim.n_users, -1)
    popular = np.broadcast_to(np.argsort(-truth.mean(axis=0))[:k], (sim.n_users, k))
    truth_auc = StreamingAUC()
    truth_auc.update(sim.click_probability(held.column("user_id").to_numpy(),
                                           held.column("item_id").to_numpy(),
                                           held.column("time").to_numpy()).astype(np.float32),
                     held.column("label").to_numpy(), held.column("weight").to_numpy())
    picks = np.argsort(-probs, axis=1)[:, :k]
    later = {str(dt): round(_lift(sim.click_probability(users, items, end + dt)
                                  .reshape(sim.n_users, -1), picks), 3) for dt in later_s}
    return {"lift": round(_lift(truth, picks), 3), "lift_later": later,
            "lift_popular": round(_lift(truth, popular), 3),
            "lift_personal": round(_lift(truth, np.argsort(-truth, axis=1)[:, :k]), 3),
            "auc": round(scores[-1]["auc"], 4), "auc_truth": round(truth_auc.result(), 4),
            "examples": data.num_rows}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1, help="the simulator's seed")
    # the defaults are benchmarks.policies' users
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--categories", type=int, default=8)
    parser.add_argument("--drift-s", type=float, default=900.0)
    parser.add_argument("overrides", nargs="*",
                        help="overrides of the demo config, key=value (slots.<name>.key too)")
    args = parser.parse_args(argv)
    sim = UserSimulator(n_users=args.users, n_items=args.items, drift_period_s=args.drift_s,
                        seed=args.seed, n_categories=args.categories)
    config = config_with(["experiments=[]", *args.overrides], DEMO_CONFIG)
    print(json.dumps({"requests": args.requests, "epochs": args.epochs, "seed": args.seed,
                      "overrides": args.overrides,
                      **learnability(sim, config, args.requests, args.epochs)}))


if __name__ == "__main__":
    main()
