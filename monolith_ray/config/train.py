"""The ``train`` section: how trainers step and which Ray resources the training actors take."""

from __future__ import annotations

import dataclasses
from typing import Literal

from monolith_ray.config.loader import ConfigError, _require, _require_resources
from monolith_ray.config.slots import OptimizerConfig


# The training actors' roles, each placed by its own ``<role>_resources`` key.
Role = Literal["shard", "dense", "trainer"]
ROLES: tuple[Role, ...] = ("shard", "dense", "trainer")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How a trainer steps.

    - ``batch_size``: examples per step (a shorter last batch is padded with weight-0 rows).
    - ``dense_optimizer``: optimizer of the dense parameters (``sgd``, ``adagrad`` or
      ``adam``; ``ftrl`` is for embedding rows only).
    - ``n_shards``: parameter-server shards the embedding rows are spread over.
    - ``epochs``: passes over a finite (Parquet) source; a stream ignores it.
    - ``seed``: seed of the dense parameters' initialization.
    - ``stats_every``: steps between table-size reports (each costs a call per shard).
    - ``expire_every_s``: event-time seconds between a trainer's expiry passes, which evict
      rows not updated for their slot's ``expire_s`` on every shard (only if some slot sets
      ``expire_s``). Each pass scans every table, a chunk at a time beside training.
    - ``n_trainers``: trainer actors, each fed its own split of the data. With a dense
      parameter server, ``dense_pull_every`` is how many of its own steps a trainer goes
      between parameter pulls (the staleness bound, see ``monolith_ray.ps.dense``).
    - ``trainer_cpus``, ``shard_cpus``, ``read_cpus``: Ray CPUs reserved per trainer, per
      shard (and dense server) actor, and per Ray Data read task; reads need less than a whole
      CPU so that they run beside the actors on a small node. Ray Data also lists files with a
      task of one whole CPU: leave one CPU unreserved, or a read never starts.
    - ``call_timeout_s``: a parameter-server call not answered by then fails the step.
    - ``transport``: how trainers reach the shards each step: ``channel`` (a direct TCP
      connection per trainer and shard, opened through Ray; ``monolith_ray.ps.channel``) or
      ``ray`` (actor calls, a fixed ~1 ms of CPU each on the two ends).
    - ``xla_threads``: threads of a trainer's XLA CPU pool; 0: one per reserved CPU
      (``trainer_cpus``, at least one), as Ray sizes a worker's OpenMP threads.
    - ``compile_cache_dir``: folder of a trainer's persistent XLA compilation cache (JAX's
      ``jax_compilation_cache_dir``), shared by the trainers of a node, so a trainer that
      replaces a lost one loads its compiled steps instead of compiling them again; empty:
      ``<temp dir>/monolith_ray-xla-cache`` of the node.
    - ``shard_resources``, ``dense_resources``, ``trainer_resources``: custom Ray resources
      each shard actor, the dense-server actor and each trainer actor needs, so each role
      lands on the nodes offering them, e.g. ``shard_resources: {ps: 0.01}`` keeps shards on
      ``cluster.yaml``'s memory workers and ``trainer_resources: {trainer: 0.01}`` trainers
      on its compute workers. An empty one falls back to ``actor_resources``, which thus
      places all three roles at once (e.g. ``{training: 0.01}``: all on nodes offering
      ``training``). See :meth:`resources`.
    - ``snapshot_every_s``: seconds between the batch job's snapshots while it trains (and it
      takes one as it starts and one at its end); a shard or dense server that Ray restarts
      restores the latest, a lost trainer's data is read again from the last position its
      pushes had landed (``monolith_ray.train.job``). The online job snapshots on
      ``online.snapshot_every_s``.
    - ``max_failures``: times the trainers may be lost over a run (a trainer's process or
      node dies, or in the batch job the dataset's coordinator does) and replaced, in the
      batch and the online job alike, before the run fails naming this key; -1: no limit.
      The online job's stream lost (a read task, its blocks or the dataset's coordinator:
      ``kafka_source.SourceLost``) has a count of its own (``stream``) with the same limit.
      Shards, the dense server and the other processes Ray restarts are bounded by
      ``supervision.max_restarts``.
    - ``name``: names the job's parameter-server actors (``<name>.shard-K``,
      ``<name>.dense`` in Ray namespace ``monolith_ray``), so ``monolith-ray snapshot``,
      ``restore`` and ``serve --training NAME`` find them from another process; empty: the
      actors are anonymous, reachable only from the job that started them.
    """

    batch_size: int = 2048
    dense_optimizer: OptimizerConfig = dataclasses.field(
        default_factory=lambda: OptimizerConfig(kind="adam", learning_rate=1.0e-3))
    n_shards: int = 2
    epochs: int = 1
    seed: int = 0
    stats_every: int = 100
    expire_every_s: float = 3600.0
    n_trainers: int = 1
    dense_pull_every: int = 1
    trainer_cpus: float = 0.25
    shard_cpus: float = 0.1
    read_cpus: float = 0.25
    call_timeout_s: float = 60.0
    transport: Literal["channel", "ray"] = "channel"
    xla_threads: int = 0
    compile_cache_dir: str = ""
    actor_resources: dict[str, float] = dataclasses.field(default_factory=dict)
    shard_resources: dict[str, float] = dataclasses.field(default_factory=dict)
    dense_resources: dict[str, float] = dataclasses.field(default_factory=dict)
    trainer_resources: dict[str, float] = dataclasses.field(default_factory=dict)
    snapshot_every_s: float = 1800.0
    max_failures: int = 20
    name: str = ""

    def __post_init__(self) -> None:
        _require(self, "n_trainers", ge=1)
        _require(self, "dense_pull_every", ge=1)
        _require(self, "trainer_cpus", ge=0)
        _require(self, "shard_cpus", ge=0)
        _require(self, "read_cpus", gt=0)
        _require(self, "call_timeout_s", gt=0)
        _require(self, "xla_threads", ge=0)
        for role in ("actor", *ROLES):
            _require_resources(self, f"{role}_resources")
        _require(self, "snapshot_every_s", gt=0)
        _require(self, "max_failures", ge=-1)
        _require(self, "batch_size", ge=1)
        _require(self, "n_shards", ge=1)
        _require(self, "epochs", ge=1)
        _require(self, "stats_every", ge=1)
        _require(self, "expire_every_s", gt=0)
        if self.dense_optimizer.kind == "ftrl":
            raise ConfigError("dense_optimizer.kind", "ftrl is for embedding rows only; use "
                              "sgd, adagrad or adam")

    def resources(self, role: Role) -> dict[str, float]:
        """Custom Ray resources of an actor of ``role``: ``<role>_resources``, or
        ``actor_resources`` if that is empty."""
        return dict(getattr(self, f"{role}_resources") or self.actor_resources)
