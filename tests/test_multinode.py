"""The batch job on a head and three worker nodes, losing a shard's node and the trainer's.

The cluster (``ray.cluster_utils.Cluster``) is a Ray of its own, so it runs in a process of
its own (``tests/multinode_run.py``, which says what it does) and never meets the session's
shared ``ray.init``; this test reads the JSON line that process ends with.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parent / "multinode_run.py"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("multinode")
    done = subprocess.run([sys.executable, str(RUN), str(out)], capture_output=True, text=True,
                          timeout=240, cwd=RUN.parents[1])
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    return json.loads(lines[-1])


@pytest.mark.timeout(300)
def test_each_role_starts_on_the_nodes_offering_its_resources(run):
    first = run["first"]
    assert {first["shard-0"], first["shard-1"]} == {"memory-a", "memory-b"}  # spread
    assert first["dense"] in ("memory-a", "memory-b")
    assert first["trainer"] == "compute"
    assert first["sync"] == "head"


@pytest.mark.timeout(300)
def test_a_lost_shard_comes_back_on_a_surviving_node_and_a_lost_trainer_on_a_new_one(run):
    assert "error" not in run, run["error"]
    shard_node, trainer_node = run["removed"]
    survivor = ({"memory-a", "memory-b"} - {shard_node}).pop()
    assert run["first"]["shard-1"] == shard_node and trainer_node == "compute"
    assert run["after_shard"]["shard-1"] == survivor
    assert set(run["last"].values()) <= {survivor, "compute-2"}
    assert run["last"]["trainer"] == "compute-2"
    restarts = run["metrics"]["restarts"]
    assert restarts["shard-1"] == 1
    assert restarts["trainers"] == 2  # once after the shard's loss, once after the trainer's


@pytest.mark.timeout(300)
def test_every_example_of_every_epoch_is_trained_none_skipped(run):
    # "examples" counts each epoch's rows trained by its last attempt plus those its restored
    # snapshot held; positions are exact, so equality means nothing skipped or counted twice.
    assert run["metrics"]["examples"] == run["rows"] * run["epochs"]
    assert run["metrics"]["snapshot"]
