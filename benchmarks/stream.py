"""Streaming path throughput on MovieLens-100K: raw Kafka reads, the joiner, the Ray Data Kafka
source and online training, all in one process against the embedded broker.

Setup: the embedded Tansu broker (``kafka_session`` with an empty ``bootstrap_servers``) with
the default config's topics (``load_config()``, 2 partitions each), and Ray started once with
``ray.init(num_cpus=2, object_store_memory=300 MB)``. Every MovieLens-100K rating
(``data/ml-100k``, ``FRACTION`` of them in time order; 1.0 = all 100,000) is published with
``replay_movielens`` at full speed: one ``features`` message per rating and one ``actions``
click per rating >= 4. Each stage then reads what the previous one wrote, from the earliest
offsets to the end:

- ``raw_consume_per_s``: a bare consumer of the joiner's own client library, a confluent-kafka
  (librdkafka) ``Consumer`` with the settings the joiner's consumer gets
  (``stream.joiner.consumer_config``: no auto commit or offset store,
  ``enable.partition.eof``, ``fetch.queue.backoff.ms``; its own group id), manually ``assign``-ed at each partition's earliest offset,
  calls ``consume(joiner.max_poll_records, 0.1)`` as the joiner does until every
  partition of the features and actions topics has reported its end (partition EOF: the
  offsets actually present, whatever ListOffsets says); messages / wall seconds from its
  construction (``raw_seconds``). It only takes each message's value and adds up the
  lengths (``raw_bytes``), decoding nothing: the cost of getting the bytes out of Kafka with
  the joiner's client. ``raw_client`` and ``joiner_client`` name each side's library and
  version (taken from the consumer objects); the benchmark stops if they differ.
- ``joiner_examples_per_s``: one in-process ``StreamJoiner`` (index 0 of 1, a fresh consumer
  group, ``start: earliest``, ``negative_rate: 1``, otherwise the default ``JoinerConfig``;
  the config's slots and limits, so it validates messages as ``run_joiners``' do) is
  polled until it has read every features and actions message, then drained (every
  impression still waiting becomes a negative), its producer flushed and its offsets
  committed; examples written / wall seconds from its construction to that commit
  (``joiner_seconds``). ``joiner_vs_raw`` = ``raw_seconds / joiner_seconds`` on the same
  input messages with the same client library: the joiner's speed as a fraction of reading
  its input with a bare consumer (1.0 = decoding, joining, writing and committing cost
  nothing beyond the read). ``raw_cpu_seconds``, ``joiner_cpu_seconds`` and
  ``joiner_vs_raw_cpu`` are the same with this process's CPU time (all its threads:
  librdkafka's and the idle Ray driver's too) instead of wall time, steadier when other work
  shares the cores. ``load_1m_start`` and ``load_1m_end`` are the machine's one-minute load
  average just before the raw read and just after the joiner's commit: the other work.
- ``source_examples_per_s``: ``read_kafka_examples`` over the examples topic from the earliest
  offsets with ``stops="end"`` and the default ``online`` settings (read tasks, block and
  buffer bytes, ``train.read_cpus``), iterated to its end in the driver
  (``iter_batches(batch_format="pyarrow")``); rows / wall seconds including the dataset's start.
- ``train_online_examples_per_s``: ``run_online_training`` with the default config and
  ``online.start=earliest``, ``online.stop=end``, ``online.batch_size=0`` (steps of
  ``train.batch_size``: the shipped MovieLens config's online micro-batches of 10 are a
  quality setting for a small replay, not a throughput one) over the same examples topic; the summed
  ``examples_per_s`` of its trainers in the stream phase (each trainer's examples over its
  own ``consume`` seconds). ``train_online_wall_examples_per_s`` is examples over the whole
  run's wall seconds (actor start, JIT compilation and the final snapshot included).

Targets: ``joiner_vs_raw >= 0.5`` with ``raw_client == joiner_client``, and
``source_examples_per_s >= 2 * train_online_examples_per_s`` (the source is not what limits
online training). The cores are shared with whatever else runs, so single runs are noisy; no
repeats inside a run, to keep it short: run it more than once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import confluent_kafka
import ray
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from monolith_ray.config import Config, load_config
from monolith_ray.data.kafka_source import StreamSpec, earliest_offsets, read_kafka_examples
from monolith_ray.stream.joiner import StreamJoiner, consumer_config
from monolith_ray.stream.kafka import end_offsets, kafka_session
from monolith_ray.stream.producers import replay_movielens
from monolith_ray.train.online import run_online_training

DATA = Path("data/ml-100k")
FRACTION = 1.0
OBJECT_STORE_BYTES = 300 * 1024 * 1024
JOINER_GROUP = "bench-stream-joiner"
RAW_GROUP = "bench-stream-raw"
TIMEOUT_S = 300.0


def config(bootstrap: str, output_dir: str) -> Config:
    """The default config on ``bootstrap``, writing under ``output_dir``, a bounded replay."""
    return load_config(overrides=[f"kafka.bootstrap_servers={bootstrap}",
                                  f"data.output_dir={output_dir}",
                                  "online.start=earliest", "online.stop=end",
                                  # throughput at train.batch_size, as its figures always were
                                  "online.batch_size=0"])


def topic_range(cfg: Config, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """Per partition of ``topic``, its earliest offset and its end."""
    return earliest_offsets(cfg.kafka, topic), end_offsets(cfg.kafka, topic)


def client_library(consumer: object) -> str:
    """The Kafka client library ``consumer`` comes from, with its version (and librdkafka's
    for confluent-kafka)."""
    if isinstance(consumer, confluent_kafka.Consumer):
        return (f"confluent-kafka {metadata.version('confluent-kafka')} "
                f"(librdkafka {confluent_kafka.libversion()[0]})")
    package = type(consumer).__module__.split(".")[0]
    dist = metadata.packages_distributions().get(package, [package])[0]
    return f"{dist} {metadata.version(dist)}"


def raw_consume(cfg: Config, topics: list[str]) -> tuple[int, int, float, float, str]:
    """Read every message of ``topics`` to each partition's end with a bare confluent-kafka
    consumer set up as the joiner's -> (messages, value bytes, wall seconds, process CPU
    seconds, its client library)."""
    starts = [TopicPartition(topic, p, offset) for topic in topics
              for p, offset in earliest_offsets(cfg.kafka, topic).items()]
    t0, cpu0 = time.perf_counter(), time.process_time()
    consumer = Consumer(consumer_config(cfg.kafka, RAW_GROUP, "earliest"))
    try:
        consumer.assign(starts)
        n = n_bytes = 0
        pending = {(tp.topic, tp.partition) for tp in starts}
        deadline = time.monotonic() + TIMEOUT_S
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"raw read of {sorted(pending)} did not finish")
            for m in consumer.consume(cfg.joiner.max_poll_records, 0.1):
                err = m.error()
                if err is None:
                    n += 1
                    n_bytes += len(m.value())
                elif err.code() == KafkaError._PARTITION_EOF:
                    pending.discard((m.topic(), m.partition()))
                else:
                    raise KafkaException(err)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        library = client_library(consumer)
    finally:
        consumer.close()
    return n, n_bytes, seconds, cpu, library


def join(cfg: Config, n_input: int) -> tuple[dict[str, int], float, float, str]:
    """One in-process joiner over every features and actions message, drained at the end ->
    (its counters, wall seconds, process CPU seconds, its consumer's client library)."""
    jcfg = dataclasses.replace(cfg.joiner, negative_rate=1.0, group_id=JOINER_GROUP,
                               start="earliest")
    t0, cpu0 = time.perf_counter(), time.process_time()
    joiner = StreamJoiner(cfg.kafka, jcfg, 0, 1, slots=cfg.slots, limits=cfg.limits)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            c = joiner.counters()
            if c["features"] + c["actions"] + c["dead_letters"] >= n_input:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"joiner read {c} of {n_input} messages")
            joiner.poll()
        joiner.stop()
        counters = joiner.run(drain=True)  # stopped: no poll, just drain, send, commit
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        library = client_library(joiner._consumer)
    finally:
        joiner.close()
    return counters, seconds, cpu, library


