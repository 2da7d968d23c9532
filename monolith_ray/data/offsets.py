"""Which Kafka offsets trained rows account for, and where a restore resumes.

Rows read from Kafka (``monolith_ray.data.kafka_source``, and a dump of it) carry three
columns besides the example: ``_partition``, ``_offset`` and ``_from_offset``. A row accounts
for the offsets ``[_from_offset, _offset]`` of its partition: its own, and any just before it
that the source read but yielded no row for (malformed messages, offsets with no record).

Why not "the largest offset trained + 1": ``streaming_split`` hands a partition's blocks to
whichever trainer is due, so trainer A may still hold offsets 0-99 of partition 0 in flight
while trainer B has trained 100-199. Resuming at 200 would skip 0-99. The resume position of a
partition is instead the end of the run of accounted offsets that begins at its start offset:
nothing below it is missing. :class:`OffsetCoverage` keeps the accounted offsets as merged
ranges per partition, so a long run stays a handful of ranges.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pyarrow as pa

PARTITION, OFFSET, FROM_OFFSET = "_partition", "_offset", "_from_offset"
SOURCE_FIELDS = (
    pa.field(PARTITION, pa.int32(), nullable=False),
    pa.field(OFFSET, pa.int64(), nullable=False),
    pa.field(FROM_OFFSET, pa.int64(), nullable=False),
)

Ranges = dict[int, list[tuple[int, int]]]


class OffsetCoverage:
    """Accounted offsets per partition as sorted, disjoint, non-adjacent ``[start, stop)``
    ranges. ``ranges`` (and the constructor) use plain ints, so a coverage crosses processes
    and JSON as a dict."""

    def __init__(self, ranges: Mapping[int, Iterable[Iterable[int]]] | None = None) -> None:
        self._ranges: Ranges = {}
        for partition, spans in (ranges or {}).items():
            pairs = np.asarray([tuple(s) for s in spans], dtype=np.int64).reshape(-1, 2)
            self._merge_in(int(partition), pairs[:, 0], pairs[:, 1])

    @classmethod
    def of_table(cls, table: pa.Table | pa.RecordBatch) -> OffsetCoverage:
        """The offsets the rows of ``table`` account for (its source columns)."""
        coverage = cls()
        if table.num_rows == 0:
            return coverage
        partitions = _column(table, PARTITION)
        lo = _column(table, FROM_OFFSET)
        hi = _column(table, OFFSET) + 1
        for partition in np.unique(partitions):
            rows = partitions == partition
            coverage._merge_in(int(partition), lo[rows], hi[rows])
        return coverage

    def add(self, partition: int, start: int, stop: int) -> None:
        """Account for offsets ``[start, stop)`` of ``partition``."""
        if stop > start:
            self._merge_in(int(partition), np.array([start]), np.array([stop]))

    def update(self, other: OffsetCoverage) -> None:
        """Account for everything ``other`` accounts for."""
        for partition, spans in other._ranges.items():
            pairs = np.asarray(spans, dtype=np.int64)
            self._merge_in(partition, pairs[:, 0], pairs[:, 1])

    def ranges(self) -> Ranges:
        """Partition -> its ``(start, stop)`` ranges, sorted."""
        return {p: list(spans) for p, spans in sorted(self._ranges.items())}

    def resume(self, starts: Mapping[int, int]) -> dict[int, int]:
        """Per partition of ``starts``, the first offset not accounted for at or after its
        start: where reading resumes without skipping anything."""
        out = {}
        for partition, start in starts.items():
            position = int(start)
            for lo, hi in self._ranges.get(int(partition), ()):
                if lo <= position < hi:
                    position = hi
            out[int(partition)] = position
        return out

    def count(self, partition: int | None = None) -> int:
        """Offsets accounted for, in ``partition`` or in all."""
        parts = self._ranges if partition is None else {partition: self._ranges.get(partition, [])}
        return sum(hi - lo for spans in parts.values() for lo, hi in spans)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OffsetCoverage) and self._ranges == other._ranges

    def __repr__(self) -> str:
        return f"OffsetCoverage({self.ranges()})"

    def _merge_in(self, partition: int, lo: np.ndarray, hi: np.ndarray) -> None:
        old = np.asarray(self._ranges.get(partition, []), dtype=np.int64).reshape(-1, 2)
        lo = np.concatenate([old[:, 0], np.asarray(lo, dtype=np.int64)])
        hi = np.concatenate([old[:, 1], np.asarray(hi, dtype=np.int64)])
        if lo.size == 0:
            return
        order = np.argsort(lo, kind="stable")
        lo, hi = lo[order], hi[order]
        reach = np.maximum.accumulate(hi)
        first = np.flatnonzero(np.r_[True, lo[1:] > reach[:-1]])
        merged = zip(lo[first].tolist(), np.maximum.reduceat(hi, first).tolist())
        self._ranges[partition] = [(a, b) for a, b in merged if b > a]


def _column(table: pa.Table | pa.RecordBatch, name: str) -> np.ndarray:
    column = table.column(name)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
