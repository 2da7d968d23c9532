"""Distributed batch training on Ray: shard actors, a dense server, N trainer actors.

``run_batch_training(cfg)`` is what ``jobs/train_batch.py`` and ``monolith-ray train`` run:

1. ``n_shards`` ``EmbeddingShard`` actors (``ShardServer``) and one ``DenseParameterServer``
   actor (``DenseServer``, holding the DeepFM dense parameters and their optax state).
2. ``n_trainers`` ``TrainerActor``\\ s, each fed its own split of
   ``ray.data.read_parquet(cfg.data.train).streaming_split(n, equal=True)``; every trainer
   pulls rows from and pushes sparse gradients to all shards, and pushes dense gradients to
   the dense server (asynchronous, staleness bounded by ``train.dense_pull_every``).
3. Trainer 0 evaluates the final parameters on ``valid`` and ``test`` (serving lookups that
   never insert); the job writes ``metrics.json`` under ``cfg.data.output_dir`` and a snapshot
   under ``data.snapshot_root`` (``monolith_ray.train.snapshots``, the format online training
   uses too, there with the Kafka offsets trained up to).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from monolith_ray.config import Config
from monolith_ray.config.inputs import check_inputs
from monolith_ray.data.batches import Batch, make_batch
from monolith_ray.model import DeepFMConfig, init
from monolith_ray.ps.client import ShardClient, call, calls_for
from monolith_ray.ps.dense import DenseServer
from monolith_ray.ps.shard import ShardServer
from monolith_ray.train.loop import TrainLoop, deepfm_config, dense_optimizer
from monolith_ray.train.snapshots import (  # noqa: F401 - restore_snapshot re-exported
    restore_snapshot,
    snapshot_root,
    take_snapshot,
)


# The config keys naming what the batch job reads; checked before it starts anything.
INPUTS = ("data.train", "data.valid", "data.test")


def dense_server_args(cfg: Config) -> tuple[Any, Any]:
    """``DenseServer`` arguments: how to make fresh DeepFM parameters (seed ``train.seed``) and
    the dense optax optimizer. A maker rather than the arrays: Ray keeps an actor's creation
    arguments to restart it, and arrays this large would live in the object store, where a
    restart cannot count on finding them."""
    maker = functools.partial(fresh_params, cfg.train.seed, deepfm_config(cfg.slots, cfg.model))
    return maker, dense_optimizer(cfg.train.dense_optimizer)


def fresh_params(seed: int, model: DeepFMConfig) -> Any:
    """DeepFM dense parameters initialized from ``seed``."""
    return init(jax.random.key(seed), model)


class Trainer:
    """One trainer: a ``TrainLoop`` over the given shard and dense-server actors.

    With ``local_dense`` the trainer is the dense parameters' only writer: it updates them in
    its own jitted step (no dense round trip, no staleness) and publishes parameters and
    optimizer state to the dense server at the end of each ``fit``, where snapshots and
    serving read them. The batch job uses it when it runs a single trainer.
    """

    def __init__(self, cfg: Config, shards: Sequence[Any], dense: Any,
                 local_dense: bool = False) -> None:
        self.cfg = cfg
        calls = calls_for(shards, timeout_s=cfg.train.call_timeout_s,
                          transport=cfg.train.transport)
        client = ShardClient(shards, [s.name for s in cfg.slots], calls=calls)
        self._publish_to = dense if local_dense else None
        self.loop = TrainLoop(cfg.slots, client, cfg.model, cfg.train,
                              dense_server=None if local_dense else dense)
        if local_dense:
            self.loop.params, self.loop.dense_version = call(dense, "pull")

    def fit(self, split: Any, epochs: int) -> dict[str, Any]:
        """Train ``epochs`` passes over ``split`` (a Ray ``DataIterator``) -> a summary:
        steps, examples, seconds, examples_per_s (over the whole fit) and the last loss."""
        start, examples, loss = time.perf_counter(), 0, float("nan")
        for _ in range(epochs):
            for m in self.loop.train(self._batches(split)):
                examples += m["examples"]
                loss = m["loss"]
        if self._publish_to is not None:
            self.loop.dense_version = self.loop.steps
            call(self._publish_to, "load_state", jax.tree.map(np.asarray, self.loop.params),
                  jax.tree.map(np.asarray, self.loop.opt_state), self.loop.steps)
        seconds = time.perf_counter() - start
        return {"steps": self.loop.steps, "examples": examples, "seconds": seconds,
                "examples_per_s": examples / max(seconds, 1e-9), "loss": loss,
                "dense_version": getattr(self.loop, "dense_version", None)}

    def evaluate(self, dataset: Any) -> dict[str, float]:
        """AUC and log loss on a Ray ``Dataset`` with the newest dense parameters."""
        if self.loop.dense is not None:
            self.loop.params, self.loop.dense_version = self.loop.dense.pull()
        return self.loop.evaluate(self._batches(dataset))

    def _batches(self, source: Any) -> Iterator[Batch]:
        for table in source.iter_batches(batch_size=self.cfg.train.batch_size,
                                         batch_format="pyarrow", prefetch_batches=2):
            yield make_batch(table, self.cfg.slots)


def trainer_options(cfg: Config) -> dict[str, Any]:
    """Ray options of a trainer actor: ``train.trainer_cpus`` and ``train.actor_resources``
    reserved, and XLA's CPU thread pool sized by ``train.xla_threads`` (``PJRT_NPROC``; 0: the
    reservation, at least one thread, as Ray sizes a worker's OpenMP threads). By default XLA
    starts a thread per core of the node; a trainer sharing the node with shard actors then
    competes with their table work for the same cores, and XLA's parallel steps wait on
    threads preempted by them. Trainers keep compiled steps in a persistent XLA cache
    (``train.compile_cache_dir``)."""
    import tempfile

    threads = cfg.train.xla_threads or max(1, int(cfg.train.trainer_cpus))
    cache = cfg.train.compile_cache_dir or os.path.join(tempfile.gettempdir(),
                                                        "monolith_ray-xla-cache")
    # A replacement trainer (see monolith_ray.train.online) loads its steps from the cache.
    return {"num_cpus": cfg.train.trainer_cpus, "resources": dict(cfg.train.actor_resources),
            "runtime_env": {"env_vars": {
                "PJRT_NPROC": str(threads), "JAX_COMPILATION_CACHE_DIR": cache,
                "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.2"}}}


def start_servers(cfg: Config, started_from: str | None = None) -> tuple[list[Any], Any]:
    """Start the shard actors and the dense-server actor -> (shard handles, dense handle).
    ``started_from``: the snapshot (folder or root) the caller is about to restore them from,
    which a shard restarted before this run's first snapshot goes back to."""
    import datetime as dt

    import ray

    from monolith_ray.supervision import actor_options
    from monolith_ray.train.snapshots import RunSnapshot, snapshot_root

    # A shard or dense server whose process dies is restarted by Ray and restores its part of
    # the latest snapshot; calls in flight and queued are retried on it (max_task_retries), so
    # trainers wait out the restart instead of failing. ray.kill(actor) stops one for good.
    shard_actor = ray.remote(ShardServer)
    root = snapshot_root(cfg)
    since = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    resources = dict(cfg.train.actor_resources)
    shards = [shard_actor.options(num_cpus=cfg.train.shard_cpus, resources=resources,
                                  **actor_options(cfg.supervision),
                                  **_named(cfg, f"shard-{k}")).remote(
                  cfg.slots, cfg.admission, 1024,
                  RunSnapshot(root, since, started_from, f"shard-{k}"))
              for k in range(cfg.train.n_shards)]
    dense = ray.remote(DenseServer).options(
        num_cpus=cfg.train.shard_cpus, resources=resources,
        **actor_options(cfg.supervision),
        **_named(cfg, "dense")).remote(*dense_server_args(cfg),
                                       RunSnapshot(root, since, started_from))
    return shards, dense


