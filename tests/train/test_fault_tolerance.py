"""A shard actor whose process is killed (``kill -9``) is restarted by Ray and restores its
part of the latest snapshot while training goes on: the trainer's calls wait out the restart,
every step is trained, and what the shard lost is exactly its updates since the snapshot."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray

from monolith_ray.config import load_config
from monolith_ray.data.batches import iter_batches
from monolith_ray.ps.shard import ShardServer
from monolith_ray.train.job import Trainer, start_servers
from monolith_ray.train.snapshots import take_snapshot

TRAIN = Path(__file__).resolve().parents[2] / "data" / "ml-100k" / "parquet" / "train.parquet"
BATCH = 256


def _state(delta_by_slot: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per slot (ids, rows) sorted by id, from ``export_since(0)``."""
    out = {}
    for name, delta in delta_by_slot.items():
        order = np.argsort(delta.ids)
        out[name] = delta.ids[order], delta.weights[order]
    return out


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[n][0], b[n][0]) and np.array_equal(a[n][1], b[n][1]) for n in a)


def _kill_process_of(shard) -> int:
    pid = ray.get(shard.pid.remote())
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.fixture()
def setup(ray_session, tmp_path):
    cfg = load_config(overrides=[f"data.output_dir={tmp_path}", f"train.batch_size={BATCH}",
                                 "train.shard_cpus=0", "train.call_timeout_s=120"])
    shards, dense = start_servers(cfg)
    trainer = Trainer(cfg, shards, dense, local_dense=True)
    batches = list(iter_batches(pq.read_table(TRAIN).slice(0, 70 * BATCH), cfg.slots, BATCH))
    yield cfg, shards, dense, trainer, batches
    for actor in [*shards, dense]:
        ray.kill(actor)


def test_killed_shard_restores_the_latest_snapshot_and_training_goes_on(setup) -> None:
    cfg, shards, dense, trainer, batches = setup
    assert sum(1 for _ in trainer.loop.train(batches[:10])) == 10
    snapshot = take_snapshot(cfg, shards, dense)
    at_snapshot = [_state(ray.get(s.export_since.remote(0))) for s in shards]
    assert sum(1 for _ in trainer.loop.train(batches[10:20])) == 10
    moved = [_state(ray.get(s.export_since.remote(0))) for s in shards]
    assert not _equal(moved[0], at_snapshot[0]) and not _equal(moved[1], at_snapshot[1])

    # Killed while idle: the restarted shard 0 holds exactly the snapshot; shard 1 keeps its
    # updates since. What is lost is shard 0's share of the 10 steps after the snapshot.
    old = _kill_process_of(shards[0])
    assert ray.get(shards[0].pid.remote(), timeout=120) != old
    assert ray.get(shards[0].__ray_call__.remote(lambda s: s.restored_from)) == \
        f"{snapshot}/shard-0"
    assert _equal(_state(ray.get(shards[0].export_since.remote(0))), at_snapshot[0])
    assert _equal(_state(ray.get(shards[1].export_since.remote(0))), moved[1])
    reference = ShardServer(cfg.slots, cfg.admission)
    reference.restore(f"{snapshot}/shard-0")
    assert _equal(_state(reference.export_since(0)), at_snapshot[0])

    # Killed while training: the steps in flight wait for the restart, none is skipped.
    killed: list[int] = []

    def kill_when_busy() -> None:
        while trainer.loop.steps < 35:
            time.sleep(0.01)
        killed.append(_kill_process_of(shards[1]))

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    steps = sum(1 for _ in trainer.loop.train(batches[20:70]))
    killer.join()
    assert steps == 50 and killed
    assert ray.get(shards[1].pid.remote()) != killed[0]
    assert ray.get(shards[1].__ray_call__.remote(lambda s: s.restored_from)) == \
        f"{snapshot}/shard-1"
    after = _state(ray.get(shards[1].export_since.remote(0)))
    assert not _equal(after, at_snapshot[1])  # trained on after its restore


def _dense_state(dense) -> tuple[list[np.ndarray], int]:
    params, _, version = ray.get(dense.state.remote(), timeout=120)
    import jax

    return [np.asarray(leaf) for leaf in jax.tree.leaves(params)], version


def test_killed_dense_server_restores_the_latest_snapshot_and_training_goes_on(
        ray_session, tmp_path) -> None:
    cfg = load_config(overrides=[f"data.output_dir={tmp_path}", f"train.batch_size={BATCH}",
                                 "train.shard_cpus=0", "train.call_timeout_s=120"])
    shards, dense = start_servers(cfg)
    try:
        # Not the single-trainer shortcut: every step pushes its dense gradients to the server.
        trainer = Trainer(cfg, shards, dense, local_dense=False)
        batches = list(iter_batches(pq.read_table(TRAIN).slice(0, 50 * BATCH), cfg.slots,
                                    BATCH))
        assert sum(1 for _ in trainer.loop.train(batches[:10])) == 10
        snapshot = take_snapshot(cfg, shards, dense)
        at_snapshot, version_at = _dense_state(dense)
        assert version_at == 10
        assert sum(1 for _ in trainer.loop.train(batches[10:20])) == 10
        moved, version_moved = _dense_state(dense)
        assert version_moved == 20 and not all(np.array_equal(a, b)
                                               for a, b in zip(moved, at_snapshot))

        # Killed while idle: the restarted server holds exactly the snapshot's parameters,
        # optimizer state and version.
        old = _kill_process_of_dense(dense)
        assert ray.get(dense.__ray_call__.remote(lambda s: os.getpid()), timeout=120) != old
        assert ray.get(dense.__ray_call__.remote(lambda s: s.restored_from)) == snapshot
        restored, version = _dense_state(dense)
        assert version == version_at
        assert all(np.array_equal(a, b) for a, b in zip(restored, at_snapshot))

        # Killed while training: pushes in flight wait for the restart, every step trains.
        killed: list[int] = []

        def kill_when_busy() -> None:
            while trainer.loop.steps < 25:
                time.sleep(0.01)
            killed.append(_kill_process_of_dense(dense))

        killer = threading.Thread(target=kill_when_busy)
        killer.start()
        steps = sum(1 for _ in trainer.loop.train(batches[20:50]))
        killer.join()
        assert steps == 30 and killed
        assert ray.get(dense.__ray_call__.remote(lambda s: os.getpid())) != killed[0]
        assert ray.get(dense.__ray_call__.remote(lambda s: s.restored_from)) == snapshot
        _, version_after = _dense_state(dense)
        assert version_at < version_after <= version_at + 30  # restored, then trained on
    finally:
        for actor in [*shards, dense]:
            ray.kill(actor)


def _kill_process_of_dense(dense) -> int:
    pid = ray.get(dense.__ray_call__.remote(lambda s: os.getpid()))
    os.kill(pid, signal.SIGKILL)
    return pid
