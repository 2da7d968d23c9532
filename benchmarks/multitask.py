"""Two tasks on MovieLens-100K: ``click`` (rating >= 4, the shipped label) and ``love``
(rating 5), trained as one multi-task model and each alone.

    python -m benchmarks.multitask

The ``love`` labels are the ratings of ``data/ml-100k/ml-100k.inter`` joined to the Parquet
splits by (user, item) (a user rates an item once). Each model trains with the shipped
config (its slots, model, batch size and epochs) in process (``TrainLoop`` over two
``ShardServer`` shards), seeds 1..``SEEDS``, and is scored on the test split; figures are
means over the seeds: ``test_auc_<task>_multi`` of the two-task model, ``..._alone`` of the
model of that task alone. ``seconds_per_epoch_*``: wall time of a model's last training epoch
(compiled; the machine's other load included).

Prints one line per run, then one JSON line of the figures.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from monolith_ray.config import TrainConfig, load_config
from monolith_ray.config.tasks import TaskConfig
from monolith_ray.data.batches import iter_batches
from monolith_ray.data.movielens import read_atomic
from monolith_ray.experiments.training import (
    ADMISSION,
    N_SHARDS,
    load_splits,
    setting_of,
    slots_for,
)
from monolith_ray.ps import ShardClient, ShardServer
from monolith_ray.schemas import LABEL
from monolith_ray.train import TrainLoop

SEEDS = int(os.environ.get("SEEDS", 2))
INTER = Path("data/ml-100k/ml-100k.inter")
CLICK, LOVE = TaskConfig("click"), TaskConfig("love")
MODELS = {"multi": (CLICK, LOVE), "click_alone": (CLICK,), "love_alone": (LOVE,)}


def with_love(table: pa.Table, ratings: dict[tuple[int, int], float]) -> pa.Table:
    """``table`` with ``label_love`` (rating 5) of each (user, item)."""
    users, items = table.column("user_id").to_pylist(), table.column("item_id").to_pylist()
    love = np.array([ratings[u, i] == 5.0 for u, i in zip(users, items)], np.float32)
    return table.append_column("label_love", pa.array(love))


def run(splits: dict[str, pa.Table], tasks: tuple[TaskConfig, ...], seed: int
        ) -> tuple[dict[str, float], float]:
    """Train a fresh model of ``tasks`` (the first task's labels in ``label``) -> (its test
    metrics, seconds of its last epoch)."""
    cfg = load_config()
    names = tuple(t.name for t in tasks)
    if names[0] == "love":  # love alone: its labels in the label column
        splits = {k: t.set_column(t.schema.get_field_index(LABEL), LABEL,
                                  t.column("label_love")) for k, t in splits.items()}
    setting = setting_of(cfg)
    slots = slots_for(cfg.slots, setting, seed)
    size = setting["batch_size"]
    shards = [ShardServer(slots, ADMISSION) for _ in range(N_SHARDS)]
    loop = TrainLoop(slots, ShardClient(shards, [s.name for s in slots]), cfg.model,
                     TrainConfig(batch_size=size, n_shards=N_SHARDS, seed=seed), tasks=tasks)
    rng = np.random.default_rng(seed)
    for _ in range(cfg.train.epochs):
        start = time.perf_counter()
        order = rng.permutation(splits["train"].num_rows)
        for _ in loop.train(iter_batches(splits["train"].take(order), slots, size,
                                         tasks=names)):
            pass
        seconds = time.perf_counter() - start
    scores = loop.evaluate(iter_batches(splits["test"], slots, size, tasks=names))
    if len(names) == 1:
        scores[f"auc_{names[0]}"] = scores["auc"]
    return scores, seconds


def main() -> None:
    inter = read_atomic(INTER)
    ratings = {(int(u), int(i)): float(r) for u, i, r in zip(
        inter["user_id"].to_pylist(), inter["item_id"].to_pylist(),
        inter["rating"].to_pylist())}
    splits = {k: with_love(t, ratings) for k, t in load_splits().items()}
    figures: dict[str, list[float]] = {}
    for seed in range(1, SEEDS + 1):
        for name, tasks in MODELS.items():
            scores, seconds = run(splits, tasks, seed)
            kind = "multi" if len(tasks) > 1 else "alone"
            for task in (t.name for t in tasks):
                figures.setdefault(f"test_auc_{task}_{kind}", []).append(scores[f"auc_{task}"])
            figures.setdefault(f"seconds_per_epoch_{name}", []).append(seconds)
            print(f"seed {seed} {name}: " + ", ".join(
                f"auc_{t.name} {scores[f'auc_{t.name}']:.4f}" for t in tasks)
                + f", {seconds:.1f} s/epoch", flush=True)
    out = {k: round(float(np.mean(v)), 4) for k, v in figures.items()}
    out.update(seeds=SEEDS, positive_rate_love=round(float(np.mean(
        splits["test"].column("label_love").to_numpy())), 4))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
