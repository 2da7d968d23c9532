"""Pinned model versions: a snapshot loaded once into a replica's own ``ServingModel``, for
the experiment arms whose ``model`` is ``snapshot:<location>`` (``config.policy.ArmConfig``).

The snapshot is read in the replica's process the way a restore reads it (``train.snapshots``:
the manifest checked, then each shard's tables and the dense state), into in-process
``ShardServer`` and ``DenseServer`` objects, and handed to the model as a whole state by an
in-process ``ParameterSync`` (one ``updates`` call), so a pinned model holds exactly what the
live one would hold had the sync read those servers. It never changes afterwards.

Bounds: a pinned model is one more store per replica (the snapshot's rows in
``serve.store_dtype``); loading holds the snapshot's tables with their optimizer state once
more until it returns (for the ranking slots only: retrieval stays with the live model).
Always a whole-table store, whatever ``serve.store`` says: a pinned arm is for catalogues a
replica can hold.
"""

from __future__ import annotations

import dataclasses

from monolith_ray.config import Config
from monolith_ray.files import absolute_location
from monolith_ray.ps.dense import DenseServer
from monolith_ray.ps.shard import ShardServer
from monolith_ray.serve.model import ServingModel
from monolith_ray.serve.sync import ParameterSync
from monolith_ray.train.job import dense_server_args
from monolith_ray.train.snapshots import read_manifest, resolve


def pinned_model(cfg: Config, location: str) -> tuple[ServingModel, str]:
    """The model of the snapshot at ``location`` (a snapshot folder, or a root: its newest
    complete one) -> (the model, the snapshot folder read). FileNotFoundError if there is no
    complete snapshot there; ValueError if it was taken for another model or slots."""
    given = absolute_location(location).rstrip("/")
    found = resolve(given)
    if found is None:
        raise FileNotFoundError(f"no complete snapshot at {given}")
    manifest = read_manifest(found)
    shards = [ShardServer(cfg.slots, cfg.admission) for _ in range(int(manifest["shards"]))]
    for k, shard in enumerate(shards):
        shard.restore(f"{found}/shard-{k}")
    dense = DenseServer(*dense_server_args(cfg))
    dense.restore(found)
    sync = ParameterSync(cfg.slots, shards, dense, start=False, dtype=cfg.serve.store_dtype)
    replica = dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, store="replica"))
    model = ServingModel(replica)
    model.apply(sync.updates(0, -1))
    return model, found
