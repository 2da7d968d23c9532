"""The Kafka examples source on the synthetic Criteo-shaped stream: records/s of its bare
consumer, examples/s of ``KafkaExampleReader``, and of its conversion alone (message bytes ->
columns) on the fast path and on the per-record parser.

``python -m benchmarks.kafka_source [--examples N] [--poll-records K] [--partitions P]``
starts the embedded broker, produces N ``examples`` messages of ``monolith_ray.data.synth``
(26 int slots C1..C26, 13 dense features I1..I13, ~900 B of JSON each), reads them back from
the start to the end with micro-batches of K records, then converts the first 20,000 in
memory, K at a time. Figures per second of wall clock and per second of the process's CPU
time (the machine may be shared; the reader's CPU time includes librdkafka's threads). Ends
with one JSON line of its figures.

Measured on the 2-core development machine, shared (load 2-10, so wall figures swing; CPU
figures hold better), 200,000 messages of 912 B, micro-batches of 2,000: the reader 150k
examples/s (114-148k in alternated runs with the kafka-python reader that parsed a record at
a time, which made 28-31k on the same broker, messages and poll size); the conversion alone
239-250k messages per CPU second, against 72k for ``parse_example`` a record; the bare
consumer 750-790k records per CPU second (kafka-python's poll: 119k per CPU second, below
the source's target on its own). On Criteo-shaped messages of 445 B (small ids) the reader
made 187-206k examples/s, the kafka-python one 31-35k.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable

import numpy as np

from monolith_ray.config import DenseFeature, KafkaConfig, SlotConfig
from monolith_ray.data import synth
from monolith_ray.data.kafka_source import (
    KafkaExampleReader,
    StreamSpec,
    consumer_config,
    earliest_offsets,
)
from monolith_ray.data.slot_columns import ExampleDecoder
from monolith_ray.messages import decode, parse_example
from monolith_ray.stream import EmbeddedBroker


def bare_consumer_per_s(spec: StreamSpec, n: int) -> tuple[float, float]:
    """Records/s (wall, CPU) of the source's consumer reading ``spec``'s n records and taking
    each one's value, nothing more."""
    from confluent_kafka import Consumer, Message, TopicPartition

    consumer = Consumer(consumer_config(spec.kafka, spec.poll_timeout_ms))
    consumer.assign([TopicPartition(spec.topic, p, o) for p, o in spec.starts.items()])
    start, cpu, seen = time.perf_counter(), time.process_time(), 0
    while seen < n:
        messages = consumer.consume(spec.poll_records, spec.poll_timeout_ms / 1000)
        seen += sum(v is not None for v in map(Message.value, messages))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    consumer.close()
    return n / wall, n / cpu


def reader_per_s(spec: StreamSpec, n: int) -> tuple[float, float]:
    """Examples/s (wall, CPU) of ``KafkaExampleReader`` reading ``spec`` to its end."""
    reader = KafkaExampleReader(spec)
    start, cpu = time.perf_counter(), time.process_time()
    rows = sum(table.num_rows for table in reader)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert rows == n and reader.malformed == 0, (rows, reader.malformed, list(reader.errors))
    return n / wall, n / cpu


def converted_per_s(convert: Callable[[list[bytes]], object], messages: list[bytes],
                    batch: int, repeats: int = 3) -> float:
    """Messages per CPU second of ``convert`` on micro-batches of ``batch`` messages, best of
    ``repeats``."""
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
    n, batch = args.examples, args.poll_records

    stream = synth.SynthSpec()
    slots = tuple(SlotConfig(name, k + 1, 16) for k, name in enumerate(stream.slot_names))
    dense = tuple(DenseFeature(name) for name in stream.dense_names)
    sample = [value for out in synth.messages(stream, 0, min(n, 20_000))
              for _, _, value in out]
    decoder = ExampleDecoder(slots, dense)
    known, known_dense = {s.name: s for s in slots}, {f.name: f for f in dense}

    def fast(raws: list[bytes]) -> object:
        examples, _ = decoder.decode(raws, time.time())
        return decoder.columns(examples)

    def per_record(raws: list[bytes]) -> object:
        now = time.time()
        return [parse_example(decode(r), known, None, now, known_dense) for r in raws]

    figures: dict[str, float] = {
        "examples": n, "poll_records": batch, "partitions": args.partitions,
        "message_bytes": round(float(np.mean([len(m) for m in sample])), 1),
        "convert_per_cpu_s": round(converted_per_s(fast, sample, batch)),
        "parse_per_record_per_cpu_s": round(converted_per_s(per_record, sample, batch))}
    with EmbeddedBroker() as broker:
        kafka = KafkaConfig(bootstrap_servers=broker.bootstrap, partitions=args.partitions)
        produced = synth.produce(stream, kafka, n)
        assert not produced["failed"], produced
        spec = StreamSpec(kafka, kafka.topics.examples, slots,
                          earliest_offsets(kafka, kafka.topics.examples), stops="end",
                          poll_records=batch, dense=dense)
        for name, measure in (("bare_consumer", bare_consumer_per_s), ("reader", reader_per_s)):
            wall, cpu = measure(dataclasses.replace(spec), n)
            figures[f"{name}_per_s"], figures[f"{name}_per_cpu_s"] = round(wall), round(cpu)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
