"""The serving log: impressions to the ``features`` topic, feedback to ``actions``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from monolith_ray.config import Config
from monolith_ray.messages import encode

logger = logging.getLogger(__name__)


class FeatureLog:
    """Writes impressions and feedback to Kafka with librdkafka, keyed by request id (placed
    as kafka-python places keys, so features and actions of a request share a partition)."""

    def __init__(self, cfg: Config) -> None:
        from monolith_ray.stream.kafka import DeliveryReports

        self.topics = cfg.kafka.topics
        self.dropped = 0
        self._reports = DeliveryReports(cfg.kafka, partitioner="murmur2_random")
        self._producer = self._reports.producer

    @property
    def failed(self) -> int:
        """Messages dropped before sending or not delivered."""
        return self.dropped + self._reports.failed

    def send(self, topic: str, key: str, message: Mapping[str, Any] | bytes) -> None:
        """Queue one message (a mapping, or its JSON bytes); a full queue or a client error
        is counted in ``failed`` and logged, never raised: an answer is not refused because
        Kafka is slow."""
        from confluent_kafka import KafkaException

        value = message if isinstance(message, bytes) else encode(message)
        try:
            self._producer.produce(topic, key=key.encode("utf-8"), value=value)
        except (BufferError, KafkaException) as err:
            self.dropped += 1
            logger.warning("a message to %s was dropped: %s", topic, err)

    def poll(self) -> None:
        self._producer.poll(0)

    def flush(self, timeout_s: float = 10.0) -> int:
        """Wait for messages in flight -> how many are still undelivered."""
        return self._producer.flush(timeout_s)
