"""The online joiner on the embedded broker, as Ray actors: a MovieLens replay becomes exactly
the expected examples, malformed messages become dead letters without losing valid ones, and a
joiner killed mid-run and restarted loses nothing and repeats no more than it may."""

from __future__ import annotations

import dataclasses
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import ray
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from monolith_ray.config import Config, JoinerConfig, KafkaTopics, load_config
from monolith_ray.messages import encode
from monolith_ray.stream import EmbeddedBroker, KafkaConfig, end_offsets, ensure_topics, read_range
from monolith_ray.stream.joiner import JoinerActor, StreamJoiner, run_joiners
from monolith_ray.stream.producers import FEATURES, Event, movielens_events, publish
from monolith_ray.stream.user_partitions import user_partition

ML100K = Path(__file__).resolve().parents[2] / "data" / "ml-100k"
PARTITIONS = 2
JOINER = JoinerConfig(window_s=60, allowed_lateness_s=10, spill_after_s=20,
                      commit_interval_s=0.3, cpus=0.25)


@pytest.fixture(scope="module")
def broker() -> Iterator[KafkaConfig]:
    with EmbeddedBroker() as embedded:
        yield KafkaConfig(bootstrap_servers=embedded.bootstrap, partitions=PARTITIONS)


@pytest.fixture(scope="module")
def events() -> list[Event]:
    """The first 2% of MovieLens-100K: 2000 impressions and their clicks."""
    return list(movielens_events(ML100K, fraction=(0.0, 0.02)))


def _config(broker: KafkaConfig, name: str, **joiner: object) -> Config:
    """The default config on this test's own topics and consumer group."""
    topics = KafkaTopics(**{f.name: f"{name}.{f.name}" for f in dataclasses.fields(KafkaTopics)})
    kafka = dataclasses.replace(broker, topics=topics)
    ensure_topics(kafka)
    return dataclasses.replace(load_config(), kafka=kafka, joiner=dataclasses.replace(
        JOINER, group_id=f"{name}-joiners", **joiner))


def _read(kafka: KafkaConfig, topic: str) -> list[tuple[int, int, bytes]]:
    """Every record of ``topic`` as (partition, offset, value)."""
    return [(p, r.offset, r.value) for p in range(PARTITIONS)
            for r in read_range(kafka, topic, p, 0, max_records=100_000)]


def _expected(events: list[Event]) -> dict[str, float]:
    clicked = {e.key for e in events if e.topic != FEATURES}
    return {e.key: float(e.key in clicked) for e in events if e.topic == FEATURES}


def test_replay_yields_exactly_the_expected_examples(ray_session, broker, events) -> None:
    cfg = _config(broker, "exact")
    publish(cfg.kafka, events)
    # Keyed by request id, a click lands in the partition number of its impression.
    feature_partition = {json.loads(v)["request_id"]: p
                         for p, _, v in _read(cfg.kafka, cfg.kafka.topics.features)}
    action_partition = {json.loads(v)["request_id"]: p
                        for p, _, v in _read(cfg.kafka, cfg.kafka.topics.actions)}
    assert set(feature_partition.values()) == set(range(PARTITIONS))
    assert all(feature_partition[rid] == p for rid, p in action_partition.items())
    counters = run_joiners(cfg, 2, stop_when_idle_s=1.0, drain=True)
    written = _read(cfg.kafka, cfg.kafka.topics.examples)
    examples = [json.loads(v) for _, _, v in written]
    expected = _expected(events)
    assert len(examples) == len(expected) == 2000
    # Keyed by user: each example in its user's partition, as history shards read them.
    users = np.array([e["user_id"] for e in examples])
    assert [p for p, _, _ in written] == user_partition(users, PARTITIONS).tolist()
    assert len(set(users.tolist())) > 10 and {p for p, _, _ in written} == {0, 1}
    assert {e["request_id"]: e["label"] for e in examples} == expected
    assert all(e["weight"] == 1.0 for e in examples)
    features = {e.key: e.message for e in events if e.topic == FEATURES}
    assert all(e["slots"] == features[e["request_id"]]["slots"]
               and e["time"] == features[e["request_id"]]["time"] for e in examples)
    total = Counter()
    for c in counters:
        total.update(c)
    assert total["features"] == 2000 and total["actions"] == sum(expected.values())
    assert total["positives"] == sum(expected.values()) and total["dead_letters"] == 0
    assert total["spilled"] > 0 and total["pending"] == 0
    assert sorted(c["index"] for c in counters) == [0, 1]
    # Everything was joined, so the committed offsets are the ends of both topics.
    committed = _committed(cfg)
    for kind in ("features", "actions"):
        topic = getattr(cfg.kafka.topics, kind)
        assert {p: committed[topic, p] for p in range(PARTITIONS)} == end_offsets(cfg.kafka, topic)