NAMESPACE = "monolith_ray"


def _named(cfg: Config, role: str) -> dict[str, str]:
    """Actor options naming a server of job ``train.name`` (none if it has no name)."""
    if not cfg.train.name:
        return {}
    return {"name": f"{cfg.train.name}.{role}", "namespace": NAMESPACE}


def find_servers(cfg: Config) -> tuple[list[Any], Any]:
    """The shard and dense-server actors of the running job ``train.name`` (started by
    :func:`start_servers` in another process of this Ray cluster) -> (shards, dense).
    ValueError naming what is missing."""
    import ray

    if not cfg.train.name:
        raise ValueError("train.name is empty: name the job (--set train.name=NAME) both when "
                         "it starts and here")
    try:
        shards = [ray.get_actor(f"{cfg.train.name}.shard-{k}", namespace=NAMESPACE)
                  for k in range(cfg.train.n_shards)]
        dense = ray.get_actor(f"{cfg.train.name}.dense", namespace=NAMESPACE)
    except ValueError as err:
        raise ValueError(f"no running job {cfg.train.name!r} with {cfg.train.n_shards} shards "
                         f"in this Ray cluster: {err}") from None
    return shards, dense


def read_examples(cfg: Config, path: str) -> Any:
    """A Ray ``Dataset`` of the Parquet examples at ``path`` (local or ``pyarrow.fs`` URI)."""
    import ray

    return ray.data.read_parquet(path, num_cpus=cfg.train.read_cpus)


