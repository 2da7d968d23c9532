"""Online training: the batch job's trainers fed by the Kafka stream, offsets in the snapshot.

``run_online_training(cfg, start)`` is what ``jobs/train_online.py`` runs. The same shard and
dense-server actors and the same ``Trainer``/``TrainLoop`` as the batch job
(``monolith_ray.train.job``) train on ``read_kafka_examples(...).streaming_split(n)``; only the
source differs, so a run can switch from one to the other (Monolith's batch -> online switch).
``start`` (default ``cfg.online.start``):

- ``earliest``: fresh parameters, each partition of ``kafka.topics.examples`` from its first
  offset.
- ``dump:<path>``: fresh parameters, trained first on the Parquet dump at ``path``
  (``monolith_ray.data.dump``, ``train.epochs`` passes), then on Kafka from the offsets the
  dump ends at, in the same run.
- ``snapshot:<path>``: parameters and offsets restored from a snapshot this module wrote:
  the newest complete one under a snapshot root, or one snapshot folder.

Snapshots (``monolith_ray.train.snapshots``) go to a new folder under ``data.snapshot_root``
every ``online.snapshot_every_s`` (daily by default), at the end of a bounded run, and
whenever :meth:`OnlineTraining.snapshot` is called; the newest ``data.snapshot_keep`` are
kept. Each is the batch job's snapshot plus ``offsets.json`` (``{"topic": ..., "offsets":
{"<partition>": <offset>}}``, where reading resumes).

Why a restore never skips an example (offsets never run ahead of the parameters):

1. A trainer counts a batch's offsets (``monolith_ray.data.offsets``) as committed only once
   its pushes have landed: every ``online.commit_every_steps`` steps, and at the step of a
   batch the stream went quiet after (a short batch, or a full one followed by nothing for
   ``online.max_batch_wait_s``), it waits for the pushes in flight (``TrainLoop.flush``)
   and commits the offsets of the steps before. So on a quiet stream nothing waits for more
   data to be committed: the stream's last rows reach a trainer within about
   ``max_batch_wait_s`` (the read task's flush, ``kafka_source.flushed``) and are committed
   within that again and a step; the job collects them at its next check or snapshot. A job's only
   trainer owns the dense parameters, as the batch job's does (no dense round trip a step),
   and publishes them to the dense server before each such commit.
2. A snapshot first collects the offsets every trainer has committed, then writes the
   parameters (which by then hold at least those steps) and the offsets: for each partition
   the end of the run of trained offsets from its start, so a block still in flight at another
   trainer is never jumped over. The snapshot counts only once its manifest is written, last.

What came after the snapshot is trained again after a restore: at least once, never skipped.

Online settings. The run has a ``dump`` phase when it starts from a dump, then a ``stream``
phase; after ``earliest`` or ``snapshot:`` the stream phase is the whole run (parameters
restored from a snapshot go on online, whatever the job that wrote it). As the stream phase
starts, the job switches every shard's slots that set an ``online`` optimizer to it
(``ShardServer.set_optimizers``; the others keep the one their table has), sets the dense
server's learning rate to ``online.dense_rate`` times ``train.dense_optimizer``'s
(``DenseServer.set_optimizer``, keeping its state), and runs trainers that step
micro-batches of ``online.batch_size`` examples with that dense rate
(``OnlineConfig.trainer_settings``; a single trainer owns the dense parameters and steps
them at that rate itself). After a dump phase the trainers are replaced by such trainers
(unless the settings are the same); a single new trainer takes the dense parameters and
optimizer state its predecessor published. Replaced trainers take the phase's settings. A
shard or dense server that Ray restarts comes back as its snapshot was written, or with the
batch settings if none was written since the run started: when the job's check next sees the
restart (every ``supervision.check_every_s``) it switches that server again, so at most that
long of a restarted server's updates use its batch settings. Each phase's settings are in
the metrics (``phases[name]["settings"]``; ``phases["stream"]["reapplied"]``: the servers
switched again after a restart).

Supervision (``monolith_ray.supervision``): Ray restarts a shard, the dense server or the
source monitor whose process dies. A trainer that dies cannot hand its split of the stream to
a new process, so the job replaces it: it collects the offsets the trainers have committed
(it does so every ``supervision.check_every_s`` anyway), kills the run's trainers, starts new
ones and reads the stream again from where the committed offsets end. What the lost trainers
had stepped on but not committed is trained again (at least once, never skipped); the new
trainers pay their jit compilation. A trainer lost during the dump phase trains the dump again
from its start. A stream read task whose process dies (or blocks of it lost with a node) is
not run again by Ray (``kafka_source.read_kafka_examples``): a trainer's iterator raises
:class:`~monolith_ray.data.kafka_source.SourceLost`, and the job does the same as for a lost
trainer (counted as ``stream`` restarts), so the stream is read again from the committed
offsets, not from the run's start. A restart that follows another of the same kind closely
waits first (``supervision.backoff_s``, doubling up to ``supervision.max_backoff_s``), so a
crash that repeats at one offset does not use the allowance up in a burst. Past
``train.max_failures`` restarts of either, or once a
Ray-restarted actor is dead for good, the run fails with
:class:`~monolith_ray.supervision.RestartLimitError` naming the process.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
import ray.exceptions

from monolith_ray.config import Config
from monolith_ray.config.inputs import check_inputs
from monolith_ray.data.batches import Batch, make_batch
from monolith_ray.data.dump import read_dump_offsets
from monolith_ray.data.kafka_source import (
    KafkaExampleReader,
    SourceLost,
    SourceMonitor,
    StreamSpec,
    drop_filler,
    earliest_offsets,
    read_kafka_examples,
    source_lost,
)
from monolith_ray.data.offsets import OffsetCoverage
from monolith_ray.metrics import TableReporter
from monolith_ray.supervision import Supervisor, actor_options
from monolith_ray.train.job import (
    Trainer,
    fit_dense,
    parquet_head,
    shut_down_splits,
    start_servers,
    trainer_options,
)
from monolith_ray.train.loop import IDLE, dense_optimizer
from monolith_ray.train.snapshots import restore_snapshot, snapshot_root, take_snapshot

logger = logging.getLogger(__name__)

# The config key naming what the online job reads (a dump or a snapshot, by online.start).
INPUTS = ("online.start",)


class StreamTrainer(Trainer):
    """A ``Trainer`` that also accounts for the Kafka offsets of what it trains. Its actor
    runs two calls at once (``max_concurrency=2``): ``consume`` trains while
    ``drain_committed`` hands the committed offsets to a snapshot."""

    def __init__(self, cfg: Config, shards: Any, dense: Any, local_dense: bool = False) -> None:
        super().__init__(cfg, shards, dense, local_dense)
        self._lock = threading.Lock()
        self._committed = OffsetCoverage()
        self._stepped = OffsetCoverage()
        # Handed to the job by drain_committed and not yet acknowledged, and its answer's number.
        self._handed = OffsetCoverage()
        self._handed_seq = 0
        self._queued: collections.deque[tuple[OffsetCoverage, bool]] = collections.deque()

    def consume(self, source: Any, epochs: int = 1) -> dict[str, Any]:
        """Train ``epochs`` passes over ``source`` (a Ray ``DataIterator`` of rows with the
        source columns: a Kafka stream or a dump), committing offsets as the module docstring
        says -> ``{"steps", "examples", "seconds", "examples_per_s", "loss", "first_step_s",
        "first_step_examples"}`` of this call (all committed when it returns);
        ``first_step_s``: seconds until the first step was done (the source starting and the
        first batch arriving included), which steady-state rates leave out."""
        every = self.cfg.online.commit_every_steps
        start, steps, examples, loss = time.perf_counter(), 0, 0, float("nan")
        first: tuple[float, int] | None = None
        self._queued.clear()
        for _ in range(epochs):
            for m in self.loop.train(self._tracked(source)):
                offsets, short = self._queued.popleft()
                self._stepped.update(offsets)
                steps, examples, loss = steps + 1, examples + m["examples"], m["loss"]
                if first is None:
                    first = (time.perf_counter() - start, examples)
                if steps % every == 0 or short:
                    self._publish()
                    self._commit()
            self._publish()
            self._commit()
        seconds = time.perf_counter() - start
        first_s, first_examples = first if first is not None else (seconds, examples)
        return {"steps": steps, "examples": examples, "seconds": seconds,
                "examples_per_s": examples / max(seconds, 1e-9), "loss": loss,
                "first_step_s": first_s, "first_step_examples": first_examples}

    def drain_committed(self, ack: int = -1) -> tuple[int, dict[int, list[tuple[int, int]]]]:
        """The offset ranges committed and not yet acknowledged -> (this answer's number,
        ranges). ``ack``: the number of the last answer the caller has merged, whose ranges
        are then forgotten; an answer the caller never got (a timeout) is not acknowledged,
        so its ranges come again with the next one. Memory: what was committed since the
        last acknowledged answer."""
        with self._lock:
            if ack == self._handed_seq:
                self._handed = OffsetCoverage()
            self._handed.update(self._committed)
            self._committed = OffsetCoverage()
            self._handed_seq += 1
            return self._handed_seq, self._handed.ranges()

    def _commit(self) -> None:
        """Every step so far has landed: its offsets become committed."""
        with self._lock:
            self._committed.update(self._stepped)
        self._stepped = OffsetCoverage()

    def _tracked(self, source: Any) -> Iterator[Batch | object]:
        """Batches of ``source`` (see :func:`timely_batches`), each one's offsets and
        shortness queued for the step that trains it (the loop reads ahead, so a batch handed
        out is not yet a batch stepped on); after a short one, ``IDLE``, so that the loop
        steps it now. When the stream goes quiet after a full batch, the newest batch handed
        out is marked as short (its step commits) and ``IDLE`` follows."""
        for table, short in timely_batches(source, self.cfg.train.batch_size,
                                           self.cfg.online.max_batch_wait_s):
            if table is None:  # quiet, nothing pending: commit at the newest batch's step
                if self._queued:
                    self._queued[-1] = (self._queued[-1][0], True)
                yield IDLE
                continue
            self._queued.append((OffsetCoverage.of_table(table), short))
            yield make_batch(table, self.cfg.slots, self.cfg.dense, self.cfg.task_names)
            if short:  # the stream is quiet: step and commit what came without waiting
                yield IDLE


_END = object()


def timely_batches(source: Any, batch_size: int, max_wait_s: float
                   ) -> Iterator[tuple[pa.Table | None, bool]]:
    """Tables of ``batch_size`` rows from ``source`` (a Ray ``DataIterator``) -> (table,
    short): a batch that has waited ``max_wait_s`` (wall clock, from its first row) for the
    rest is handed out with the rows it has (``short``), as is the last one. When a full
    batch left no row pending and nothing more came for ``max_wait_s``, ``(None, True)``:
    the stream is quiet (once a quiet spell; the wait for the next row then has no end).

    The iterator's blocks are read on a thread into a queue of at most 4, so a wait can end
    while a block is still to come; the stream's filler rows are dropped there. Memory: at
    most 4 blocks and one batch ahead."""
    blocks: queue.Queue[Any] = queue.Queue(maxsize=4)
    stop = threading.Event()

    def read() -> None:
        try:
            # One block prefetched: Ray Data hands a block on once that many more exist, and
            # the stream's flush (kafka_source.flushed) sends one more.
            for block in source.iter_batches(batch_size=None, batch_format="pyarrow",
                                             prefetch_batches=1):
                block = drop_filler(block)
                while not stop.is_set():
                    try:
                        blocks.put(block, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            blocks.put(_END)
        except BaseException as err:  # noqa: BLE001 - re-raised by the consumer
            if source_lost(err):  # the job reads the stream again (OnlineTraining._phase)
                lost = SourceLost(f"the stream's read task or blocks were lost: {err!r}")
                lost.__cause__ = err
                err = lost
            blocks.put(err)

    reader = threading.Thread(target=read, name="stream-blocks", daemon=True)
    reader.start()
    pending: list[pa.Table] = []
    rows, first = 0, 0.0  # rows pending, and when the first of them (or the last batch) came
    quiet = True  # the stream's quiet since the last batch is told (or no batch yet)
    try:
        while True:
            timeout = (None if not rows and quiet
                       else max(first + max_wait_s - time.monotonic(), 0.0))
            try:
                item = blocks.get(timeout=timeout)
            except queue.Empty:
                yield (pa.concat_tables(pending) if rows else None), True
                pending, rows, quiet = [], 0, True
                continue
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            if item.num_rows == 0:
                continue
            if not rows:
                first = time.monotonic()
            pending.append(item)
            rows += item.num_rows
            while rows >= batch_size:
                table = pa.concat_tables(pending)
                yield table.slice(0, batch_size), False
                rest = table.slice(batch_size)
                pending, rows = ([rest] if rest.num_rows else []), rest.num_rows
                first, quiet = time.monotonic(), False
        if rows:
            yield pa.concat_tables(pending), True
    finally:
        stop.set()


class OnlineTraining:
    """One online training run on Ray: servers, ``train.n_trainers`` stream trainers, the
    sources, snapshots. ``run()`` trains (blocking); ``snapshot()`` may be called from
    another thread meanwhile; ``close()`` kills the actors. ``last_snapshot`` is the folder
    of the newest snapshot this run took (None before its first). A dump or snapshot
    ``start`` names that does not exist raises ConfigError before any actor starts."""

    def __init__(self, cfg: Config, start: str | None = None) -> None:
        if start is not None:  # checked as the config checks online.start
            cfg = dataclasses.replace(cfg, online=dataclasses.replace(cfg.online, start=start))
        check_inputs(cfg, INPUTS)
        kind, _, where = cfg.online.start.partition(":")
        self.cfg = cfg
        self.topic = cfg.kafka.topics.examples
        self.snapshot_root = snapshot_root(cfg)
        self.last_snapshot: str | None = None
        self.shards, self.dense = start_servers(cfg, where if kind == "snapshot" else None,
                                                self._dense_norm(kind, where))
        self.supervisor = Supervisor(cfg.supervision)
        self.tables = TableReporter()
        self.trainers: list[Any] = []
        self._acks: dict[Any, int] = {}
        self.monitor: Any = None
        self.dump: dict[str, Any] | None = None
        self.coverage = OffsetCoverage()
        self._lock = threading.Lock()
        self._closed = threading.Event()  # set by close(); ends a restart's pause
        # The trainers' config: the batch settings for a dump phase, then the online ones.
        self.trainer_cfg = cfg
        self.online = False
        # Set once training reads the stream: after a dump phase, its parameters are trained.
        self.streaming = threading.Event()
        self._settled: dict[str, int] = {}  # restarts per server when last switched online
        self.reapplied: dict[str, int] = {}
        try:
            self.starts = self._starting_offsets(kind, where)
            if kind != "dump":
                self._go_online()
            # Trainers start after a restore: each takes the dense state as it starts.
            self.trainers = self._start_trainers()
            self.monitor = ray.remote(SourceMonitor).options(
                num_cpus=0, **actor_options(cfg.supervision)).remote()
            self.supervisor.watch_all({**{f"shard-{k}": s for k, s in enumerate(self.shards)},
                                       "dense": self.dense, "source-monitor": self.monitor})
        except BaseException:
            self.close()
            raise

    def _dense_norm(self, kind: str, where: str) -> dict[str, Any] | None:
        """The dense features' standardization for fresh parameters, fitted on the first
        ``data.dense_fit_rows`` examples of the start: the dump's head, or the topic's
        earliest examples (as many as are there; none: identity). None after a snapshot,
        whose parameters carry theirs, or without dense features."""
        if not self.cfg.dense or kind == "snapshot":
            return None
        rows, names = self.cfg.data.dense_fit_rows, [f.name for f in self.cfg.dense]
        if kind == "dump":
            return fit_dense(self.cfg, parquet_head(where, rows, names))
        spec = StreamSpec(self.cfg.kafka, self.topic, self.cfg.slots,
                          earliest_offsets(self.cfg.kafka, self.topic), stops="end",
                          max_records=rows, idle_timeout_s=2.0, limits=self.cfg.limits,
                          dense=self.cfg.dense, stage="dense-fit")
        tables = [t.select(names) for t in KafkaExampleReader(spec)]
        return fit_dense(self.cfg, pa.concat_tables(tables) if tables else None)

    def _start_trainers(self) -> list[Any]:
        self._acks = {}  # per trainer: the number of its last answer merged
        actor = ray.remote(StreamTrainer).options(**trainer_options(self.cfg),
                                                  max_concurrency=2)
        # A single trainer owns the dense parameters, as in the batch job: no dense round trip
        # a step; it publishes them to the dense server before each commit of offsets.
        return [actor.remote(self.trainer_cfg, self.shards, self.dense,
                             self.cfg.train.n_trainers == 1)
                for _ in range(self.cfg.train.n_trainers)]

    def settings(self) -> dict[str, Any]:
        """The settings trainers and servers train with now: examples a step, the dense
        optimizer, and per slot the row optimizer the job set (online: the slot's
        ``online`` one if it has one, else its ``optimizer``)."""
        train = self.trainer_cfg.train
        return {"batch_size": train.batch_size,
                "dense_optimizer": dataclasses.asdict(train.dense_optimizer),
                "slot_optimizers": {
                    s.name: dataclasses.asdict(s.online if self.online and s.online else
                                               s.optimizer) for s in self.cfg.slots}}

    def _go_online(self) -> None:
        """Switch the servers and the trainers' config to the online settings (see the
        module docstring); trainers already running are replaced if their settings change."""
        self.online = True
        self._switch_servers({"dense": self.dense,
                              **{f"shard-{k}": s for k, s in enumerate(self.shards)}})
        self._settled = self.supervisor.counts()
        online = dataclasses.replace(
            self.cfg, train=self.cfg.online.trainer_settings(self.cfg.train))
        if online == self.trainer_cfg:
            return
        self.trainer_cfg = online
        if self.trainers:  # they have published their dense state: the new ones take it
            for t in self.trainers:
                ray.kill(t)
            self.trainers = self._start_trainers()

    def _switch_servers(self, servers: Mapping[str, Any]) -> None:
        """Set the online optimizers on ``servers`` (names ``shard-K`` and ``dense``)."""
        optimizers = {s.name: s.online for s in self.cfg.slots if s.online is not None}
        dense = dense_optimizer(self.cfg.online.trainer_settings(self.cfg.train).dense_optimizer)
        refs = [handle.set_optimizer.remote(dense) if name == "dense"
                else handle.set_optimizers.remote(optimizers)
                for name, handle in servers.items()]
        ray.get(refs, timeout=self.cfg.train.call_timeout_s)

    def _check_servers(self) -> None:
        """Check the watched actors (RestartLimitError if one is dead for good); online,
        switch a shard or the dense server that Ray restarted since it was last switched
        again: it came back with the settings of the snapshot it restored, or the batch
        ones."""
        counts = self.supervisor.check()
        if not self.online:
            return
        servers = {"dense": self.dense, **{f"shard-{k}": s for k, s in enumerate(self.shards)}}
        restarted = {name: handle for name, handle in servers.items()
                     if counts.get(name, 0) > self._settled.get(name, 0)}
        if not restarted:
            return
        logger.warning("monolith_ray: switching %s to the online settings again after a "
                       "restart", ", ".join(restarted))
        self._switch_servers(restarted)
        for name in restarted:
            self._settled[name] = counts[name]
            self.reapplied[name] = self.reapplied.get(name, 0) + 1

    def offsets(self) -> dict[int, int]:
        """Per partition where reading resumes: the end of the committed offsets from its
        start (as of the last collection from the trainers)."""
        return self.coverage.resume(self.starts)

    def run(self) -> dict[str, Any]:
        """Train (on the dump, then) on the stream until its stop condition; snapshot at the
        end -> metrics: per phase the trainers' summaries, the source's counts, the final
        offsets."""
        started = time.perf_counter()
        phases = {}
        if self.dump is not None:
            dataset = ray.data.read_parquet(self.dump["path"], file_extensions=["parquet"],
                                            num_cpus=self.cfg.train.read_cpus)
            settings = self.settings()
            phases["dump"] = self._phase(lambda: dataset, self.cfg.train.epochs)
            phases["dump"]["settings"] = settings
            with self._lock:
                # The whole dump is trained: its offsets count even where it holds no row.
                for partition, end in self.dump["end"].items():
                    self.coverage.add(partition, self.dump["start"][partition], end)
            self._go_online()
        stream_starts, settings = self.offsets(), self.settings()
        self.streaming.set()
        phases["stream"] = self._phase(lambda: self._stream(self.offsets()), 1)
        phases["stream"].update(start_offsets=stream_starts, settings=settings,
                                reapplied=dict(self.reapplied))
        offsets = self.snapshot()
        return {"phases": phases,
                "examples": sum(p["examples"] for p in phases.values()),
                "offsets": offsets, "source": ray.get(self.monitor.totals.remote()),
                "snapshot": self.last_snapshot, "restarts": self.supervisor.check(),
                "seconds": time.perf_counter() - started}

    def snapshot(self) -> dict[int, int]:
        """Collect the trainers' committed offsets, then write the parameters and those
        offsets as a new snapshot under ``snapshot_root`` (pruning old ones) -> the offsets
        written."""
        with self._lock:
            self._collect()
            offsets = self.offsets()
            self.last_snapshot = take_snapshot(
                self.cfg, self.shards, self.dense,
                {"topic": self.topic, "offsets": {str(p): o for p, o in sorted(offsets.items())}})
        return offsets

    def _collect(self, trainers: list[Any] | None = None) -> None:
        """Add the offsets ``trainers`` (default: all) committed since the last collection
        to ``coverage``; a dead trainer's are lost (trained again after its restart), a
        trainer's that did not answer in ``train.call_timeout_s`` come with its next answer
        (``StreamTrainer.drain_committed``)."""
        import ray.exceptions

        for t in self.trainers if trainers is None else trainers:
            try:
                seq, ranges = ray.get(t.drain_committed.remote(self._acks.get(t, -1)),
                                      timeout=self.cfg.train.call_timeout_s)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                continue  # a timed-out answer is not acknowledged: its ranges come again
            self.coverage.update(OffsetCoverage(ranges))
            self._acks[t] = seq

    def close(self) -> None:
        """Kill the run's actors (the stream's read tasks end with their dataset)."""
        self._closed.set()
        for handle in [*self.trainers, *self.shards, self.dense, self.monitor]:
            if handle is not None:
                ray.kill(handle)

    def _starting_offsets(self, kind: str, where: str) -> dict[int, int]:
        """Per partition the offset training starts from; a snapshot's parameters are
        restored, a dump's offsets noted, on the way."""
        if kind == "earliest":
            return earliest_offsets(self.cfg.kafka, self.topic)
        if kind == "dump":
            self.dump = {"path": where, **read_dump_offsets(where)}
            topic, starts = self.dump["topic"], self.dump["start"]
        else:
            saved = restore_snapshot(where, self.shards, self.dense)
            if saved is None:
                raise FileNotFoundError(f"snapshot {where} has no offsets.json: a batch "
                                        f"snapshot cannot say where the stream resumes")
            topic, starts = saved["topic"], saved["offsets"]
        if topic != self.topic:
            raise ValueError(f"{kind} {where} is of topic {topic!r}, not {self.topic!r}")
        return {int(p): int(o) for p, o in starts.items()}

    def _stream(self, starts: Mapping[int, int]) -> Any:
        online = self.cfg.online
        try:  # only the monitor's counts depend on it: a monitor that is away costs nothing
            ray.get(self.monitor.new_dataset.remote(), timeout=self.cfg.train.call_timeout_s)
        except Exception as err:  # noqa: BLE001
            logger.warning("monolith_ray: the source monitor did not mark the new dataset: %r",
                           err)
        spec = StreamSpec(
            self.cfg.kafka, self.topic, self.cfg.slots, starts,
            stops="end" if online.stop == "end" else None,
            idle_timeout_s=online.idle_timeout_s or None,
            poll_records=online.poll_records, poll_timeout_ms=online.poll_timeout_ms,
            limits=self.cfg.limits, dense=self.cfg.dense, tasks=self.cfg.task_names)
        return read_kafka_examples(spec, read_tasks=online.read_tasks,
                                   block_bytes=online.block_bytes,
                                   buffer_bytes=online.buffer_bytes,
                                   num_cpus=self.cfg.train.read_cpus, monitor=self.monitor,
                                   flush_after_s=online.max_batch_wait_s)

    def _phase(self, make_dataset: Callable[[], Any], epochs: int) -> dict[str, Any]:
        """All trainers consume their split of ``make_dataset()``; snapshots on schedule, and
        every ``supervision.check_every_s`` the trainers' commits are collected and the
        watched actors checked. A trainer that dies is replaced with all its peers and
        ``make_dataset()`` is read again (see the module docstring); any other failure of a
        trainer raises here. The shards' table metrics are recorded at each check."""
        attempts = 0
        while True:
            attempts += 1
            dataset = make_dataset()
            splits = dataset.streaming_split(len(self.trainers), equal=False)
            refs = [t.consume.remote(s, epochs) for t, s in zip(self.trainers, splits)]
            try:
                fits = self._wait(refs)
                break
            except ray.exceptions.RayActorError as err:
                if self._closed.is_set() or isinstance(err, ray.exceptions.RayTaskError):
                    raise  # closed, or raised inside a live trainer (e.g. by a call it made)
                shut_down_splits(splits)
                died, lost = err, "trainers"
            except ray.exceptions.RayTaskError as err:
                if self._closed.is_set() or not isinstance(err.cause, SourceLost):
                    raise  # raised inside a live trainer by its own work
                shut_down_splits(splits)
                died, lost = err, "stream"
            finally:
                # An error's traceback keeps this frame: drop the splits' handles from it, so
                # the split coordinator and its endless read tasks end with the trainers.
                del dataset, splits, refs
            self.supervisor.restarted(lost, died, limit=(
                "train.max_failures", self.cfg.train.max_failures))
            self._stop_trainers()
            self._pause(lost, died)
            self.trainers = self._start_trainers()
        return {"trainers": fits, "examples": sum(f["examples"] for f in fits),
                "examples_per_s": sum(f["examples_per_s"] for f in fits),
                "attempts": attempts}

    def _pause(self, lost: str, died: BaseException) -> None:
        """Wait out the backoff before restarting ``lost`` (``Supervisor.backoff_s``), the
        servers still checked every ``supervision.check_every_s``; RuntimeError if the job
        is closed meanwhile."""
        pause = self.supervisor.backoff_s(lost)
        if not pause:
            return
        logger.warning("monolith_ray: %s restarted again within supervision.backoff_reset_s: "
                       "waiting %.1f s first", lost, pause)
        until = time.monotonic() + pause
        while (left := until - time.monotonic()) > 0:
            if self._closed.wait(min(left, self.cfg.supervision.check_every_s)):
                raise RuntimeError("the online job was closed while restarting") from died
            self._check_servers()

    def _wait(self, refs: list[Any]) -> list[dict[str, Any]]:
        """Wait for the trainers' ``consume`` calls -> their summaries; snapshot and check
        on schedule meanwhile. RayActorError if a trainer died."""
        snapshot_every = self.cfg.online.snapshot_every_s
        check_every = self.cfg.supervision.check_every_s
        now = time.monotonic()
        due, check_due = now + snapshot_every, now + check_every
        pending = list(refs)
        while pending:
            wake = min(due, check_due)
            done, pending = ray.wait(pending, num_returns=1,
                                     timeout=max(wake - time.monotonic(), 0.0))
            ray.get(done)
            now = time.monotonic()
            if now >= check_due or not pending:
                with self._lock:
                    self._collect()
                self._check_servers()
                self.tables.poll(self.shards, timeout_s=check_every)
                check_due = time.monotonic() + check_every
            if now >= due:
                self.snapshot()
                due = time.monotonic() + snapshot_every
        return ray.get(refs)

    def _stop_trainers(self) -> None:
        """Collect what the live trainers committed, then kill every trainer."""
        with self._lock:
            self._collect()
        for t in self.trainers:
            ray.kill(t)


def warn_unexpiring(cfg: Config) -> list[str]:
    """Warn (logged) of the table slots that set no ``expire_s``: a stream of new ids grows
    their tables for as long as the job runs -> their names."""
    kept = [s.name for s in cfg.table_slots if not s.expire_s > 0]
    if kept:
        logger.warning("monolith_ray: slots %s set no expire_s: their tables keep every id "
                       "they admit for the job's lifetime (about 180 bytes an id at dim 16 "
                       "with Adagrad); set slots[i].expire_s for ids that come and go",
                       ", ".join(kept))
    return kept


def run_online_training(cfg: Config, start: str | None = None) -> dict[str, Any]:
    """Run :class:`OnlineTraining` from ``start`` (default ``cfg.online.start``) to its stop
    condition, write ``<data.output_dir>/metrics.json`` -> the metrics. With
    ``online.stop: never`` and no idle timeout it runs until the job is stopped; the last
    snapshot is then at most ``online.snapshot_every_s`` old."""
    warn_unexpiring(cfg)
    run = OnlineTraining(cfg, start)
    try:
        metrics = run.run()
    finally:
        run.close()
    out = Path(cfg.data.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    return metrics
