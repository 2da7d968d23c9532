"""The sync-interval experiment, after the Monolith paper's Table 2: a model batch-trained on
the first 80% of MovieLens-100K (by time), against online models that keep training on the
last 20% as it streams and are served from copies synced at several intervals.

Going online (:func:`go_online`), the batch model's shards switch each slot to its own
``online`` optimizer, and the online trainer — a loop over the same shards, from the batch
model's dense parameters and optimizer state — steps micro-batches of ``online.batch_size``
at ``online.dense_rate`` times the dense learning rate. The stream (valid then test, in time
order) goes by one micro-batch at a time: first predicted by every serving copy, then
trained on once, so no example is scored by parameters that trained on it (prequential).
AUCs are taken per window, equal spans of the stream. The serving copies are passed in (anything with
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
from monolith_ray.config.history import HistoryConfig
from monolith_ray.data.batches import Batch, make_batch
from monolith_ray.experiments.history import history_slots, history_splits
from monolith_ray.experiments.training import setting_of, train
from monolith_ray.model import StreamingAUC, StreamingLogLoss
from monolith_ray.serve.model import ServingModel
from monolith_ray.serve.sync import ParameterSync
from monolith_ray.train import TrainLoop

WINDOWS = 100  # 1% of the stream each, the spans AUCs are taken over
# Stream examples between sparse syncs per replica; None: only before the stream. The
# ``online_k*`` replicas sync every 10, 100, 1000 examples; ``online_short``, ``_mid`` and
# ``_long`` every 1%, 5%, 10% of the stream (200, 1000, 2000 examples of MovieLens' 20,000).
# Replicas named "*_dense" also copy the dense parameters at every sparse sync; the others
# follow Monolith's schedule: sparse rows at the interval, dense parameters every DENSE_SYNC_S
# of event time (daily, the default of ParameterSync).
SYNC_EVERY: dict[str, int | None] = {
    "batch": None, "online_k10": 10, "online_k100": 100, "online_k1000": 1000,
    "online_short": 200, "online_mid": 1000, "online_long": 2000,
    "online_short_dense": 200, "online_mid_dense": 1000, "online_long_dense": 2000}
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
                                                 self.model.sync_incarnation))
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


def with_history(config: Config, splits: dict[str, pa.Table], history: HistoryConfig,
                 epochs: int) -> tuple[Config, dict[str, pa.Table]]:
    """``config`` and ``splits`` with the user-history slots of ``history`` added
    (``experiments.history``: columns replayed in event time over every split, so a stream
    example sees the stream's earlier actions whatever the model's sync), batch-trained for
    ``epochs``. A history slot goes online as the slot its values come from (``recent_items``
    as ``item_id``): its rows are those ids' rows in a table of its own."""
    slots = {s.name: s for s in config.slots}
    source = {h.name: h.source for h in history.slots}
    with_slots = tuple(dataclasses.replace(s, online=slots[source[s.name]].online)
                       if s.name in source else s
                       for s in history_slots(config.slots, history))
    return (dataclasses.replace(config, slots=with_slots, train=dataclasses.replace(
        config.train, epochs=epochs)), history_splits(splits, history))


def stream_of(splits: dict[str, pa.Table]) -> pa.Table:
    """The stream the online models see: valid then test, in time order."""
    return pa.concat_tables([splits["valid"], splits["test"]])


def go_online(trainer: TrainLoop, config: Config) -> TrainLoop:
    """The online trainer after batch training, with ``config``'s online settings:
    ``trainer``'s shards switched to each slot's ``online`` optimizer (slots without one keep
    theirs), and a loop over the same shards stepping ``online.batch_size`` examples at a
    time (0: the batch size) from ``trainer``'s dense parameters and optimizer state, its
    dense learning rate scaled by ``online.dense_rate``."""
    for shard in trainer.client.shards:
        shard.set_optimizers({s.name: s.online for s in config.slots if s.online is not None})
    cfg = config.online.trainer_settings(trainer.train_cfg)  # as the online job's trainers
    loop = TrainLoop(trainer.slots, trainer.client, config.model, cfg)
    loop.params, loop.opt_state = trainer.params, trainer.opt_state
    return loop