def test_paced_replay_while_joining_yields_the_same_examples(ray_session, broker,
                                                             events) -> None:
    """Published at ~2 wall seconds for the whole span while the joiners read (live), the
    examples are those of the backlog above: windows run on event time. Keyed by request
    (``joiner.examples_key``), each example is in its impression's partition number."""
    cfg = _config(broker, "paced", examples_key="request")
    span = events[-1].time - events[0].time
    publisher = threading.Thread(target=publish, args=(cfg.kafka, events),
                                 kwargs={"speedup": span / 2.0})
    joiners = [JoinerActor.options(num_cpus=0.25).remote(cfg.kafka, cfg.joiner, k, 2)
               for k in range(2)]
    ray.get([j.counters.remote() for j in joiners])
    publisher.start()
    counters = ray.get([j.run.remote(None, 1.5, True) for j in joiners])
    publisher.join()
    for j in joiners:
        ray.kill(j)
    assert sum(c["features"] for c in counters) == 2000
    written = _read(cfg.kafka, cfg.kafka.topics.examples)
    examples = [json.loads(v) for _, _, v in written]
    assert len(examples) == 2000
    assert {e["request_id"]: e["label"] for e in examples} == _expected(events)
    feature_partition = {json.loads(v)["request_id"]: p
                         for p, _, v in _read(cfg.kafka, cfg.kafka.topics.features)}
    assert all(p == feature_partition[e["request_id"]] for (p, _, _), e in zip(written, examples))
    assert any(p != u for (p, _, _), u in zip(written, user_partition(
        np.array([e["user_id"] for e in examples]), PARTITIONS)))


def _committed(cfg: Config) -> dict[tuple[str, int], int | None]:
    consumer = KafkaConsumer(**cfg.kafka.client_kwargs(), group_id=cfg.joiner.group_id,
                             enable_auto_commit=False)
    try:
        return {(topic, p): consumer.committed(TopicPartition(topic, p))
                for topic in (cfg.kafka.topics.features, cfg.kafka.topics.actions)
                for p in range(PARTITIONS)}
    finally:
        consumer.close()


MALFORMED = [b"{not json", b"\xff", b"[]", b"",
             encode({"request_id": "x", "time": 5}),
             encode({"request_id": "x", "time": "noon", "item_id": 1, "action": "click"}),
             encode({"request_id": 3, "time": 5, "user_id": 1, "item_id": 2, "slots": {"a": 1}}),
             encode({"request_id": "x", "time": 5, "user_id": 1, "item_id": 2,
                     "slots": {"a": 1.5}})]


