"""Online vs batch training on MovieLens-100K, after the Monolith paper's Table 2.

Data: ``data/ml-100k/parquet/{train,valid,test}.parquet`` (``make data``), split by time
80/10/10; the slots and tuned settings are ``monolith_ray/defaults/movielens.yaml``.

Protocol, per seed of ``movielens_quality.SEEDS``, the experiment of
``monolith_ray.experiments.sync_interval`` at full size:

1. Batch: train on train (the first 80% by time) with the config's embedding optimizer,
   initializer scale, batch size and epochs (``sync_interval.batch_model``: 2 in-process
   ``ShardServer`` shards, ``TrainLoop``, shuffled epochs, everything seeded).
2. Going online (``sync_interval.go_online``): the same shards switch each slot to its
   ``online`` optimizer, and the online trainer steps micro-batches of ``online.batch_size``
   examples with the dense learning rate scaled by ``online.dense_rate`` (the shipped
   config: user_id FTRL 0.04, the other slots Adam 3e-5, micro-batches of 10, dense rate 0.25).
   These settings were chosen on the valid half of the stream only (README, *Figures* of
   online training); ``python -m monolith_ray.experiments.online_search`` scores variants
   of them that way, never reading test.
3. Stream: valid then test (the last 20%, time order), one micro-batch at a time: first
   scored by every serving replica, then trained on once, in order (prequential: no example
   is scored by parameters that trained on it; ``sync_interval.replay``). AUCs are taken
   per window of 1% of the stream (``WINDOWS``).
4. Serving replicas hold a copy of the trainer's parameters taken at sync points only:
   serving's own code in process (``sync_interval.SyncedReplica``: a ``ParameterSync``
   collecting ``export_since`` deltas, rows changed and ids evicted since its last sync, and
   the dense parameters, applied to a ``ServingModel``; float32 rows). All replicas sync
   before the stream, so each starts as the batch model; ``batch`` never syncs again,
   ``online_k10``/``k100``/``k1000`` sync embedding rows every 10, 100, 1000 stream examples
   and ``online_short``/``mid``/``long`` every 1%, 5%, 10% of the stream, all with the dense
   parameters daily (event time), Monolith's separate schedules; the ``*_dense`` replicas
   copy the dense parameters at every sync too, for comparison.

Figures: per model the mean of the per-window AUCs (``auc_*``), also over the valid and the
test half of the stream apart (``auc_valid_half``, ``auc_test_half``), and the AUC over all
stream predictions at once (``auc_overall_*``), example-weighted, averaged over the seeds;
per seed too. At the end of each seed a final sync must reproduce the trainer's rows exactly,
a check of the sync path itself.

What the stream lets a replica know, from the data alone (``sync_interval.user_coverage``):
``stream_new_user_share``, the share of stream examples from users absent from train, and
``served_without_own_row``, per replica the share scored for such a user before any of the
user's own stream examples had reached the replica's rows.

``HISTORY=1`` adds the history arm: the same protocol with the user-history slots of
``benchmarks.movielens_quality`` (last 100 positive and passed-over items and their genres, 1
epoch, as chosen there on valid) in the batch and the online model alike, so both see the
same features, fresh up to each example whatever the sync; ``auc_<replica>_history`` for the
batch, k10, k100 and k1000 replicas, and per seed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np
import pyarrow as pa

from benchmarks.movielens_quality import SEEDS
from monolith_ray.config import Config, load_config
from monolith_ray.data.batches import make_batch
from monolith_ray.experiments import (
    SYNC_EVERY,
    WINDOWS,
    batch_model,
    compilation_cache,
    go_online,
    load_splits,
    replay,
    SyncedReplica,
    stream_of,
)
from monolith_ray.experiments.sync_interval import user_coverage, with_history
from monolith_ray.experiments.history import describe_history, history_config

# The history arm (HISTORY=1): the four replicas of the target, and the history slots of
# benchmarks.movielens_quality as it chose them on valid (last 100 items, 1 epoch).
HISTORY_EVERY = {name: SYNC_EVERY[name]
                 for name in ("batch", "online_k10", "online_k100", "online_k1000")}
HISTORY_LENGTH, HISTORY_EPOCHS = 100, 1


def run_seed(seed: int, config: Config, splits: dict[str, pa.Table],
             sync_every: dict[str, int | None] = SYNC_EVERY) -> dict[str, Any]:
    """Batch training, then the stream of valid + test scored by a replica per name of
    ``sync_every`` -> this seed's figures."""
    start = time.perf_counter()
    trainer, valid_auc = batch_model(seed, config, splits)
    figures: dict[str, Any] = {"seed": seed, "batch_valid_auc": valid_auc,
                               "batch_seconds": time.perf_counter() - start}
    stream = stream_of(splits)
    online = go_online(trainer, config)
    replicas = {name: SyncedReplica(online, config) for name in sync_every}
    figures.update(replay(online, stream, replicas, sync_every))
    figures["seconds"] = time.perf_counter() - start

    check = replicas["online_k10"]
    check.sync()
    fids = make_batch(pa.concat_tables([splits["train"], stream]), trainer.slots).fids
    trained = trainer.client.lookup(fids)
    if not all(np.array_equal(check.model.store.lookup(name, fids[name]), trained[name])
               for name in fids):
        raise RuntimeError("syncing deltas did not reproduce the trainer's rows")
    return figures


