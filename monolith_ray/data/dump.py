"""Dump the ``examples`` topic to Parquet, partitioned by hour of event time, with its offsets.

``dump_examples(cfg, path)`` reads the topic with :class:`~monolith_ray.data.kafka_source.
KafkaExampleReader` (by default from each partition's first offset to its end as of the start)
and writes hive-style ``path/dt=YYYY-MM-DD/hour=HH/part-*.parquet`` (UTC; rows sorted by event
time within a file), the columns of ``source_schema`` — the example schema plus
``_partition``, ``_offset`` and ``_from_offset``, so training on the dump accounts for offsets
as training on the stream does. Last it writes ``path/_offsets.json``::

    {"topic": "examples", "start": {"0": 0, ...}, "end": {"0": 5120, ...},
     "examples": 10230, "malformed": 10}

``malformed`` counts the records the reader refused, each sent to the dead-letter topic with
its reason (``kafka_source``: a bad record never stops the dump). ``end`` is per partition
the offset after the last record dumped (refused ones included): a job that trains on the
dump continues on Kafka from there (``train.online``, start ``dump:<path>``). The file
appears only once the dump is complete, so a dump without it is unfinished. ``path`` is a
local folder or any ``pyarrow.fs`` URI.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from monolith_ray.config import Config
from monolith_ray.data.kafka_source import (
    KafkaExampleReader,
    Stops,
    StreamSpec,
    earliest_offsets,
)
from monolith_ray.files import filesystem_and_path
from monolith_ray.schemas import TIME

OFFSETS_FILE = "_offsets.json"
_HIVE = pads.partitioning(pa.schema([("dt", pa.string()), ("hour", pa.string())]),
                          flavor="hive")


def dump_examples(cfg: Config, path: str, starts: Mapping[int, int] | None = None,
                  stops: Stops = "end", rows_per_write: int = 200_000) -> dict[str, Any]:
    """Dump ``cfg.kafka.topics.examples`` from ``starts`` (default: each partition's first
    offset) to ``stops`` into ``path``, which must not exist or be empty; return what
    ``_offsets.json`` holds. Rows are written ``rows_per_write`` at a time (each write adds a
    file to every hour it touches)."""
    fs, root = filesystem_and_path(path)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.Directory and fs.get_file_info(
            pafs.FileSelector(root, recursive=False)):
        raise FileExistsError(f"dump folder {path} is not empty")
    topic = cfg.kafka.topics.examples
    starts = dict(starts) if starts is not None else earliest_offsets(cfg.kafka, topic)
    reader = KafkaExampleReader(StreamSpec(cfg.kafka, topic, cfg.slots, starts, stops=stops,
                                           limits=cfg.limits, stage="dump", dense=cfg.dense,
                                           tasks=cfg.task_names))
    fs.create_dir(root, recursive=True)
    pending: list[pa.Table] = []
    writes = 0
    for table in reader:
        pending.append(table)
        if sum(t.num_rows for t in pending) >= rows_per_write:
            _write(fs, root, pending, writes)
            pending, writes = [], writes + 1
    if pending:
        _write(fs, root, pending, writes)
    record = {"topic": topic, "start": {str(p): o for p, o in sorted(starts.items())},
              "end": {str(p): o for p, o in sorted(reader.positions.items())},
              "examples": reader.records, "malformed": reader.malformed}
    part = f"{root}/{OFFSETS_FILE}.part"
    with fs.open_output_stream(part) as out:
        out.write(json.dumps(record, indent=2).encode("utf-8"))
    fs.move(part, f"{root}/{OFFSETS_FILE}")
    return record


def read_dump_offsets(path: str) -> dict[str, Any]:
    """The ``_offsets.json`` of the dump at ``path``, partitions as ints; FileNotFoundError
    if the dump is missing or unfinished."""
    fs, root = filesystem_and_path(path)
    try:
        with fs.open_input_stream(f"{root}/{OFFSETS_FILE}") as f:
            record = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} has no {OFFSETS_FILE}: not a dump, or an "
                                f"unfinished one") from None
    for key in ("start", "end"):
        record[key] = {int(p): int(o) for p, o in record[key].items()}
    return record


def _write(fs: pafs.FileSystem, root: str, tables: list[pa.Table], index: int) -> None:
    table = pa.concat_tables(tables)
    table = table.take(pc.sort_indices(table, [(TIME, "ascending")]))
    stamp = table.column(TIME).cast(pa.timestamp("s", tz="UTC"))
    table = table.append_column("dt", pc.strftime(stamp, format="%Y-%m-%d"))
    table = table.append_column("hour", pc.strftime(stamp, format="%H"))
    pads.write_dataset(table, root, filesystem=fs, format="parquet", partitioning=_HIVE,
                       basename_template=f"part-{index:05d}-{{i}}.parquet",
                       existing_data_behavior="overwrite_or_ignore")
