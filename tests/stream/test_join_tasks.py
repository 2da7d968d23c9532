"""Per-task labels from actions: the join of several tasks (``config.tasks``) in process, then
on the embedded broker through ``StreamJoiner`` and on into training columns."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest
from kafka import KafkaProducer

from monolith_ray.config import JoinerConfig, KafkaTopics, load_config
from monolith_ray.config.tasks import TaskConfig
from monolith_ray.data.batches import make_batch
from monolith_ray.data.slot_columns import ExampleDecoder
from monolith_ray.messages import encode, parse_example
from monolith_ray.stream import EmbeddedBroker, KafkaConfig, ensure_topics, read_range
from monolith_ray.stream.join import ACTIONS, FEATURES, Joiner
from monolith_ray.stream.joiner import StreamJoiner
from monolith_ray.stream.labels import TaskLabels

TASKS = (TaskConfig("click", ("click",)), TaskConfig("like", ("like", "share")),
         TaskConfig("finish", ("finish",), weight=0.5))


def feature(rid: str, t: int, item: int = 7) -> dict:
    return {"request_id": rid, "time": t, "user_id": 1, "item_id": item,
            "slots": {"user_id": 1, "item_id": item}}


def action(rid: str, t: int, kind: str, item: int = 7) -> dict:
    return {"request_id": rid, "item_id": item, "time": t, "action": kind}


class Feed:
    """A multi-task Joiner fed by hand (one partition of each topic)."""

    def __init__(self, tasks=TASKS, **cfg: object) -> None:
        self.joiner = Joiner(JoinerConfig(**{"window_s": 60, "allowed_lateness_s": 0,
                                             "spill_after_s": 1000, **cfg}), tasks=tasks)
        self.next = {FEATURES: 0, ACTIONS: 0}
        self.examples: dict[str, dict] = {}

    def send(self, kind: str, values: list) -> None:
        start = self.next[kind]
        self.next[kind] += len(values)
        self.joiner.add(kind, 0, [(start + i, encode(v)) for i, v in enumerate(values)])

    def advance(self) -> None:
        self.joiner.advance()
        for _, raw in self.joiner.take_output()[0]:
            example = parse_example(json.loads(raw))
            assert example["request_id"] not in self.examples, "emitted twice"
            self.examples[example["request_id"]] = example

    def labels(self, rid: str) -> tuple[float, dict[str, float], float]:
        e = self.examples[rid]
        return e["label"], e["labels"], e["weight"]


def test_each_task_is_labelled_by_its_own_actions_within_the_window() -> None:
    feed = Feed()
    feed.send(FEATURES, [feature(r, 100) for r in "abcdef"])
    feed.send(ACTIONS, [action("a", 110, "click"), action("a", 130, "share"),
                        action("b", 105, "like"), action("c", 120, "finish"),
                        action("c", 125, "skip"),
                        action("f", 101, "click"), action("f", 102, "like"),
                        action("f", 103, "finish")])
    feed.advance()
    # f's actions made every task positive: emitted at once, before its window closed.
    assert set(feed.examples) == {"f"}
    assert feed.labels("f") == (1.0, {"click": 1.0, "like": 1.0, "finish": 1.0}, 1.0)
    feed.send(ACTIONS, [action("d", 170, "like")])  # after d's window; the clock passes 160
    feed.advance()
    assert feed.labels("a") == (1.0, {"click": 1.0, "like": 1.0, "finish": 0.0}, 1.0)
    assert feed.labels("b") == (0.0, {"click": 0.0, "like": 1.0, "finish": 0.0}, 1.0)
    assert feed.labels("c") == (0.0, {"click": 0.0, "like": 0.0, "finish": 1.0}, 1.0)
    assert feed.labels("d") == (0.0, {"click": 0.0, "like": 0.0, "finish": 0.0}, 1.0)
    assert feed.labels("e")[1] == {"click": 0.0, "like": 0.0, "finish": 0.0}
    counters = feed.joiner.counters
    assert counters["positives"] == 4 and counters["negatives"] == 2
    assert counters["unmatched_actions"] == 1  # d's like came after its window


def test_labels_survive_spill_and_orphans_merge_their_tasks() -> None:
    feed = Feed(spill_after_s=5, negative_rate=0.5)
    # Orphans: actions read before their impressions; two of one key merge.
    feed.send(ACTIONS, [action("o", 103, "like"), action("o", 104, "finish"),
                        action("o", 105, "finish")])
    feed.send(FEATURES, [feature("o", 100), feature("s", 100), feature("n", 100)])
    feed.send(ACTIONS, [action("s", 101, "click")])
    feed.send(FEATURES, [feature("y", 120)])  # the clock moves on: o, s and n spill
    feed.advance()
    assert feed.examples == {} and len(feed.joiner._store) == 3
    feed.send(ACTIONS, [action("s", 130, "like"), action("s", 131, "like")])
    feed.send(FEATURES, [feature("z", 200)])
    feed.advance()
    assert feed.labels("o")[:2] == (0.0, {"click": 0.0, "like": 1.0, "finish": 1.0})
    assert feed.labels("s") == (1.0, {"click": 1.0, "like": 1.0, "finish": 0.0}, 1.0)
    # A negative (no task positive) carries the sampling weight (n is kept: stable_unit
    # ("n") < 0.5); a positive never does.
    assert feed.labels("n") == (0.0, {"click": 0.0, "like": 0.0, "finish": 0.0}, 2.0)
    assert feed.labels("o")[2] == 1.0
    assert feed.joiner.counters["unmatched_actions"] == 2  # o's repeated finish, s's like


def test_one_task_writes_exactly_the_single_label_bytes_of_before() -> None:
    labels = TaskLabels(negative_weight=4.0)
    assert labels.tail(1) == b',"label":1.0,"weight":1.0}'
    assert labels.tail(0) == b',"label":0.0,"weight":4.0}'
    assert set(labels.bits) == {"click", "like", "share", "finish"} and labels.full == 1


# -- on the embedded broker ---------------------------------------------------------------


@pytest.fixture(scope="module")
def broker() -> Iterator[KafkaConfig]:
    with EmbeddedBroker() as embedded:
        yield KafkaConfig(bootstrap_servers=embedded.bootstrap, partitions=1)


def test_stream_joiner_writes_per_task_labels_that_train(broker) -> None:
    yaml = """
