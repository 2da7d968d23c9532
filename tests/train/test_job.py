"""The Ray training job: shard and dense-server actors, trainer actors on streaming_split."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from monolith_ray import cli
from monolith_ray.cli import main
from monolith_ray.config import ConfigError, load_config
from monolith_ray.features import make_fids
from monolith_ray.ps.channel import ChannelCalls
from monolith_ray.ps.calls import RayCalls, ShardUnavailableError
from monolith_ray.ps.client import ShardClient
from monolith_ray.schemas import example_schema
from monolith_ray.train import job
from monolith_ray.train.job import run_batch_training, start_servers
from monolith_ray.train.snapshots import latest

DATA = Path(__file__).resolve().parents[2] / "data" / "ml-100k" / "parquet"


@pytest.fixture(scope="module")
def movielens() -> Path:
    if not (DATA / "train.parquet").exists():
        pytest.fail(f"{DATA} is missing: run `make data` (part of `make install`)")
    return DATA


def job_config(data: Path, out: Path, n_trainers: int):
    return load_config(overrides=[
        f"data.train={data / 'train.parquet'}", "data.valid=", f"data.test={data / 'test.parquet'}",
        f"data.output_dir={out}", "train.epochs=1", "train.batch_size=512",
        f"train.n_trainers={n_trainers}"])


def test_two_trainers_reach_the_auc_of_one(ray_session, movielens, tmp_path):
    results = {}
    for n in (1, 2):
        cfg = job_config(movielens, tmp_path / f"t{n}", n)
        results[n] = run_batch_training(cfg)
        written = json.loads((tmp_path / f"t{n}" / "metrics.json").read_text())
        assert written["test"]["auc"] == pytest.approx(results[n]["test"]["auc"])
        snapshot = Path(results[n]["snapshot"])
        assert latest(tmp_path / f"t{n}" / "snapshots") == str(snapshot)
        assert (snapshot / "dense.npz").exists() and not (snapshot / "offsets.json").exists()
        assert len(list(snapshot.glob("shard-*"))) == cfg.train.n_shards
    one, two = results[1], results[2]
    assert one["examples"] == two["examples"] == 80_000
    assert [t["examples"] > 0 for t in two["trainers"]] == [True, True]
    assert one["restarts"] == two["restarts"] == {"shard-0": 0, "shard-1": 0, "dense": 0}
    assert one["test"]["auc"] > 0.62, one["test"]
    assert abs(one["test"]["auc"] - two["test"]["auc"]) < 0.01, (one["test"], two["test"])
    assert one["table_rows"] == two["table_rows"]


@pytest.mark.parametrize("calls", [RayCalls, ChannelCalls])
def test_a_dead_shard_raises_a_clear_error_instead_of_hanging(ray_session, calls):
    import ray

    cfg = load_config(overrides=["train.n_shards=2"])
    shards, dense = start_servers(cfg)
    client = ShardClient(shards, [s.name for s in cfg.slots], calls=calls(timeout_s=20))
    fids = {"user_id": make_fids(1, np.arange(200))}
    assert client.pull(fids, now=0.0)["user_id"].shape == (200, 17)
    ray.kill(shards[1], no_restart=True)
    # ray.kill returns before the kill has reached the actor: a call sent in between (by Ray or
    # by a channel to the actor's process) may still be answered, and on a loaded machine one
    # was. Once the actor is gone a call fails well within the timeout, as dead, not as late.
    start = last_answer = time.monotonic()
    with pytest.raises(ShardUnavailableError, match=r"\[1\] of 2 are dead"):
        while time.monotonic() - start < 10:
            client.pull(fids, now=1.0)
            last_answer = time.monotonic()
    assert time.monotonic() - start < 10
    assert last_answer - start < 5, "the killed shard answered for seconds"
    ray.kill(shards[0])
    ray.kill(dense)


def own_data(tmp_path: Path) -> Path:
    """A config of its own slots (no MovieLens) and its own train Parquet; no valid or test."""
    slots = "slots:\n" + "".join(f"  - {{name: {name}, slot_id: {k}, dim: 4}}\n"
                                  for k, name in enumerate(("viewer", "video"), 1))
    yaml_file = tmp_path / "job.yaml"
    yaml_file.write_text(slots + f"model: {{hidden: [8]}}\n"
                         f"train: {{batch_size: 64, n_shards: 1}}\n"
                         f"data: {{train: {tmp_path / 'train.parquet'}, output_dir: {tmp_path}}}\n")
    rng = np.random.default_rng(0)
    n = 256
    columns = {"time": np.arange(n), "label": rng.integers(0, 2, n).astype(np.float32),
               "weight": np.ones(n, np.float32), "viewer": rng.integers(0, 20, n),
               "video": rng.integers(0, 30, n)}
    cfg = load_config(yaml_file)
    pq.write_table(pa.table(columns, schema=example_schema(cfg.slots)), tmp_path / "train.parquet")
    return yaml_file


def test_a_config_of_its_own_without_valid_trains_and_evaluates_nothing(ray_session, tmp_path):
    metrics = run_batch_training(load_config(own_data(tmp_path)))
    assert metrics["examples"] == 256
    assert "valid" not in metrics and "test" not in metrics
    assert set(metrics["table_rows"]) == {"viewer", "video"}


def test_retrieval_trains_the_towers_beside_the_ranker_and_snapshots_them(ray_session,
                                                                        tmp_path):
    cfg = load_config(own_data(tmp_path), [
        "retrieval={user_slots: [viewer], item_slots: [video], dim: 4, hidden: [8]}"])
    metrics = run_batch_training(cfg)
    rows = metrics["table_rows"]
    # the positives' viewers and videos got tower rows; the towers' MLPs took one push a
    # step with a positive (each batch of 64 random labels has some)
    assert 0 < rows["tower_viewer"] <= rows["viewer"] and 0 < rows["tower_video"] <= rows["video"]
    assert metrics["dense_parts"] == {"tower": metrics["trainers"][0]["steps"]}
    with np.load(Path(metrics["snapshot"]) / "dense.npz") as saved:
        assert int(saved["tower.version"]) == metrics["dense_parts"]["tower"]
    assert (Path(metrics["snapshot"]) / "shard-0" / "tower_video.table").exists()


def test_a_missing_valid_fails_at_start_naming_key_and_path(tmp_path, capsys, monkeypatch):
    def no_ray(*args, **kwargs):
        raise AssertionError("Ray work started")

    monkeypatch.setattr(job, "start_servers", no_ray)
    monkeypatch.setattr("ray.init", no_ray)
    yaml_file, valid = own_data(tmp_path), tmp_path / "valid.parquet"
    with pytest.raises(ConfigError) as info:
        run_batch_training(load_config(yaml_file, [f"data.valid={valid}"]))
    assert str(info.value) == f"data.valid: no file or folder {valid}"
    assert cli.main(["train", "--config", str(yaml_file), "--set", f"data.valid={valid}"]) == 2
    assert f"data.valid: no file or folder {valid}" in capsys.readouterr().err


def test_bad_config_fails_before_starting_anything(capsys):
    assert main(["train", "--set", "train.epoch=1"]) == 2
    err = capsys.readouterr().err
    assert "train.epoch: unknown key" in err and "did you mean 'epochs'" in err


@pytest.mark.timeout(300)
def test_a_shard_restarted_mid_job_is_recovered_from_the_latest_snapshot(
        ray_session, movielens, tmp_path):
    import os
    import signal
    import threading

    import ray

    cfg = load_config(overrides=[
        f"data.train={movielens / 'train.parquet'}", "data.valid=", "data.test=",
        f"data.output_dir={tmp_path}", "train.epochs=2", "train.batch_size=256",
        "train.name=restarted-mid-job", "train.call_timeout_s=120",
        "train.snapshot_every_s=1", "supervision.check_every_s=0.5"])
    killed: list[int] = []

    def kill_a_busy_shard() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                shard = ray.get_actor("restarted-mid-job.shard-1", namespace="monolith_ray")
                # Trained on, and a snapshot taken since training started.
                if (ray.get(shard.stats.remote())["user_id"]["rows"] > 0
                        and len(list((tmp_path / "snapshots").glob("snap-*/_COMPLETE"))) >= 2):
                    pid = ray.get(shard.pid.remote())
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            except ValueError:
                pass  # not started yet
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_busy_shard, daemon=True)
    killer.start()
    metrics = run_batch_training(cfg)
    killer.join()
    assert killed
    assert metrics["restarts"]["shard-1"] == 1 and metrics["restarts"]["trainers"] == 1
    assert metrics["examples"] >= 2 * 80_000


@pytest.mark.timeout(300)
def test_a_lost_trainer_past_max_failures_fails_the_job_naming_the_key(
        ray_session, movielens, tmp_path):
    import os
    import signal
    import threading

    from ray._private import state  # the control store's actor table, no dashboard needed

    from monolith_ray.supervision import RestartLimitError

    cfg = load_config(overrides=[
        f"data.train={movielens / 'train.parquet'}", "data.valid=", "data.test=",
        f"data.output_dir={tmp_path}", "train.epochs=3", "train.batch_size=256",
        "train.max_failures=0"])
    killed: list[int] = []

    def kill_the_trainer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for actor in state.actors().values():
                if (actor["ActorClassName"] == "Trainer" and actor["State"] == "ALIVE"
                        and list((tmp_path / "snapshots").glob("snap-*/_COMPLETE"))):
                    os.kill(actor["Pid"], signal.SIGKILL)
                    killed.append(actor["Pid"])
            time.sleep(0.2)

    killer = threading.Thread(target=kill_the_trainer, daemon=True)
    killer.start()
    with pytest.raises(RestartLimitError, match=r"trainers failed 1 times, more than "
                                                r"train.max_failures=0"):
        run_batch_training(cfg)
    killer.join()
    assert killed
