"""Snapshot roots: take -> restore is bit-identical (plain path and file:// URI), pruning by
count, incomplete snapshots ignored, the daily default and config errors naming the key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import ray

from monolith_ray.config import ConfigError, OnlineConfig, load_config
from monolith_ray.features import make_fids
from monolith_ray.train.job import start_servers
from monolith_ray.train.snapshots import (
    MANIFEST,
    latest,
    list_snapshots,
    read_manifest,
    restore_snapshot,
    snapshot_root,
    take_snapshot,
)

CONFIG = """
slots:
  - {name: user_id, slot_id: 1, dim: 4, optimizer: {kind: adam}}
  - {name: item_id, slot_id: 2, dim: 4}
model: {hidden: [8]}
train: {n_shards: 2}
"""
OFFSETS = {"topic": "examples", "offsets": {"0": 7, "1": 9}}


@pytest.fixture
def servers(ray_session):
    """``servers(cfg)`` starts shard and dense-server actors; all are killed afterwards."""
    started = []

    def start(cfg):
        shards, dense = start_servers(cfg)
        started.extend([*shards, dense])
        return shards, dense

    yield start
    for actor in started:
        ray.kill(actor)


def trained(servers, cfg):
    """Servers holding rows, optimizer state and a dense update, as after some training."""
    shards, dense = servers(cfg)
    rng = np.random.default_rng(0)
    for k, shard in enumerate(shards):
        ids = {"user_id": make_fids(1, rng.integers(0, 60, 200) * 2 + k),
               "item_id": make_fids(2, rng.integers(0, 40, 200) * 2 + k)}
        ray.get(shard.pull.remote(ids, 5.0))
        ray.get(shard.push.remote(ids, {n: rng.normal(size=(200, 5)).astype(np.float32)
                                        for n in ids}, 6.0))
    params, _ = ray.get(dense.pull.remote())
    ray.get(dense.push.remote(jax.tree.map(lambda p: np.full_like(p, 0.5), params)))
    return shards, dense


def files(folder: str) -> dict[str, bytes]:
    """Every file of a local snapshot folder but its manifest, by relative path."""
    root = Path(folder)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-uri"])
def test_take_then_restore_is_bit_identical(servers, tmp_path, as_uri):
    cfg = load_config(CONFIG)
    root = (tmp_path / "snaps").as_uri() if as_uri else str(tmp_path / "snaps")
    shards, dense = trained(servers, cfg)
    taken = take_snapshot(root, shards, dense, OFFSETS)
    assert latest(root) == taken
    folder = str(tmp_path / "snaps" / Path(taken).name)
    manifest = read_manifest(taken)
    assert manifest["number"] == 1 and manifest["shards"] == 2
    assert sorted(manifest["files"]) == ["dense.npz", "offsets.json", "shard-0/item_id.table",
                                         "shard-0/position.json", "shard-0/user_id.table",
                                         "shard-1/item_id.table", "shard-1/position.json",
                                         "shard-1/user_id.table"]

    fresh_shards, fresh_dense = servers(cfg)
    assert restore_snapshot(root, fresh_shards, fresh_dense) == OFFSETS
    (want, want_opt, v1), (got, got_opt, v2) = ray.get(
        [dense.state.remote(), fresh_dense.state.remote()])
    assert v1 == v2 == 1
    for a, b in zip(jax.tree.leaves((want, want_opt)), jax.tree.leaves((got, got_opt)),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    ids = {"user_id": make_fids(1, np.arange(130)), "item_id": make_fids(2, np.arange(90))}
    for old, new in zip(shards, fresh_shards):
        for name, stats in ray.get(old.stats.remote()).items():  # the map is rebuilt: bytes
            assert {**ray.get(new.stats.remote())[name], "bytes": 0} == {**stats, "bytes": 0}
        for name, rows in ray.get(old.lookup.remote(ids)).items():
            np.testing.assert_array_equal(rows, ray.get(new.lookup.remote(ids))[name])
    # The restored actors snapshot to the very same bytes, but for the incarnation each
    # shard's position names (a restore starts a new one).
    again = take_snapshot(tmp_path / "again", fresh_shards, fresh_dense, OFFSETS)
    positions = {}
    for taken_files in (files(again), files(folder)):
        for k in range(2):
            position = json.loads(taken_files.pop(f"shard-{k}/position.json"))
            positions.setdefault(k, []).append(position.pop("incarnation"))
            assert position == {"versions": {"user_id": 2, "item_id": 2}}
        positions.setdefault("rest", []).append(taken_files)
    assert positions["rest"][0] == positions["rest"][1]
    assert positions[0][0] != positions[0][1]


def test_pruning_keeps_the_newest_complete_ones(servers, tmp_path):
    cfg = load_config(CONFIG, [f"data.output_dir={tmp_path / 'out'}", "data.snapshot_keep=2"])
    assert snapshot_root(cfg) == str(tmp_path / "out" / "snapshots")
    shards, dense = servers(cfg)
    taken = [take_snapshot(cfg, shards, dense) for _ in range(4)]
    kept = list_snapshots(snapshot_root(cfg))
    assert [s.location for s in kept] == taken[2:]
    assert [s.number for s in kept] == [3, 4] and all(s.complete for s in kept)
    assert sorted(p.name for p in (tmp_path / "out" / "snapshots").iterdir()) == \
        [Path(t).name for t in taken[2:]]
    # An explicit keep overrides the config's.
    take_snapshot(cfg, shards, dense, keep=1)
    assert [s.number for s in list_snapshots(snapshot_root(cfg))] == [5]


def test_an_incomplete_snapshot_is_ignored_then_pruned(servers, tmp_path):
    cfg = load_config(CONFIG)
    root = tmp_path / "snaps"
    shards, dense = trained(servers, cfg)
    first = take_snapshot(root, shards, dense, OFFSETS)
    # A crash while writing snapshot 2: every file there but the manifest.
    crashed = root / "snap-000002-20300101T000000Z"
    shutil.copytree(first, crashed, ignore=shutil.ignore_patterns(MANIFEST))
    (crashed / "offsets.json").write_text(json.dumps({"topic": "examples",
                                                      "offsets": {"0": 99, "1": 99}}))
    assert [(s.number, s.complete) for s in list_snapshots(root)] == [(1, True), (2, False)]
    assert latest(root) == first

    fresh_shards, fresh_dense = servers(cfg)
    assert restore_snapshot(root, fresh_shards, fresh_dense) == OFFSETS
    with pytest.raises(FileNotFoundError, match="incomplete"):
        restore_snapshot(crashed, fresh_shards, fresh_dense)

    third = take_snapshot(root, shards, dense, OFFSETS)
    assert read_manifest(third)["number"] == 3  # numbers are never reused
    assert [s.number for s in list_snapshots(root)] == [1, 3]


def test_a_shard_dying_mid_snapshot_leaves_the_last_complete_one_latest(servers, tmp_path,
                                                                        kill_actor):
    cfg = load_config(CONFIG)
    root = tmp_path / "snaps"
    shards, dense = trained(servers, cfg)
    first = take_snapshot(root, shards, dense)
    kill_actor(shards[1], "ray.kill")
    with pytest.raises(ray.exceptions.RayActorError):
        take_snapshot(root, shards, dense)
    assert [(s.number, s.complete) for s in list_snapshots(root)] == [(1, True), (2, False)]
    assert latest(root) == first
    assert restore_snapshot(root, *servers(cfg)) is None  # a batch snapshot: no offsets


def test_restore_checks_the_manifest(servers, tmp_path):
    cfg = load_config(CONFIG)
    shards, dense = trained(servers, cfg)
    taken = Path(take_snapshot(tmp_path, shards, dense))
    with pytest.raises(ValueError, match="2 shards, the run has 3"):
        restore_snapshot(tmp_path, *servers(load_config(CONFIG, ["train.n_shards=3"])))
    with open(taken / "shard-1" / "user_id.table", "ab") as f:
        f.write(b"torn")
    with pytest.raises(ValueError, match="shard-1/user_id.table: missing or not the size"):
        restore_snapshot(taken, *servers(cfg))
    with pytest.raises(FileNotFoundError, match="no complete snapshot"):
        restore_snapshot(tmp_path / "empty", *servers(cfg))


def test_snapshots_are_daily_by_default():
    assert OnlineConfig().snapshot_every_s == 86400
    assert load_config().online.snapshot_every_s == 86400
    assert load_config().data.snapshot_keep == 3


@pytest.mark.parametrize("override, key", [
    ("data.snapshot_keep=0", "data.snapshot_keep"),
    ("online.snapshot_every_s=0", "online.snapshot_every_s"),
    ("online.snapshot_every_s=-5", "online.snapshot_every_s"),
    ("data.snapshot_keep=two", "data.snapshot_keep"),
])
def test_bad_snapshot_config_names_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIG, [override])
    assert err.value.key == key


def test_an_unknown_filesystem_names_the_root_key():
    cfg = load_config(CONFIG, ["data.snapshot_root=nosuchfs://bucket/snaps"])
    with pytest.raises(ConfigError, match="^data.snapshot_root: 'nosuchfs://bucket/snaps'"):
        snapshot_root(cfg)


def test_a_restarted_shard_takes_this_runs_newest_snapshot_else_the_one_it_started_from(
        tmp_path) -> None:
    from monolith_ray.train.snapshots import RunSnapshot

    def folder(root: Path, name: str, complete: bool = True) -> str:
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / "_COMPLETE").write_text("{}")
        return str(root / name)

    root, other = tmp_path / "run", tmp_path / "earlier"
    old = folder(root, "snap-000001-20261127T100000Z")  # an earlier run's, same root
    start = folder(other, "snap-000004-20261126T100000Z")
    since = "2026-11-27T12:00:00+00:00"
    assert RunSnapshot(str(root), since, part="shard-1")() is None  # never an earlier run's
    assert RunSnapshot(str(root), since, start, "shard-1")() == f"{start}/shard-1"
    assert RunSnapshot(str(root), since, str(other), "shard-1")() == f"{start}/shard-1"  # a root
    ours = folder(root, "snap-000002-20261127T130000Z")
    folder(root, "snap-000003-20261127T140000Z", complete=False)  # crashed mid-write
    assert RunSnapshot(str(root), since, start, "shard-0")() == f"{ours}/shard-0"
    assert RunSnapshot(str(root), part="shard-0")() == f"{ours}/shard-0" != f"{old}/shard-0"