def report(seed: dict[str, Any], sync_every: dict[str, int | None] = SYNC_EVERY) -> None:
    """Print one seed's figures, with each model's mean window AUC per tenth of the stream."""
    print(f"seed {seed['seed']}: batch trained in {seed['batch_seconds']:.0f} s "
          f"(valid auc {seed['batch_valid_auc']:.4f}), whole run {seed['seconds']:.0f} s",
          flush=True)
    for name in sync_every:
        f = seed[name]
        print(f"  {name:13s} mean window auc {f['auc']:.4f}  overall {f['auc_overall']:.4f}  "
              f"logloss {f['logloss_overall']:.4f}  {f['syncs']} syncs of "
              f"{f['rows_per_sync']:.0f} rows; by decile "
              f"{' '.join(f'{a:.3f}' for a in f['auc_by_decile'])}", flush=True)


def history_arm(config: Config, splits: dict[str, pa.Table]) -> dict[str, Any]:
    """The same protocol with the user-history slots in the batch and the online model alike
    (``HISTORY_LENGTH`` items, ``HISTORY_EPOCHS``: ``benchmarks.movielens_quality``'s choice
    on valid) and the ``HISTORY_EVERY`` replicas -> per name its mean window AUC over the
    seeds (``auc_<name>_history``) and per seed."""
    config, splits = with_history(config, splits, history_config(HISTORY_LENGTH), HISTORY_EPOCHS)
    seeds = []
    for seed in SEEDS:
        seeds.append(run_seed(seed, config, splits, HISTORY_EVERY))
        report(seeds[-1], HISTORY_EVERY)
    figures: dict[str, Any] = {
        f"auc_{name}_history": round(float(np.mean([s[name]["auc"] for s in seeds])), 4)
        for name in HISTORY_EVERY}
    figures["auc_history_by_seed"] = {name: [round(s[name]["auc"], 4) for s in seeds]
                                      for name in HISTORY_EVERY}
    figures["history_slots"] = describe_history(history_config(HISTORY_LENGTH))
    return figures


def experiment() -> dict[str, Any]:
    start = time.perf_counter()
    config = load_config()
    splits = load_splits()
    seeds = []
    for seed in SEEDS:
        seeds.append(run_seed(seed, config, splits))
        report(seeds[-1])

    def mean(name: str, key: str) -> float:
        return round(float(np.mean([s[name][key] for s in seeds])), 4)

    def short(name: str) -> str:
        return name.removeprefix("online_") if name != "batch" else name

    figures: dict[str, Any] = {}
    for name in SYNC_EVERY:
        figures[f"auc_{name}"] = mean(name, "auc")
    for name in SYNC_EVERY:
        figures[f"auc_overall_{name}"] = mean(name, "auc_overall")
    half = WINDOWS // 2  # valid and test are 10% of MovieLens each: the stream's halves
    for part, span in (("valid", slice(None, half)), ("test", slice(half, None))):
        figures[f"auc_{part}_half"] = {
            short(n): round(float(np.mean([np.nanmean(s[n]["auc_by_window"][span])
                                           for s in seeds])), 4) for n in SYNC_EVERY}
    for name in SYNC_EVERY:
        figures[f"auc_{short(name)}_by_seed"] = [round(s[name]["auc"], 4) for s in seeds]
    window, hours = seeds[0]["window_examples"], seeds[0]["stream_hours"]
    figures.update({
        "windows": WINDOWS,
        "window_examples": round(window, 1),
        "sync_interval_examples": {short(n): e for n, e in SYNC_EVERY.items()
                                   if e is not None},
        "rows_per_sync": {short(n): round(np.mean([s[n]["rows_per_sync"] for s in seeds]))
                          for n in SYNC_EVERY if SYNC_EVERY[n] is not None},
        "sync_interval_hours_mean": {short(n): round(e * hours / seeds[0]["stream_examples"], 2)
                                     for n, e in SYNC_EVERY.items() if e is not None},
        "windows_scored_min": min(s[n]["windows_scored"] for s in seeds for n in SYNC_EVERY),
        "stream_examples": seeds[0]["stream_examples"],
        "seeds": list(SEEDS),
        "epochs": config.train.epochs,
        "batch_size": config.train.batch_size,
        "online_batch_size": config.online.batch_size or config.train.batch_size,
        "online_dense_rate": config.online.dense_rate,
        "online_optimizers": {s.name: f"{s.online.kind} {s.online.learning_rate:g}"
                              for s in config.slots if s.online is not None},
    })
    coverage = user_coverage(splits["train"], stream_of(splits), SYNC_EVERY)
    figures["stream_new_user_share"] = round(coverage["new_share"], 4)
    figures["served_without_own_row"] = {short(n): round(v, 4)
                                         for n, v in coverage["without_own_row"].items()}
    if os.environ.get("HISTORY") == "1":
        figures.update(history_arm(config, splits))
    figures["seconds"] = round(time.perf_counter() - start, 1)
    return figures


def main() -> None:
    with compilation_cache():
        figures = experiment()
    print(json.dumps(figures))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
