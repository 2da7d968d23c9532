"""Snapshots: every shard's tables, the dense parameters and the consumed offsets, together.

A snapshot root is a local folder or any ``pyarrow.fs`` URI (``file:///...``,
``s3://bucket/prefix``, ``gs://...``, ``hdfs://...``); it holds one folder per snapshot::

    <root>/
      snap-000012-20261127T210000Z/   number (one more than any before) and UTC time taken
        shard-0/<slot>.table          shard K's tables (``EmbeddingTable.snapshot`` format)
        shard-1/<slot>.table
        dense.npz                     dense parameters ``params[...]``, optax state
                                      ``opt[...]`` (named by pytree path), ``version``
        offsets.json                  online runs: {"topic": ..., "offsets": {"<p>": offset}}
        _COMPLETE                     the manifest, written last
      snap-000013-20261128T210000Z/   no _COMPLETE: a crash midway; ignored, later pruned

A snapshot is complete once its ``_COMPLETE`` manifest exists: JSON naming the format, the
number, the time taken, the shard count, the dense version and every file with its size in
bytes. Readers (:func:`latest`, :func:`restore_snapshot`) only ever use complete snapshots
and check the listed files against it, so files are written in place with no renames (a
rename is a copy on object stores). After each snapshot :func:`prune` keeps the newest
``keep`` complete ones, deleting older ones (manifest first, so a half-deleted one reads as
incomplete) and incomplete ones older than the newest complete one. One writer per root at a
time: numbers are picked by listing the root.

Who writes what: each shard actor writes its own tables (``ShardServer.snapshot``), resolving
the URI on its own node with that node's credentials. The tables are most of the bytes and
on a cluster the shards run on other nodes: sending them through the driver would move every
table twice and need the driver's memory for all of them at once, and the driver's local
disk is no place for them anyway. The dense parameters are small and the driver pulls them
regardless, so the driver writes ``dense.npz``, ``offsets.json`` and the manifest. Hence on a
cluster of several nodes the root must be storage every node reaches (an object store or a
shared mount); a plain local path suits one machine. Restore reads the same way round.

The offsets are collected before the parameters are written (``monolith_ray.train.online``),
so a snapshot's parameters have trained at least up to its offsets.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import posixpath
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import pyarrow.fs as pafs

from monolith_ray import metrics
from monolith_ray.config import Config, ConfigError, DataConfig
from monolith_ray.files import absolute_location, filesystem_and_path

FORMAT = "monolith_ray.snapshot/1"
MANIFEST = "_COMPLETE"
OFFSETS_FILE = "offsets.json"
_FOLDER = re.compile(r"snap-(\d+)-(\d{8}T\d{6}Z)")
_STAMP = "%Y%m%dT%H%M%SZ"

Location = str | os.PathLike[str]


class SnapshotInfo(NamedTuple):
    """One snapshot folder under a root."""

    location: str  # the folder: an absolute local path or a URI
    number: int
    taken_at: dt.datetime  # UTC, from the folder's name
    complete: bool  # its manifest exists


def snapshot_root(cfg: Config) -> str:
    """``data.snapshot_root``, or ``<data.output_dir>/snapshots`` if empty, as every process
    reads it (a local path made absolute); ConfigError naming ``data.snapshot_root`` if
    ``pyarrow.fs`` knows no filesystem for it."""
    root = cfg.data.snapshot_root or posixpath.join(cfg.data.output_dir, "snapshots")
    try:
        filesystem_and_path(root)
    except (ValueError, OSError) as err:
        raise ConfigError("data.snapshot_root", f"{root!r}: {err}") from None
    return absolute_location(root).rstrip("/")


@dataclasses.dataclass(frozen=True)
class RunSnapshot:
    """A restarted server's ``restore_on_restart``: the newest complete snapshot under
    ``root`` taken at or after ``since`` (ISO time; the run's start, so an earlier run's
    snapshots are never picked up), else ``fallback`` (the snapshot the run started from: a
    folder, or a root for its latest), else None; with ``part``, that sub-folder of it (a
    shard's ``shard-K``; the dense server's file lies in the snapshot folder itself). Looked
    up when the restarted server starts, so it gets the snapshot taken last before its
    process died."""

    root: str
    since: str = ""
    fallback: str | None = None
    part: str = ""

    def __call__(self) -> str | None:
        folder = latest(self.root, dt.datetime.fromisoformat(self.since) if self.since else None)
        if folder is None and self.fallback is not None:
            folder = resolve(self.fallback)
        if folder is None or not self.part:
            return folder
        return f"{folder}/{self.part}"


def take_snapshot(target: Config | Location, shards: Sequence[Any], dense: Any,
                  offsets: Mapping[str, Any] | None = None, keep: int | None = None,
                  mb_per_s: float | None = None) -> str:
    """Write a new snapshot of the ``shards`` and ``dense`` actors (and the Kafka ``offsets``
    trained up to, if given) under a root, then prune the root -> the new snapshot's folder.

    ``target`` is a config (root :func:`snapshot_root`, ``keep`` default
    ``data.snapshot_keep``, ``mb_per_s`` default ``data.snapshot_mb_per_s``) or a root
    (defaults from ``DataConfig``). ``mb_per_s`` > 0 caps each shard's write rate."""
    if isinstance(target, Config):
        root, default_keep = snapshot_root(target), target.data.snapshot_keep
        default_rate = target.data.snapshot_mb_per_s
    else:
        root, default_keep = absolute_location(target).rstrip("/"), DataConfig.snapshot_keep
        default_rate = DataConfig.snapshot_mb_per_s
    mb_per_s = default_rate if mb_per_s is None else mb_per_s
    keep = default_keep if keep is None else keep
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    started = time.perf_counter()
    number = max((s.number for s in list_snapshots(root)), default=0) + 1
    taken_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    location = f"{root}/snap-{number:06d}-{taken_at.strftime(_STAMP)}"
    nbytes = _write(location, shards, dense, offsets, {"number": number,
                                                       "taken_at": taken_at.isoformat()},
                    mb_per_s)
    prune(root, keep)
    metrics.SNAPSHOT_SECONDS.observe(time.perf_counter() - started)
    metrics.SNAPSHOT_BYTES.set(nbytes)
    metrics.SNAPSHOT_TIMESTAMP.set(time.time())
    return location