def test_malformed_messages_go_to_dead_letters_and_valid_ones_join(ray_session, broker,
                                                                  events) -> None:
    cfg = _config(broker, "malformed")
    rng = random.Random(0)
    sends = [(cfg.kafka.topics.features if e.topic == FEATURES else cfg.kafka.topics.actions,
              e.key.encode(), encode(e.message)) for e in events]
    injected = 0
    for i in sorted(rng.sample(range(len(sends)), len(sends) // 100), reverse=True):
        topic = rng.choice([cfg.kafka.topics.features, cfg.kafka.topics.actions])
        sends.insert(i, (topic, f"bad-{i}".encode(), MALFORMED[injected % len(MALFORMED)]))
        injected += 1
    producer = KafkaProducer(**cfg.kafka.client_kwargs())
    for topic, key, value in sends:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()
    counters = run_joiners(cfg, 2, stop_when_idle_s=1.0, drain=True)
    dead = [json.loads(v) for _, _, v in _read(cfg.kafka, cfg.kafka.topics.dead_letter)]
    assert injected == 31 and len(dead) == injected
    assert sum(c["dead_letters"] for c in counters) == injected
    assert all(d["reason"] and d["topic"] in (cfg.kafka.topics.features,
                                              cfg.kafka.topics.actions) for d in dead)
    assert Counter(d["payload"] for d in dead) == Counter(
        v.decode("utf-8", errors="replace") for t, k, v in sends if k.startswith(b"bad-"))
    examples = [json.loads(v) for _, _, v in _read(cfg.kafka, cfg.kafka.topics.examples)]
    assert len(examples) == 2000
    assert {e["request_id"]: e["label"] for e in examples} == _expected(events)


@pytest.mark.parametrize("how", ["ray.kill", "kill -9"])
def test_killed_joiner_restarts_from_its_commits(ray_session, broker, events, kill_actor,
                                                 how) -> None:
    cfg = _config(broker, f"restart-{how.replace(' ', '').replace('.', '')}",
                  max_poll_records=50)
    publish(cfg.kafka, events)
    topics = cfg.kafka.topics
    feature_at = {json.loads(v)["request_id"]: (p, o) for p, o, v in _read(cfg.kafka,
                                                                          topics.features)}
    start = lambda k: JoinerActor.options(num_cpus=0.25).remote(cfg.kafka, cfg.joiner, k, 2)
    victim, other = start(0), start(1)
    other_done = other.run.remote(None, 1.0, True)
    # Poll the victim past its first commit of progress and a little further, then kill it.
    read, deadline, committed = 0, time.monotonic() + 30, {}
    while time.monotonic() < deadline and not committed.get((topics.features, 0)):
        read += ray.get(victim.poll.remote())
        committed = _committed(cfg) if read >= 600 else {}
    for _ in range(8):
        read += ray.get(victim.poll.remote())
    kill_actor(victim, how)
    committed = _committed(cfg)
    before = [json.loads(v)["request_id"] for _, _, v in _read(cfg.kafka, topics.examples)]
    # A restarted joiner re-emits at most the examples of features at or above its commit.
    may_repeat = sum(1 for rid in before
                     if feature_at[rid][0] == 0 and feature_at[rid][1] >= committed[
                         topics.features, 0])
    restarted = start(0)
    after, _ = ray.get([restarted.run.remote(None, 1.0, True), other_done])
    assert after["features"] > 0, "the victim was killed mid-run"
    examples = [json.loads(v) for _, _, v in _read(cfg.kafka, topics.examples)]
    labels: dict[str, set[float]] = {}
    for e in examples:
        labels.setdefault(e["request_id"], set()).add(e["label"])
    expected = _expected(events)
    assert {rid: {y} for rid, y in expected.items()} == labels, "none lost, none relabelled"
    repeated = len(examples) - len(expected)
    assert repeated <= may_repeat
    print(f"\nkilled after {read} records and {len(before)} examples; committed features "
          f"offset {committed[topics.features, 0]}; repeated {repeated} <= {may_repeat}")


def test_a_poll_takes_what_has_arrived_without_waiting_out_its_timeout(broker, events) -> None:
    cfg = _config(broker, "prompt")
    publish(cfg.kafka, events[:50])
    joiner = StreamJoiner(cfg.kafka, cfg.joiner, slots=cfg.slots, limits=cfg.limits)
    try:
        deadline = time.monotonic() + 60.0
        read = 0
        while read < 50 and time.monotonic() < deadline:
            start = time.monotonic()
            n = joiner.poll(timeout_s=30.0)
            # Fewer than max_poll_records are waiting: a poll that read some does not wait out
            # its timeout (a wide margin for a loaded machine).
            assert n == 0 or time.monotonic() - start < 15.0
            read += n
        assert read == 50
        counters = joiner.counters()
        assert counters["features"] + counters["actions"] == 50
    finally:
        joiner.close()


def test_a_message_the_brokers_did_not_take_starts_the_joiner_again_from_its_commits(
        broker, events) -> None:
    """A delivery failure (as the producer's report counts it) stops the commit; the joiner
    starts again from the committed offsets in its own process and joins on: every example
    written, with the right label, counters that only grow. Past
    ``joiner.recoveries_per_hour``, the run fails naming it."""
    cfg = _config(broker, "recover", commit_interval_s=0.0, max_poll_records=100,
                  recoveries_per_hour=1)
    publish(cfg.kafka, events)
    joiner = StreamJoiner(cfg.kafka, cfg.joiner, slots=cfg.slots, limits=cfg.limits)
    try:
        read, deadline = 0, time.monotonic() + 60
        while read < 600 and time.monotonic() < deadline:
            read += joiner.poll()
        before = joiner.counters()
        joiner._reports.failed += 1  # a message the brokers did not take, as reported
        after = joiner.run(stop_when_idle_s=1.0, drain=True)
        assert after["recoveries"] == 1 and after["pending"] == 0
        assert all(after[k] >= before[k] for k in ("features", "actions", "positives"))
        examples = [json.loads(v) for _, _, v in _read(cfg.kafka, cfg.kafka.topics.examples)]
        labels: dict[str, set[float]] = {}
        for e in examples:
            labels.setdefault(e["request_id"], set()).add(e["label"])
        assert labels == {rid: {y} for rid, y in _expected(events).items()}
        # A second failure within the hour is over the limit of 1.
        joiner._reports.failed += 1  # the next poll's commit (one every poll here) sees it
        with pytest.raises(RuntimeError, match="joiner.recoveries_per_hour"):
            joiner.run(stop_when_idle_s=5.0)
    finally:
        joiner._reports.failed = 0
        joiner.close()
