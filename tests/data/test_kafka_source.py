"""The Kafka examples source on the embedded broker: exact offset ranges, source columns,
malformed messages skipped and counted, poison pills (records that fail validation or the
conversion of their micro-batch) dead-lettered while the rest of the batch trains, a Ray
Data dataset split between two consumers, unbounded reading, and bounded buffering under a
slow consumer."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pyarrow as pa
import pytest
import ray

from monolith_ray.config import DenseFeature, KafkaConfig, KafkaTopics, SlotConfig
from monolith_ray.data import slot_columns
from monolith_ray.data.batches import make_batch
from monolith_ray.data.kafka_source import (
    KafkaExampleReader,
    SourceMonitor,
    StreamSpec,
    drop_filler,
    earliest_offsets,
    flushed,
    read_kafka_examples,
    source_schema,
)
from monolith_ray.data.offsets import OffsetCoverage
from monolith_ray.messages import encode
from monolith_ray.schemas import value_ids
from monolith_ray.stream import ensure_topics, read_range

SLOTS = (SlotConfig("user_id", 1, 4), SlotConfig("item_id", 2, 4),
         SlotConfig("genres", 3, 4, max_values=3))
T0 = 1_700_000_000


def example(i: int) -> bytes:
    return encode({"request_id": f"r{i}", "time": T0 + i, "label": float(i % 3 == 0),
                   "slots": {"user_id": i, "item_id": f"item{i % 7}",
                             "genres": [f"g{i % 4}", "drama"][: 1 + i % 2]}})


MALFORMED = {
    "not json": b"{oops",
    "tombstone": None,
    "label": encode({"request_id": "x", "time": T0, "label": 2.0, "slots": {"user_id": 1}}),
    "list in a single-valued slot": encode(
        {"request_id": "x", "time": T0, "label": 1.0, "slots": {"user_id": [1, 2]}}),
    "too many values": encode(
        {"request_id": "x", "time": T0, "label": 1.0, "slots": {"genres": [1, 2, 3, 4]}}),
    "int64 overflow": encode(
        {"request_id": "x", "time": T0, "label": 1.0, "slots": {"item_id": 1 << 63}}),
}


@pytest.fixture(scope="module")
def kafka(kafka_bootstrap: str) -> KafkaConfig:
    return KafkaConfig(bootstrap_servers=kafka_bootstrap, partitions=2)


@pytest.fixture(scope="module")
def topic(kafka: KafkaConfig, produce) -> dict:
    """Topic ``source`` with 300 examples over 2 partitions and the malformed kinds spread
    among them -> {"valid": {(partition, offset): i}, "bad": {(partition, offset)}}."""
    ensure_topics(kafka, ["source"])
    payloads, bad_at = [example(i) for i in range(300)], {}
    for k, raw in enumerate(MALFORMED.values()):
        bad_at[37 * k + 5] = raw
    for position in sorted(bad_at):
        payloads.insert(position, bad_at[position])
    placed = produce(kafka, "source", payloads, [i % 2 for i in range(len(payloads))])
    valid, bad, i = {}, set(), 0
    for position, where in enumerate(placed):
        if position in bad_at:
            bad.add(where)
        else:
            valid[where] = i
            i += 1
    return {"valid": valid, "bad": bad}


def rows_of(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables) if tables else source_schema(SLOTS).empty_table()


def test_reader_delivers_exactly_the_range_and_skips_malformed(kafka, topic) -> None:
    starts, stops = {0: 4, 1: 0}, {0: 120, 1: 77}
    reader = KafkaExampleReader(StreamSpec(kafka, "source", SLOTS, starts, stops=stops,
                                           poll_records=50))
    table = rows_of(list(reader))
    assert table.schema == source_schema(SLOTS)
    got = list(zip(table["_partition"].to_pylist(), table["_offset"].to_pylist()))
    want = sorted(w for w in topic["valid"] if starts[w[0]] <= w[1] < stops[w[0]])
    assert sorted(got) == want and len(set(got)) == len(got)
    # Row values are the message's, in its offset's row.
    ids = [topic["valid"][w] for w in got]
    assert table["user_id"].to_pylist() == ids
    assert table["item_id"].to_pylist() == value_ids([f"item{i % 7}" for i in ids]).tolist()
    assert table["time"].to_pylist() == [T0 + i for i in ids]
    bad = [w for w in topic["bad"] if starts[w[0]] <= w[1] < stops[w[0]]]
    assert reader.malformed == len(bad) >= 3
    assert {(p, o) for p, o, _ in reader.errors} == set(bad)
    assert reader.records == len(want) and reader.positions == stops
    # Rows account for their range, skipped messages included, except a skipped tail, which
    # no row follows (offset 76 of partition 1 is malformed): a resume reads it again.
    assert (1, 76) in topic["bad"]
    assert OffsetCoverage.of_table(table).resume(starts) == {0: 120, 1: 76}
    assert len(make_batch(table, SLOTS)) == len(want)


def test_an_unbounded_reader_reports_every_row_it_has_yielded(kafka, topic) -> None:
    """The report after a poll counts that poll's rows: on a stream that then goes quiet,
    the last report (what the source monitor shows) is not one poll behind."""
    reports: list[dict] = []
    reader = KafkaExampleReader(StreamSpec(kafka, "source", SLOTS, {0: 0, 1: 0},
                                           poll_records=50), reports.append)
    seen = 0
    for table in reader:  # unbounded: stop once every valid row has come
        seen += table.num_rows
        assert reports[-1]["records"] == seen
        if seen == len(topic["valid"]):
            break
    assert reports[-1]["records"] == len(topic["valid"]) == 300


def test_every_kind_of_malformed_message_is_skipped_with_its_reason(kafka, topic) -> None:
    reader = KafkaExampleReader(StreamSpec(kafka, "source", SLOTS,
                                           earliest_offsets(kafka, "source"), stops="end"))
    table = rows_of(list(reader))
    assert table.num_rows == len(topic["valid"]) == 300
    assert reader.malformed == len(MALFORMED)
    reasons = " | ".join(reason for _, _, reason in reader.errors)
    for needle in ("not UTF-8 JSON", "tombstone", "label", "single-valued",
                   "more than max_values", "int64"):
        assert needle in reasons


def example_with(i: int, **fields) -> bytes:
    """Example i with ``fields`` replacing its own (slots merged into its slots)."""
    message = json.loads(example(i))
    message["slots"].update(fields.pop("slots", {}))
    return encode({**message, **fields})


POISON = {  # each passes the old per-record checks or fails its whole micro-batch
    "surrogate": example_with(1, slots={"item_id": "item\ud800"}),
    "max_event_skew_s": example_with(2, time=10**18),
    "not a slot of the model": example_with(3, slots={"mood": "sunny"}),
    "not UTF-8 JSON": b'{"request_id": "r4", "time": ',
}


def poison_topic(kafka: KafkaConfig, produce, name: str, payloads: list[bytes],
                 partitions: list[int]) -> tuple[KafkaConfig, list[tuple[int, int]]]:
    """Topic ``name`` holding ``payloads`` and its own dead-letter topic -> the config
    naming that dead-letter topic, and where each payload landed."""
    kafka = dataclasses.replace(kafka, topics=KafkaTopics(dead_letter=f"{name}.dead_letter"))
    ensure_topics(kafka, [name, kafka.topics.dead_letter])
    return kafka, produce(kafka, name, payloads, partitions)


def dead_letters(kafka: KafkaConfig) -> list[dict]:
    """Every record of the dead-letter topic, read from offset 0 of each partition."""
    return [json.loads(r.value) for p in range(kafka.partitions)
            for r in read_range(kafka, kafka.topics.dead_letter, p, 0)]


def test_poison_pills_go_to_dead_letters_and_the_rest_of_the_batch_trains(kafka,
                                                                          produce) -> None:
    # 40 examples over 2 partitions; the poison pills in partition 0, one of them its last
    # record.
    payloads, partitions = [example(i) for i in range(40)], [i % 2 for i in range(40)]
    for position, raw in zip((3, 10, 21), list(POISON.values())[:3]):
        payloads.insert(position, raw)
        partitions.insert(position, 0)
    payloads.append(POISON["not UTF-8 JSON"])
    partitions.append(0)
    kafka, placed = poison_topic(kafka, produce, "poison", payloads, partitions)
    bad = {placed[i]: raw for i, raw in enumerate(payloads) if raw in POISON.values()}
    valid = [w for w in placed if w not in bad]

    starts = {0: 0, 1: 0}
    reader = KafkaExampleReader(StreamSpec(kafka, "poison", SLOTS, starts, stops="end",
                                           poll_records=1000))
    table = rows_of(list(reader))

    got = list(zip(table["_partition"].to_pylist(), table["_offset"].to_pylist()))
    assert sorted(got) == sorted(valid) and len(valid) == 40
    assert reader.malformed == len(bad) == 4 and reader.dead_letters_failed == 0
    assert {(p, o) for p, o, _ in reader.errors} == set(bad)
    letters = dead_letters(kafka)
    assert sorted((d["partition"], d["offset"]) for d in letters) == sorted(bad)
    for d in letters:
        assert d["topic"] == "poison"
        reason = next(k for k, raw in POISON.items() if raw == bad[d["partition"], d["offset"]])
        assert reason in d["reason"], d
    # Rows account for the refused offsets before them; the last record of partition 0 is
    # refused with no row after it, so a restart from these rows reads it again: refused
    # again, alone, with a second dead letter.
    tail = max(o for p, o in bad if p == 0)
    resume = OffsetCoverage.of_table(table).resume(starts)
    assert resume == {0: tail, 1: reader.positions[1]} and reader.positions[0] == tail + 1
    again = KafkaExampleReader(StreamSpec(kafka, "poison", SLOTS, resume, stops="end"))
    assert rows_of(list(again)).num_rows == 0 and again.malformed == 1
    assert sorted((d["partition"], d["offset"]) for d in dead_letters(kafka)) == sorted(
        [*bad, (0, tail)])


def test_a_record_that_fails_its_batch_conversion_is_refused_alone(kafka, produce,
                                                                   monkeypatch) -> None:
    payloads = [example(i) for i in range(30)]
    payloads.insert(12, example_with(12, slots={"item_id": "boom"}))
    kafka, placed = poison_topic(kafka, produce, "poison-convert", payloads, [0] * 31)
    value_ids = slot_columns.value_ids

    def failing(values):
        values = list(values)
        if "boom" in values:
            raise ValueError("cannot hash boom")
        return value_ids(values)

    monkeypatch.setattr(slot_columns, "value_ids", failing)
    reader = KafkaExampleReader(StreamSpec(kafka, "poison-convert", SLOTS, {0: 0},
                                           stops="end", poll_records=1000))
    table = rows_of(list(reader))

    assert table["_offset"].to_pylist() == [o for _, o in placed if o != 12]
    assert reader.malformed == 1 and reader.errors[0][:2] == (0, 12)
    # The row after the refused record accounts for it: a restore resumes past it.
    assert table["_from_offset"].to_pylist()[12] == 12
    assert OffsetCoverage.of_table(table).resume({0: 0}) == {0: 31}
    [letter] = dead_letters(kafka)
    assert (letter["offset"], letter["reason"]) == (12, "ValueError: cannot hash boom")
    assert json.loads(letter["payload"])["slots"]["item_id"] == "boom"


def test_dense_features_are_columns_null_where_a_message_has_none(kafka, produce) -> None:
    dense = (DenseFeature("price", max_abs=1000.0), DenseFeature("views"))
    payloads = [example_with(0, dense={"price": 2.5, "views": 3}), example_with(1),
                example_with(2, dense={"price": None}), example_with(3, dense={"price": 1e9}),
                example_with(4, dense={"mood": 1.0}), example_with(5, dense={"views": 7}),
                example_with(6, dense={"price": "12"})]
    kafka, _ = poison_topic(kafka, produce, "dense", payloads, [0] * len(payloads))
    reader = KafkaExampleReader(StreamSpec(kafka, "dense", SLOTS, {0: 0}, stops="end",
                                           dense=dense))
    table = pa.concat_tables(list(reader))
    assert table.schema == source_schema(SLOTS, dense)
    assert table["_offset"].to_pylist() == [0, 1, 2, 5]
    assert table["price"].to_pylist() == [2.5, None, None, None]
    assert table["views"].to_pylist() == [3.0, None, None, 7.0]
    assert table["user_id"].to_pylist() == [0, 1, 2, 5]
    reasons = {o: reason for _, o, reason in reader.errors}
    assert sorted(reasons) == [3, 4, 6]
    assert "dense.price" in reasons[3] and "±1000" in reasons[3]
    assert "not a dense feature" in reasons[4] and "dense.price" in reasons[6]
    assert len(make_batch(table, SLOTS, dense)) == 4


def test_dataset_feeds_two_consumers_with_streaming_split(ray_session, kafka, topic) -> None:
    @ray.remote(num_cpus=0.1)
    def offsets_of(split) -> list[tuple[int, int]]:
        out = []
        for t in split.iter_batches(batch_size=32, batch_format="pyarrow"):
            out += zip(t["_partition"].to_pylist(), t["_offset"].to_pylist())
        return out

    monitor = ray.remote(SourceMonitor).options(num_cpus=0).remote()
    spec = StreamSpec(kafka, "source", SLOTS, {0: 0, 1: 0}, stops="end", poll_records=40)
    dataset = read_kafka_examples(spec, read_tasks=2, block_bytes=4096, monitor=monitor)
    halves = ray.get([offsets_of.remote(s) for s in dataset.streaming_split(2, equal=False)])
    assert all(halves)
    assert sorted(halves[0] + halves[1]) == sorted(topic["valid"])
    totals = ray.get(monitor.totals.remote())
    assert totals["records"] == 300 and totals["malformed"] == len(MALFORMED)
    assert totals["dead_letters_failed"] == 0


def test_unbounded_dataset_keeps_reading_new_messages(ray_session, kafka, produce) -> None:
    ensure_topics(kafka, ["growing"])
    placed = produce(kafka, "growing", [example(i) for i in range(50)], [0] * 50)
    spec = StreamSpec(kafka, "growing", SLOTS, {0: 0, 1: 0}, idle_timeout_s=2.0)
    seen: list[tuple[int, int]] = []
    # Blocks of ~1 KiB leave the read task as they fill; the last partial one when it ends.
    for table in read_kafka_examples(spec, block_bytes=1024).iter_batches(
            batch_size=None, batch_format="pyarrow"):
        if not seen:
            placed += produce(kafka, "growing", [example(i) for i in range(50, 80)], [0, 1] * 15)
        seen += zip(table["_partition"].to_pylist(), table["_offset"].to_pylist())
    assert sorted(seen) == sorted(placed) and len(seen) == 80


def test_a_quiet_stream_hands_on_its_last_rows_without_waiting_for_more(
        ray_session, kafka, produce) -> None:
    """Rows far short of a block reach the consumer once they have waited ``flush_after_s``,
    without an end, a timeout or more records; filler rows are dropped by the consumer."""
    import threading

    ensure_topics(kafka, ["quiet"])
    placed = produce(kafka, "quiet", [example(i) for i in range(12)], [0, 1] * 6)
    spec = StreamSpec(kafka, "quiet", SLOTS, {0: 0, 1: 0}, poll_timeout_ms=50)
    seen: list[tuple[int, int]] = []
    done = threading.Event()

    def consume() -> None:
        for table in read_kafka_examples(spec, block_bytes=64 << 10, num_cpus=0.01,
                                         flush_after_s=0.5).iter_batches(
                batch_size=None, batch_format="pyarrow", prefetch_batches=1):
            table = drop_filler(table)
            seen.extend(zip(table["_partition"].to_pylist(), table["_offset"].to_pylist()))
            if len(seen) >= len(placed):
                done.set()
                return

    threading.Thread(target=consume, daemon=True).start()
    # Unbounded and never ending: the 12 rows (a few hundred bytes of a 64 KiB block) arrive
    # all the same.
    assert done.wait(120), f"only {len(seen)} of {len(placed)} rows arrived"
    assert sorted(seen) == sorted(placed)


def test_flushed_fills_a_waiting_block_once_per_quiet_spell() -> None:
    import monolith_ray.data.kafka_source as source

    schema = source_schema(SLOTS)
    real = source._filler_rows(schema, 3).set_column(
        list(schema.names).index("_partition"), "_partition",
        pa.array([0, 0, 1], type=pa.int32()))
    empty = schema.empty_table()
    clock = iter(range(100))

    def tables():  # 3 rows, then heartbeats, each read 1 s after the last
        yield real
        for _ in range(5):
            yield empty

    out = list(flushed(tables(), schema, 4096, flush_after_s=2.0,
                       clock=lambda: float(next(clock))))
    # The rows, the heartbeats, then one flush: a filler that tops the block up to just over
    # 4096 bytes, then two whole blocks; nothing after, as no row waits any more.
    assert (out[0].num_rows, drop_filler(out[0]).num_rows) == (3, 3)
    fillers = [t for t in out[1:] if t.num_rows]
    assert len(fillers) == 3 and all(drop_filler(t).num_rows == 0 for t in fillers)
    assert 4096 < real.nbytes + fillers[0].nbytes < 1.5 * 4096
    assert fillers[1].nbytes > 4096 and fillers[2].nbytes > 4096


def test_flushed_flushes_a_quiet_stream_even_where_its_model_says_nothing_waits() -> None:
    """Rows the model of Ray Data's buffer counts as handed on (a block's worth, given in one
    table) are followed by a flush once the stream has been quiet ``flush_after_s``: if Ray
    Data did keep some, they leave all the same. One flush a quiet spell."""
    import monolith_ray.data.kafka_source as source

    schema = source_schema(SLOTS)
    n = 5000 * 100 // source._filler_rows(schema, 100).nbytes  # rows of about 5,000 bytes
    rows = source._filler_rows(schema, n).set_column(
        list(schema.names).index("_partition"), "_partition",
        pa.array(np.zeros(n), type=pa.int32()))
    assert 4096 < rows.nbytes < 1.5 * 4096  # the model: handed on whole, nothing held
    empty = schema.empty_table()
    clock = iter(range(100))

    def tables():  # the rows, then heartbeats 1 s apart
        yield rows
        for _ in range(6):
            yield empty

    out = list(flushed(tables(), schema, 4096, flush_after_s=2.0,
                       clock=lambda: float(next(clock))))
    assert out[0] is rows
    fillers = [t for t in out[1:] if t.num_rows]
    assert len(fillers) == 3 and all(drop_filler(t).num_rows == 0 for t in fillers)


def test_slow_consumer_holds_the_reader_back(ray_session, kafka, produce) -> None:
    ensure_topics(kafka, ["backlog"])
    n = 20_000
    produce(kafka, "backlog", [example(i) for i in range(n)], [i % 2 for i in range(n)])
    monitor = ray.remote(SourceMonitor).options(num_cpus=0).remote()
    spec = StreamSpec(kafka, "backlog", SLOTS, {0: 0, 1: 0}, stops="end", poll_records=100)
    dataset = read_kafka_examples(spec, block_bytes=16 << 10, buffer_bytes=64 << 10,
                                  monitor=monitor)
    consumed, ahead = 0, []  # examples the reader has read but the consumer not yet seen
    for table in dataset.iter_batches(batch_size=200, batch_format="pyarrow",
                                      prefetch_batches=0):
        consumed += table.num_rows
        time.sleep(0.01)
        ahead.append(ray.get(monitor.totals.remote())["records"] - consumed)
    # 64 KiB is ~1000 rows; with a 64 MiB buffer the reader runs > 5000 rows ahead here.
    assert consumed == n and max(ahead) < 3000


def test_the_monitor_keeps_counts_over_datasets_and_pids_of_the_current_one() -> None:
    monitor = SourceMonitor()
    first = {"records": 5, "malformed": 1, "dead_letters_failed": 0, "positions": {0: 9},
             "errors": [[0, 3, "bad"]], "pid": 111}
    monitor.report(0, first)
    monitor.new_dataset()  # the job reads the stream again
    assert monitor.totals()["pids"] == {} and monitor.totals()["records"] == 5
    monitor.report(0, {**first, "records": 2, "malformed": 0, "errors": [], "pid": 222,
                       "positions": {0: 7}})
    totals = monitor.totals()
    assert (totals["records"], totals["malformed"]) == (7, 1)
    assert totals["pids"] == {0: 222} and totals["positions"] == {0: 7}
    assert totals["errors"] == [[0, 3, "bad"]]
