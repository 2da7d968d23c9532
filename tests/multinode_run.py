"""The batch job on a several-node Ray (``ray.cluster_utils.Cluster``), losing nodes mid-run.

Run by ``tests/test_multinode.py`` in a process of its own (a Cluster is a Ray of its own,
which the session's shared ``ray.init`` must not meet): ``python tests/multinode_run.py OUT``.
Nodes offer what ``cluster.yaml``'s node types offer (a head, two memory workers, one compute
worker; each with a small object store), the job asks for them as ``cluster.yaml``'s comments
say. While the job trains it removes the memory node holding shard 1 once a snapshot is
taken, then, once the job has recovered and snapshotted again, the compute node holding the
trainer, and adds a fresh compute node as an autoscaler would. Ends with one JSON line:
where each actor ran, what the job reported and how long it took.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "ml-100k" / "parquet" / "train.parquet"
ROWS = 4000
EPOCHS = 10
STORE = 100 * 1024 * 1024


def node_resources(cluster: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per node type of a ``cluster.yaml`` its custom resources (CPUs are set here)."""
    return {name: {r: float(v) for r, v in t["resources"].items() if r != "CPU"}
            for name, t in cluster["available_node_types"].items()}


def actors() -> dict[str, dict[str, Any]]:
    """The live actors of the job by role (``shard-K``, ``dense``, ``trainer``, ``sync``):
    node id, restarts, state (from the control store's actor table)."""
    from ray._private import state

    roles = {"ShardServer": "shard", "DenseServer": "dense", "Trainer": "trainer",
             "ParameterSync": "sync"}
    out = {}
    for record in state.actors().values():
        role = roles.get(record["ActorClassName"])
        if role is None or record["State"] == "DEAD":
            continue
        name = record["Name"].split(".")[-1] if role == "shard" else role
        out[name] = {"node": record["Address"]["NodeID"], "restarts": record["NumRestarts"],
                     "state": record["State"], "id": record["ActorID"]}
    return out


def wait_for(what: str, ok: Any, timeout_s: float, job: threading.Thread,
             result: dict[str, Any]) -> None:
    """Wait until ``ok()``; RuntimeError saying what and why after ``timeout_s`` or once
    the job has ended."""
    deadline = time.monotonic() + timeout_s
    while not ok():
        if time.monotonic() > deadline or not job.is_alive():
            raise RuntimeError(f"gave up waiting for {what}: actors {actors()}, job {result}")
        time.sleep(0.1)


