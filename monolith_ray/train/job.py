"""Distributed batch training on Ray: shard actors, a dense server, N trainer actors.

``run_batch_training(cfg)`` is what ``jobs/train_batch.py`` and ``monolith-ray train`` run:

1. ``n_shards`` ``EmbeddingShard`` actors (``ShardServer``) and one ``DenseParameterServer``
   actor (``DenseServer``, holding the model's dense parameters and their optax state).
2. ``n_trainers`` ``TrainerActor``\\ s, each fed its own split of the examples with their
   positions (``monolith_ray.data.parquet_rows``, ``streaming_split(n)``); every trainer
   pulls rows from and pushes sparse gradients to all shards, and pushes dense gradients to
   the dense server (asynchronous, staleness bounded by ``train.dense_pull_every``).
3. Trainer 0 evaluates the final parameters on ``valid`` and ``test`` (serving lookups that
   never insert); the job writes ``metrics.json`` under ``cfg.data.output_dir`` and a snapshot
   under ``data.snapshot_root`` (``monolith_ray.train.snapshots``, the format online training
   uses too, there with the Kafka offsets trained up to), as it does when it starts and every
   ``train.snapshot_every_s``: a lost trainer or server costs a restore of the latest one,
   up to ``train.max_failures`` times (:class:`BatchRun`).
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import ray.exceptions

from monolith_ray.config import Config
from monolith_ray.config.inputs import check_inputs
from monolith_ray.data.batches import Batch, make_batch
from monolith_ray.data.dense_values import dense_matrix, fit_norm, identity_norm
from monolith_ray.data.offsets import PARTITION, OffsetCoverage
from monolith_ray.data.parquet_rows import read_positioned
from monolith_ray.files import filesystem_and_path
from monolith_ray.model import ModelSpec, build, init_params, spec_of
from monolith_ray.ps.client import ShardClient, call, calls_for
from monolith_ray.ps.dense import DenseServer
from monolith_ray.ps.shard import ShardServer
from monolith_ray.retrieval.configured import dense_parts, synced_parts, tower_spec
from monolith_ray.retrieval.tables import table_name
from monolith_ray.retrieval.train import TowerTrainer
from monolith_ray.train.loop import TrainLoop, dense_optimizer
from monolith_ray.train.snapshots import (  # noqa: F401 - restore_snapshot re-exported
    restore_snapshot,
    snapshot_root,
    take_snapshot,
)


logger = logging.getLogger(__name__)

# The config keys naming what the batch job reads; checked before it starts anything.
INPUTS = ("data.train", "data.valid", "data.test")


def dense_server_args(cfg: Config, norm: Mapping[str, np.ndarray] | None = None
                      ) -> tuple[Any, Any]:
    """``DenseServer`` arguments: how to make the model's fresh parameters (seed ``train.seed``,
    the dense features' fitted ``norm``) and the dense optax optimizer. A maker rather than
    the arrays: Ray keeps an actor's creation arguments to restart it, and arrays this large
    would live in the object store, where a restart cannot count on finding them (``norm`` is
    two floats per dense feature)."""
    small = None if norm is None else {k: np.asarray(v).tolist() for k, v in norm.items()}
    maker = functools.partial(fresh_params, cfg.train.seed,
                              spec_of(cfg.slots, cfg.model, cfg.dense, cfg.tasks), small)
    return maker, dense_optimizer(cfg.train.dense_optimizer)


def fresh_params(seed: int, spec: ModelSpec,
                 norm: Mapping[str, Sequence[float]] | None = None) -> Any:
    """Dense parameters of the model ``spec.model`` names, initialized from ``seed``, with the
    dense features' fitted ``norm`` (``dense_values.fit_norm``; None: identity)."""
    params = init_params(build(spec.model), spec, jax.random.key(seed))
    if norm is not None and spec.n_dense:
        params["dense_norm"] = {k: np.asarray(v, np.float32) for k, v in norm.items()}
    return params


def fit_dense(cfg: Config, sample: pa.Table | None) -> dict[str, np.ndarray] | None:
    """The dense features' standardization fitted on ``sample`` (example rows; None or empty:
    identity) -> ``params["dense_norm"]``, or None when the config has no dense features."""
    if not cfg.dense:
        return None
    if sample is None or sample.num_rows == 0:
        return identity_norm(len(cfg.dense))
    return fit_norm(dense_matrix(sample, cfg.dense), cfg.dense)


