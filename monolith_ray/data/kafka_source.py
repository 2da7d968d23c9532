"""An unbounded source of examples from a Kafka topic: a Ray Data dataset, or in-process.

Ray's ``read_kafka`` reads a bounded offset range once; online training needs a source that
keeps reading. :class:`KafkaExampleReader` is the reader itself, a plain iterator usable in
any process: it assigns the partitions of a :class:`StreamSpec` to a confluent-kafka
(librdkafka) consumer (no consumer group joined, nothing committed) at each one's start
offset and polls micro-batches, each turned into an Arrow table of :func:`source_schema` —
the example columns (``monolith_ray.schemas``, dense features included) plus ``_partition``,
``_offset`` and ``_from_offset`` (``monolith_ray.data.offsets``), so whoever trains on a row
knows exactly which offsets it consumed.

**Speed.** A micro-batch is converted by ``slot_columns.ExampleDecoder``: a typed msgspec
decode of each message in C, checks over the whole batch, then one Arrow conversion per
column, with Python's cyclic collector paused meanwhile. librdkafka reads and decodes records
in C: 0.9-2.1 µs of CPU a record of the synthetic stream (``monolith_ray.data.synth``), where
kafka-python, which this source used before, took 8.4 µs, as much as the rest of the source
now takes. ``python -m benchmarks.kafka_source`` measures (figures in its docstring).

**Bad records.** A record is refused on its own, and the rest of its micro-batch trains:

- every record gets the verdict of ``messages.parse_example`` against the spec's slots, dense
  features and limits (a slot or dense feature the model does not have, a value no hash can
  take such as a lone surrogate, an event time out of bounds, not JSON, a tombstone...):
  the records the fast decode does not admit are parsed alone, which names the reason;
- if building a micro-batch's table raises all the same, it is rebuilt record by record and
  only the records that fail alone are refused.

A refused record is counted (``malformed``), remembered among the last ``errors``, and
written to ``kafka.topics.dead_letter`` (``monolith_ray.data.dead_letters``); a dead letter
that cannot be written is counted (``dead_letters_failed``) and logged and never stops the
read. Dead letters are flushed before the micro-batch they were refused from is yielded or
reported, and the next row of the partition accounts for the refused offsets in its
``_from_offset``: once that row has trained and is committed, a restore resumes past the bad
record. A bad record with no later row of its partition yet (the last of its partition so
far) is accounted for by no row: a restart from a snapshot taken before the next row trained
reads it again and writes its dead letter again (same partition and offset). Either way it
is isolated each time it is read, never a failure. Each reading stage (a dump, an online
run) writes its own dead letter of a record it refuses.

:func:`read_kafka_examples` makes the same reader a Ray Data ``Dataset``: a custom
``Datasource`` whose read tasks are generators, each looping over its share of the partitions
for as long as the stream runs, so ``streaming_split(n)`` feeds n trainers. What Ray Data 2.60
needs for that, measured:

- Output blocks are reshaped to ``target_max_block_size`` (128 MiB by default) *before* they
  leave a read task; a task that never ends would never hand one out. The dataset's own
  context sets it to ``block_bytes``, so a block leaves once that much is read (blocks are cut
  to about that size; a bounded read flushes at its end). A slow stream would wait for a
  block to fill: with ``flush_after_s`` rows that waited that long are completed into a
  block by filler rows (:func:`flushed`), which consumers drop.
- Ray Data splits each read task's blocks further when it has fewer tasks than its default
  parallelism (into blocks of a row or two here); the read asks for as many blocks as tasks.
- Backpressure: a generator task pauses once two of its blocks wait unconsumed, and the
  executor stops taking blocks once the dataset holds ``buffer_bytes`` in the object store,
  so a slow trainer pauses the polls instead of growing memory.

Stop conditions (for bounded reads; none = unbounded): stop offsets per partition or
``"end"`` (each partition's end as of the read's first fetch), a number of examples, or an
idle timeout. Offsets are fetched from where they are asked (``auto.offset.reset=error``), so
a start that retention deleted raises rather than silently reading elsewhere. Partition ends
are the high watermarks of the consumer's fetches, never ListOffsets (which the test broker,
Tansu, under-reports: ``monolith_ray.stream.kafka``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import operator
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import repeat
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import ray
import ray.exceptions
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaTopicPartition
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from monolith_ray import metrics
from monolith_ray.config import DenseFeature, KafkaConfig, LimitsConfig, SlotConfig
from monolith_ray.data.dead_letters import DeadLetterWriter
from monolith_ray.data.offsets import FROM_OFFSET, OFFSET, PARTITION, SOURCE_FIELDS
from monolith_ray.data.slot_columns import ExampleDecoder
from monolith_ray.gc_pause import gc_paused
from monolith_ray.messages import refusal_reason
from monolith_ray.schemas import example_schema
from monolith_ray.stream.kafka import librdkafka_config

logger = logging.getLogger(__name__)

_KEPT_ERRORS = 10
_LOGGED_ERRORS = 5
_PARTITION_FETCH_BYTES = 1 << 20
_FETCH_BYTES = 8 << 20
_QUEUED_KBYTES = 16 << 10  # librdkafka's prefetch queue (64 MiB by default)
# librdkafka postpones a partition's next fetch this long once its prefetch queue is full
# (1 s by default): the reader would drain the queue and then wait (see stream/joiner.py).
_FETCH_QUEUE_BACKOFF_MS = 10
_METADATA_TIMEOUT_S = 30.0

Stops = Mapping[int, int] | Literal["end"] | None


def source_schema(slots: Sequence[SlotConfig], dense: Sequence[DenseFeature] = (),
                  tasks: Sequence[str] = ()) -> pa.Schema:
    """The example schema of ``slots``, ``dense`` and ``tasks`` plus the source columns
    ``_partition`` (int32), ``_offset`` and ``_from_offset`` (int64)."""
    schema = example_schema(slots, dense, tasks)
    for field in SOURCE_FIELDS:
        schema = schema.append(field)
    return schema


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """What to read: ``topic`` at ``kafka``, each partition of ``starts`` from its offset.

    - ``stops``: per partition the offset to stop before, ``"end"`` (each partition's end as
      of the read's first fetch from it), or None (never stop on offsets).
    - ``max_records``: stop after this many examples (per reader, i.e. per read task).
    - ``idle_timeout_s``: stop once no record has arrived for this long (wall clock, not
      counting time the reader waits for its consumer to take a micro-batch).
    - ``poll_records``, ``poll_timeout_ms``: most records per poll (one micro-batch) and how
      long a poll waits for them.
    - ``dense``: the model's dense features: their columns follow the slots' (null where a
      message does not give one); a message naming another is refused.
    - ``limits``: the bounds records are validated against (event times); None: the
      defaults of ``LimitsConfig``.
    - ``stage``: names the reader in its dead letters (``source`` for training, ``dump``).
    - ``heartbeats``: after a poll that made no row, yield an empty table, so that the one
      iterating can act on time passing (:func:`read_kafka_examples` flushes blocks so).
    - ``tasks``: the config's task names: each after the first has a ``label_<task>`` column,
      from the message's ``labels`` (null where it has none).
    """

    kafka: KafkaConfig
    topic: str
    slots: tuple[SlotConfig, ...]
    starts: Mapping[int, int]
    stops: Stops = None
    max_records: int | None = None
    idle_timeout_s: float | None = None
    poll_records: int = 2000
    poll_timeout_ms: int = 200
    limits: LimitsConfig | None = None
    stage: str = "source"
    heartbeats: bool = False
    dense: tuple[DenseFeature, ...] = ()
    tasks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.starts:
            raise ValueError("starts: name at least one partition")
        if isinstance(self.stops, Mapping) and set(self.stops) != set(self.starts):
            raise ValueError(f"stops name partitions {sorted(self.stops)}, starts name "
                             f"{sorted(self.starts)}")
        if self.poll_records < 1 or self.poll_timeout_ms < 1:
            raise ValueError("poll_records and poll_timeout_ms must be >= 1")

    def for_partitions(self, partitions: Sequence[int]) -> StreamSpec:
        """This spec restricted to ``partitions``."""
        stops = self.stops
        if isinstance(stops, Mapping):
            stops = {p: stops[p] for p in partitions}
        return dataclasses.replace(self, starts={p: self.starts[p] for p in partitions},
                                   stops=stops)


def earliest_offsets(kafka: KafkaConfig, topic: str) -> dict[int, int]:
    """Partition -> its first offset still held by the brokers, for every partition of
    ``topic`` (ValueError if the topic is unknown)."""
    consumer = KafkaConsumer(**kafka.client_kwargs(), group_id=None, enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise ValueError(f"unknown topic {topic!r}")
        tps = [KafkaTopicPartition(topic, p) for p in sorted(partitions)]
        return {tp.partition: int(offset) for tp, offset in consumer.beginning_offsets(tps).items()}
    finally:
        consumer.close()


class KafkaExampleReader:
    """Iterate micro-batches of examples (``pa.Table`` of :func:`source_schema`) from
    ``spec``; each pass opens its own consumer (and, at its first bad record, a dead-letter
    producer) and closes it when the pass ends.

    While and after iterating: ``positions`` (partition -> offset after the last record
    read), ``records`` (examples yielded), ``malformed`` (records refused, each sent to the
    dead-letter topic), ``dead_letters_failed`` (dead letters not written) and ``errors``
    (the last few ``(partition, offset, reason)``). ``report``, if given, is called with
    :meth:`stats` after every poll that read records and when the pass ends.
    """

    def __init__(self, spec: StreamSpec, report: Callable[[dict[str, Any]], None] | None = None
                 ) -> None:
        self.spec = spec
        self.report = report
        self.schema = source_schema(spec.slots, spec.dense, spec.tasks)
        self.positions = {int(p): int(o) for p, o in spec.starts.items()}
        self.records = 0
        self.malformed = 0
        self.dead_letters_failed = 0
        self.errors: deque[tuple[int, int, str]] = deque(maxlen=_KEPT_ERRORS)
        self._decoder = ExampleDecoder(spec.slots, spec.dense, spec.limits, spec.tasks)
        self._dead: DeadLetterWriter | None = None
        self._failed_before = 0  # dead letters not written by earlier passes

    def stats(self) -> dict[str, Any]:
        """``{"records", "malformed", "dead_letters_failed", "positions", "errors", "pid"}``
        as plain JSON-able values (``pid``: the reading process's)."""
        return {"records": self.records, "malformed": self.malformed,
                "dead_letters_failed": self.dead_letters_failed,
                "positions": dict(self.positions), "errors": [list(e) for e in self.errors],
                "pid": os.getpid()}

    def __iter__(self) -> Iterator[pa.Table]:
        spec = self.spec
        consumer = Consumer(consumer_config(spec.kafka, spec.poll_timeout_ms))
        self._dead = DeadLetterWriter(spec.kafka, spec.stage)
        try:
            tps = self._assign(consumer)
            yield from self._poll_loop(consumer, tps)
        finally:
            consumer.close()
            self._dead.close()
            self._failed_before = self.dead_letters_failed = (self._failed_before
                                                              + self._dead.failed)
            self._dead = None
        if self.report is not None:
            self.report(self.stats())

    def _assign(self, consumer: Consumer) -> dict[int, TopicPartition]:
        topic = consumer.list_topics(self.spec.topic, timeout=_METADATA_TIMEOUT_S
                                     ).topics.get(self.spec.topic)
        known = set() if topic is None else set(topic.partitions)
        missing = sorted(set(self.positions) - known)
        if missing:
            raise ValueError(f"topic {self.spec.topic!r} has no partitions {missing} "
                             f"(it has {sorted(known)})")
        tps = {p: TopicPartition(self.spec.topic, p) for p in self.positions}
        consumer.assign([TopicPartition(self.spec.topic, p, self.positions[p])
                         for p in self.positions])
        return tps

    def _poll_loop(self, consumer: Consumer, tps: dict[int, TopicPartition]
                   ) -> Iterator[pa.Table]:
        spec = self.spec
        if spec.stops == "end":
            stops: dict[int, int | None] = dict.fromkeys(tps)
        elif spec.stops is None:
            stops = {}
        else:
            stops = {int(p): int(o) for p, o in spec.stops.items()}
        # Per partition, the offset after the last record that became a row: a row accounts
        # for every offset from there to its own (the refused ones in between included).
        uncovered = dict(self.positions)
        paused: set[int] = set()
        heard = reported = time.monotonic()
        while True:
            active = [p for p in tps if not _reached(self.positions[p], stops, p)]
            if not active:
                return
            budget = spec.poll_records
            if spec.max_records is not None:
                budget = min(budget, spec.max_records - self.records)
                if budget <= 0:
                    return
            if spec.idle_timeout_s is not None and time.monotonic() - heard > spec.idle_timeout_s:
                return
            done = [tps[p] for p in tps if p not in active and p not in paused]
            if done:
                consumer.pause(done)
                paused.update(tp.partition for tp in done)
            messages = _consume(consumer, budget, spec.poll_timeout_ms / 1000)
            with gc_paused():
                rows = self._take(messages, stops, time.time())
                table = self._table(rows, uncovered) if rows is not None and len(rows) else None
            if stops and None in stops.values():
                for p, tp in tps.items():
                    if stops[p] is None:
                        stops[p] = _end_offset(consumer, tp)
            self._flush_dead_letters()
            if time.monotonic() - reported >= metrics.REPORT_EVERY_S:
                reported = time.monotonic()
                self._report_lag(consumer, tps)
            if table is not None:  # counted before the report, which may be the last
                self.records += table.num_rows  # for a long while on a quiet stream
                metrics.EXAMPLES_READ.inc(table.num_rows, topic=spec.topic)
            if rows is not None:
                heard = time.monotonic()
                if self.report is not None:
                    self.report(self.stats())
            if table is not None:
                yield table
                # Time spent paused at the yield (a consumer behind, backpressure) is not
                # time without records.
                heard = time.monotonic()
            elif spec.heartbeats:
                yield self.schema.empty_table()

    def _report_lag(self, consumer: Consumer, tps: dict[int, TopicPartition]) -> None:
        """Record each partition's Kafka lag: its end offset as of the consumer's last fetch
        (no broker round trip) minus the read position."""
        for p, tp in tps.items():
            end = _end_offset(consumer, tp)
            if end is not None:
                metrics.KAFKA_LAG.set(max(end - self.positions[p], 0), process="source",
                                      topic=tp.topic, partition=p)

    def _take(self, messages: list[Message], stops: dict[int, int | None], now: float
              ) -> _Rows | None:
        """The records of ``messages`` before their partitions' stops, validated at wall
        clock ``now`` into rows (None if there was no record); the others refused. Moves
        ``positions`` past them."""
        records = _records(messages)
        if not records:
            return None
        partitions = np.fromiter(map(Message.partition, records), np.int32, len(records))
        offsets = np.fromiter(map(Message.offset, records), np.int64, len(records))
        keep = np.ones(len(records), dtype=bool)
        for p in np.unique(partitions).tolist():
            at = partitions == p
            if stops.get(p) is not None:
                keep[at] = offsets[at] < stops[p]
            if keep[at].any():
                self.positions[p] = int(offsets[at & keep].max()) + 1
        if not keep.all():
            records = [records[i] for i in np.flatnonzero(keep)]
            partitions, offsets = partitions[keep], offsets[keep]
        raws = list(map(Message.value, records))
        examples, refused = self._decoder.decode(raws, now)
        for i, err in refused:
            self._refuse(int(partitions[i]), int(offsets[i]), raws[i], err)
        rows = _Rows(self._decoder, examples, partitions, offsets, raws)
        if refused:
            kept = np.fromiter(map(operator.is_not, examples, repeat(None)), bool, len(examples))
            rows = rows.select(np.flatnonzero(kept).tolist())
        return rows

    def _table(self, rows: _Rows, uncovered: dict[int, int]) -> pa.Table | None:
        """The table of ``rows``; if building it raises, the table of the rows that convert
        alone, the others refused (None if none is left)."""
        try:
            return rows.table(self.schema, uncovered)
        except Exception as err:  # noqa: BLE001 - find the records that fail, keep the rest
            logger.warning("a micro-batch of %d records of %s failed to convert (%s); "
                           "converting it record by record", len(rows), self.spec.topic,
                           refusal_reason(err))
        keep = []
        for i in range(len(rows)):
            try:
                rows.select([i]).table(self.schema, dict(uncovered))
            except Exception as err:  # noqa: BLE001 - this record is the bad one
                self._refuse(*rows.source(i), err)
            else:
                keep.append(i)
        return rows.select(keep).table(self.schema, uncovered) if keep else None

    def _refuse(self, partition: int, offset: int, raw: bytes | None, err: Exception) -> None:
        """Count, remember and dead-letter the record at ``partition``/``offset``."""
        reason = refusal_reason(err)
        self.malformed += 1
        self.errors.append((partition, offset, reason))
        if self.malformed <= _LOGGED_ERRORS:
            logger.warning("refusing the example at %s[%d]@%d: %s",
                           self.spec.topic, partition, offset, reason)
        assert self._dead is not None
        self._dead.send(self.spec.topic, partition, offset, reason, raw)

    def _flush_dead_letters(self) -> None:
        assert self._dead is not None
        self._dead.flush()
        self.dead_letters_failed = self._failed_before + self._dead.failed


def consumer_config(kafka: KafkaConfig, fetch_wait_ms: int) -> dict[str, Any]:
    """The librdkafka settings of a source's consumer: ``kafka``'s brokers and security, no
    commits and no offset reset (a start that retention deleted is an error), fetches that
    wait at most ``fetch_wait_ms`` for records, a bounded prefetch queue. The group id is
    librdkafka's requirement only: partitions are assigned, never subscribed, so no group
    is joined."""
    return {**librdkafka_config(kafka), "group.id": "monolith_ray-source",
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            "auto.offset.reset": "error", "fetch.wait.max.ms": fetch_wait_ms,
            "max.partition.fetch.bytes": _PARTITION_FETCH_BYTES,
            "fetch.max.bytes": _FETCH_BYTES, "queued.max.messages.kbytes": _QUEUED_KBYTES,
            "fetch.queue.backoff.ms": _FETCH_QUEUE_BACKOFF_MS}


def _consume(consumer: Consumer, budget: int, timeout_s: float) -> list[Message]:
    """At most ``budget`` messages: those the consumer holds, else as soon as one arrives
    (waiting at most ``timeout_s``) with those that came with it."""
    messages = consumer.consume(budget, 0)
    if messages:
        return messages
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    return [first, *consumer.consume(budget - 1, 0)] if budget > 1 else [first]


def _records(messages: list[Message]) -> list[Message]:
    """``messages`` without the end-of-partition events; KafkaException at any other
    error (such as a start offset out of range)."""
    if not any(map(Message.error, messages)):
        return messages
    for message in messages:
        err = message.error()
        if err is not None and err.code() != KafkaError._PARTITION_EOF:
            raise KafkaException(err)
    return [m for m in messages if m.error() is None]


def _end_offset(consumer: Consumer, tp: TopicPartition) -> int | None:
    """``tp``'s end offset as of the consumer's last fetch from it (None before one)."""
    high = consumer.get_watermark_offsets(tp, cached=True)[1]
    return None if high < 0 else int(high)


def _reached(position: int, stops: dict[int, int | None], partition: int) -> bool:
    stop = stops.get(partition)
    return stop is not None and position >= stop


class _Rows:
    """Validated examples of one micro-batch (structs of an ``ExampleDecoder``) with the
    partition, offset and raw message of each, built into a table a column at a time."""

    def __init__(self, decoder: ExampleDecoder, examples: list[Any], partitions: np.ndarray,
                 offsets: np.ndarray, raws: list[bytes]) -> None:
        self.decoder, self.examples, self.raws = decoder, examples, raws
        self.partitions, self.offsets = partitions, offsets

    def __len__(self) -> int:
        return len(self.examples)

    def source(self, i: int) -> tuple[int, int, bytes]:
        """Row ``i``'s partition, offset and raw message."""
        return int(self.partitions[i]), int(self.offsets[i]), self.raws[i]

    def select(self, indices: Sequence[int]) -> _Rows:
        """The rows at ``indices``, in that order."""
        at = np.asarray(indices, dtype=np.int64)
        return _Rows(self.decoder, [self.examples[i] for i in indices], self.partitions[at],
                     self.offsets[at], [self.raws[i] for i in indices])

    def table(self, schema: pa.Schema, uncovered: dict[int, int]) -> pa.Table:
        """The rows as a table of ``schema``. ``uncovered`` (partition -> the offset after
        its last row so far) gives each partition's first row its ``_from_offset`` and, once
        the table is built, moves past the last row (rows of a partition are in offset
        order)."""
        partition, offset = self.partitions, self.offsets
        from_offset = np.empty_like(offset)
        ends = {}
        for p in np.unique(partition).tolist():
            at = np.flatnonzero(partition == p)
            from_offset[at[0]] = uncovered[p]
            from_offset[at[1:]] = offset[at[:-1]] + 1
            ends[p] = int(offset[at[-1]]) + 1
        columns = self.decoder.columns(self.examples)
        columns[PARTITION] = pa.array(partition)
        columns[OFFSET] = pa.array(offset)
        columns[FROM_OFFSET] = pa.array(from_offset)
        table = pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)
        uncovered.update(ends)
        return table


class SourceMonitor:
    """What the read tasks of one stream report: a Ray actor (``ray.remote(SourceMonitor)``)
    that each task tells its :meth:`KafkaExampleReader.stats` after every poll, so the
    malformed count and the read positions of a running dataset can be asked for."""

    def __init__(self) -> None:
        self._tasks: dict[int, dict[str, Any]] = {}  # the current dataset's tasks
        self._earlier = dict.fromkeys(_SUMMED, 0)  # the counts of the datasets before it
        self._earlier_errors: deque[Any] = deque(maxlen=_KEPT_ERRORS)

    def report(self, task: int, stats: dict[str, Any]) -> None:
        self._tasks[task] = stats

    def new_dataset(self) -> None:
        """A new dataset of the stream starts (the job reads it again): the tasks' counts so
        far are kept in the totals, their positions and processes are no longer current."""
        for stats in self._tasks.values():
            for key in _SUMMED:
                self._earlier[key] += stats[key]
            self._earlier_errors.extend(stats["errors"])
        self._tasks = {}

    def totals(self) -> dict[str, Any]:
        """Examples read, records refused and dead letters not written over all tasks of
        every dataset so far, the current dataset's read position of each partition it has
        read, the last errors, and per task of the current dataset the process that last
        reported (``pids``)."""
        tasks = self._tasks.values()
        return {**{key: self._earlier[key] + sum(t[key] for t in tasks) for key in _SUMMED},
                "positions": {p: o for t in tasks for p, o in t["positions"].items()},
                "errors": [*self._earlier_errors, *(e for t in tasks for e in t["errors"])],
                "pids": {k: t.get("pid") for k, t in self._tasks.items()}}


_SUMMED = ("records", "malformed", "dead_letters_failed")  # SourceMonitor's running counts


class KafkaExamplesDatasource(Datasource):
    """The Ray Data datasource of :func:`read_kafka_examples`: one read task per group of
    partitions (every ``read_tasks``-th one), whatever parallelism Ray asks for, as each task
    runs for the whole stream."""

    def __init__(self, spec: StreamSpec, read_tasks: int = 1, monitor: Any = None,
                 block_bytes: int | None = None, flush_after_s: float | None = None) -> None:
        super().__init__()
        partitions = sorted(spec.starts)
        n = min(read_tasks, len(partitions))
        self.spec = spec
        self.groups = [partitions[k::n] for k in range(n)]
        self.monitor = monitor
        self.block_bytes, self.flush_after_s = block_bytes, flush_after_s

    def get_name(self) -> str:
        return "KafkaExamples"

    def estimate_inmemory_data_size(self) -> None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        schema = source_schema(self.spec.slots, self.spec.dense, self.spec.tasks)
        unknown = BlockMetadata(num_rows=None, size_bytes=None, input_files=None,
                                exec_stats=None)
        return [ReadTask(functools.partial(_read, self.spec.for_partitions(group), k,
                                           self.monitor, self.block_bytes, self.flush_after_s),
                         unknown, schema=schema, per_task_row_limit=per_task_row_limit)
                for k, group in enumerate(self.groups)]


FILLER_PARTITION = -1
"""The ``_partition`` of filler rows (see :func:`flushed`): no example; consumers drop them
(:func:`drop_filler`)."""


def _read(spec: StreamSpec, task: int, monitor: Any, block_bytes: int | None = None,
          flush_after_s: float | None = None) -> Iterator[pa.Table]:
    """One read task: its partitions' micro-batches for as long as its stream runs; with
    ``flush_after_s``, blocks flushed as :func:`flushed` says."""
    report = None if monitor is None else functools.partial(_report, monitor, task)
    if flush_after_s is None or block_bytes is None:
        yield from KafkaExampleReader(spec, report)
        return
    reader = KafkaExampleReader(dataclasses.replace(spec, heartbeats=True), report)
    yield from flushed(reader, reader.schema, block_bytes, flush_after_s)


def flushed(tables: Iterator[pa.Table], schema: pa.Schema, block_bytes: int,
            flush_after_s: float, clock: Callable[[], float] = time.monotonic
            ) -> Iterator[pa.Table]:
    """``tables`` (with empty ones as heartbeats), and filler rows enough to fill a block
    after rows have waited ``flush_after_s`` (wall clock) without filling one, or once the
    stream has been quiet that long since a row that no flush has followed yet.

    Ray Data hands a read task's rows on only in blocks of ``block_bytes``, and its iterator
    hands a consumer a block only once the next one exists (measured on Ray 2.60); on a quiet
    stream the last rows of a burst would wait for the next burst (for ever, if none comes),
    untrained and uncommitted. Filler rows (``_partition`` = :data:`FILLER_PARTITION`, no slot
    values, weight 0) complete the block and make two more. What Ray Data holds is modelled
    from the bytes it was given; the second rule does not trust that model, so rows a wrong
    model counts as handed on still leave once the stream is quiet. Cost: at most three
    fillers of up to ``block_bytes`` each per ``flush_after_s`` while rows wait, one such
    flush per quiet spell, none while the stream flows and blocks fill."""
    held_bytes, held_rows, since = 0, 0, 0.0  # Ray Data's buffer in this task, as modelled
    unflushed, last = False, 0.0  # a row yielded since the last flush; when the last came
    for table in tables:
        now = clock()
        if table.num_rows:
            if not held_rows:
                since = now
            held_bytes += table.nbytes
            held_rows += table.num_rows
            yield table
            # Ray Data hands on a block once its buffer passes block_bytes; from 1.5 times
            # that, it cuts one of about block_bytes and keeps the rest.
            while held_bytes > block_bytes:
                if held_bytes < 1.5 * block_bytes:
                    held_bytes, held_rows = 0, 0
                else:
                    kept = held_bytes - block_bytes
                    held_rows = max(1, held_rows * kept // held_bytes)
                    held_bytes, since = kept, now
            # Quiet is counted from after the yield: a consumer that held it back (backpressure)
            # is no quiet stream.
            now = clock()
            unflushed, last = True, now
        if (held_rows and now - since >= flush_after_s
                or unflushed and now - last >= flush_after_s):
            # Top the buffer up to just over a block (under 1.5 blocks, so Ray Data hands it
            # on whole), then two whole blocks of filler: the consumer gets the rows once a
            # block follows them, even if the model above overestimated what Ray Data holds.
            yield filler(schema, max(block_bytes + 1 - held_bytes, 1))
            yield filler(schema, block_bytes + 1)
            yield filler(schema, block_bytes + 1)
            held_bytes, held_rows, unflushed = 0, 0, False


def filler(schema: pa.Schema, nbytes: int) -> pa.Table:
    """Filler rows of ``schema``: the fewest rows (give or take one) of at least ``nbytes``
    bytes."""
    rows = 1
    table = _filler_rows(schema, rows)
    while table.nbytes < nbytes:
        rows = max(rows + 1, -(-rows * nbytes // max(table.nbytes, 1)))
        table = _filler_rows(schema, rows)
    return table


def _filler_rows(schema: pa.Schema, n: int) -> pa.Table:
    columns = []
    for field in schema:
        if field.name == PARTITION:
            columns.append(pa.array(np.full(n, FILLER_PARTITION), type=field.type))
        elif pa.types.is_integer(field.type) or pa.types.is_floating(field.type):
            columns.append(pa.array(np.zeros(n), type=field.type))
        else:
            columns.append(pa.nulls(n, type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def drop_filler(table: pa.Table) -> pa.Table:
    """``table`` without the filler rows of :func:`flushed`."""
    import pyarrow.compute as pc

    if PARTITION not in table.column_names or not table.num_rows:
        return table
    partition = table.column(PARTITION)
    if pc.min(partition).as_py() != FILLER_PARTITION:
        return table
    return table.filter(pc.not_equal(partition, FILLER_PARTITION))


LOST_SOURCE_ERRORS = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                      ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError,
                      ray.exceptions.ActorDiedError, ray.exceptions.OutOfMemoryError)
"""Ray's errors that say a read task's process or its output is gone (not a bug of the read:
reading again from committed offsets mends them). ``ObjectLostError`` covers its subclasses,
``ObjectReconstructionFailedError`` among them."""


class SourceLost(RuntimeError):
    """A consumer's stream ended because its read task or blocks were lost
    (:func:`source_lost`): read it again from the committed offsets."""


def source_lost(err: BaseException) -> bool:
    """Whether ``err``, raised by a consumer's iterator of :func:`read_kafka_examples`, says
    the stream's read task or its blocks were lost (a process or node died), as opposed to
    an error of the read itself (which reading again would repeat)."""
    return isinstance(err, LOST_SOURCE_ERRORS)


def _report(monitor: Any, task: int, stats: dict[str, Any]) -> None:
    monitor.report.remote(task, stats)


def read_kafka_examples(spec: StreamSpec, *, read_tasks: int = 1, block_bytes: int = 256 << 10,
                        buffer_bytes: int = 64 << 20, num_cpus: float = 0.25,
                        monitor: Any = None, flush_after_s: float | None = None) -> Any:
    """A Ray Data ``Dataset`` of the examples of ``spec``: ``read_tasks`` generator tasks
    (each reading every ``read_tasks``-th partition, ``num_cpus`` each, all running at once),
    blocks of about ``block_bytes``, at most about ``buffer_bytes`` held in the object store
    ahead of its consumers. ``monitor``: a :class:`SourceMonitor` actor the tasks report to.
    Unbounded unless ``spec`` has a stop condition; use ``streaming_split(n, equal=False)``
    (``equal=True`` may drop rows) to feed n consumers. With ``flush_after_s``, rows that
    have waited that long for their block are sent on with filler rows (:func:`flushed`):
    consumers must :func:`drop_filler`. A read task whose process dies is not run again: its
    consumers' iterators raise (see :func:`source_lost`)."""
    source = KafkaExamplesDatasource(spec, read_tasks, monitor, block_bytes, flush_after_s)
    n = len(source.groups)
    # A read task is never run again by Ray: a rerun reads from the dataset's start offsets
    # while Ray drops its first outputs as delivered (measured: a read task killed with
    # kill -9 under Ray's retries left its consumer with no new row for 60 s). Its death
    # reaches the consumers instead, as RayTaskError(WorkerCrashedError) within 0.1 s, and
    # the online job reads again from its committed offsets (``train.online``).
    # (``ray_remote_args`` is deprecated in Ray 2.60 with no named parameter for
    # ``max_retries``: pyproject pins ray below 2.64, which removes it.)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        dataset = ray.data.read_datasource(source, num_cpus=num_cpus, concurrency=n,
                                           override_num_blocks=n,
                                           ray_remote_args={"max_retries": 0})
    context = dataset.context
    context.target_max_block_size = block_bytes
    limits = context.execution_options.resource_limits
    context.execution_options.resource_limits = limits.copy(object_store_memory=buffer_bytes)
    return dataset
