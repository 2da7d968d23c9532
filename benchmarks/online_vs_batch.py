"""Online vs batch training on MovieLens-100K, after the Monolith paper's Table 2.

Data: ``data/ml-100k/parquet/{train,valid,test}.parquet`` (``make data``), split by time
80/10/10; the slots and tuned settings are ``monolith_ray/defaults/movielens.yaml``.

Protocol, per seed of ``movielens_quality.SEEDS``:

1. Batch: train on train (the first 80% by time) with the config's embedding optimizer,
   initializer scale, batch size and epochs, through ``movielens_quality.train`` (2 in-process
   ``ShardServer`` shards, ``TrainLoop``, shuffled epochs, everything seeded).
2. Stream: valid then test (the last 20%, time order) cut into ``WINDOWS`` equal windows. Each
   window is first predicted by every serving replica, then trained on once, in order, by the
   online trainer: the batch model's own loop and shards, optimizer states included
   (prequential: no window is scored by parameters that trained on it).
3. Serving replicas hold a copy of the trainer's parameters taken at sync points only: per
   training shard a :class:`ServingShard` fed ``export_since`` deltas (rows changed and ids
   evicted since its last sync), plus a copy of the dense parameters. All replicas sync
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
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import compilation_cache
from benchmarks.movielens_quality import DATA, SEEDS, SLOTS_YAML, train
from monolith_ray.config import Config, SlotConfig, load_config
from monolith_ray.data.batches import Batch, iter_batches, make_batch
from monolith_ray.model import StreamingAUC, StreamingLogLoss
from monolith_ray.ps import ShardClient
from monolith_ray.table import CuckooMap, TableDelta
from monolith_ray.train import TrainLoop

WINDOWS = 100  # 1% of the stream each
# Windows between sparse syncs per replica (1%, 5%, 10% of the stream); None: only before
# the stream. Replicas named "*_dense" also copy the dense parameters at every sparse sync;
# the others follow Monolith's schedule: sparse rows at the interval, dense parameters every
# DENSE_SYNC_S of event time (daily, the default of ParameterSync).
SYNC_EVERY: dict[str, int | None] = {"batch": None, "online_short": 1, "online_mid": 5,
                                     "online_long": 10, "online_short_dense": 1,
                                     "online_mid_dense": 5, "online_long_dense": 10}
DENSE_SYNC_S = 86_400


class ServingShard:
    """Serving copy of one ``ShardServer``'s embedding rows: per slot a cuckoo map and a row
    matrix, changed only by ``apply`` (a parameter-sync delta). ``lookup`` answers as
    ``ShardServer.lookup`` does: rows (n, D+1), zeros for ids it does not hold."""

    def __init__(self, slots: Sequence[SlotConfig]) -> None:
        self.maps = {s.name: CuckooMap() for s in slots}
        self.rows = {s.name: np.zeros((16, s.dim + 1), dtype=np.float32) for s in slots}
        self.versions = dict.fromkeys(self.maps, 0)

    def apply(self, deltas: Mapping[str, TableDelta]) -> int:
        """Drop each slot's evicted ids, upsert its changed rows and take its version -> rows
        written."""
        written = 0
        for name, delta in deltas.items():
            table = self.maps[name]
            table.erase(delta.evicted)
            at, _ = table.find_or_insert(delta.ids)
            if table.row_bound > self.rows[name].shape[0]:
                grown = np.zeros((max(table.row_bound, 2 * self.rows[name].shape[0]),
                                  self.rows[name].shape[1]), dtype=np.float32)
                grown[:self.rows[name].shape[0]] = self.rows[name]
                self.rows[name] = grown
            self.rows[name][at] = delta.weights
            self.versions[name] = delta.version
            written += delta.ids.size
        return written

    def lookup(self, ids: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per slot ids int64 (n,) -> rows float32 (n, D+1)."""
        out = {}
        for name, a in ids.items():
            at = self.maps[name].find(a)
            rows = np.zeros((at.size, self.rows[name].shape[1]), dtype=np.float32)
            rows[at >= 0] = self.rows[name][at[at >= 0]]
            out[name] = rows
        return out


