"""Dead letters of the data layer's Kafka readers: each record a reader refuses, written to
``kafka.topics.dead_letter`` as ``messages.dead_letter`` (topic, partition, offset, reason,
raw payload, and the stage that refused it).

A kafka-python producer (the readers' own client library) is made at the first dead letter,
so a clean stream opens no producer. Producing never raises into the read: a dead letter the
brokers do not take (the topic missing, the cluster away) is counted in ``failed`` and
logged, and after such a failure the writer stops trying for ``BACKOFF_S`` (counting what it
skips), so an absent topic costs the read one ``timeout_s`` wait, not one per bad record.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kafka import KafkaProducer

from monolith_ray import metrics
from monolith_ray.config import KafkaConfig
from monolith_ray.messages import dead_letter, encode

logger = logging.getLogger(__name__)

BACKOFF_S = 30.0


class DeadLetterWriter:
    """Write the dead letters of records read from ``kafka``: :meth:`send` queues one,
    :meth:`flush` waits until every queued one is written (or ``timeout_s`` passes) and
    counts those not written; :meth:`close` flushes and closes. ``sent`` counts dead letters
    handed to :meth:`send`, ``failed`` those not written."""

    def __init__(self, kafka: KafkaConfig, stage: str, timeout_s: float = 10.0) -> None:
        self.kafka, self.stage = kafka, stage
        self.timeout_s = timeout_s
        self.sent = 0
        self.failed = 0
        self._producer: KafkaProducer | None = None
        self._pending: list[Any] = []
        self._paused_until = 0.0

    def send(self, topic: str, partition: int, offset: int, reason: str,
             raw: bytes | None) -> None:
        """Queue the dead letter of ``topic[partition]@offset`` refused for ``reason``."""
        self.sent += 1
        metrics.DEAD_LETTERS.inc(stage=self.stage)
        if time.monotonic() < self._paused_until:
            self.failed += 1
            return
        try:
            value = encode(dead_letter(topic, partition, offset, reason, raw or b"",
                                             self.stage))
            if self._producer is None:
                self._producer = KafkaProducer(**self.kafka.client_kwargs(), linger_ms=5,
                                               max_block_ms=int(self.timeout_s * 1000))
            self._pending.append(self._producer.send(self.kafka.topics.dead_letter, value=value))
        except Exception as err:  # noqa: BLE001 - a dead letter never stops the read
            self._fail(1, err)

    def flush(self) -> None:
        """Wait for the queued dead letters; count and log those the brokers did not take."""
        if not self._pending:
            return
        assert self._producer is not None
        try:
            self._producer.flush(self.timeout_s)
        except Exception as err:  # noqa: BLE001 - counted below with the futures
            logger.warning("flushing dead letters: %s", err)
        pending, self._pending = self._pending, []
        lost = [f for f in pending if not f.succeeded()]
        if lost:
            self._fail(len(lost), lost[0].exception or "not acknowledged in time")

    def close(self) -> None:
        """Flush, then close the producer (if one was made)."""
        self.flush()
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(self.timeout_s)
            except Exception as err:  # noqa: BLE001 - closing never fails the read
                logger.warning("closing the dead-letter producer: %s", err)

    def _fail(self, count: int, err: object) -> None:
        self.failed += count
        metrics.DEAD_LETTERS_FAILED.inc(count, stage=self.stage)
        self._paused_until = time.monotonic() + BACKOFF_S
        logger.warning("%d dead letter(s) to %s not written (%s); %d in all, none tried "
                       "for %g s", count, self.kafka.topics.dead_letter, err, self.failed,
                       BACKOFF_S)