def incarnations(shards: Sequence[Any], dense: Any) -> list[str]:
    """The incarnations of the shard and dense-server actors (each new on a restart)."""
    import ray

    return ray.get([s.incarnation.remote() for s in [*shards, dense]])


def run_batch_training(cfg: Config) -> dict[str, Any]:
    """Train on ``cfg.data.train`` with Ray actors, evaluate, write metrics and a snapshot ->
    the metrics dict (also written to ``<output_dir>/metrics.json``). A missing input or a bad
    ``data.snapshot_root`` raises ConfigError before any actor starts, not after training."""
    import ray

    started = time.perf_counter()
    check_inputs(cfg, INPUTS)
    snapshot_root(cfg)
    shards, dense = start_servers(cfg)
    trainer_actor = ray.remote(Trainer).options(**trainer_options(cfg))
    local_dense = cfg.train.n_trainers == 1
    trainers = [trainer_actor.remote(cfg, shards, dense, local_dense)
                for _ in range(cfg.train.n_trainers)]
    try:
        at_start = incarnations(shards, dense)
        splits = read_examples(cfg, cfg.data.train).streaming_split(
            cfg.train.n_trainers, equal=True)
        fits = ray.get([t.fit.remote(s, cfg.train.epochs) for t, s in zip(trainers, splits)])
        metrics: dict[str, Any] = {
            "trainers": fits,
            "examples": sum(f["examples"] for f in fits),
            "examples_per_s": sum(f["examples_per_s"] for f in fits),
        }
        for name in ("valid", "test"):
            path = getattr(cfg.data, name)
            if path:
                metrics[name] = ray.get(
                    trainers[0].evaluate.remote(read_examples(cfg, path)))
        stats = ray.get([s.stats.remote() for s in shards])
        metrics["table_rows"] = {slot.name: sum(s[slot.name]["rows"] for s in stats)
                                 for slot in cfg.slots}
        metrics["snapshot"] = take_snapshot(cfg, shards, dense)
        if incarnations(shards, dense) != at_start:
            raise RuntimeError(
                "a parameter server restarted during the job and came back without the updates "
                "it had made (a batch job has no snapshot to restore before its last); the "
                f"snapshot {metrics['snapshot']} is not the trained model: run the job again")
    finally:
        for actor in [*trainers, *shards, dense]:
            ray.kill(actor)
    metrics["seconds"] = time.perf_counter() - started
    out = Path(cfg.data.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    return metrics