def parquet_head(location: str, rows: int, columns: Sequence[str]) -> pa.Table:
    """The first ``rows`` rows (``columns`` only) of the Parquet file or folder at
    ``location`` (hive-partitioned folders too)."""
    fs, path = filesystem_and_path(location)
    return pads.dataset(path, filesystem=fs, format="parquet",
                        partitioning="hive").head(rows, columns=list(columns))


class Trainer:
    """One trainer: a ``TrainLoop`` over the given shard and dense-server actors.

    With ``local_dense`` the trainer is the dense parameters' only writer: it updates them in
    its own jitted step (no dense round trip, no staleness) and publishes parameters and
    optimizer state to the dense server whenever its position lands (:meth:`landed`) and at
    the end of each ``fit``, where snapshots and serving read them. It starts from the dense
    server's parameters and optimizer state, so a trainer started after a restore, or in
    place of another, goes on with the state its predecessor published (its optimizer is
    ``cfg.train.dense_optimizer``: the same kind as the server's). The batch job uses it
    when it runs a single trainer.

    Position: rows that carry source columns (``monolith_ray.data.offsets``; the batch job's
    :func:`~monolith_ray.data.parquet_rows.read_positioned` rows) are accounted for as they
    are stepped on; :meth:`landed` (its actor runs two calls at once, so it answers during a
    ``fit``) says which of them are in the parameter servers.
    """

    def __init__(self, cfg: Config, shards: Sequence[Any], dense: Any,
                 local_dense: bool = False) -> None:
        self.cfg = cfg
        calls = calls_for(shards, timeout_s=cfg.train.call_timeout_s,
                          transport=cfg.train.transport)
        client = ShardClient(shards, [s.name for s in cfg.slots], calls=calls)
        self._publish_to = dense if local_dense else None
        self.loop = TrainLoop(cfg.slots, client, cfg.model, cfg.train,
                              dense_server=None if local_dense else dense, dense=cfg.dense,
                              tasks=cfg.tasks)
        if local_dense:  # parameters and optimizer state as last published or restored
            self.loop.params, self.loop.opt_state, self.loop.dense_version = call(dense, "state")
        self.tower: TowerTrainer | None = None
        if cfg.retrieval.enabled:  # the retrieval towers step on each batch after the ranker
            spec = tower_spec(cfg)
            tables = [table_name(s.name) for s in (*spec.user, *spec.item)]
            self.tower = TowerTrainer(spec, ShardClient(shards, tables, calls=calls),
                                      cfg.train.batch_size, dense=dense,
                                      timeout_s=cfg.train.call_timeout_s,
                                      pull_every=cfg.train.dense_pull_every)
            self.loop.after_step = self.tower.train_batch
        self._lock = threading.Lock()
        self._asked, self._answered = threading.Event(), threading.Event()
        self._fitting = False
        self._stepped, self._landed = OffsetCoverage(), OffsetCoverage()

    def fit(self, split: Any, epochs: int) -> dict[str, Any]:
        """Train ``epochs`` passes over ``split`` (a Ray ``DataIterator``) -> a summary:
        steps, examples, seconds, examples_per_s (over the whole fit), the last loss, and
        ``first_step_s`` / ``first_step_examples``: seconds until the first step was done (the
        dataset starting and the first batch arriving included) and its examples, which
        steady-state rates leave out. The positions stepped on start empty with each call."""
        start, examples, loss = time.perf_counter(), 0, float("nan")
        first: tuple[float, int] | None = None
        queued: collections.deque[OffsetCoverage] = collections.deque()
        with self._lock:
            self._fitting, self._stepped, self._landed = True, OffsetCoverage(), OffsetCoverage()
        try:
            for _ in range(epochs):
                for m in self.loop.train(self._batches(split, queued)):
                    self._stepped.update(queued.popleft())
                    examples += m["examples"]
                    loss = m["loss"]
                    if first is None:
                        first = (time.perf_counter() - start, examples)
                    if self._asked.is_set():
                        self._land()
            self._land()
        finally:
            with self._lock:
                self._fitting = False
            self._answered.set()
        seconds = time.perf_counter() - start
        first_s, first_examples = first if first is not None else (seconds, examples)
        return {"steps": self.loop.steps, "examples": examples, "seconds": seconds,
                "examples_per_s": examples / max(seconds, 1e-9), "loss": loss,
                "first_step_s": first_s, "first_step_examples": first_examples,
                "dense_version": getattr(self.loop, "dense_version", None)}

    def landed(self) -> dict[int, list[tuple[int, int]]]:
        """The positions (``OffsetCoverage`` ranges) of the current or last ``fit`` whose steps
        are all in the parameter servers, the dense state published. During a ``fit`` it asks
        the training thread to wait for its pushes at its next step and waits for that."""
        with self._lock:
            fitting = self._fitting
            if fitting:
                self._answered.clear()
                self._asked.set()
        if fitting:
            self._answered.wait(self.cfg.train.call_timeout_s)
        with self._lock:
            return self._landed.ranges()

    def _land(self) -> None:
        """Wait for every push in flight, publish the local dense state: every step so far is
        in the servers, and its positions have landed."""
        self._publish()
        with self._lock:
            self._landed.update(self._stepped)
            self._asked.clear()
        self._answered.set()

    def _publish(self) -> None:
        """Wait for every push in flight and, when this trainer owns the dense parameters,
        publish them with their optimizer state to the dense server (where snapshots and
        serving read them): every step so far is then in the servers."""
        self.loop.flush()
        if self.tower is not None:
            self.tower.flush()
        if self._publish_to is not None:
            self.loop.dense_version = self.loop.steps
            call(self._publish_to, "load_state", jax.tree.map(np.asarray, self.loop.params),
                 jax.tree.map(np.asarray, self.loop.opt_state), self.loop.steps)

    def evaluate(self, dataset: Any) -> dict[str, float]:
        """AUC and log loss on a Ray ``Dataset`` with the newest dense parameters."""
        if self.loop.dense is not None:
            self.loop.params, self.loop.dense_version = self.loop.dense.pull()
        return self.loop.evaluate(self._batches(dataset))

    def _batches(self, source: Any, queued: collections.deque[OffsetCoverage] | None = None
                 ) -> Iterator[Batch]:
        """``source``'s batches; with ``queued``, each one's positions queued for the step
        that trains it (the loop reads ahead, so a batch handed out is not yet stepped on)."""
        blocks = source.iter_batches(batch_size=None, batch_format="pyarrow",
                                     prefetch_batches=2)
        for table in rebatched(blocks, self.cfg.train.batch_size):
            if queued is not None:
                queued.append(OffsetCoverage.of_table(table) if PARTITION in table.column_names
                              else OffsetCoverage())
            yield make_batch(table, self.cfg.slots, self.cfg.dense, self.cfg.task_names)