slots:
  - {name: user_id, slot_id: 1, dim: 4}
  - {name: item_id, slot_id: 2, dim: 4}
tasks:
  - {name: click, actions: [click]}
  - {name: like, actions: [like]}
"""
    topics = KafkaTopics(**{f.name: f"tasks.{f.name}" for f in dataclasses.fields(KafkaTopics)})
    cfg = dataclasses.replace(load_config(yaml), kafka=dataclasses.replace(broker, topics=topics),
                              joiner=JoinerConfig(window_s=60, allowed_lateness_s=0,
                                                  group_id="tasks-joiners"))
    ensure_topics(cfg.kafka)
    now = int(time.time()) - 3600
    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap_servers)
    for i in range(4):
        producer.send(topics.features, encode(feature(f"r{i}", now, item=i)), partition=0)
    for rid, kind, item in [("r0", "click", 0), ("r0", "like", 0), ("r1", "like", 1),
                            ("r2", "click", 2)]:
        producer.send(topics.actions, encode(action(rid, now + 5, kind, item)), partition=0)
    producer.flush()
    joiner = StreamJoiner(cfg.kafka, cfg.joiner, slots=cfg.slots, limits=cfg.limits,
                          tasks=cfg.tasks)
    try:
        joiner.run(None, 1.0, True)
    finally:
        joiner.close()
    raws = [r.value for r in read_range(cfg.kafka, topics.examples, 0, 0, max_records=100)]
    examples = {json.loads(v)["request_id"]: json.loads(v) for v in raws}
    assert {rid: e["labels"] for rid, e in examples.items()} == {
        "r0": {"click": 1.0, "like": 1.0}, "r1": {"click": 0.0, "like": 1.0},
        "r2": {"click": 1.0, "like": 0.0}, "r3": {"click": 0.0, "like": 0.0}}

    decoder = ExampleDecoder(cfg.slots, cfg.dense, cfg.limits, cfg.task_names)
    structs, refused = decoder.decode(raws, time.time())
    assert refused == []
    table = pa.table(decoder.columns(structs))
    batch = make_batch(table, cfg.slots, tasks=cfg.task_names)
    order = [json.loads(v)["request_id"] for v in raws]
    labels, weights = batch.targets(cfg.task_names)
    expected = {"r0": (1, 1), "r1": (0, 1), "r2": (1, 0), "r3": (0, 0)}
    np.testing.assert_array_equal(labels.T, [expected[rid] for rid in order])
    np.testing.assert_array_equal(weights, 1.0)
