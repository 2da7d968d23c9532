"""The online joiner on Kafka: ``features`` + ``actions`` -> ``examples``.

- :class:`StreamJoiner` — one joiner's Kafka loop around the join of ``stream/join.py``: a
  consumer of its share of both topics, a producer of examples and dead letters, and offset
  commits to a consumer group.
- :data:`JoinerActor` (``StreamJoiner`` as a Ray actor), :func:`start_joiners` (supervised
  by Ray) and :func:`run_joiners`.

**Partitions.** Producers key both topics by request id, so with equal partition counts a
request's feature and actions sit in the same partition number of both topics; joiner k of n
takes partitions p with ``p % n == k`` of both, and every join is local to one joiner. It
writes each example to its user's partition of ``examples`` (``stream.user_partitions``, one
small decode of ``user_id`` an example), so that a history shard reads only its users'
partitions; ``joiner.examples_key: request`` keeps the features partition's number instead.

**Commits.** The offsets :meth:`Joiner.commit_offsets` gives go to Kafka (consumer group
``group_id``, manual assignment), after the producer has flushed every example so far; see
``stream/join.py`` for what they cover and what a restart emits again.

**Kafka errors.** librdkafka retries lost connections and brokers by itself; a consumer error
it reports that is not fatal is counted (``consumer_errors``) and logged, and the joiner reads
on. A fatal consumer error, or a message the brokers did not take (after the producer's own
retries: its offsets must not be committed), makes :meth:`StreamJoiner.run` start the joiner
again in its process from the committed offsets, as a restarted actor would: new clients, a
fresh join state, what was read since the last commit joined and written again (at least
once). ``recoveries`` counts them; past ``joiner.recoveries_per_hour`` within an hour ``run``
raises. Before, one such error ended ``run`` for good while the actor stayed alive.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import ray
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from monolith_ray import metrics
from monolith_ray.config import (
    Config,
    DenseFeature,
    JoinerConfig,
    KafkaConfig,
    LimitsConfig,
    SlotConfig,
)
from monolith_ray.config.tasks import DEFAULT_TASKS, TaskConfig
from monolith_ray.gc_pause import gc_paused
from monolith_ray.stream.join import ACTIONS, COUNTERS, FEATURES, Joiner, spill_store
from monolith_ray.stream.kafka import DeliveryReports, librdkafka_config
from monolith_ray.stream.user_partitions import example_partitions

__all__ = ["DeliveryFailed", "JoinerActor", "StreamJoiner", "run_joiners", "start_joiners"]

logger = logging.getLogger(__name__)

RECOVERY_WINDOW_S = 3600.0  # joiner.recoveries_per_hour counts recoveries in this window
ERROR_LOG_EVERY_S = 10.0  # a consumer error librdkafka recovers from is logged at most this often
LEVELS = ("pending", "orphans")  # counters that are what waits now, not running counts


class DeliveryFailed(RuntimeError):
    """Messages of the joiner's were not written: its offsets are not committed."""


# librdkafka postpones a partition's next fetch by ``fetch.queue.backoff.ms`` (1000 ms by
# default in 2.x) once its local queue is over the thresholds. A joiner reads slower than the
# fetcher fills that queue, so on a busy stream it drained the queue and then sat through the
# rest of the backoff: 0.1 s empty polls, 0.5-0.7 s a run in ``benchmarks.stream``. 10 ms
# keeps a full queue from being refetched in a busy loop and never leaves the joiner idle long.
FETCH_QUEUE_BACKOFF_MS = 10