def rebatched(blocks: Iterator[pa.Table], size: int) -> Iterator[pa.Table]:
    """Tables of ``size`` rows (the last may be shorter) from ``blocks`` of any sizes, in
    order: slices of a block where it holds them (zero-copy), blocks joined only across a
    boundary. Cheaper than Ray Data's own re-batching of blocks into batches, which
    combines chunks for every batch: this runs in the trainer's thread, between steps."""
    pending: list[pa.Table] = []
    held = 0
    for block in blocks:
        if not block.num_rows:
            continue
        start = 0
        if held:
            need = size - held
            pending.append(block.slice(0, need))
            held += min(need, block.num_rows)
            start = need
            if held < size:
                continue
            yield pa.concat_tables(pending)
            pending, held = [], 0
        while block.num_rows - start >= size:
            yield block.slice(start, size)
            start += size
        if start < block.num_rows:
            pending, held = [block.slice(start)], block.num_rows - start
    if held:
        yield pa.concat_tables(pending)


def trainer_options(cfg: Config) -> dict[str, Any]:
    """Ray options of a trainer actor: ``train.trainer_cpus`` and its custom resources
    (``TrainConfig.resources("trainer")``) reserved, and XLA's CPU thread pool sized by
    ``train.xla_threads`` (``PJRT_NPROC``; 0: the
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
    return {"num_cpus": cfg.train.trainer_cpus, "resources": cfg.train.resources("trainer"),
            "runtime_env": {"env_vars": {
                "PJRT_NPROC": str(threads), "JAX_COMPILATION_CACHE_DIR": cache,
                "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.2"}}}


def start_servers(cfg: Config, started_from: str | None = None,
                  norm: Mapping[str, np.ndarray] | None = None) -> tuple[list[Any], Any]:
    """Start the shard actors and the dense-server actor -> (shard handles, dense handle).
    ``started_from``: the snapshot (folder or root) the caller is about to restore them from,
    which a shard restarted before this run's first snapshot goes back to. ``norm``: the
    dense features' fitted standardization (:func:`fit_dense`)."""
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
    # SPREAD: the shards' memory over every node that offers their resources.
    shards = [shard_actor.options(num_cpus=cfg.train.shard_cpus,
                                  resources=cfg.train.resources("shard"),
                                  scheduling_strategy="SPREAD",
                                  **actor_options(cfg.supervision),
                                  **_named(cfg, f"shard-{k}")).remote(
                  cfg.table_slots, cfg.admission, 1024,
                  RunSnapshot(root, since, started_from, f"shard-{k}"),
                  optional=[s.name for s in cfg.table_slots[len(cfg.slots):]])
              for k in range(cfg.train.n_shards)]
    dense = ray.remote(DenseServer).options(
        num_cpus=cfg.train.shard_cpus, resources=cfg.train.resources("dense"),
        **actor_options(cfg.supervision),
        **_named(cfg, "dense")).remote(*dense_server_args(cfg, norm),
                                       RunSnapshot(root, since, started_from),
                                       parts=dense_parts(cfg))
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
    """The incarnations of the shard and dense-server actors (each new on a restart; a
    shard's also when it drops eviction records no reader took, which a batch job without a
    sync reaches only past 16M evictions a table and would report as a restart at its last
    snapshot)."""
    import ray

    return ray.get([s.incarnation.remote() for s in [*shards, dense]])


