"""The search for online settings of ``benchmarks.online_vs_batch``, on the valid half of the
stream only: each variant of the config is batch-trained on train, taken online
(``sync_interval.go_online``) and replayed over valid alone, scored by the batch, k10, k100
and k1000 replicas as in the benchmark (the first half of the benchmark's windows is exactly
this replay). The test half is never read, so a setting chosen here is chosen on valid.

A variant is a list of ``key.path=value`` overrides of the shipped config (values parsed as
YAML, as ``load_config`` takes them); ``slots.<name>.<key>`` reaches the slot of that name,
e.g. ``slots.user_id.online.learning_rate=0.02``. ``--history N`` adds the user-history slots
(last N items, ``--history-epochs``, 1 by default) to both models (``sync_interval.with_history``).

    python -m monolith_ray.experiments.online_search --seeds 0,1,2 "" \\
        "slots.user_id.online={kind: adagrad, learning_rate: 0.02, initial_accumulator: 0.001}" \\
        "online.batch_size=1;slots.user_id.online.learning_rate=0.004"

prints one JSON line per variant: the mean window AUC of each replica over the seeds, per
seed, and k100's gain over batch per seed.
"""

from __future__ import annotations

import argparse
import os
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

from monolith_ray.config import Config, ConfigError
from monolith_ray.config.loader import load_yaml
from monolith_ray.config.root import DEFAULT_CONFIG
from monolith_ray.experiments.history import history_config
from monolith_ray.experiments.sync_interval import (
    SYNC_EVERY,
    SyncedReplica,
    batch_model,
    go_online,
    replay,
    with_history,
)
from monolith_ray.experiments.training import compilation_cache, load_splits

REPLICAS = {name: SYNC_EVERY[name] for name in ("batch", "online_k10", "online_k100",
                                                 "online_k1000")}
WINDOWS = 50  # the valid half of the benchmark's 100 windows


def config_with(overrides: Sequence[str], source: str | os.PathLike[str] = DEFAULT_CONFIG
                ) -> Config:
    """The config at ``source`` with ``overrides`` applied; ``slots.<name>.<key>=value`` sets
    a key of the slot named ``name`` (ConfigError if there is none)."""
    plain = [o for o in overrides if not o.startswith("slots.")]
    data = load_yaml(source, plain)
    for item in overrides:
        if not item.startswith("slots."):
            continue
        key, sep, text = item.partition("=")
        _, name, *path = key.split(".")
        if not sep or not path:
            raise ConfigError(item, "a slot override must look like slots.<name>.key=value")
        slot = next((s for s in data["slots"] if s["name"] == name), None)
        if slot is None:
            raise ConfigError(key, f"no slot named {name!r}")
        node = slot
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = yaml.safe_load(text) if text else ""
    return Config.from_dict(data)


def score_on_valid(config: Config, splits: dict[str, pa.Table],
                   seeds: Sequence[int]) -> dict[str, Any]:
    """Per seed: batch-train on ``splits["train"]``, go online with ``config``'s online
    settings, replay ``splits["valid"]`` (no other split is read) -> ``{"auc": {replica: mean
    window AUC over the seeds}, "by_seed": {replica: [...]}, "gain_k100_by_seed": [...]}``."""
    by_seed: dict[str, list[float]] = {name: [] for name in REPLICAS}
    for seed in seeds:
        trainer, _ = batch_model(seed, config, splits)
        online = go_online(trainer, config)
        replicas = {name: SyncedReplica(online, config) for name in REPLICAS}
        figures = replay(online, splits["valid"], replicas, REPLICAS, windows=WINDOWS)
        for name in REPLICAS:
            by_seed[name].append(round(figures[name]["auc"], 4))
    return {"auc": {n: round(float(np.mean(v)), 4) for n, v in by_seed.items()},
            "by_seed": by_seed,
            "gain_k100_by_seed": [round(a - b, 4) for a, b in
                                  zip(by_seed["online_k100"], by_seed["batch"])]}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+",
                        help="';'-separated overrides per variant; '' for the shipped config")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--history", type=int, default=0,
                        help="add the user-history slots, last N items (0: none)")
    parser.add_argument("--history-epochs", type=int, default=1,
                        help="batch epochs with history slots (movielens_quality's choice: 1)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    splits = load_splits()
    with compilation_cache():
        for variant in args.variants:
            config = config_with([o for o in variant.split(";") if o])
            data = splits
            if args.history:  # replayed in event time: valid's values never see test's
                config, data = with_history(config, splits, history_config(args.history),
                                            args.history_epochs)
            data = {name: data[name] for name in ("train", "valid")}  # never test
            print(json.dumps({"variant": variant, "history": args.history,
                              "epochs": config.train.epochs, "seeds": seeds,
                              **score_on_valid(config, data, seeds)}), flush=True)


if __name__ == "__main__":
    main()
