"""The Kafka examples source on Criteo-shaped messages: records/s of a bare consumer, examples/s
of ``KafkaExampleReader``, and of its conversion alone (message bytes -> columns) on the fast
path and on the per-record parser.

``python -m benchmarks.kafka_source [--examples N] [--poll-records K] [--partitions P]``
starts the embedded broker, produces N messages (26 int slots C1..C26 with Zipf-like ids, 13
dense features I1..I13 with a tenth missing, ~450 B of JSON each) and reads them back from
offset 0 to the end with micro-batches of K records, then converts the same messages in
memory, K at a time. Ends with one JSON line of its figures.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np

from monolith_ray.config import DenseFeature, KafkaConfig, SlotConfig
from monolith_ray.data.kafka_source import KafkaExampleReader, StreamSpec, consumer_config
from monolith_ray.data.slot_columns import ExampleDecoder
from monolith_ray.messages import decode, encode, parse_example
from monolith_ray.stream import EmbeddedBroker, ensure_topics
from monolith_ray.stream.kafka import librdkafka_config

SLOTS = tuple(SlotConfig(f"C{j}", j, 8) for j in range(1, 27))
DENSE = tuple(DenseFeature(f"I{j}") for j in range(1, 14))
T0 = 1_700_000_000


def criteo_messages(n: int, seed: int = 0) -> list[bytes]:
    """n ``examples`` messages shaped like Criteo's rows: 26 int slots with cardinalities
    from 10 to 10M and Zipf-skewed ids, 13 count-like dense features (a tenth null), a
    quarter positive labels, one event second per thousand messages."""
    rng = np.random.default_rng(seed)
    cardinality = (10 ** rng.uniform(1, 7, len(SLOTS))).astype(np.int64)
    ids = rng.zipf(1.2, size=(n, len(SLOTS))) % cardinality
    dense = rng.exponential(50, size=(n, len(DENSE))).round(0)
    missing = rng.random((n, len(DENSE))) < 0.1
    out = []
    for i in range(n):
        out.append(encode({
            "request_id": f"r-{i}", "time": T0 + i // 1000, "label": float(i % 4 == 0),
            "weight": 1.0,
            "slots": {s.name: int(v) for s, v in zip(SLOTS, ids[i])},
            "dense": {f.name: None if m else float(v)
                      for f, v, m in zip(DENSE, dense[i], missing[i])}}))
    return out


def produce(kafka: KafkaConfig, topic: str, messages: list[bytes], partitions: int) -> None:
    from confluent_kafka import Producer

    producer = Producer({**librdkafka_config(kafka), "linger.ms": 20,
                         "queue.buffering.max.messages": 1_000_000})
    for i, message in enumerate(messages):
        producer.produce(topic, message, partition=i % partitions)
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush()


def bare_consumer_per_s(kafka: KafkaConfig, topic: str, n: int, partitions: int,
                        batch: int) -> float:
    """Records/s of the source's consumer reading the topic with nothing done per record but
    taking its value."""
    from confluent_kafka import Consumer, Message, TopicPartition

    consumer = Consumer(consumer_config(kafka, 200))
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    start, seen = time.perf_counter(), 0
    while seen < n:
        messages = consumer.consume(batch, 0.2)
        list(map(Message.value, messages))
        seen += sum(m.error() is None for m in messages)
    elapsed = time.perf_counter() - start
    consumer.close()
    return n / elapsed


def reader_per_s(kafka: KafkaConfig, topic: str, n: int, partitions: int,
                 batch: int) -> tuple[float, float]:
    """Examples/s of ``KafkaExampleReader`` reading the topic to its end: per second of wall
    clock and per second of this process's CPU time (its consumer's threads included; the
    machine may be shared)."""
    spec = StreamSpec(kafka, topic, SLOTS, dict.fromkeys(range(partitions), 0), stops="end",
                      poll_records=batch, dense=DENSE)
    reader = KafkaExampleReader(spec)
    start, cpu = time.perf_counter(), time.process_time()
    rows = sum(table.num_rows for table in reader)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert rows == n and reader.malformed == 0, (rows, reader.malformed)
    return n / elapsed, n / cpu


def converted_per_s(convert: Callable[[list[bytes]], object], messages: list[bytes],
                    batch: int, repeats: int = 3) -> float:
    """Messages per CPU second of ``convert`` on micro-batches of ``batch`` messages, best of
    ``repeats`` (CPU time: the machine may be shared)."""
    batches = [messages[i:i + batch] for i in range(0, len(messages), batch)]
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for b in batches:
            convert(b)
        best = min(best, time.process_time() - start)
    return len(messages) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200_000)
    parser.add_argument("--poll-records", type=int, default=2000)
    parser.add_argument("--partitions", type=int, default=1)
    args = parser.parse_args()
    n, batch, partitions = args.examples, args.poll_records, args.partitions

    messages = criteo_messages(n)
    decoder = ExampleDecoder(SLOTS, DENSE)
    known, known_dense = {s.name: s for s in SLOTS}, {f.name: f for f in DENSE}

    def fast(raws: list[bytes]) -> object:
        examples, _ = decoder.decode(raws, time.time())
        return decoder.columns(examples)

    def per_record(raws: list[bytes]) -> object:
        now = time.time()
        return [parse_example(decode(r), known, None, now, known_dense) for r in raws]

    sample = messages[: min(n, 20_000)]
    figures = {"examples": n, "poll_records": batch, "partitions": partitions,
               "message_bytes": round(float(np.mean([len(m) for m in sample])), 1),
               "convert_fast_per_s": round(converted_per_s(fast, sample, batch)),
               "parse_per_record_per_s": round(converted_per_s(per_record, sample, batch))}
    with EmbeddedBroker() as broker:
        kafka = KafkaConfig(bootstrap_servers=broker.bootstrap, partitions=partitions)
        ensure_topics(kafka, ["examples"])
        produce(kafka, "examples", messages, partitions)
        figures["bare_consumer_per_s"] = round(bare_consumer_per_s(kafka, "examples", n,
                                                                   partitions, batch))
        wall, cpu = reader_per_s(kafka, "examples", n, partitions, batch)
        figures["reader_examples_per_s"] = round(wall)
        figures["reader_examples_per_cpu_s"] = round(cpu)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