class BatchRun:
    """One batch job's training: servers, trainers, epochs, snapshots and recovery.

    Each epoch reads ``data.train`` with its rows' positions
    (:func:`~monolith_ray.data.parquet_rows.read_positioned`) and feeds every trainer its
    ``streaming_split``. Every ``train.snapshot_every_s`` (and as training starts) it asks the
    trainers which positions have landed in the servers, then snapshots the servers: a
    snapshot's parameters hold at least its position (epoch, rows), kept here by snapshot.

    Recovery: when a trainer is lost (its process, its node or the dataset's coordinator
    died) or Ray restarted a shard or the dense server (which came back from the latest
    snapshot, without its updates since), every server restores the latest snapshot, new
    trainers start, and the epoch is read again without the rows of the snapshot's position:
    what was trained after the snapshot is trained again, nothing is skipped. At most
    ``train.max_failures`` times, then :class:`~monolith_ray.supervision.RestartLimitError`
    naming the key; a shard or the dense server restarted by Ray more than
    ``supervision.max_restarts`` times is dead for good and fails the job too.
    """

    def __init__(self, cfg: Config) -> None:
        import ray

        from monolith_ray.metrics import TableReporter
        from monolith_ray.supervision import Supervisor

        self.cfg = cfg
        sample = (parquet_head(cfg.data.train, cfg.data.dense_fit_rows,
                               [f.name for f in cfg.dense]) if cfg.dense else None)
        self.shards, self.dense = start_servers(cfg, norm=fit_dense(cfg, sample))
        self.supervisor = Supervisor(cfg.supervision)
        self.supervisor.watch_all({**{f"shard-{k}": s for k, s in enumerate(self.shards)},
                                   "dense": self.dense})
        self.tables = TableReporter()
        self._actor = ray.remote(Trainer).options(**trainer_options(cfg), max_concurrency=2)
        self.trainers: list[Any] = []
        self.trainers = self._start_trainers()
        self.fits: list[list[dict[str, Any]]] = []  # per epoch, the trainers' fits
        self.resumed_rows = 0  # rows of the epochs that their fits left out as trained before
        self.last_snapshot = ""
        self._positions: dict[str, tuple[int, OffsetCoverage]] = {}

    def _start_trainers(self) -> list[Any]:
        return [self._actor.remote(self.cfg, self.shards, self.dense,
                                   self.cfg.train.n_trainers == 1)
                for _ in range(self.cfg.train.n_trainers)]

    def train(self) -> None:
        """Train ``train.epochs`` passes over ``data.train``, recovering from losses. Then
        ``fits`` holds per epoch the trainers' fits of its last attempt, and
        ``resumed_rows`` the rows those attempts left out, trained before a restore."""
        import ray

        epoch, done = 0, OffsetCoverage()
        self._snapshot(epoch, done)
        while epoch < self.cfg.train.epochs:
            dataset = read_positioned(self.cfg.data.train, done, self.cfg.train.read_cpus,
                                      min_tasks=4 * len(self.trainers))
            if dataset is None:  # the snapshot of a recovery had the whole epoch
                self.resumed_rows += done.count()
                epoch, done = epoch + 1, OffsetCoverage()
                continue
            splits = dataset.streaming_split(len(self.trainers), equal=False)
            refs = [t.fit.remote(s, 1) for t, s in zip(self.trainers, splits)]
            try:
                self.fits.append(self._wait(refs, epoch, done))
                self.resumed_rows += done.count()
                epoch, done = epoch + 1, OffsetCoverage()
            except (ray.exceptions.RayActorError, _ServerRestarted) as err:
                shut_down_splits(splits)
                epoch, done = self._recover(err)
            finally:
                del dataset, splits, refs  # see shut_down_splits

    def _wait(self, refs: list[Any], epoch: int, done: OffsetCoverage
              ) -> list[dict[str, Any]]:
        """The trainers' fits of this epoch (``done``: the rows it left out as trained);
        snapshots, restart checks and table metrics on schedule meanwhile. RayActorError if a
        trainer or what feeds it died, _ServerRestarted if Ray restarted a server."""
        import ray

        snapshot_every = self.cfg.train.snapshot_every_s
        check_every = self.cfg.supervision.check_every_s
        restarts = self.supervisor.total()
        due, check_due = time.monotonic() + snapshot_every, time.monotonic() + check_every
        pending = list(refs)
        while pending:
            wake = min(due, check_due)
            finished, pending = ray.wait(pending, num_returns=1,
                                         timeout=max(wake - time.monotonic(), 0.0))
            try:
                ray.get(finished)
            except ray.exceptions.RayTaskError as err:
                self._check(restarts)  # a call failed because a server is (re)starting?
                if isinstance(err.cause, ray.exceptions.RayActorError):
                    raise err.cause from err  # what fed the trainer died, not the trainer
                raise
            if time.monotonic() >= check_due or not pending:
                self._check(restarts)
                self.tables.poll(self.shards, timeout_s=check_every)
                check_due = time.monotonic() + check_every
            if pending and time.monotonic() >= due:
                self._snapshot(epoch, done, self.trainers)
                due = time.monotonic() + snapshot_every
        return ray.get(refs)

    def _check(self, restarts: int) -> None:
        """_ServerRestarted if Ray has restarted servers more than ``restarts`` times in
        all; RestartLimitError if one is dead for good."""
        self.supervisor.check()
        if self.supervisor.total() > restarts:
            raise _ServerRestarted(f"restarted by Ray: {self.supervisor.counts()}")

    def _snapshot(self, epoch: int, done: OffsetCoverage, trainers: Sequence[Any] = ()
                  ) -> None:
        """Collect the positions that have landed at ``trainers`` (those in an epoch), then
        snapshot the servers at them and ``done``."""
        import ray

        position = OffsetCoverage(done.ranges())
        # A trainer answers within call_timeout_s (with what has landed by then).
        for ranges in ray.get([t.landed.remote() for t in trainers],
                              timeout=2 * self.cfg.train.call_timeout_s):
            position.update(OffsetCoverage(ranges))
        self.last_snapshot = take_snapshot(self.cfg, self.shards, self.dense)
        self._positions[self.last_snapshot] = (epoch, position)

    def _recover(self, cause: BaseException) -> tuple[int, OffsetCoverage]:
        """Count a restart of the trainers (RestartLimitError past ``train.max_failures``),
        replace them and restore every server from the latest snapshot -> its position."""
        import ray

        self.supervisor.restarted("trainers", cause, limit=(
            "train.max_failures", self.cfg.train.max_failures))
        pause = self.supervisor.backoff_s("trainers")
        logger.warning("monolith_ray: restoring snapshot %s and restarting the trainers%s",
                       self.last_snapshot, f" in {pause:.1f} s" if pause else "")
        for t in self.trainers:  # first: none trains on during the pause
            ray.kill(t)
        time.sleep(pause)
        restore_snapshot(self.last_snapshot, self.shards, self.dense)
        self.trainers = self._start_trainers()
        return self._positions[self.last_snapshot]

    def close(self) -> None:
        """Kill the job's actors."""
        import ray

        for actor in [*self.trainers, *self.shards, self.dense]:
            ray.kill(actor)