def user_coverage(seen: pa.Table, stream: pa.Table, sync_every: Mapping[str, int | None],
                  slot: str = "user_id") -> dict[str, Any]:
    """How much of ``stream`` a serving replica can know the user of, from the data alone:
    ``"new_share"``, the share of stream examples whose ``slot`` id is not in ``seen`` (the
    batch model's data), and ``"without_own_row"``, per replica name the share of stream
    examples from such a new id none of whose earlier stream examples the replica's rows had
    learned from when it scored it. Replica ``name`` syncs at the multiples of
    ``sync_every[name]`` (``replay``'s schedule), so the example at position i is scored with
    rows trained on the examples before the last multiple <= i; a replica that never syncs
    (None) has none."""
    ids = stream.column(slot).to_numpy()
    new = ~np.isin(ids, seen.column(slot).to_numpy())
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    first_seen = first[inverse]  # (n,) each example's id's first stream position
    at = np.arange(ids.size)
    without = {}
    for name, every in sync_every.items():
        synced_upto = np.zeros_like(at) if every is None else at // every * every
        without[name] = float(np.mean(new & (first_seen >= synced_upto)))
    return {"new_share": float(new.mean()), "without_own_row": without}


def replay(trainer: TrainLoop, stream: pa.Table, replicas: Mapping[str, Replica],
           sync_every: Mapping[str, int | None] = SYNC_EVERY, windows: int = WINDOWS,
           dense_sync_s: int = DENSE_SYNC_S) -> dict[str, Any]:
    """Sync every replica, then go through ``stream`` in time order a micro-batch of
    ``trainer``'s batch size at a time: sync the replicas due (replica ``name`` once
    ``sync_every[name]`` stream examples have passed since its last sync, never if None;
    dense parameters at every sync for names ending in ``_dense``, else once ``dense_sync_s``
    of event time has passed since the last), score the micro-batch with every replica, and
    train ``trainer`` on it. Micro-batches never straddle the ``windows`` equal windows the
    AUCs are taken over.

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
    synced_at = dict.fromkeys(replicas, 0)
    for k in range(windows):
        aucs = {name: StreamingAUC() for name in replicas}
        for at in range(bounds[k], bounds[k + 1], size):
            batch = make_batch(stream.slice(at, min(size, bounds[k + 1] - at)), trainer.slots)
            now = int(times[at])
            for name, replica in replicas.items():
                every = sync_every[name]
                if every is not None and at - synced_at[name] >= every:
                    synced_at[name] = at
                    dense = (name.endswith("_dense")
                             or now - dense_synced_at[name] >= dense_sync_s)
                    if dense:
                        dense_synced_at[name] = now
                    synced[name].append(replica.sync(dense=dense))
                probs = replica.predict(batch)
                for metric in (aucs[name], *overall[name]):
                    metric.update(probs, batch.labels, batch.weights)
            for _ in trainer.train([batch]):
                pass
        for name in replicas:
            window_auc[name].append(aucs[name].result())

    figures: dict[str, Any] = {}
    for name in replicas:
        aucs_ = np.array(window_auc[name])
        figures[name] = {
            "auc": float(np.nanmean(aucs_)),
            "auc_by_window": aucs_.tolist(),
            "auc_overall": overall[name][0].result(),
            "logloss_overall": overall[name][1].result(),
            "windows_scored": int(np.isfinite(aucs_).sum()),
            "auc_by_decile": [float(np.nanmean(d)) for d in np.array_split(aucs_, 10)],
            "syncs": len(synced[name]),
            "rows_per_sync": float(np.mean(synced[name])) if synced[name] else 0.0,
        }
    figures["window_examples"] = float(np.diff(bounds).mean())
    figures["stream_examples"] = stream.num_rows
    figures["stream_hours"] = float(times[-1] - times[0]) / 3600
    return figures
