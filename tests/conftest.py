"""Shared fixtures: one local Ray and one embedded Kafka broker per test session (starting
either costs seconds), and a helper that produces raw messages."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A local Ray with 2 CPUs and a small object store, shut down after the session."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # address="local": always a new local Ray, never one another process started on this
    # machine (ray.init would otherwise join the cluster named in /tmp/ray).
    ray.init(address="local", num_cpus=2, object_store_memory=300 * 1024 * 1024,
             include_dashboard=False,
             log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The address of one embedded Kafka broker shared by the session's tests (each test
    makes its own topics)."""
    from monolith_ray.stream import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker.bootstrap


@pytest.fixture(scope="session")
def produce() -> Callable[..., list[tuple[int, int]]]:
    """``produce(kafka_cfg, topic, payloads, partitions)``: send raw payloads (bytes, or None
    for a tombstone), payload i keyed ``i`` to partition ``partitions[i]``, in order -> their
    (partition, offset)."""
    from kafka import KafkaProducer

    def send(kafka: Any, topic: str, payloads: Sequence[bytes | None],
             partitions: Sequence[int]) -> list[tuple[int, int]]:
        producer = KafkaProducer(**kafka.client_kwargs(), linger_ms=5)
        try:
            futures = [producer.send(topic, key=b"%d" % i, value=v, partition=p)
                       for i, (v, p) in enumerate(zip(payloads, partitions))]
            producer.flush()
            return [(f.get(timeout=30).partition, f.get(timeout=30).offset) for f in futures]
        finally:
            producer.close()

    return send


@pytest.fixture(scope="session")
def serve_url(ray_session: None) -> Iterator[str]:
    """Ray Serve's HTTP proxy on a free loopback port, shared by the session's tests (the
    first start costs seconds) -> its base URL. Tests deploy their own applications."""
    import socket

    from ray import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="session")
def kill_actor() -> Callable[[Any, str], None]:
    """``kill_actor(handle, how)``: end an actor the way ``how`` says and return once Ray
    knows it is dead: ``"ray.kill"`` (Ray stops it) or ``"kill -9"`` (its worker process is
    sent SIGKILL, as a crash or an OOM kill would)."""
    import signal
    import time

    import ray
    from ray.exceptions import RayActorError

    def kill(handle: Any, how: str) -> None:
        if how == "ray.kill":
            ray.kill(handle)  # asynchronous: the actor may still answer for a moment
        elif how == "kill -9":
            os.kill(ray.get(handle.__ray_call__.remote(lambda _: os.getpid())), signal.SIGKILL)
        else:
            raise ValueError(f"how must be 'ray.kill' or 'kill -9', got {how!r}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                ray.get(handle.__ray_call__.remote(lambda _: None), timeout=5)
            except RayActorError:
                return
            time.sleep(0.05)
        raise TimeoutError(f"the actor still answers 30 s after {how}")

    return kill
