"""The Kafka layer against the embedded Tansu broker: lifecycle, topics, reads by offset,
exact end offsets, consumer groups, config validation and the JSON wire format."""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Iterator

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from monolith_ray.config import ConfigError, from_dict
from monolith_ray.messages import decode, encode
from monolith_ray.stream import (
    EmbeddedBroker,
    KafkaConfig,
    KafkaTopics,
    end_offsets,
    ensure_topics,
    kafka_session,
    read_range,
)
from monolith_ray.stream.kafka import _answers_metadata

N_MESSAGES = 1000
FILLED = "filled"


@pytest.fixture(scope="module")
def cfg() -> Iterator[KafkaConfig]:
    """Settings pointing at the one embedded broker shared by this module's tests."""
    with EmbeddedBroker() as broker:
        yield KafkaConfig(bootstrap_servers=broker.bootstrap, partitions=3)


@pytest.fixture(scope="module")
def filled(cfg: KafkaConfig) -> dict[tuple[int, int], dict]:
    """Topic ``FILLED`` holding N_MESSAGES keyed JSON messages spread over its partitions,
    produced in one burst; maps (partition, offset) as the producer was told -> message."""
    ensure_topics(cfg, [FILLED])
    producer = KafkaProducer(**cfg.client_kwargs())
    messages = [{"i": i, "user": f"u{i % 37}", "score": i / 7} for i in range(N_MESSAGES)]
    futures = [producer.send(FILLED, key=str(m["i"]).encode(), value=encode(m)) for m in messages]
    producer.flush()
    placed = {}
    for message, future in zip(messages, futures):
        meta = future.get(timeout=30)
        placed[meta.partition, meta.offset] = message
    producer.close()
    return placed


def _true_counts(filled: dict[tuple[int, int], dict], partitions: int) -> dict[int, int]:
    return {p: sum(1 for q, _ in filled if q == p) for p in range(partitions)}


def test_broker_starts_answers_and_stops() -> None:
    broker = EmbeddedBroker().start()
    pid, log_dir = broker.pid, broker.log_path.parent
    host, port = broker.bootstrap.split(":")
    assert _answers_metadata(host, int(port), timeout_s=2.0)
    broker.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not log_dir.exists()
    assert not _answers_metadata(host, int(port), timeout_s=0.5)
    broker.stop()
    with pytest.raises(RuntimeError, match="not running"):
        broker.bootstrap


def test_broker_that_dies_while_starting_reports_its_log(tmp_path) -> None:
    fake = tmp_path / "fake_broker"
    fake.write_text("#!/bin/sh\necho 'cannot bind: address in use'\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(RuntimeError, match=r"(?s)exited with code 3.*cannot bind"):
        EmbeddedBroker(binary=str(fake)).start()


def test_ensure_topics_uses_partition_count_and_is_idempotent(cfg: KafkaConfig) -> None:
    topics = KafkaTopics(features="f1", actions="a1", examples="e1", dead_letter="d1")
    local = dataclasses.replace(cfg, topics=topics)
    ensure_topics(local)
    ensure_topics(local)
    admin = KafkaAdminClient(**cfg.client_kwargs())
    try:
        described = {t["topic"]: len(t["partitions"]) for t in admin.describe_topics(topics.names())}
        assert described == {name: 3 for name in topics.names()}
        assert admin.list_topics().count("f1") == 1
    finally:
        admin.close()


def test_kafka_session_uses_given_brokers_or_starts_its_own(cfg: KafkaConfig) -> None:
    with kafka_session(cfg) as bootstrap:
        assert bootstrap == cfg.bootstrap_servers
    with kafka_session(KafkaConfig()) as bootstrap:
        host, port = bootstrap.split(":")
        assert host == "127.0.0.1"
        assert end_offsets(KafkaConfig(bootstrap_servers=bootstrap), "examples") == {0: 0, 1: 0}
    assert not _answers_metadata(host, int(port), timeout_s=0.5)


def test_messages_read_back_by_explicit_offsets(cfg: KafkaConfig, filled) -> None:
    assert len({p for p, _ in filled}) == 3, "keys should spread over every partition"
    got = {}
    for partition in range(3):
        records = read_range(cfg, FILLED, partition, 0)
        assert [r.offset for r in records] == list(range(len(records)))
        for r in records:
            got[partition, r.offset] = decode(r.value)
            assert r.key == str(got[partition, r.offset]["i"]).encode()
            assert r.timestamp_ms > 0
    assert len(got) == N_MESSAGES
    assert got == filled


def test_read_range_bounds(cfg: KafkaConfig, filled) -> None:
    assert [r.offset for r in read_range(cfg, FILLED, 0, 10, 20)] == list(range(10, 20))
    assert [r.offset for r in read_range(cfg, FILLED, 0, 10, max_records=7)] == list(range(10, 17))
    end = _true_counts(filled, 3)[0]
    assert [r.offset for r in read_range(cfg, FILLED, 0, end - 2, end + 100)] == [end - 2, end - 1]
    assert read_range(cfg, FILLED, 0, end) == []
    with pytest.raises(ValueError, match="no partition 9"):
        read_range(cfg, FILLED, 9, 0)


def test_end_offsets_exact_where_list_offsets_under_reports(cfg: KafkaConfig, filled) -> None:
    consumer = KafkaConsumer(**cfg.client_kwargs())
    raw = consumer.end_offsets([TopicPartition(FILLED, p) for p in range(3)])
    consumer.close()
    # Measured with tansu 0.6.0 (values vary with how the producer batched the burst): the raw
    # ListOffsets("latest") answered {0: 282, 1: 231, 2: 238} where the partitions held
    # {0: 351, 1: 329, 2: 320} records — each the base offset of the last batch + 1. A burst
    # sent as a single batch per partition gave {0: 1, 1: 1} for {0: 503, 1: 497}.
    assert all(raw[TopicPartition(FILLED, p)] <= n for p, n in _true_counts(filled, 3).items())
    assert end_offsets(cfg, FILLED) == _true_counts(filled, 3)


def test_end_offsets_after_batches_of_mixed_sizes(cfg: KafkaConfig) -> None:
    ensure_topics(cfg, ["batches"])
    producer = KafkaProducer(**cfg.client_kwargs())
    sent = 0
    for burst in (1, 5, 1, 40, 3):
        for _ in range(burst):
            producer.send("batches", value=encode(sent), partition=1)
            sent += 1
        producer.flush()
    producer.close()
    # Raw ListOffsets here: base offset of the last batch (the 3-record burst) + 1 = sent - 2.
    assert end_offsets(cfg, "batches") == {0: 0, 1: sent, 2: 0}
    assert [decode(r.value) for r in read_range(cfg, "batches", 1, 0)] == list(range(sent))


def test_consumer_group_gets_partitions_and_reads_all(cfg: KafkaConfig, filled) -> None:
    consumer = KafkaConsumer(**cfg.client_kwargs(), group_id="test-group",
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             value_deserializer=decode)
    consumer.subscribe([FILLED])
    seen: dict[tuple[int, int], dict] = {}
    deadline = time.monotonic() + 60
    try:
        while len(seen) < N_MESSAGES and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                seen.update({(tp.partition, r.offset): r.value for r in records})
        assert consumer.assignment() == {TopicPartition(FILLED, p) for p in range(3)}
    finally:
        consumer.close()
    assert seen == filled


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"bootstrap_servers": "localhost"}, "bootstrap_servers"),
    ({"bootstrap_servers": "a:9092,b:99999"}, "bootstrap_servers"),
    ({"security_protocol": "TLS"}, "security_protocol"),
    ({"sasl_mechanism": "PLAIN"}, "sasl_mechanism"),
    ({"security_protocol": "SASL_SSL"}, "sasl_mechanism"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
      "sasl_plain_username": "u"}, "sasl_plain_password"),
    ({"ssl_cafile": "/ca.pem"}, "ssl_cafile"),
    ({"security_protocol": "SSL", "ssl_keyfile": "/k.pem"}, "ssl_keyfile"),
    ({"partitions": 0}, "partitions"),
    ({"client_id": ""}, "client_id"),
])
def test_config_errors_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        KafkaConfig(**kwargs)
    assert err.value.key == key