class _ServerRestarted(RuntimeError):
    """Ray restarted a shard or the dense server during an epoch."""


def shut_down_splits(splits: list[Any], timeout_s: float = 30.0) -> None:
    """Stop the executor behind ``splits`` (a ``streaming_split``) and its read tasks before
    their handles are dropped, rather than leave that to garbage collection while a new
    dataset starts in its place."""
    import ray

    coordinator = getattr(splits[0], "_coord_actor", None) if splits else None
    if coordinator is None:
        return
    try:
        ray.get(coordinator.shutdown_executor.remote(), timeout=timeout_s)
    except Exception as err:  # noqa: BLE001 - the dataset is being replaced regardless
        logger.warning("the replaced dataset's executor did not shut down: %s", err)
    ray.kill(coordinator)


def run_batch_training(cfg: Config) -> dict[str, Any]:
    """Train on ``cfg.data.train`` with Ray actors (:class:`BatchRun`), evaluate, write
    metrics and a snapshot -> the metrics dict (also written to
    ``<output_dir>/metrics.json``). A missing input or a bad ``data.snapshot_root`` raises
    ConfigError before any actor starts, not after training."""
    import ray

    started = time.perf_counter()
    check_inputs(cfg, INPUTS)
    snapshot_root(cfg)
    run = BatchRun(cfg)
    try:
        run.train()
        fits = [_summed(f) for f in zip(*run.fits)] if run.fits else []
        # Every row of every epoch once: by the epochs' last attempts, or before their restore.
        metrics: dict[str, Any] = {
            "trainers": fits,
            "examples": run.resumed_rows + sum(f["examples"] for f in fits),
            "examples_per_s": sum(f["examples_per_s"] for f in fits),
            "restarts": run.supervisor.counts(),
        }
        for name in ("valid", "test"):
            path = getattr(cfg.data, name)
            if path:
                metrics[name] = ray.get(
                    run.trainers[0].evaluate.remote(read_examples(cfg, path)))
        stats = ray.get([s.stats.remote() for s in run.shards])
        metrics["table_rows"] = {slot.name: sum(s[slot.name]["rows"] for s in stats)
                                 for slot in cfg.table_slots}
        parts = ray.get([run.dense.pull.remote(part) for part in synced_parts(cfg)])
        metrics["dense_parts"] = {part: int(version)
                                  for part, (_, version) in zip(synced_parts(cfg), parts)}
        at_end = incarnations(run.shards, run.dense)
        metrics["snapshot"] = take_snapshot(cfg, run.shards, run.dense)
        if incarnations(run.shards, run.dense) != at_end:
            raise RuntimeError(
                "a parameter server restarted while the job took its last snapshot and came "
                "back without its updates since the one before; the snapshot "
                f"{metrics['snapshot']} is not the trained model: run the job again")
    finally:
        run.close()
    metrics["seconds"] = time.perf_counter() - started
    out = Path(cfg.data.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    return metrics


def _summed(fits: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One trainer's fits (one per epoch and attempt) as one summary: steps and loss of the
    last, examples and seconds summed."""
    examples, seconds = sum(f["examples"] for f in fits), sum(f["seconds"] for f in fits)
    return {**fits[-1], "examples": examples, "seconds": seconds,
            "examples_per_s": examples / max(seconds, 1e-9)}
