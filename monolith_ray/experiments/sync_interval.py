"""The sync-interval experiment, after the Monolith paper's Table 2: a model batch-trained on
the first 80% of MovieLens-100K (by time), against online models that keep training on the
last 20% as it streams and are served from copies synced at several intervals.

The stream (valid then test, in time order) is cut into equal windows. Each window is first
predicted by every serving copy, then trained on once by the online trainer — the batch
model's own loop and shards, optimizer states included — so no window is scored by
parameters that trained on it (prequential). The serving copies are passed in (anything with
``sync`` and ``predict``, see :class:`Replica`); :class:`SyncedReplica` is serving's own
code run in process: a ``ParameterSync`` and a ``ServingModel``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

import jax
import numpy as np
import pyarrow as pa

from monolith_ray.config import Config
from monolith_ray.data.batches import Batch, iter_batches
from monolith_ray.experiments.training import setting_of, train
from monolith_ray.model import StreamingAUC, StreamingLogLoss
from monolith_ray.serve.model import ServingModel
from monolith_ray.serve.sync import ParameterSync
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


class Replica(Protocol):
    """A serving copy of a trainer's parameters, as of its last ``sync``."""

    def sync(self, dense: bool = True) -> int:
        """Take the trainer's embedding rows changed since the last sync and, if ``dense``,
        its dense parameters -> embedding rows written."""
        ...

    def predict(self, batch: Batch) -> np.ndarray:
        """Click probabilities float32 (B,) of ``batch`` with the synced parameters."""
        ...


class SyncedReplica:
    """A :class:`Replica` made of the serving stack in process: a ``ParameterSync`` (no
    schedule, float32 store) reading ``trainer``'s shards and dense parameters, and a
    ``ServingModel`` taking its updates, as a Serve replica does."""

    def __init__(self, trainer: TrainLoop, config: Config) -> None:
        cfg = dataclasses.replace(config, serve=dataclasses.replace(config.serve,
                                                                     store_dtype="float32"))
        self.trainer = trainer
        self.sync_actor = ParameterSync(
            trainer.slots, trainer.client.shards, _DenseOf(trainer), start=False,
            dtype="float32", forget_evictions=False)  # several replicas read the same shards
        self.model = ServingModel(cfg)

    def sync(self, dense: bool = True) -> int:
        before = self.sync_actor.counters["rows_synced"]
        self.sync_actor.sync_now("both" if dense else "sparse")
        versions = self.model.versions
        self.model.apply(self.sync_actor.updates(versions["sparse"], versions["dense"],
                                                 self.model.sync_epoch))
        return self.sync_actor.counters["rows_synced"] - before

    def predict(self, batch: Batch) -> np.ndarray:
        return self.model.predict(batch)


class _DenseOf:
    """A trainer's own dense parameters as a dense server's ``pull``."""

    def __init__(self, trainer: TrainLoop) -> None:
        self.trainer = trainer

    def pull(self) -> tuple[Any, int]:
        return jax.tree.map(np.array, self.trainer.params), self.trainer.steps

    def incarnation(self) -> str:
        return "in-process"  # never restarted: its steps alone name its parameters


def batch_model(seed: int, config: Config, splits: dict[str, pa.Table]) -> tuple[TrainLoop, float]:
    """The batch model: ``config``'s setting trained on train for ``config.train.epochs``
    seeded, shuffled epochs -> (its loop, its valid AUC)."""
    trainer, scores = train(splits, config.slots, config.model, setting_of(config), seed,
                            config.train.epochs, "valid", every_epoch=False)
    return trainer, scores[-1]["auc"]


def stream_of(splits: dict[str, pa.Table]) -> pa.Table:
    """The stream the online models see: valid then test, in time order."""
    return pa.concat_tables([splits["valid"], splits["test"]])


def replay(trainer: TrainLoop, stream: pa.Table, replicas: Mapping[str, Replica],
           sync_every: Mapping[str, int | None] = SYNC_EVERY, windows: int = WINDOWS,
           dense_sync_s: int = DENSE_SYNC_S) -> dict[str, Any]:
    """Sync every replica, then for each of ``windows`` equal windows of ``stream``: sync the
    replicas due (replica ``name`` every ``sync_every[name]`` windows, never if None; dense
    parameters at every sync for names ending in ``_dense``, else once ``dense_sync_s`` of
    event time has passed since the last), score the window with every replica, and train
    ``trainer`` on it.

    -> per replica name ``{"auc"`` (mean of the window AUCs), ``"auc_by_window"``,
    ``"auc_by_decile"``, ``"auc_overall"`` and ``"logloss_overall"`` (over all predictions),
    ``"windows_scored"``, ``"syncs"``, ``"rows_per_sync"}``, plus ``"window_examples"``,
    ``"stream_examples"`` and ``"stream_hours"``. AUCs are example-weighted; a window with one
    class only has AUC NaN and is left out of the means.
    """
    size = trainer.train_cfg.batch_size
    bounds = np.linspace(0, stream.num_rows, windows + 1).round().astype(int)
    for replica in replicas.values():
        replica.sync()
    window_auc: dict[str, list[float]] = {name: [] for name in replicas}
    synced: dict[str, list[int]] = {name: [] for name in replicas}
    overall = {name: (StreamingAUC(), StreamingLogLoss()) for name in replicas}
    times = stream.column("time").to_numpy()
    dense_synced_at = {name: int(times[0]) for name in replicas}
    for k in range(windows):
        now = int(times[bounds[k]])
        for name, replica in replicas.items():
            every = sync_every[name]
            if every is not None and k > 0 and k % every == 0:
                dense = name.endswith("_dense") or now - dense_synced_at[name] >= dense_sync_s
                if dense:
                    dense_synced_at[name] = now
                synced[name].append(replica.sync(dense=dense))
        batches = list(iter_batches(stream.slice(bounds[k], bounds[k + 1] - bounds[k]),
                                    trainer.slots, size))
        for name, replica in replicas.items():
            auc = StreamingAUC()
            for batch in batches:
                probs = replica.predict(batch)
                for metric in (auc, *overall[name]):
                    metric.update(probs, batch.labels, batch.weights)
            window_auc[name].append(auc.result())
        for _ in trainer.train(batches):
            pass

    figures: dict[str, Any] = {}
    for name in replicas:
        aucs = np.array(window_auc[name])
        figures[name] = {
            "auc": float(np.nanmean(aucs)),
            "auc_by_window": aucs.tolist(),
            "auc_overall": overall[name][0].result(),
            "logloss_overall": overall[name][1].result(),
            "windows_scored": int(np.isfinite(aucs).sum()),
            "auc_by_decile": [float(np.nanmean(d)) for d in np.array_split(aucs, 10)],
            "syncs": len(synced[name]),
            "rows_per_sync": float(np.mean(synced[name])) if synced[name] else 0.0,
        }
    figures["window_examples"] = float(np.diff(bounds).mean())
    figures["stream_examples"] = stream.num_rows
    figures["stream_hours"] = float(times[-1] - times[0]) / 3600
    return figures