def test_topic_errors_name_the_key_under_its_section() -> None:
    with pytest.raises(ConfigError) as err:
        KafkaTopics(examples="features")
    assert err.value.key == "examples"
    with pytest.raises(ConfigError) as err:
        from_dict(KafkaConfig, {"topics": {"dead_letter": "no spaces"}})
    assert err.value.key == "topics.dead_letter"


def test_client_kwargs_pass_security_settings_through() -> None:
    cfg = KafkaConfig(bootstrap_servers="k1:9093,k2:9093", security_protocol="SASL_SSL",
                      sasl_mechanism="SCRAM-SHA-512", sasl_plain_username="svc",
                      sasl_plain_password="secret", ssl_cafile="/etc/ca.pem")
    assert cfg.client_kwargs() == {
        "bootstrap_servers": "k1:9093,k2:9093", "client_id": "monolith_ray",
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc", "sasl_plain_password": "secret",
        "ssl_cafile": "/etc/ca.pem",
    }
    assert "secret" not in repr(cfg)
    assert set(KafkaConfig(bootstrap_servers="k:1").client_kwargs()) == {
        "bootstrap_servers", "client_id", "security_protocol"}
    with pytest.raises(ConfigError, match="bootstrap_servers"):
        KafkaConfig().client_kwargs()


def test_librdkafka_config_renames_the_settings() -> None:
    from monolith_ray.stream import librdkafka_config

    cfg = KafkaConfig(bootstrap_servers="k1:9093,k2:9093", security_protocol="SASL_SSL",
                      sasl_mechanism="SCRAM-SHA-512", sasl_plain_username="svc",
                      sasl_plain_password="secret", ssl_cafile="/etc/ca.pem", client_id="me")
    assert librdkafka_config(cfg) == {
        "bootstrap.servers": "k1:9093,k2:9093", "client.id": "me",
        "security.protocol": "sasl_ssl", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc", "sasl.password": "secret", "ssl.ca.location": "/etc/ca.pem"}
    assert librdkafka_config(KafkaConfig(bootstrap_servers="k:1")) == {
        "bootstrap.servers": "k:1", "client.id": "monolith_ray", "security.protocol": "plaintext"}


def test_delivery_reports_count_what_the_brokers_never_took() -> None:
    from monolith_ray.config import KafkaConfig
    from monolith_ray.stream.kafka import DeliveryReports

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    reports = DeliveryReports(KafkaConfig(bootstrap_servers=f"127.0.0.1:{port}"),
                              **{"message.timeout.ms": 300})
    for _ in range(3):
        reports.producer.produce("features", b"x")
    assert reports.producer.flush(10) == 0  # every message has had its report
    assert reports.failed == 3
    assert len(reports.recent) == 3 and all(r.startswith("features[") for r in reports.recent)
