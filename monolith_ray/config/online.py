"""The ``online`` section: online training from the ``examples`` topic and its Ray Data source."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from monolith_ray.config.loader import ConfigError, _require
from monolith_ray.config.train import TrainConfig

_ONLINE_START = re.compile(r"earliest|(dump|snapshot):.+")


@dataclasses.dataclass(frozen=True)
class OnlineConfig:
    """Online training from the ``examples`` topic (``monolith_ray.train.online``) and the
    Ray Data source that reads it (``monolith_ray.data.kafka_source``).

    - ``start``: where training starts: ``earliest`` (each partition's first offset),
      ``dump:<path>`` (train on a Parquet dump of the topic first, then continue on Kafka from
      the offsets it ends at) or ``snapshot:<path>`` (restore parameters and offsets from
      the newest complete snapshot under a snapshot root, or from one snapshot folder).
    - ``stop``: ``never`` runs until stopped; ``end`` stops at the partitions' ends as of the
      start (a bounded replay).
    - ``idle_timeout_s`` (wall clock): also stop once no record has arrived for this long;
      0 = never.
    - ``snapshot_every_s`` (wall clock): time between snapshots of parameters and offsets
      (to ``data.snapshot_root``); daily by default, which the Monolith paper found enough.
    - ``commit_every_steps``: a trainer waits for its pushes and marks the offsets they trained
      as committed every this many steps; a restore retrains at most this many steps per
      trainer.
    - ``max_batch_wait_s`` (wall clock): longest a read task holds rows for a block to fill
      (``block_bytes``) and a trainer waits for a batch to fill (``batch_size`` examples
      online, ``train.batch_size`` on a dump); then they go on with what they have (the
      trainer trains it padded and commits). At low rates this bounds how far training runs
      behind the stream and how long an example waits to be committed; at high rates blocks
      and batches fill first.
    - ``read_tasks``: Ray Data read tasks, each reading its share of the partitions; every
      one runs for the whole stream, so all must fit in the cluster at once.
    - ``poll_records``, ``poll_timeout_ms``: most records per poll (one micro-batch) and how
      long a poll waits for them.
    - ``block_bytes``: Ray Data block size of the stream; a block leaves its read task once
      this many bytes are read (or the read ends), so it bounds latency at low rates.
    - ``buffer_bytes``: object-store bytes the stream may hold ahead of the trainers; beyond
      it the read tasks pause (backpressure).
    - ``batch_size``: examples per online step (micro-batches: a fresh id is learned from its
      first few examples only if steps come that often); 0: ``train.batch_size``.
    - ``dense_rate``: the dense optimizer's learning rate online, as a multiple of
      ``train.dense_optimizer``'s (below 1 slows the dense parameters' drift over small
      micro-batches). Each slot's own online optimizer is its ``online`` key. The online
      job's stream phase (``monolith_ray.train.online``) and the online phase of
      ``benchmarks.online_vs_batch`` (``experiments.sync_interval.go_online``) use these
      three; :meth:`trainer_settings` applies the first two to a ``TrainConfig``.
    """

    start: str = "earliest"
    stop: Literal["never", "end"] = "never"
    idle_timeout_s: float = 0.0
    snapshot_every_s: float = 86400.0
    commit_every_steps: int = 20
    max_batch_wait_s: float = 2.0
    read_tasks: int = 1
    poll_records: int = 2000
    poll_timeout_ms: int = 200
    block_bytes: int = 256 * 1024
    buffer_bytes: int = 64 * 1024 * 1024
    batch_size: int = 0
    dense_rate: float = 1.0

    def __post_init__(self) -> None:
        if not _ONLINE_START.fullmatch(self.start):
            raise ConfigError("start", f"must be earliest, dump:<path> or snapshot:<path>, "
                                       f"got {self.start!r}")
        _require(self, "idle_timeout_s", ge=0)
        _require(self, "snapshot_every_s", gt=0)
        _require(self, "commit_every_steps", ge=1)
        _require(self, "max_batch_wait_s", gt=0)
        _require(self, "read_tasks", ge=1)
        _require(self, "poll_records", ge=1)
        _require(self, "poll_timeout_ms", ge=1)
        _require(self, "block_bytes", ge=1024)
        _require(self, "buffer_bytes", ge=1024)
        _require(self, "batch_size", ge=0)
        _require(self, "dense_rate", gt=0)

    def trainer_settings(self, train: TrainConfig) -> TrainConfig:
        """``train`` as trainers take it online: ``batch_size`` examples a step (``train``'s
        if 0) and the dense learning rate ``dense_rate`` times ``train``'s; the dense
        optimizer's kind and other fields, hence the structure of its state, stay."""
        dense = train.dense_optimizer
        return dataclasses.replace(
            train, batch_size=self.batch_size or train.batch_size,
            dense_optimizer=dataclasses.replace(
                dense, learning_rate=dense.learning_rate * self.dense_rate))
