"""The batch job's re-batching of Ray Data blocks into training batches."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from monolith_ray.train.job import rebatched


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 20), max_size=8), st.integers(1, 7))
def test_every_row_once_in_order_in_full_batches(block_rows, size) -> None:
    blocks, n = [], 0
    for rows in block_rows:
        blocks.append(pa.table({"x": np.arange(n, n + rows)}))
        n += rows
    out = list(rebatched(iter(blocks), size))
    got = [x for t in out for x in t["x"].to_pylist()]
    assert got == list(range(n))
    assert all(t.num_rows == size for t in out[:-1])
    assert not out or 0 < out[-1].num_rows <= size


def test_aligned_blocks_are_sliced_without_copies() -> None:
    block = pa.table({"x": np.arange(8)})
    out = list(rebatched(iter([block]), 4))
    assert [t.num_rows for t in out] == [4, 4]
    assert out[1]["x"].chunks[0].buffers()[1].address == block["x"].chunks[0].buffers()[1].address
