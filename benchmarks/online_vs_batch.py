"""Online vs batch training on MovieLens-100K, after the Monolith paper's Table 2.

Data: ``data/ml-100k/parquet/{train,valid,test}.parquet`` (``make data``), split by time
80/10/10; the slots and tuned settings are ``monolith_ray/defaults/movielens.yaml``.

Protocol, per seed of ``movielens_quality.SEEDS``, the experiment of
``monolith_ray.experiments.sync_interval`` at full size:

1. Batch: train on train (the first 80% by time) with the config's embedding optimizer,
   initializer scale, batch size and epochs (``sync_interval.batch_model``: 2 in-process
   ``ShardServer`` shards, ``TrainLoop``, shuffled epochs, everything seeded).
2. Stream: valid then test (the last 20%, time order) cut into ``WINDOWS`` equal windows. Each
   window is first predicted by every serving replica, then trained on once, in order, by the
   online trainer: the batch model's own loop and shards, optimizer states included
   (prequential: no window is scored by parameters that trained on it; ``sync_interval.replay``).
3. Serving replicas hold a copy of the trainer's parameters taken at sync points only:
   serving's own code in process (``sync_interval.SyncedReplica``: a ``ParameterSync``
   collecting ``export_since`` deltas, rows changed and ids evicted since its last sync, and
   the dense parameters, applied to a ``ServingModel``; float32 rows). All replicas sync
   before the first window, so each starts as the batch model; ``batch`` never syncs again,
   ``online_short``/``mid``/``long`` sync embedding rows every ``SYNC_EVERY`` windows and the
   dense parameters daily (event time), Monolith's separate schedules; the ``*_dense``
   replicas copy the dense parameters at every sync too, for comparison.

Figures: per model the mean of the per-window AUCs (``auc_*``) and the AUC over all stream
predictions at once (``auc_overall_*``), example-weighted, averaged over the seeds; per seed
too. At the end of each seed a final sync must reproduce the trainer's rows exactly, a check
of the sync path itself.
"""

from __future__ import annotations

import json
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
    load_splits,
    replay,
    SyncedReplica,
    stream_of,
)


def run_seed(seed: int, config: Config, splits: dict[str, pa.Table]) -> dict[str, Any]:
    """Batch training, then the stream of valid + test -> this seed's figures."""
    start = time.perf_counter()
    trainer, valid_auc = batch_model(seed, config, splits)
    figures: dict[str, Any] = {"seed": seed, "batch_valid_auc": valid_auc,
                               "batch_seconds": time.perf_counter() - start}
    stream = stream_of(splits)
    replicas = {name: SyncedReplica(trainer, config) for name in SYNC_EVERY}
    figures.update(replay(trainer, stream, replicas))
    figures["seconds"] = time.perf_counter() - start

    check = replicas["online_short"]
    check.sync()
    fids = make_batch(pa.concat_tables([splits["train"], stream]), trainer.slots).fids
    trained = trainer.client.lookup(fids)
    if not all(np.array_equal(check.model.store.lookup(name, fids[name]), trained[name])
               for name in fids):
        raise RuntimeError("syncing deltas did not reproduce the trainer's rows")
    return figures


def report(seed: dict[str, Any]) -> None:
    """Print one seed's figures, with each model's mean window AUC per tenth of the stream."""
    print(f"seed {seed['seed']}: batch trained in {seed['batch_seconds']:.0f} s "
          f"(valid auc {seed['batch_valid_auc']:.4f}), whole run {seed['seconds']:.0f} s",
          flush=True)
    for name in SYNC_EVERY:
        f = seed[name]
        print(f"  {name:13s} mean window auc {f['auc']:.4f}  overall {f['auc_overall']:.4f}  "
              f"logloss {f['logloss_overall']:.4f}  {f['syncs']} syncs of "
              f"{f['rows_per_sync']:.0f} rows; by decile "
              f"{' '.join(f'{a:.3f}' for a in f['auc_by_decile'])}", flush=True)


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
    for name in SYNC_EVERY:
        figures[f"auc_{short(name)}_by_seed"] = [round(s[name]["auc"], 4) for s in seeds]
    window, hours = seeds[0]["window_examples"], seeds[0]["stream_hours"]
    figures.update({
        "windows": WINDOWS,
        "window_examples": round(window, 1),
        "sync_interval_examples": {short(n): round(e * window) for n, e in SYNC_EVERY.items()
                                   if e is not None},
        "rows_per_sync": {short(n): round(np.mean([s[n]["rows_per_sync"] for s in seeds]))
                          for n in SYNC_EVERY if SYNC_EVERY[n] is not None},
        "sync_interval_hours_mean": {short(n): round(e * hours / WINDOWS, 1)
                                     for n, e in SYNC_EVERY.items() if e is not None},
        "windows_scored_min": min(s[n]["windows_scored"] for s in seeds for n in SYNC_EVERY),
        "stream_examples": seeds[0]["stream_examples"],
        "seeds": list(SEEDS),
        "epochs": config.train.epochs,
        "batch_size": config.train.batch_size,
        "seconds": round(time.perf_counter() - start, 1),
    })
    return figures


def main() -> None:
    with compilation_cache():
        figures = experiment()
    print(json.dumps(figures))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
