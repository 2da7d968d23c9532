"""Pinned model versions: a snapshot loaded once into a replica's own ``ServingModel``, for
the experiment arms whose ``model`` is ``snapshot:<location>`` (``config.policy.ArmConfig``).

The application resolves each arm's location to one snapshot folder when it is built
(:func:`resolve_pinned`), so every replica loads the same one. It is read in each replica's
process the way a restore reads it (``train.snapshots``:
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

from monolith_ray.config import Config, ConfigError
from monolith_ray.files import absolute_location
from monolith_ray.ps.dense import DenseServer
from monolith_ray.ps.shard import ShardServer
from monolith_ray.serve.model import ServingModel
from monolith_ray.serve.sync import ParameterSync
from monolith_ray.train.job import dense_server_args
from monolith_ray.train.snapshots import FORMAT, read_manifest, resolve


def resolve_pinned(cfg: Config) -> Config:
    """``cfg`` with each pinned arm's ``snapshot:<location>`` resolved to one complete
    snapshot folder (a root: its newest now), so every replica of an application, however
    late it starts, loads the same one -> the config to build the app with. ConfigError
    naming ``experiments[i].arms[j].model`` if there is no complete snapshot there or it is
    of another format. Keep a pinned snapshot outside the live job's snapshot root (or
    raise ``data.snapshot_keep``): that root's pruning deletes old snapshots, and a replica
    started after it cannot load its arm's model."""
    experiments = []
    for i, experiment in enumerate(cfg.experiments):
        arms = []
        for j, arm in enumerate(experiment.arms):
            if arm.snapshot is not None:
                key = f"experiments[{i}].arms[{j}].model"
                try:
                    found = resolve(absolute_location(arm.snapshot).rstrip("/"))
                    manifest = read_manifest(found) if found is not None else None
                except (OSError, ValueError) as err:
                    raise ConfigError(key, f"cannot read {arm.snapshot}: {err}") from None
                if manifest is None:
                    raise ConfigError(key, f"no complete snapshot at {arm.snapshot}")
                if manifest.get("format") != FORMAT:
                    raise ConfigError(key, f"{found} is a snapshot of format "
                                           f"{manifest.get('format')!r}, not {FORMAT!r}")
                arm = dataclasses.replace(arm, model=f"snapshot:{found}")
            arms.append(arm)
        experiments.append(dataclasses.replace(experiment, arms=tuple(arms)))
    return dataclasses.replace(cfg, experiments=tuple(experiments))


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