def restore_snapshot(location: Location, shards: Sequence[Any], dense: Any
                     ) -> dict[str, Any] | None:
    """Load a snapshot into freshly started shard and dense-server actors (the same slots,
    model and shard count) -> its offsets, or None if it has none (a batch job's).

    ``location`` is one snapshot folder or a root, whose newest complete snapshot is used;
    an incomplete folder, or a root without a complete one, raises FileNotFoundError."""
    import ray

    given = absolute_location(location).rstrip("/")
    found = resolve(given)
    if found is None:
        if _FOLDER.fullmatch(posixpath.basename(given)):
            raise FileNotFoundError(f"{given} is an incomplete snapshot (no {MANIFEST})")
        raise FileNotFoundError(f"no complete snapshot under {given}")
    location, manifest = found, read_manifest(found)
    _check(location, manifest, len(shards))
    ray.get([s.restore.remote(f"{location}/shard-{k}") for k, s in enumerate(shards)]
            + [dense.restore.remote(location)])
    return read_offsets(location)


def read_offsets(location: Location) -> dict[str, Any] | None:
    """The Kafka offsets (``offsets.json``) of the complete snapshot folder ``location``, or
    None if it has none (a batch job's) or is incomplete."""
    manifest = read_manifest(location)
    if manifest is None or OFFSETS_FILE not in manifest["files"]:
        return None
    fs, path = filesystem_and_path(absolute_location(location).rstrip("/"))
    with fs.open_input_stream(f"{path}/{OFFSETS_FILE}") as f:
        return json.loads(f.read())


def list_snapshots(root: Location) -> list[SnapshotInfo]:
    """The snapshot folders under ``root``, oldest (lowest number) first; none if ``root``
    does not exist."""
    root = absolute_location(root).rstrip("/")
    fs, path = filesystem_and_path(root)
    folders = [(match, info.base_name) for info in
               fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
               if info.type == pafs.FileType.Directory
               and (match := _FOLDER.fullmatch(info.base_name))]
    manifests = fs.get_file_info([f"{path}/{name}/{MANIFEST}" for _, name in folders])
    found = [SnapshotInfo(f"{root}/{name}", int(match[1]),
                          dt.datetime.strptime(match[2], _STAMP).replace(tzinfo=dt.UTC),
                          info.type == pafs.FileType.File)
             for (match, name), info in zip(folders, manifests)]
    return sorted(found, key=lambda s: s.number)


