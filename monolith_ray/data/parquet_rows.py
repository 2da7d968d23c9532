"""Parquet examples with their positions, so a restarted batch job reads on where it left off.

:func:`read_positioned` is the batch job's training input: the examples of a Parquet file or
folder as a Ray ``Dataset`` whose rows carry the source columns a Kafka stream's rows carry
(``monolith_ray.data.offsets``): ``_partition`` is the file's index among the input's files
(sorted by path) and ``_offset`` (= ``_from_offset``) the row's index in its file. So the
same :class:`~monolith_ray.data.offsets.OffsetCoverage` that says which Kafka offsets were
trained says which rows were, and a read given that coverage (``done``) skips those rows.

Ray's own ``read_parquet`` does not number rows, hence this reader: the input is cut into
pieces of at most ``piece_rows`` rows of one row group; a read task takes the pieces of one
row group, decodes the group once and hands on each piece as a block. A group is decoded
whole, so a task per piece decoded a 262k-row group 32 times (measured: the Parquet path ran
at under half the pre-built batches' speed). Pieces are what ``streaming_split`` hands to
trainers, and a file of one row group read by one task fed one trainer of two: a read asks
for at least ``min_tasks`` tasks (the batch job: four per trainer), cutting the largest in
halves, each cut costing one more decode of its group. A task holds one decoded row group
(pyarrow writes groups of up to 1M rows by default; ``row_group_size`` sets it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from monolith_ray.data.offsets import FROM_OFFSET, OFFSET, PARTITION, OffsetCoverage
from monolith_ray.files import filesystem_and_path

PIECE_ROWS = 8192


class Piece(NamedTuple):
    """Rows ``[start, stop)`` of file ``index`` (``path`` in the filesystem of the input
    ``location``), all in its row group ``group`` (whose first row is ``group_start``)."""

    location: str
    index: int
    path: str
    group: int
    group_start: int
    start: int
    stop: int


def pieces(location: str, piece_rows: int = PIECE_ROWS) -> list[Piece]:
    """The pieces of the Parquet file or folder at ``location`` (local or ``pyarrow.fs``
    URI), files in path order, rows in file order."""
    fs, path = filesystem_and_path(location)
    files = sorted(pads.dataset(path, filesystem=fs, format="parquet").files)
    out = []
    for index, file in enumerate(files):
        metadata = pq.ParquetFile(file, filesystem=fs).metadata
        group_start = 0
        for group in range(metadata.num_row_groups):
            rows = metadata.row_group(group).num_rows
            for start in range(0, rows, piece_rows):
                out.append(Piece(location, index, file, group, group_start, group_start + start,
                                 group_start + min(start + piece_rows, rows)))
            group_start += rows
    return out


def read_positioned(location: str, done: OffsetCoverage | None = None,
                    num_cpus: float = 1.0, piece_rows: int = PIECE_ROWS,
                    min_tasks: int = 1) -> Any:
    """A Ray ``Dataset`` of the examples at ``location`` with their positions, leaving out
    those ``done`` covers (its ranges travel with each read task: a handful per file once
    merged); ``num_cpus`` per read task, at least ``min_tasks`` of them where there are
    pieces enough (see the module docstring). None if ``done`` covers every row."""
    import ray

    done = done or OffsetCoverage()
    ranges = done.ranges()
    groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for p in pieces(location, piece_rows):
        if not _covered(ranges.get(p.index, []), np.arange(p.start, p.stop)).all():
            groups.setdefault((p.index, p.group), []).append(p._asdict())
    if not groups:
        return None
    todo = [{"pieces": json.dumps(task)} for task in _tasks(list(groups.values()), min_tasks)]
    return ray.data.from_items(todo, override_num_blocks=len(todo)).map_batches(
        _read, fn_kwargs={"done": ranges}, batch_size=1, num_cpus=num_cpus,
        batch_format="pyarrow")


def _tasks(groups: list[list[dict[str, Any]]], min_tasks: int) -> list[list[dict[str, Any]]]:
    """Read tasks of the pieces of each row group: a whole group per task (decoded once),
    and while there are fewer than ``min_tasks``, the task of most pieces cut in two (its
    group then decoded twice). At most one cut per piece: bounded by the pieces' count."""
    tasks = [group for group in groups if group]
    while len(tasks) < min_tasks:
        k = max(range(len(tasks)), key=lambda i: len(tasks[i]))
        task = tasks[k]
        if len(task) < 2:
            break
        half = len(task) // 2
        tasks[k:k + 1] = [task[:half], task[half:]]
    return tasks


def _read(items: pa.Table, done: dict[int, list[tuple[int, int]]]) -> Iterator[pa.Table]:
    """The rows of the pieces of one row group in ``items`` that ``done`` (ranges per file
    index) does not cover, with their positions: the group decoded once, a table a piece."""
    group = [Piece(**p) for p in json.loads(items.column("pieces")[0].as_py())]
    first = group[0]
    fs, _ = filesystem_and_path(first.location)
    rows = pq.ParquetFile(first.path, filesystem=fs).read_row_group(first.group)
    for piece in group:
        table = rows.slice(piece.start - piece.group_start, piece.stop - piece.start)
        offsets = np.arange(piece.start, piece.stop, dtype=np.int64)
        keep = ~_covered(done.get(piece.index, []), offsets)
        if not keep.all():
            table, offsets = table.filter(pa.array(keep)), offsets[keep]
        if offsets.size:
            yield (table.append_column(PARTITION, pa.array(np.full(offsets.size, piece.index,
                                                                   dtype=np.int32)))
                   .append_column(OFFSET, pa.array(offsets))
                   .append_column(FROM_OFFSET, pa.array(offsets)))


def _covered(spans: Sequence[tuple[int, int]], offsets: np.ndarray) -> np.ndarray:
    """Per offset whether one of the sorted, disjoint ``[lo, hi)`` ``spans`` holds it."""
    if not len(spans):
        return np.zeros(offsets.shape, dtype=bool)
    bounds = np.asarray(spans, dtype=np.int64)
    at = np.searchsorted(bounds[:, 0], offsets, side="right") - 1
    return (at >= 0) & (offsets < bounds[np.maximum(at, 0), 1])
