"""Parquet examples numbered by file and row: exact positions, and reads that leave out rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from monolith_ray.data.offsets import OFFSET, PARTITION, OffsetCoverage
from monolith_ray.data.parquet_rows import pieces, read_positioned


@pytest.fixture
def folder(tmp_path):
    """Two files: a.parquet rows 0..99 (row groups of 30), b.parquet rows 100..149."""
    pq.write_table(pa.table({"x": np.arange(100)}), tmp_path / "a.parquet", row_group_size=30)
    pq.write_table(pa.table({"x": np.arange(100, 150)}), tmp_path / "b.parquet")
    return tmp_path


def rows(dataset) -> pa.Table:
    return pa.concat_tables(dataset.iter_batches(batch_size=None, batch_format="pyarrow")
                            ).sort_by("x")


def test_pieces_cut_row_groups_and_number_files_in_path_order(folder):
    found = pieces(str(folder), piece_rows=20)
    assert [(p.index, p.group, p.start, p.stop) for p in found] == [
        (0, 0, 0, 20), (0, 0, 20, 30), (0, 1, 30, 50), (0, 1, 50, 60), (0, 2, 60, 80),
        (0, 2, 80, 90), (0, 3, 90, 100), (1, 0, 0, 20), (1, 0, 20, 40), (1, 0, 40, 50)]


def test_every_row_comes_once_with_its_file_and_row(ray_session, folder):
    table = rows(read_positioned(str(folder), piece_rows=20))
    assert table["x"].to_pylist() == list(range(150))
    assert table[PARTITION].to_pylist() == [0] * 100 + [1] * 50
    assert table[OFFSET].to_pylist() == list(range(100)) + list(range(50))


def test_a_read_leaves_out_the_rows_done_covers(ray_session, folder):
    done = OffsetCoverage({0: [(0, 45), (50, 100)], 1: [(10, 20)]})
    table = rows(read_positioned(f"file://{folder}", done, piece_rows=20))
    assert table["x"].to_pylist() == [45, 46, 47, 48, 49, *range(100, 110), *range(120, 150)]
    assert read_positioned(str(folder), OffsetCoverage({0: [(0, 100)], 1: [(0, 50)]})) is None


def test_read_tasks_take_whole_row_groups_unless_too_few():
    from monolith_ray.data.parquet_rows import _tasks

    one_group = [[{"p": k} for k in range(10)]]
    tasks = _tasks(one_group, 4)
    assert len(tasks) == 4 and [p for t in tasks for p in t] == one_group[0]
    many = [[{"g": g, "p": k} for k in range(3)] for g in range(5)]
    assert _tasks(many, 4) == many  # enough tasks: each group decoded once
    assert len(_tasks([[{"p": 0}]], 8)) == 1  # a single piece cannot be cut