def resolve(location: Location) -> str | None:
    """The complete snapshot ``location`` names: itself if it is one, None if it is an
    incomplete snapshot folder, else (a root) its newest complete snapshot or None."""
    location = absolute_location(location).rstrip("/")
    if read_manifest(location) is not None:
        return location
    if _FOLDER.fullmatch(posixpath.basename(location)):
        return None
    return latest(location)


def latest(root: Location, since: dt.datetime | None = None) -> str | None:
    """The folder of the newest complete snapshot under ``root`` (taken at or after ``since``,
    if given), or None if there is none."""
    complete = [s for s in list_snapshots(root)
                if s.complete and (since is None or s.taken_at >= since)]
    return complete[-1].location if complete else None


def prune(root: Location, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` complete snapshots under ``root``, and incomplete
    ones older than the newest complete one (a crash's leftovers; newer ones may be in the
    making) -> the folders deleted."""
    snapshots = list_snapshots(root)
    complete = [s for s in snapshots if s.complete]
    if not complete:
        return []
    kept, newest = complete[-keep:], complete[-1].number
    doomed = [s for s in snapshots
              if (s.complete and s not in kept) or (not s.complete and s.number < newest)]
    for snapshot in doomed:
        fs, path = filesystem_and_path(snapshot.location)
        if snapshot.complete:
            fs.delete_file(f"{path}/{MANIFEST}")
        fs.delete_dir(path)
    return [s.location for s in doomed]


def read_manifest(location: Location) -> dict[str, Any] | None:
    """The manifest of the snapshot folder at ``location``, or None if it has none."""
    fs, path = filesystem_and_path(location)
    try:
        with fs.open_input_stream(f"{path}/{MANIFEST}") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None


def _write(location: str, shards: Sequence[Any], dense: Any,
           offsets: Mapping[str, Any] | None, header: Mapping[str, Any],
           mb_per_s: float = 0.0) -> int:
    """Write one snapshot folder: the shards' tables, the dense state, the offsets, then the
    manifest listing them (``header`` plus format, shards, dense version and files) -> the
    bytes of the files listed."""
    import ray

    fs, path = filesystem_and_path(location)
    fs.create_dir(path, recursive=True)
    *_, version = ray.get([s.snapshot.remote(f"{location}/shard-{k}", mb_per_s)
                           for k, s in enumerate(shards)] + [dense.snapshot.remote(location)])
    if offsets is not None:
        with fs.open_output_stream(f"{path}/{OFFSETS_FILE}", compression=None) as f:
            f.write(json.dumps(offsets, indent=2).encode("utf-8"))
    files = {info.path[len(path):].lstrip("/"): info.size
             for info in fs.get_file_info(pafs.FileSelector(path, recursive=True))
             if info.type == pafs.FileType.File}
    manifest = {"format": FORMAT, **header, "shards": len(shards),
                "dense_version": int(version), "files": dict(sorted(files.items()))}
    with fs.open_output_stream(f"{path}/{MANIFEST}", compression=None) as f:
        f.write(json.dumps(manifest, indent=2).encode("utf-8"))
    return sum(files.values())


def _check(location: str, manifest: Mapping[str, Any], n_shards: int) -> None:
    """ValueError unless the manifest is of this format and shard count and every file it
    lists is there with its size."""
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{location}: snapshot format {manifest.get('format')!r}, "
                         f"expected {FORMAT!r}")
    if manifest["shards"] != n_shards:
        raise ValueError(f"{location} holds {manifest['shards']} shards, the run has "
                         f"{n_shards}: rows would be routed to the wrong shards")
    fs, path = filesystem_and_path(location)
    names = list(manifest["files"])
    for name, info in zip(names, fs.get_file_info([f"{path}/{n}" for n in names])):
        if info.type != pafs.FileType.File or info.size != manifest["files"][name]:
            raise ValueError(f"{location}/{name}: missing or not the size its manifest "
                             f"records ({manifest['files'][name]} bytes)")
