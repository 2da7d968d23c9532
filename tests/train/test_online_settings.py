"""The online job trains its stream phase with the online settings (``online.batch_size``,
``online.dense_rate``, each slot's ``online`` optimizer), on the embedded broker: a dump
phase with the batch settings then the stream with the online ones, the dense rate of one
known step, and a run from a batch snapshot whose shard Ray restarts mid-stream. The dense
server's switch of optimizer is tested in process first."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
import ray

from monolith_ray.config import Config, OptimizerConfig, load_config
from monolith_ray.data.dump import dump_examples
from monolith_ray.data.kafka_source import earliest_offsets
from monolith_ray.messages import encode
from monolith_ray.ps.dense import DenseServer
from monolith_ray.stream import ensure_topics
from monolith_ray.table import EmbeddingTable
from monolith_ray.train.job import dense_server_args, start_servers
from monolith_ray.train.online import OnlineTraining, run_online_training
from monolith_ray.train.snapshots import take_snapshot

T0 = 1_700_000_000
FTRL = OptimizerConfig(kind="ftrl", learning_rate=0.04)
ADAM_SLOW = OptimizerConfig(kind="adam", learning_rate=1e-4)
CONFIG = """
slots:
  - {name: user_id, slot_id: 1, dim: 4, online: {kind: ftrl, learning_rate: 0.04}}
  - {name: item_id, slot_id: 2, dim: 4, optimizer: {kind: adam, learning_rate: 0.001},
     online: {kind: adam, learning_rate: 0.0001}}
  - {name: genres, slot_id: 3, dim: 4, max_values: 2, combiner: mean}
model: {hidden: [8]}
train: {batch_size: 32, n_trainers: 1, n_shards: 2, epochs: 1,
        dense_optimizer: {kind: adam, learning_rate: 0.01}}
online: {stop: end, snapshot_every_s: 0.3, commit_every_steps: 2, poll_records: 100,
         block_bytes: 2048, batch_size: 8, dense_rate: 0.25}
"""


def config(bootstrap: str, topic: str, out: Path, *overrides: str) -> Config:
    return load_config(CONFIG, [f"kafka.bootstrap_servers={bootstrap}",
                                f"kafka.topics.examples={topic}",
                                f"data.output_dir={out}", *overrides])


def example(i: int) -> bytes:
    return encode({"request_id": f"r{i}", "time": T0 + 60 * i, "label": float(i % 4 == 0),
                   "slots": {"user_id": i % 40, "item_id": f"item{i % 25}",
                             "genres": ["drama", f"g{i % 3}"][: 1 + i % 2]}})


def online_settings(cfg: Config, batch_size: int, dense: OptimizerConfig) -> dict:
    return {"batch_size": batch_size, "dense_optimizer": dataclasses.asdict(dense),
            "slot_optimizers": {"user_id": dataclasses.asdict(FTRL),
                                "item_id": dataclasses.asdict(ADAM_SLOW),
                                "genres": dataclasses.asdict(cfg.slots[2].optimizer)}}


def shard_optimizers(shard) -> dict[str, OptimizerConfig]:
    """Per slot the optimizer a shard actor's table trains with now."""
    return ray.get(shard.__ray_call__.remote(
        lambda s: {name: t.slot.optimizer for name, t in s.tables.items()}))


ONLINE = {"user_id": FTRL, "item_id": ADAM_SLOW}


def test_dense_server_takes_a_new_rate_and_keeps_its_optimizer_state() -> None:
    ones = {"w": np.ones(2, np.float32)}
    server = DenseServer({"w": np.array([1.0, -2.0], np.float32)}, optax.sgd(0.1))
    server.push(ones)
    server.set_optimizer(optax.sgd(0.025))
    server.push(ones)
    np.testing.assert_allclose(server.pull()[0]["w"], [1.0 - 0.1 - 0.025, -2.0 - 0.1 - 0.025],
                               rtol=1e-6)

    server = DenseServer({"w": np.array([1.0, -2.0], np.float32)}, optax.adam(0.1))
    server.push(ones)
    server.push({"w": np.array([0.5, -3.0], np.float32)})
    params, state, _ = server.state()
    server.set_optimizer(optax.adam(0.01))
    grads = {"w": np.array([2.0, 0.1], np.float32)}
    server.push(grads)
    # Adam's moments and step count went on: the step is Adam at 0.01 from the old state.
    updates, expected_state = optax.adam(0.01).update(grads, state, params)
    np.testing.assert_allclose(server.pull()[0]["w"], optax.apply_updates(params, updates)["w"],
                               rtol=1e-5)
    assert int(server.state()[1][0].count) == 3 == int(expected_state[0].count)
    # An optimizer whose state is another cannot take over: nothing changes.
    before = server.pull()[0]["w"].copy()
    with pytest.raises(ValueError, match="same kind"):
        server.set_optimizer(optax.adagrad(0.1))
    server.push(grads)
    assert not np.allclose(server.pull()[0]["w"], before)
    assert int(server.state()[1][0].count) == 4