def source_read(cfg: Config) -> tuple[int, float]:
    """Iterate the Ray Data Kafka source over the examples topic to its end -> (rows, wall
    seconds)."""
    topic = cfg.kafka.topics.examples
    t0 = time.perf_counter()
    spec = StreamSpec(cfg.kafka, topic, cfg.slots, earliest_offsets(cfg.kafka, topic),
                      stops="end", poll_records=cfg.online.poll_records,
                      poll_timeout_ms=cfg.online.poll_timeout_ms, limits=cfg.limits)
    dataset = read_kafka_examples(spec, read_tasks=cfg.online.read_tasks,
                                  block_bytes=cfg.online.block_bytes,
                                  buffer_bytes=cfg.online.buffer_bytes,
                                  num_cpus=cfg.train.read_cpus)
    rows = sum(b.num_rows for b in dataset.iter_batches(batch_format="pyarrow",
                                                        batch_size=None))
    return rows, time.perf_counter() - t0


def report(figures: dict[str, Any]) -> None:
    """Human-readable table on stderr."""
    err = sys.stderr
    rows = [("publish", figures["published_messages"], figures["publish_seconds"], None),
            ("raw consume", figures["raw_messages"], figures["raw_seconds"],
             figures["raw_consume_per_s"]),
            ("joiner", figures["joiner_examples"], figures["joiner_seconds"],
             figures["joiner_examples_per_s"]),
            ("kafka source", figures["source_examples"], figures["source_seconds"],
             figures["source_examples_per_s"]),
            ("online training", figures["train_online_examples"],
             figures["train_online_seconds"], figures["train_online_examples_per_s"])]
    print(f"{'stage':<16} {'count':>9} {'seconds':>9} {'per s':>10}", file=err)
    for name, count, seconds, rate in rows:
        print(f"{name:<16} {count:>9} {seconds:>9.2f} "
              f"{'' if rate is None else f'{rate:>10.0f}'}", file=err)
    print(f"raw client {figures['raw_client']}; joiner client {figures['joiner_client']}",
          file=err)
    print(f"joiner_vs_raw {figures['joiner_vs_raw']:.3f} (target >= 0.5; CPU seconds ratio "
          f"{figures['joiner_vs_raw_cpu']:.3f}; one-minute load {figures['load_1m_start']:.2f} "
          f"to {figures['load_1m_end']:.2f}); "
          f"source / train {figures['source_vs_train']:.2f} (target >= 2)", file=err)


