"""The check, when a job starts, that every input its config names exists.

A config is written in one place and run in another, so its paths are checked where the job
runs: each job calls :func:`check_inputs` with the keys it reads before it starts any Ray
work, and a wrong path fails in a second with its key named, not after an hour of training.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow.fs as pafs

from monolith_ray.config.loader import ConfigError
from monolith_ray.files import filesystem_and_path
from monolith_ray.config.root import Config

INPUT_KEYS = ("data.train", "data.valid", "data.test", "serve.candidate_pool", "online.start",
              "experiments")


def check_inputs(cfg: Config, keys: Iterable[str]) -> None:
    """ConfigError naming the key and the path, e.g. ``data.valid: no file or folder
    /x/valid.parquet``, unless every input that ``keys`` (of :data:`INPUT_KEYS`) name exists.

    An empty ``data.valid``, ``data.test`` or ``serve.candidate_pool`` names no input;
    ``online.start`` names the path of ``dump:<path>`` or ``snapshot:<path>`` (``earliest``
    none); ``data.train`` must name one, as a job that reads it has nothing to train on
    otherwise. ``experiments``: the snapshot of each arm pinned to one
    (``model: snapshot:<path>``). A path is local, or any ``pyarrow.fs`` URI (``s3://...``),
    a file or a folder.
    """
    for key in keys:
        if key not in INPUT_KEYS:
            raise ValueError(f"{key!r} names no input; inputs: {', '.join(INPUT_KEYS)}")
        if key == "experiments":
            for i, experiment in enumerate(cfg.experiments):
                for j, arm in enumerate(experiment.arms):
                    if arm.snapshot is not None:
                        _check_exists(f"experiments[{i}].arms[{j}].model", arm.snapshot)
            continue
        section, _, name = key.partition(".")
        path = getattr(getattr(cfg, section), name)
        if key == "online.start":
            path = path.partition(":")[2]
        if path:
            _check_exists(key, path)
        elif key == "data.train":
            raise ConfigError(key, "must not be empty: this job trains on it")


def _check_exists(key: str, path: str) -> None:
    """ConfigError at ``key`` unless ``path`` (local, or a URI) exists."""
    try:
        fs, inner = filesystem_and_path(path)
        found = fs.get_file_info(inner).type != pafs.FileType.NotFound
    except (ValueError, OSError) as err:
        raise ConfigError(key, f"cannot check {path}: {err}") from None
    if not found:
        raise ConfigError(key, f"no file or folder {path}")