def test_a_dump_trains_with_the_batch_settings_and_the_stream_with_the_online_ones(
        ray_session, kafka_bootstrap, produce, tmp_path) -> None:
    topic = "examples-online-settings"
    cfg = config(kafka_bootstrap, topic, tmp_path / "run")
    ensure_topics(cfg.kafka, [topic])
    produce(cfg.kafka, topic, [example(i) for i in range(256)], [i % 2 for i in range(256)])
    dump_examples(cfg, str(tmp_path / "dump"))
    produce(cfg.kafka, topic, [example(i) for i in range(256, 384)],
            [i % 2 for i in range(128)])

    run = OnlineTraining(cfg, start=f"dump:{tmp_path / 'dump'}")
    try:
        metrics = run.run()
        optimizers = [shard_optimizers(s) for s in run.shards]
    finally:
        run.close()

    dump, stream = metrics["phases"]["dump"], metrics["phases"]["stream"]
    assert dump["settings"] == {
        "batch_size": 32, "dense_optimizer": dataclasses.asdict(cfg.train.dense_optimizer),
        "slot_optimizers": {s.name: dataclasses.asdict(s.optimizer) for s in cfg.slots}}
    assert stream["settings"] == online_settings(
        cfg, 8, OptimizerConfig(kind="adam", learning_rate=0.0025))
    assert stream["reapplied"] == {}
    (dump_fit,), (stream_fit,) = dump["trainers"], stream["trainers"]
    assert (dump["examples"], stream["examples"]) == (256, 128)
    # Batches of 32 on the dump (fewer steps than micro-batches would take), of 8 online.
    assert dump_fit["steps"] < 256 / 8 and stream_fit["steps"] >= 128 / 8
    # Every shard switched the slots with an online optimizer and kept the other's; the last
    # snapshot wrote their tables so, so a shard restored from it goes on online.
    expected = {s.name: ONLINE.get(s.name, s.optimizer) for s in cfg.slots}
    assert optimizers == [expected, expected]
    for k in range(2):
        for slot in cfg.slots:
            saved = EmbeddingTable.restore(str(Path(metrics["snapshot"]) / f"shard-{k}"
                                               / f"{slot.name}.table"))
            assert saved.slot.optimizer == expected[slot.name]
    # The stream's new trainer went on from the dense optimizer state the dump's trainer
    # published: Adam's step count holds the steps of both phases.
    with np.load(Path(metrics["snapshot"]) / "dense.npz") as saved:
        counts = [int(saved[k]) for k in saved.files if k.startswith("opt") and "count" in k]
    assert counts and set(counts) == {dump_fit["steps"] + stream_fit["steps"]}


def test_the_stream_steps_the_dense_parameters_at_the_online_rate(
        ray_session, kafka_bootstrap, produce, tmp_path) -> None:
    topic = "examples-online-rate"
    # One micro-batch of 8 examples: one step of Adam from a fresh state, which moves each
    # parameter by its learning rate times |g| / (|g| + eps): the largest move is the rate.
    cfg = config(kafka_bootstrap, topic, tmp_path / "run", "online.max_batch_wait_s=30")
    ensure_topics(cfg.kafka, [topic])
    produce(cfg.kafka, topic, [example(i) for i in range(8)], [i % 2 for i in range(8)])

    metrics = run_online_training(cfg, start="earliest")

    assert list(metrics["phases"]) == ["stream"]  # no dump: the stream phase is the run
    (fit,) = metrics["phases"]["stream"]["trainers"]
    assert (fit["steps"], fit["examples"]) == (1, 8)
    before = dense_server_args(cfg)[0]()
    with np.load(Path(metrics["snapshot"]) / "dense.npz") as saved:
        moved = max(float(np.abs(saved[f"params{jax.tree_util.keystr(path)}"]
                                 - np.asarray(value)).max())
                    for path, value in jax.tree_util.tree_leaves_with_path(before))
    assert 0.99 * 0.0025 <= moved <= 1.0001 * 0.0025  # 0.25 x the batch rate 0.01