def main(out: Path) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    from monolith_ray.config import load_config
    from monolith_ray.serve.sync import start_parameter_sync
    from monolith_ray.train.job import find_servers, run_batch_training

    started = time.monotonic()
    offered = node_resources(yaml.safe_load((ROOT / "cluster.yaml").read_text()))
    fast_failure_detection = {"health_check_initial_delay_ms": 0,
                              "health_check_period_ms": 500,
                              "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": offered["head"], "object_store_memory": STORE,
        "include_dashboard": False, "_system_config": fast_failure_detection})
    nodes = {"memory-a": cluster.add_node(num_cpus=2, resources=offered["memory_worker"],
                                          object_store_memory=STORE),
             "memory-b": cluster.add_node(num_cpus=2, resources=offered["memory_worker"],
                                          object_store_memory=STORE),
             "compute": cluster.add_node(num_cpus=2, resources=offered["compute_worker"],
                                         object_store_memory=STORE)}
    ray.init(address=cluster.address, log_to_driver=False)
    marks = {"cluster_up_at_s": time.monotonic() - started}
    node_ids = {name: node.node_id for name, node in nodes.items()}
    node_ids["head"] = cluster.head_node.node_id

    pq.write_table(pq.read_table(DATA).slice(0, ROWS), out / "train.parquet",
                   row_group_size=500)
    sets = [s for s in (m.rstrip(".,;") for m in re.findall(r"--set (\S+=\S+)",
                                                            (ROOT / "cluster.yaml").read_text()))
            if re.match(r"(train\.(shard|dense|trainer)|serve\.sync)_resources\.", s)]
    cfg = load_config(overrides=[
        f"data.train={out / 'train.parquet'}", "data.valid=", "data.test=",
        f"data.output_dir={out}", f"train.epochs={EPOCHS}", "train.batch_size=64",
        "train.n_shards=2", "train.n_trainers=1", "train.name=multinode",
        "train.snapshot_every_s=1", "supervision.check_every_s=0.5",
        "train.call_timeout_s=60", "train.max_failures=2", *sets])

    result: dict[str, Any] = {}

    def train() -> None:
        try:
            result["metrics"] = run_batch_training(cfg)
        except BaseException as err:  # noqa: BLE001 - reported in the JSON line
            result["error"] = repr(err)

    job = threading.Thread(target=train, daemon=True)
    job.start()
    snapshots = out / "snapshots"

    def complete() -> int:
        """The number of the newest complete snapshot (0 before any; 1 for the first): a
        count of folders would stop at data.snapshot_keep, as older ones are pruned."""
        return max((int(p.parent.name.split("-")[1]) + 1
                    for p in snapshots.glob("snap-*/_COMPLETE")), default=0)

    def placed() -> bool:
        now = actors()
        return {"shard-0", "shard-1", "dense", "trainer"} <= set(now) and all(
            a["state"] == "ALIVE" for a in now.values())

    wait_for("every actor placed and a snapshot taken while training",
             lambda: placed() and complete() >= 2, 90, job, result)
    shards, dense = find_servers(cfg)
    sync = start_parameter_sync(cfg.slots, shards, dense, cfg.serve, name="multinode.sync")
    wait_for("the sync actor", lambda: "sync" in actors(), 30, job, result)
    first = actors()
    ray.kill(sync)
    marks["trained_at_s"] = time.monotonic() - started

    shard_node = next(k for k, v in node_ids.items() if v == first["shard-1"]["node"])
    cluster.remove_node(nodes.pop(shard_node), allow_graceful=False)
    lost_shard_at = time.monotonic()
    marks["shard_node_removed_at_s"] = lost_shard_at - started
    wait_for("shard-1 back on a surviving node",
             lambda: actors().get("shard-1", {}).get("state") == "ALIVE"
             and actors()["shard-1"]["restarts"] >= 1, 60, job, result)
    shard_back_s = time.monotonic() - lost_shard_at
    seen = complete()

    def recovered() -> bool:  # the job restored the snapshot and a new trainer trains
        trainer = actors().get("trainer", {})
        return (trainer.get("state") == "ALIVE" and trainer["id"] != first["trainer"]["id"]
                and complete() > seen)

    wait_for("the job's recovery from the shard's loss", recovered, 60, job, result)
    after_shard = actors()
    trainer_node = next(k for k, v in node_ids.items() if v == actors()["trainer"]["node"])
    cluster.remove_node(nodes.pop(trainer_node), allow_graceful=False)
    marks["trainer_node_removed_at_s"] = time.monotonic() - started
    nodes["compute-2"] = cluster.add_node(num_cpus=2, resources=offered["compute_worker"],
                                          object_store_memory=STORE)
    node_ids["compute-2"] = nodes["compute-2"].node_id
    last = {}

    def watch() -> None:
        while job.is_alive():
            now = actors()
            if "trainer" in now:
                last.update(now)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    job.join(timeout=120)
    watcher.join(timeout=5)
    names = {v: k for k, v in node_ids.items()}
    report = {
        "first": {role: names.get(a["node"]) for role, a in first.items()},
        "after_shard": {role: names.get(a["node"]) for role, a in after_shard.items()},
        "last": {role: names.get(a["node"]) for role, a in last.items()},
        "removed": [shard_node, trainer_node], "shard_back_s": shard_back_s,
        "rows": ROWS, "epochs": EPOCHS, **marks, "seconds": time.monotonic() - started,
        **result}
    ray.shutdown()
    cluster.shutdown()
    return report


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1])), default=str))
