"""The streaming engine's Kafka plumbing: connection settings, an embedded broker, topic
creation, exact end offsets, offset-range reads (the JSON wire format is
``monolith_ray.messages``).

``kafka`` is Ray-free (it runs in any process: a driver, an actor, a test); the Ray actors
that join and consume streams build on it.
"""

from monolith_ray.config import KafkaConfig as KafkaConfig, KafkaTopics as KafkaTopics
from monolith_ray.stream.kafka import (
    EmbeddedBroker as EmbeddedBroker,
    Record as Record,
    end_offsets as end_offsets,
    ensure_topics as ensure_topics,
    kafka_session as kafka_session,
    librdkafka_config as librdkafka_config,
    read_range as read_range,
)
