"""The ``monolith-ray`` commands that act on a running job by its name: snapshot, list,
restore; and clear errors when the job or the name is missing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import ray

from monolith_ray.cli import main
from monolith_ray.config import load_config
from monolith_ray.features import make_fids
from monolith_ray.ps.client import ShardClient
from monolith_ray.train.job import start_servers


def _rows(client: ShardClient, fids: np.ndarray) -> np.ndarray:
    return client.lookup({"item_id": fids})["item_id"]


def test_snapshot_list_and_restore_a_named_running_job(ray_session, tmp_path, capsys) -> None:
    sets = ["--set", "train.name=cli-test", "--set", f"data.output_dir={tmp_path}",
            "--set", "train.shard_cpus=0"]
    cfg = load_config(overrides=[s for s in sets if s != "--set"])
    shards, dense = start_servers(cfg)  # the running job, as another process would start it
    try:
        client = ShardClient(shards, [s.name for s in cfg.slots])
        fids = make_fids(cfg.slot("item_id").slot_id, np.arange(50, dtype=np.int64))
        client.pull({"item_id": fids}, 1.0)
        saved = _rows(client, fids)

        assert main(["snapshot", *sets]) == 0
        folder = json.loads(capsys.readouterr().out)["snapshot"]
        assert main(["snapshot", "--list", *sets]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [s["location"] for s in listed] == [folder] and listed[0]["complete"]

        client.push({"item_id": fids}, {"item_id": np.ones((50, 17), np.float32)}, 2.0)
        assert not np.array_equal(_rows(client, fids), saved)
        assert main(["restore", *sets]) == 0
        assert json.loads(capsys.readouterr().out)["restored"] == folder
        np.testing.assert_array_equal(_rows(client, fids), saved)
    finally:
        for actor in [*shards, dense]:
            ray.kill(actor)


@pytest.mark.parametrize("sets, message", [
    (["--set", "train.name=nobody"], "no running job 'nobody'"),
    ([], "train.name is empty"),
])
def test_snapshot_of_a_missing_job_fails_clearly(ray_session, tmp_path, capsys, sets,
                                                 message) -> None:
    assert main(["snapshot", *sets, "--set", f"data.output_dir={tmp_path}"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args, key", [
    (["train", "--set", "data.train="], "data.train: must not be empty"),
    (["train", "--set", "data.test={d}/test.parquet"], "data.test: no file or folder {d}/test"),
    (["train-online", "--start", "dump:{d}/dump"], "online.start: no file or folder {d}/dump"),
    (["serve", "--set", "serve.candidate_pool={d}/pool.jsonl"],
     "serve.candidate_pool: no file or folder {d}/pool.jsonl"),
    (["demo", "--set", "online.start=snapshot:{d}/snapshots"],
     "online.start: no file or folder {d}/snapshots"),
])
def test_a_missing_input_fails_before_ray_starts(tmp_path, capsys, monkeypatch, args,
                                                 key) -> None:
    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started")

    monkeypatch.setattr(ray, "init", no_ray)
    assert main([a.format(d=tmp_path) for a in args]) == 2
    assert key.format(d=tmp_path) in capsys.readouterr().err