class Replica:
    """A serving model: the trainer's parameters as of its last ``sync``."""

    def __init__(self, trainer: TrainLoop, config: Config) -> None:
        self.trainer = trainer
        self.shards = [ServingShard(trainer.slots) for _ in trainer.client.shards]
        self.model = TrainLoop(trainer.slots, ShardClient(self.shards, trainer.names),
                               config.model, trainer.train_cfg)

    def sync(self, dense: bool = True) -> int:
        """Apply every training shard's delta since this replica's versions and, if ``dense``,
        copy the dense parameters -> embedding rows written."""
        written = sum(copy.apply(source.export_since(copy.versions))
                      for source, copy in zip(self.trainer.client.shards, self.shards))
        if dense:
            self.model.params = jax.tree.map(np.array, self.trainer.params)
        return written

    def predict(self, batch: Batch) -> np.ndarray:
        """Click probabilities (B,) of ``batch`` with the synced parameters."""
        return self.model.predict(batch, self.model.client.lookup(batch.fids))


def run_seed(seed: int, config: Config, splits: dict[str, pa.Table]) -> dict[str, Any]:
    """Batch training, then the stream of valid + test -> this seed's figures."""
    start = time.perf_counter()
    first = config.slots[0]
    setting = {"optimizer": first.optimizer, "scale": first.initializer.scale,
               "batch_size": config.train.batch_size}
    trainer, scores = train(splits, config.slots, config.model, setting, seed,
                            config.train.epochs, "valid", every_epoch=False)
    batch_seconds = time.perf_counter() - start

    stream = pa.concat_tables([splits["valid"], splits["test"]])
    bounds = np.linspace(0, stream.num_rows, WINDOWS + 1).round().astype(int)
    replicas = {name: Replica(trainer, config) for name in SYNC_EVERY}
    for replica in replicas.values():
        replica.sync()
    window_auc: dict[str, list[float]] = {name: [] for name in replicas}
    synced: dict[str, list[int]] = {name: [] for name in replicas}
    overall = {name: (StreamingAUC(), StreamingLogLoss()) for name in replicas}
    times = stream.column("time").to_numpy()
    dense_synced_at = {name: int(times[0]) for name in replicas}
    for k in range(WINDOWS):
        now = int(times[bounds[k]])
        for name, every in SYNC_EVERY.items():
            if every is not None and k > 0 and k % every == 0:
                dense = name.endswith("_dense") or now - dense_synced_at[name] >= DENSE_SYNC_S
                if dense:
                    dense_synced_at[name] = now
                synced[name].append(replicas[name].sync(dense=dense))
        batches = list(iter_batches(stream.slice(bounds[k], bounds[k + 1] - bounds[k]),
                                    trainer.slots, config.train.batch_size))
        for name, replica in replicas.items():
            auc = StreamingAUC()
            for batch in batches:
                probs = replica.predict(batch)
                for metric in (auc, *overall[name]):
                    metric.update(probs, batch.labels, batch.weights)
            window_auc[name].append(auc.result())
        for _ in trainer.train(batches):
            pass

    figures: dict[str, Any] = {"seed": seed, "batch_valid_auc": scores[-1]["auc"],
                               "batch_seconds": batch_seconds}
    for name in replicas:
        aucs = np.array(window_auc[name])
        figures[name] = {
            "auc": float(np.nanmean(aucs)),
            "auc_overall": overall[name][0].result(),
            "logloss_overall": overall[name][1].result(),
            "windows_scored": int(np.isfinite(aucs).sum()),
            "auc_by_decile": [float(np.nanmean(d)) for d in np.array_split(aucs, 10)],
            "syncs": len(synced[name]),
            "rows_per_sync": float(np.mean(synced[name])) if synced[name] else 0.0,
        }
    figures["seconds"] = time.perf_counter() - start
    figures["window_examples"] = float(np.diff(bounds).mean())
    figures["stream_examples"] = stream.num_rows
    figures["stream_hours"] = float(times[-1] - times[0]) / 3600

    check = replicas["online_short"]
    check.sync()
    fids = make_batch(pa.concat_tables([splits["train"], stream]), trainer.slots).fids
    if not all(np.array_equal(a, b) for a, b in zip(check.model.client.lookup(fids).values(),
                                                    trainer.client.lookup(fids).values())):
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
    config = load_config(SLOTS_YAML)
    splits = {name: pq.read_table(DATA / f"{name}.parquet") for name in ("train", "valid", "test")}
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