def test_a_run_from_a_batch_snapshot_and_a_restarted_shard_train_online(
        ray_session, kafka_bootstrap, produce, tmp_path) -> None:
    topic = "examples-online-restart"
    sgd = ["train.n_trainers=2", "train.dense_optimizer={kind: sgd, learning_rate: 0.1}"]
    cfg = config(kafka_bootstrap, topic, tmp_path / "run", *sgd, "online.stop=never",
                 "online.idle_timeout_s=4", "online.snapshot_every_s=3600",
                 "supervision.check_every_s=0.5", "train.call_timeout_s=120")
    ensure_topics(cfg.kafka, [topic])
    # A snapshot of a batch job's servers: every table with its batch optimizer.
    shards, dense = start_servers(cfg)
    try:
        batch = take_snapshot(str(tmp_path / "batch"), shards, dense, {
            "topic": topic, "offsets": {str(p): o for p, o in
                                        earliest_offsets(cfg.kafka, topic).items()}})
    finally:
        for actor in [*shards, dense]:
            ray.kill(actor)
    produced: list = []

    def trickle() -> None:  # 800 examples over about 1.5 s
        for k in range(0, 800, 100):
            produced.extend(produce(cfg.kafka, topic, [example(i) for i in range(k, k + 100)],
                                    [i % 2 for i in range(100)]))
            time.sleep(0.15)

    producer = threading.Thread(target=trickle)
    producer.start()
    run, failures, metrics = OnlineTraining(cfg, start=f"snapshot:{batch}"), [], {}

    def train() -> None:
        try:
            metrics.update(run.run())
        except Exception as err:  # noqa: BLE001 - the test inspects it
            failures.append(err)

    trainer = threading.Thread(target=train)
    trainer.start()
    try:
        assert shard_optimizers(run.shards[0])["user_id"] == FTRL  # switched after restore
        deadline = time.monotonic() + 60
        while sum(st["user_id"]["rows"] for st in ray.get([s.stats.remote()
                                                            for s in run.shards])) < 40:
            assert time.monotonic() < deadline, "no training within 60 s"
            time.sleep(0.05)
        os.kill(ray.get(run.shards[0].pid.remote()), signal.SIGKILL)
        trainer.join(120)
        producer.join(60)
        assert not failures, failures
        assert not trainer.is_alive(), "the run did not end within 120 s of the kill"
        # Ray restarted shard 0 from the batch snapshot (no other was taken since the run
        # started): the job switched it to the online optimizers again.
        assert ray.get(run.shards[0].__ray_call__.remote(lambda s: s.restored_from)) \
            == f"{batch}/shard-0"
        optimizers = [shard_optimizers(s) for s in run.shards]
        # Two trainers: the dense server steps at 0.25 x 0.1 = 0.025.
        params, _ = ray.get(run.dense.pull.remote())
        ray.get(run.dense.push.remote(jax.tree.map(np.ones_like, params)))
        after, _ = ray.get(run.dense.pull.remote())
    finally:
        run.close()

    stream = metrics["phases"]["stream"]
    expected = {s.name: ONLINE.get(s.name, s.optimizer) for s in cfg.slots}
    assert optimizers == [expected, expected]
    assert metrics["restarts"]["shard-0"] == 1 and stream["reapplied"] == {"shard-0": 1}
    assert stream["settings"] == online_settings(
        cfg, 8, OptimizerConfig(kind="sgd", learning_rate=0.025))
    assert all(f["examples"] <= 8 * f["steps"] for f in stream["trainers"])
    for old, new in zip(jax.tree.leaves(params), jax.tree.leaves(after)):
        np.testing.assert_allclose(np.asarray(old) - np.asarray(new), 0.025, rtol=1e-4)


def test_a_job_warns_of_slots_whose_tables_keep_every_id(caplog) -> None:
    from monolith_ray.demo import DEMO_CONFIG
    from monolith_ray.train.online import warn_unexpiring

    cfg = load_config(DEMO_CONFIG)  # user_id expires after a day, the items never
    with caplog.at_level("WARNING", logger="monolith_ray.train.online"):
        kept = warn_unexpiring(cfg)
    # its user tower's table expires with user_id's
    assert {"item_id", "tower_item_id"} <= set(kept)
    assert not {"user_id", "tower_user_id"} & set(kept)
    assert "expire_s" in caplog.text and kept[0] in caplog.text