def consumer_config(kafka: KafkaConfig, group_id: str, start: str) -> dict[str, Any]:
    """The librdkafka settings of a joiner's consumer: ``kafka``'s brokers and security, group
    ``group_id``, offsets committed by the joiner itself (no auto commit or store), ``start``
    (earliest | latest) where the group has none, and partition-EOF events."""
    return {**librdkafka_config(kafka), "group.id": group_id, "enable.auto.commit": False,
            "enable.auto.offset.store": False, "auto.offset.reset": start,
            "enable.partition.eof": True, "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS}


class StreamJoiner:
    """Joiner ``index`` of ``count`` (default ``cfg.n_joiners``) on Kafka: reads partitions
    p with ``p % count == index`` of the features and actions topics from the offsets
    committed to ``cfg.group_id`` (else from ``cfg.start``), writes examples (to their
    user's partition, ``stream.user_partitions``; with ``examples_key: request``, to
    partition ``p % examples partitions``) and dead letters, and commits every ``commit_interval_s``.

    The clients are confluent-kafka's (librdkafka): they read and write records in C, where
    kafka-python spends more per record than the whole join. Step with :meth:`poll` or loop
    with :meth:`run`; :meth:`counters` any time (also from another thread: the actor allows
    two concurrent calls so that it answers during ``run``).
    """

    def __init__(self, kafka: KafkaConfig, cfg: JoinerConfig, index: int = 0,
                 count: int | None = None, timeout_s: float = 30.0,
                 slots: Sequence[SlotConfig] | None = None,
                 limits: LimitsConfig | None = None,
                 dense: Sequence[DenseFeature] | None = None,
                 tasks: Sequence[TaskConfig] = DEFAULT_TASKS) -> None:
        count = cfg.n_joiners if count is None else count
        if not 0 <= index < count:
            raise ValueError(f"joiner index must be in [0, {count}), got {index}")
        self.cfg, self.index, self.count, self._timeout_s = cfg, index, count, timeout_s
        self._kafka, self._topics = kafka, kafka.topics
        self._join_args = (slots, limits, dense, tasks)
        self.recoveries = self.consumer_errors = 0
        self._recovered_at: collections.deque[float] = collections.deque()
        self._error_logged = -math.inf  # when a consumer error was last logged
        # The running counts of the join states this joiner dropped in recoveries (counters()
        # adds them; the levels, pending and orphans, are the live state's alone), and the
        # lock that makes a drop and its counts one step for counters() on another thread.
        self._earlier = dict.fromkeys(COUNTERS, 0)
        self._counts_lock = threading.Lock()
        self._core: Joiner | None = None
        self._reported = metrics.Deltas()
        self._stop = threading.Event()
        self._open()

    def _open(self) -> None:
        """New clients and a fresh join state, each partition from its committed offset; on
        failure, what it opened is closed again."""
        cfg, kafka, index, count = self.cfg, self._kafka, self.index, self.count
        self._consumer = Consumer(consumer_config(kafka, cfg.group_id, cfg.start))
        self._reports = DeliveryReports(kafka)
        self._producer = self._reports.producer
        store = None
        if cfg.spill_dir:
            os.makedirs(cfg.spill_dir, exist_ok=True)
            store = spill_store(cfg, os.path.join(cfg.spill_dir,
                                                  f"joiner-{index}-of-{count}.sqlite"))
        core = Joiner(cfg, kafka.topics, store, *self._join_args)
        with self._counts_lock:
            self._core = core
        try:
            self._kinds = self._assign()
            self._n_examples = len(self._partitions(self._topics.examples))
        except BaseException:
            self._discard()
            raise
        self._caught_up = dict.fromkeys(self._kinds, False)
        # A partition with no record yet counts as heard from at the start, so it holds the
        # clock back for idle_partition_s: a first poll that finds only actions (their
        # features not fetched yet) must not move the clock past the impressions to come.
        self._last_record = dict.fromkeys(self._kinds, time.monotonic())
        self._last_commit = self._last_report = time.monotonic()
        self._read_to: dict[tuple[str, int], int] = {}  # the offset after the last one read

    def _partitions(self, topic: str) -> list[int]:
        found = self._consumer.list_topics(topic, timeout=self._timeout_s).topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise ValueError(f"topic {topic!r} not found: {found and found.error}")
        return sorted(found.partitions)

    def _assign(self) -> dict[tuple[str, int], tuple[str, int]]:
        """Assign this joiner's partitions of both topics, each from its committed offset
        (librdkafka's default) -> (topic, partition): (kind, partition)."""
        names = {FEATURES: self._topics.features, ACTIONS: self._topics.actions}
        found = {kind: self._partitions(name) for kind, name in names.items()}
        if found[FEATURES] != found[ACTIONS]:
            raise ValueError(
                f"topics {names[FEATURES]!r} and {names[ACTIONS]!r} must have the same "
                f"partitions so that keying by request id co-partitions them; got "
                f"{len(found[FEATURES])} and {len(found[ACTIONS])}")
        kinds = {(names[kind], p): (kind, p) for kind in (FEATURES, ACTIONS)
                 for p in found[kind] if p % self.count == self.index}
        tps = [TopicPartition(topic, p) for topic, p in kinds]
        # Each partition assigned at its offset (committed, else by ``cfg.start``): the
        # consumer then fetches at once instead of looking the committed offset up again.
        default = OFFSET_BEGINNING if self.cfg.start == "earliest" else OFFSET_END
        starts = []
        for tp in self._consumer.committed(tps, timeout=self._timeout_s):
            if tp.offset >= 0:
                self._core.seek(kinds[tp.topic, tp.partition][0], tp.partition, tp.offset)
            starts.append(TopicPartition(tp.topic, tp.partition,
                                         tp.offset if tp.offset >= 0 else default))
        self._consumer.assign(starts)
        return kinds

    def poll(self, timeout_s: float = 0.1) -> int:
        """Read one batch (waiting up to ``timeout_s`` for its first record), join it, move the
        clock, send the output, and commit if ``commit_interval_s`` has passed -> records read.

        A batch is what the consumer holds, up to ``max_poll_records``: waiting for a full one
        would hold the last records of a burst for the whole timeout. Python's cyclic garbage
        collector pauses meanwhile (see :func:`monolith_ray.gc_pause.gc_paused`)."""
        with gc_paused():
            consume, limit = self._consumer.consume, self.cfg.max_poll_records
            messages = consume(limit, 0)
            if not messages:
                messages = consume(1, timeout_s)
                if messages and limit > 1:
                    messages += consume(limit - 1, 0)
            batches: dict[tuple[str, int], list[tuple[int, bytes | None]]] = {}
            caught_up, last_record, now = self._caught_up, self._last_record, time.monotonic()
            topic, partition, append = None, -1, None
            for m in messages:
                err = m.error()
                if err is None:
                    # Runs of one partition are the rule: look the batch up only when it changes.
                    if m.partition() != partition or m.topic() != topic:
                        topic, partition = m.topic(), m.partition()
                        caught_up[topic, partition] = False
                        last_record[topic, partition] = now
                        append = batches.setdefault((topic, partition), []).append
                    append((m.offset(), m.value()))
                elif err.code() == KafkaError._PARTITION_EOF:
                    caught_up[m.topic(), m.partition()] = True
                    topic, partition = None, -1
                elif err.fatal():
                    raise KafkaException(err)
                else:  # informational: librdkafka recovers by itself
                    self.consumer_errors += 1
                    if now - self._error_logged >= ERROR_LOG_EVERY_S:
                        self._error_logged = now
                        logger.warning("joiner %d: consumer error %s (%d so far)", self.index,
                                       err, self.consumer_errors)
            n = 0
            for tp, batch in batches.items():
                self._core.add(*self._kinds[tp], batch)
                self._read_to[tp] = batch[-1][0] + 1
                n += len(batch)
            quiet_since = now - self.cfg.idle_partition_s
            self._core.advance(kp for tp, kp in self._kinds.items()
                               if not caught_up[tp] or last_record[tp] > quiet_since)
            self._send()
            if time.monotonic() - self._last_commit >= self.cfg.commit_interval_s:
                self.commit()
            elif time.monotonic() - self._last_report >= metrics.REPORT_EVERY_S:
                self.report()
        return n

    def _send(self) -> None:
        examples, dead = self._core.take_output()
        produce, topic, n = self._producer.produce, self._topics.examples, self._n_examples
        if self.cfg.examples_key == "user":
            partitions = example_partitions([v for _, v in examples], [p for p, _ in examples],
                                            n).tolist()
        else:
            partitions = [p % n for p, _ in examples]
        for (_, value), p in zip(examples, partitions):
            try:
                produce(topic, value, partition=p)
            except BufferError:
                self._produce(topic, value, p)
        for value in dead:
            self._produce(self._topics.dead_letter, value, None)
        self._producer.poll(0)

    def _produce(self, topic: str, value: bytes, partition: int | None) -> None:
        """Produce one message, waiting for room while the producer's queue is full."""
        kwargs = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(topic, value, **kwargs)
                return
            except BufferError:
                self._producer.poll(0.05)

    def commit(self) -> dict[tuple[str, int], int]:
        """Flush the producer, then commit the offsets :meth:`Joiner.commit_offsets` gives ->
        them. Raises (and commits nothing) if a message could not be written."""
        unsent = self._producer.flush(self._timeout_s)
        reports = self._reports
        if unsent or reports.failed:
            last = list(reports.recent)[-3:]
            raise DeliveryFailed(f"joiner {self.index}: {unsent} messages unsent, "
                                 f"{reports.failed} failed (last: {last}); offsets not "
                                 f"committed")
        offsets = self._core.commit_offsets()
        names = {FEATURES: self._topics.features, ACTIONS: self._topics.actions}
        if offsets:
            self._consumer.commit(offsets=[TopicPartition(names[kind], p, o)
                                           for (kind, p), o in offsets.items()],
                                  asynchronous=False)
        self._last_commit = time.monotonic()
        self.report()
        return offsets

    def report(self) -> None:
        """Record this joiner's metrics (``monolith_ray.metrics``): examples and dead letters
        written since the last report, and per partition read from its Kafka lag: the end
        offset as of the consumer's last fetch (no broker round trip) minus the read position."""
        self._last_report = time.monotonic()
        counts, step, joiner = self._counts(), self._reported.step, self.index
        for label, key in (("positive", "positives"), ("negative", "negatives")):
            metrics.EXAMPLES_JOINED.inc(step(key, counts[key]), joiner=joiner, label=label)
        metrics.DEAD_LETTERS.inc(step("dead_letters", counts["dead_letters"]), stage="joiner")
        watermarks = self._consumer.get_watermark_offsets
        for (topic, partition), position in self._read_to.items():
            end = watermarks(TopicPartition(topic, partition), cached=True)[1]
            if end >= 0:
                metrics.KAFKA_LAG.set(max(end - position, 0), process="joiner", topic=topic,
                                      partition=partition)

    def run(self, max_seconds: float | None = None, stop_when_idle_s: float | None = None,
            drain: bool = False) -> dict[str, int]:
        """Poll until :meth:`stop`, ``max_seconds`` (wall) have passed, or no record has come
        for ``stop_when_idle_s`` (wall); then, if ``drain`` (a finished replay), emit every
        waiting impression as a negative; commit -> :meth:`counters`."""
        start = idle_since = time.monotonic()
        while not self._stop.is_set():
            try:
                if self.poll():
                    idle_since = time.monotonic()
            except (KafkaException, DeliveryFailed) as err:
                self._recover(err)
                idle_since = time.monotonic()  # what was dropped is to be read again
            now = time.monotonic()
            if max_seconds is not None and now - start >= max_seconds:
                break
            if stop_when_idle_s is not None and now - idle_since >= stop_when_idle_s:
                break
        if drain:  # a bounded part of the stored impressions at a time, each sent on
            while not self._core.drain(whole=False):
                self._send()
            self._send()
        self.commit()
        return self.counters()

    def stop(self) -> None:
        """Make :meth:`run` return after its current poll."""
        self._stop.set()

    def _recover(self, err: Exception) -> None:
        """Start again from the committed offsets after ``err`` (see the module docstring);
        an attempt whose reopening fails (the brokers still away) is counted too and tried
        again a second later; RuntimeError naming ``joiner.recoveries_per_hour`` once that
        many came within the last hour."""
        self._discard()
        while True:
            now = time.monotonic()
            recent = self._recovered_at
            while recent and now - recent[0] > RECOVERY_WINDOW_S:
                recent.popleft()
            if len(recent) >= self.cfg.recoveries_per_hour:
                raise RuntimeError(f"joiner {self.index}: {len(recent) + 1} Kafka errors "
                                   f"within an hour, over joiner.recoveries_per_hour "
                                   f"({self.cfg.recoveries_per_hour}); last: {err}") from err
            recent.append(now)
            self.recoveries += 1
            logger.warning("joiner %d: starting again from its committed offsets after %s",
                           self.index, err)
            try:
                self._open()
                return
            except (KafkaException, ValueError) as failed:
                err = failed
                time.sleep(1.0)

    def _discard(self) -> None:
        """Close the clients and the join state without committing: what they held since the
        last commit is read and written again. Its running counts move to ``_earlier``."""
        with self._counts_lock:
            core, self._core = self._core, None
            if core is not None:
                for name, count in core.counters.items():
                    if name not in LEVELS:
                        self._earlier[name] += count
        # Written again from the committed offsets. Their delivery reports (purged) are never
        # served: the producer is dropped without a poll, so none is logged as a failure.
        self._producer.purge()
        self._consumer.close()
        if core is not None:
            core.close()

    def _counts(self) -> dict[str, int]:
        """Counts so far, over the join states dropped in recoveries too."""
        with self._counts_lock:
            live = self._core.counters if self._core is not None else {}
            return {name: (0 if name in LEVELS else self._earlier[name]) + live.get(name, 0)
                    for name in COUNTERS}

    def counters(self) -> dict[str, int]:
        """Counts so far (see ``COUNTERS``; examples written again after a recovery count
        again), ``recoveries``, ``consumer_errors`` and this joiner's index."""
        return {**self._counts(), "recoveries": self.recoveries,
                "consumer_errors": self.consumer_errors, "index": self.index}

    def close(self) -> None:
        """Commit, then close the clients and the spill store (nothing to do after a
        recovery that failed: it closed them)."""
        if self._core is None:
            return
        try:
            self.commit()
        finally:
            self._consumer.close()
            self._producer.flush(self._timeout_s)
            self._core.close()


JoinerActor = ray.remote(max_concurrency=2)(StreamJoiner)
"""``StreamJoiner`` as a Ray actor: ``JoinerActor.options(num_cpus=...).remote(kafka, cfg,
index, count)``; ``run`` blocks one of its two threads, the other answers ``counters`` and
``stop``."""


def start_joiners(cfg: Config, n: int | None = None) -> list[Any]:
    """Start ``n`` (default ``cfg.joiner.n_joiners``) joiner actors -> their handles. Ray
    restarts one whose process dies (up to ``supervision.max_restarts`` times) and retries its
    ``run`` on the new process, which resumes from the offsets committed to the consumer
    group: what the lost one had read since its last commit is joined and written again (at
    least once)."""
    from monolith_ray.supervision import actor_options

    n = cfg.joiner.n_joiners if n is None else n
    return [JoinerActor.options(num_cpus=cfg.joiner.cpus, **actor_options(cfg.supervision))
            .remote(cfg.kafka, cfg.joiner, k, n, slots=cfg.slots, limits=cfg.limits,
                    dense=cfg.dense, tasks=cfg.tasks)
            for k in range(n)]


def run_joiners(cfg: Config, n: int | None = None, *, max_seconds: float | None = None,
                stop_when_idle_s: float | None = None, drain: bool = False) -> list[dict[str, int]]:
    """Run ``n`` (default ``cfg.joiner.n_joiners``) joiner actors on ``cfg.kafka`` until each
    stops (see :meth:`StreamJoiner.run`) -> each one's counters. Needs a running Ray and
    ``cfg.kafka.bootstrap_servers``."""
    actors = start_joiners(cfg, n)
    try:
        counters = ray.get([a.run.remote(max_seconds, stop_when_idle_s, drain) for a in actors])
        ray.get([a.close.remote() for a in actors])
        return counters
    finally:
        for actor in actors:
            ray.kill(actor)
