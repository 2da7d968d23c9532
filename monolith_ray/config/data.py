"""The ``data`` section: where jobs read examples and write metrics and snapshots."""

from __future__ import annotations

import dataclasses

from monolith_ray.config.loader import ConfigError, _require


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where a job reads and writes: Parquet splits of examples (local paths or any
    ``pyarrow.fs`` URI, e.g. ``s3://bucket/prefix/train.parquet``), the output folder for
    metrics and the snapshots. Nothing here is tied to a data set (the embedded
    ``defaults/movielens.yaml`` names the MovieLens-100K splits).

    - ``train``: the examples the batch job trains on. Empty by default, as configs that only
      serve or train online read none; a job that reads it fails at its start if it is empty
      or names nothing (``monolith_ray.config.inputs.check_inputs``).
    - ``valid``, ``test``: the examples the batch job evaluates on; empty = no evaluation on
      that split. A non-empty one must exist when the job starts.
    - ``snapshot_root``: where snapshots go (``monolith_ray.train.snapshots``), a local folder
      or any ``pyarrow.fs`` URI; empty = ``<output_dir>/snapshots``. On a cluster of several
      nodes it must be storage every node reaches (an object store, a shared mount): each
      shard actor writes its own tables there. Its filesystem is resolved when a job starts.
    - ``snapshot_keep``: complete snapshots kept; older ones are deleted after each new one.
    - ``snapshot_mb_per_s``: most MB a second each shard writes its snapshot at; 0 = as
      fast as it can. A cap leaves CPU and disk to training where shards share a node with
      trainers (the snapshot takes longer).
    - ``dense_fit_rows``: examples a fresh job reads first to fit the standardization of the
      dense features (``dense[].transform``): the head of ``data.train`` for the batch job,
      the first examples of its start for the online job. A job restored from a snapshot
      keeps the snapshot's.
    """

    train: str = ""
    valid: str = ""
    test: str = ""
    output_dir: str = "runs/train"
    snapshot_root: str = ""
    snapshot_keep: int = 3
    snapshot_mb_per_s: float = 0.0
    dense_fit_rows: int = 65536

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise ConfigError("output_dir", "must not be empty")
        _require(self, "snapshot_keep", ge=1)
        _require(self, "snapshot_mb_per_s", ge=0)
        _require(self, "dense_fit_rows", ge=1)