def main() -> None:
    base = load_config()
    ray.init(num_cpus=2, object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-stream-") as out, \
                kafka_session(base.kafka) as bootstrap:
            cfg = config(bootstrap, out)
            topics = cfg.kafka.topics
            published = replay_movielens(cfg.kafka, DATA, fraction=(0.0, FRACTION))
            n_input = int(published["features"] + published["actions"])
            print(f"published {published}", file=sys.stderr)

            load_start = os.getloadavg()[0]
            raw_n, raw_bytes, raw_s, raw_cpu, raw_client = raw_consume(
                cfg, [topics.features, topics.actions])
            if raw_n != n_input:
                raise RuntimeError(f"raw read {raw_n} messages, published {n_input}")

            counters, joiner_s, joiner_cpu, joiner_client = join(cfg, n_input)
            load_end = os.getloadavg()[0]
            if joiner_client != raw_client:
                raise RuntimeError(f"the joiner reads with {joiner_client}, the raw baseline "
                                   f"with {raw_client}: not comparable")
            examples = counters["positives"] + counters["negatives"]
            first, end = topic_range(cfg, topics.examples)
            in_topic = sum(end[p] - first[p] for p in end)
            if in_topic != examples:
                raise RuntimeError(f"examples topic holds {in_topic}, joiner wrote {examples}")

            source_n, source_s = source_read(cfg)

            t0 = time.perf_counter()
            metrics = run_online_training(cfg)
            train_wall = time.perf_counter() - t0
            stream = metrics["phases"]["stream"]
            train_n = int(stream["examples"])
            train_s = max(f["seconds"] for f in stream["trainers"])
    finally:
        ray.shutdown()

    figures = {
        "raw_consume_per_s": raw_n / raw_s,
        "joiner_examples_per_s": examples / joiner_s,
        "joiner_vs_raw": raw_s / joiner_s,
        "source_examples_per_s": source_n / source_s,
        "train_online_examples_per_s": float(stream["examples_per_s"]),
        "train_online_wall_examples_per_s": train_n / train_wall,
        "source_vs_train": (source_n / source_s) / float(stream["examples_per_s"]),
        "fraction": FRACTION,
        "published_features": int(published["features"]),
        "published_actions": int(published["actions"]),
        "published_messages": n_input,
        "publish_seconds": published["seconds"],
        "raw_messages": raw_n,
        "raw_seconds": raw_s,
        "raw_bytes": raw_bytes,
        "raw_cpu_seconds": raw_cpu,
        "joiner_cpu_seconds": joiner_cpu,
        "joiner_vs_raw_cpu": raw_cpu / joiner_cpu,
        "load_1m_start": load_start,
        "load_1m_end": load_end,
        "raw_client": raw_client,
        "joiner_client": joiner_client,
        "joiner_examples": examples,
        "joiner_positives": counters["positives"],
        "joiner_negatives": counters["negatives"],
        "joiner_dead_letters": counters["dead_letters"],
        "joiner_seconds": joiner_s,
        "source_examples": source_n,
        "source_seconds": source_s,
        "train_online_examples": train_n,
        "train_online_seconds": train_s,
        "train_online_wall_seconds": train_wall,
    }
    report(figures)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
