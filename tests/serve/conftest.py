"""Serving fixtures: a recommender application on the session's Ray Serve, fed by real shard,
dense-server and sync actors, logging to its own Kafka topics."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest


@dataclasses.dataclass
class Recommender:
    """A deployed recommender: its base URL, config and the actors behind it."""

    url: str
    cfg: Any
    shards: list[Any]
    dense: Any
    sync: Any
    serving: list[Any] = dataclasses.field(default_factory=list)  # serving shards, if sharded
    history: list[Any] = dataclasses.field(default_factory=list)  # the history shards


@pytest.fixture(scope="session")
def deploy_recommender(serve_url: str, kafka_bootstrap: str
                       ) -> Callable[..., contextlib.AbstractContextManager[Recommender]]:
    """``with deploy_recommender(name, prefix, overrides, pool_items, partitions) as app``:
    the default config with ``overrides`` (plus settings that keep it small: one replica, no
    CPUs reserved, float32 rows, hourly sparse syncs), topics ``<name>.<topic>``, a
    candidate pool of ``pool_items`` (MovieLens-shaped genres and years), deployed as
    application ``name`` at ``prefix``, with history shards following the examples
    topic if the config has history slots; deleted with its actors on leaving."""
    import ray
    from ray import serve

    from monolith_ray.config import KafkaConfig, KafkaTopics, load_config
    from monolith_ray.history.server import start_history_shards
    from monolith_ray.retrieval.configured import synced_parts
    from monolith_ray.serve.app import CandidatePool, build_app
    from monolith_ray.serve.serving_shard import start_serving_shards
    from monolith_ray.serve.sync import start_parameter_sync
    from monolith_ray.stream import ensure_topics
    from monolith_ray.train.job import start_servers

    @contextlib.contextmanager
    def deploy(name: str, prefix: str, overrides: Sequence[str], pool_items: range,
               partitions: int = 2) -> Iterator[Recommender]:
        topics = KafkaTopics(**{f.name: f"{name}.{f.name}"
                                for f in dataclasses.fields(KafkaTopics)})
        kafka = KafkaConfig(bootstrap_servers=kafka_bootstrap, partitions=partitions,
                            topics=topics)
        ensure_topics(kafka)
        cfg = load_config(overrides=[
            "serve.sparse_sync_interval_s=3600", "serve.replica_cpus=0",
            "serve.autoscaling.min_replicas=1", "serve.autoscaling.max_replicas=1",
            "serve.store_dtype=float32", "train.shard_cpus=0", *overrides])
        cfg = dataclasses.replace(cfg, kafka=kafka)
        shards, dense = start_servers(cfg)
        serving = start_serving_shards(cfg) if cfg.serve.store == "sharded" else []
        sync = start_parameter_sync(cfg.table_slots, shards, dense, cfg.serve, serving=serving,
                                    parts=synced_parts(cfg))
        history = start_history_shards(cfg)
        pool = CandidatePool([(i, {"genres": ["Comedy"], "release_year": 1990 + i % 10})
                              for i in pool_items])
        serve.run(build_app(cfg, sync, pool, serving, history), name=name,
                  route_prefix=prefix)
        try:
            yield Recommender(serve_url + ("" if prefix == "/" else prefix), cfg, shards,
                              dense, sync, serving, history)
        finally:
            serve.delete(name)
            for actor in [*shards, dense, sync, *serving, *history]:
                ray.kill(actor)

    return deploy


@pytest.fixture(scope="session")
def stalled_post() -> Callable[[str, str, int, bytes, float], bytes]:
    """``stalled_post(url, path, declared, sent, timeout_s)``: a raw HTTP POST to ``url`` +
    ``path`` declaring a body of ``declared`` bytes and sending only ``sent``, then reading
    the answer (until its JSON body closes) -> the answer's bytes. The socket times out after
    ``timeout_s`` (an error), so a server that waits for the rest fails the test."""
    import socket
    import urllib.parse

    def post(url: str, path: str, declared: int, sent: bytes, timeout_s: float) -> bytes:
        parts = urllib.parse.urlparse(url)
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s) as sock:
            sock.sendall(b"POST %s%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (
                             parts.path.rstrip("/").encode(), path.encode(),
                             parts.hostname.encode(), declared, sent))
            answer = b""
            while b"}" not in answer:
                chunk = sock.recv(4096)
                assert chunk, answer
                answer += chunk
        return answer

    return post
