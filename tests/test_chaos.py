"""Chaos on the running loop: the demo's loop (online training, serving with two replicas,
joiners, sync) on the session's Ray and broker while one process of each kind is killed with
``kill -9``, one every few seconds in a random order. No request fails (the users' client
sends a request once more after a 5xx, as a load balancer would: a replica killed
mid-request answers 500), training goes on, every kind comes back (its restart counted), and
the offsets training committed cover every example the joiners wrote: at least once, none
skipped."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import time
from collections.abc import Callable

import ray

from monolith_ray import demo
from monolith_ray.config import KafkaConfig, KafkaTopics, load_config
from monolith_ray.stream.kafka import end_offsets, ensure_topics
from monolith_ray.supervision import actor_state

KILL_EVERY_S = 6.0  # between kills
# bound on the wait for training to cover the examples after the kills. The stream is quiet
# by then: its tail reaches the trainers within online.max_batch_wait_s (the read task's
# flush), is committed within that again and a step, and collected at the next snapshot.
# What is left is the loaded machine's slowness: 90 s timed out in two of four runs before a
# quiet tail was committed without more data (a stall, now tested in tests/train), and the
# bound is kept at 180 s, which costs a passing run nothing
SETTLE_S = 180.0


def _alive_pid(handle) -> int | None:
    record = actor_state(handle)
    return record.get("Pid") if record.get("State") == "ALIVE" else None


def _replicas() -> list[dict]:
    from ray._private import state

    return [a for a in state.actors().values()
            if a["ActorClassName"].startswith("ServeReplica:" + demo.APP_NAME)
            and a["State"] == "ALIVE"]


def _live(loop: demo.Loop) -> dict[str, Callable[[], list[int]]]:
    """Per kind of process, a function -> the pids of its live processes."""
    def pids(handles) -> list[int]:
        return [p for p in map(_alive_pid, handles) if p]

    training = loop.training
    return {
        "joiner": lambda: pids(loop.joiners),
        "trainer": lambda: pids(training.trainers),
        "shard": lambda: pids(training.shards),
        "dense": lambda: pids([training.dense]),
        "sync": lambda: pids([loop.sync]),
        "source-monitor": lambda: pids([training.monitor]),
        # the read tasks of the stream's current dataset, once each has reported (the job
        # reads the stream again with a new dataset after a trainer or a read task is lost)
        "read-task": lambda: [p for p in ray.get(training.monitor.totals.remote(),
                                                 timeout=30)["pids"].values() if p],
        "replica": lambda: [a["Pid"] for a in _replicas()],
    }


def _wait(condition, timeout_s: float, what: str, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_loop_survives_kill_9_of_each_of_its_processes(ray_session, serve_url,
                                                             kafka_bootstrap, tmp_path) -> None:
    port = int(serve_url.rsplit(":", 1)[1])
    cfg = load_config(demo.DEMO_CONFIG, [
        f"data.output_dir={tmp_path}", f"serve.port={port}", "serve.sparse_sync_interval_s=3",
        "serve.dense_sync_interval_s=8", "joiner.window_s=4", "serve.max_candidates=128",
        "train.shard_cpus=0", "train.trainer_cpus=0", "train.read_cpus=0.01", "joiner.cpus=0",
        "online.snapshot_every_s=10", "supervision.check_every_s=1",
        "serve.autoscaling.min_replicas=2", "serve.autoscaling.max_replicas=2"])
    topics = KafkaTopics(**{f.name: f"chaos.{f.name}" for f in dataclasses.fields(KafkaTopics)})
    cfg = dataclasses.replace(cfg, kafka=KafkaConfig(bootstrap_servers=kafka_bootstrap,
                                                     partitions=2, topics=topics))
    ensure_topics(cfg.kafka)
    loop = demo.start(cfg, rate_per_s=10)
    try:
        _wait(lambda: loop.progress()["examples_read"] > 0, 120, "training to read examples")
        _wait(lambda: len(_replicas()) == 2, 60, "two serving replicas")
        live = _live(loop)
        full = {kind: len(pids()) for kind, pids in live.items()}
        assert full["replica"] == 2 and all(full.values()), full
        kinds = list(live)
        rng = random.Random(1)
        rng.shuffle(kinds)
        rows_before = sum(loop.progress()["table_rows"].values())
        back_in: dict[str, float] = {}
        killed_at: list[tuple[str, float]] = []
        for kind in kinds:
            pid = rng.choice(_wait(live[kind], 60, f"a live {kind}"))
            os.kill(pid, signal.SIGKILL)
            killed_at.append((kind, time.time()))
            t0 = time.monotonic()
            _wait(lambda: (lambda now: len(now) == full[kind] and pid not in now)(live[kind]()),
                  120, f"{kind} back")
            back_in[kind] = round(time.monotonic() - t0, 1)
            time.sleep(max(0.0, KILL_EVERY_S - back_in[kind]))
            loop.progress()  # raises if training ended or a process died for good
        print(json.dumps({"chaos_back_in_s": back_in}))  # what each restart took, for the README
        _wait(lambda: len(_replicas()) == 2, 60, "the replicas back")
        time.sleep(4)  # the loop runs on after the last kill
        progress = loop.progress()

        loop.users.stop_event.set()
        loop.users.join(timeout=30)
        users = loop.users.stats()
        assert users["requests"] > 200 and users["failed"] == 0, (
            users, list(loop.users.errors), killed_at)

        # Every kind came back and its restart was counted where the operator sees it.
        restarts = progress["restarts"]
        for name in ("trainers", "dense", "sync", "source-monitor", "stream"):
            assert restarts[name] >= 1, restarts
        assert sum(v for k, v in restarts.items() if k.startswith("shard-")) >= 1, restarts
        assert sum(v for k, v in restarts.items() if k.startswith("joiner-")) >= 1, restarts
        # Training went on: more rows, and it still reads.
        assert sum(progress["table_rows"].values()) > rows_before

        # Once the joiners have written what they will, the committed offsets of training
        # reach the end of every partition of the examples topic: nothing joined is skipped.
        time.sleep(cfg.joiner.commit_interval_s + 2)
        ends = end_offsets(cfg.kafka, topics.examples)
        assert sum(ends.values()) > 0
        seen: list[dict[int, int]] = []

        def covered() -> bool:
            seen.append(loop.training.snapshot())
            return all(seen[-1].get(p, 0) >= e for p, e in ends.items())

        try:
            _wait(covered, SETTLE_S, f"training to cover the examples up to {ends}")
        except AssertionError as err:
            raise AssertionError(f"{err}; trained up to {seen[-3:]}; errors "
                                 f"{loop.training_error}; progress {loop.progress()}") from None
    finally:
        demo.stop(loop)
