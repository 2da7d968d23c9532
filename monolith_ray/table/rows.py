"""Row storage of an embedding table that grows without copying.

A table's per-row arrays (weights, optimizer state, ids, times, counts, versions) are each one
NumPy array over address space reserved once for ``MAX_ROWS`` rows: an anonymous private
mapping made with ``MAP_NORESERVE``. The kernel commits a page only when it is first written,
so a table's memory is the rows it has handed out (below the cuckoo map's ``row_bound``, rounded
up to a page per array), never the reservation, and growing is free: no copy, no pause, no
second copy at the peak. A table with 12.5M rows of dim 17 + Adagrad commits about 2 GB; the
same table grown by doubling would have peaked near 6 GB while it copied.

Rows past ``row_bound`` are never read, and every field of a row is written when the row is
handed out (``EmbeddingTable._insert``), so nothing is pre-filled: an untouched page reads as
zeros and costs nothing.

Where a reservation would not be free (``vm.overcommit_memory = 2`` charges it in full) or is
refused (an address-space limit, a platform without ``MAP_NORESERVE``), ``reserve`` returns
None and the table falls back to arrays it grows by copying (1.5x a step). Either way a table
holds at most ``MAX_ROWS`` rows, checked before an insert changes anything.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import sys

import numpy as np

MAX_ROWS = 1 << 28  # rows a table may hand out; the cuckoo map's rows are int32
_MAP_NORESERVE = 0x4000  # Linux's flag value; Python's mmap module does not name it


def reserve(n_rows: int, width: int, dtype: np.dtype | type) -> np.ndarray | None:
    """A zeroed ``(n_rows, width)`` array (``(n_rows,)`` if ``width`` is 0) over reserved,
    lazily committed memory, or None where the reservation is refused."""
    dtype = np.dtype(dtype)
    shape = (n_rows, width) if width else (n_rows,)
    n_bytes = n_rows * max(width, 1) * dtype.itemsize
    if not sys.platform.startswith("linux") or _strict_overcommit():
        return None
    try:
        region = mmap.mmap(-1, n_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                           | _MAP_NORESERVE)
    except (OSError, OverflowError, ValueError):
        return None
    # Under transparent huge pages "always", a first write would commit 2 MB at a time: a
    # small table's handful of rows would cost megabytes per array.
    with contextlib.suppress(AttributeError, OSError):
        region.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(region, dtype=dtype).reshape(shape)


@functools.cache
def _strict_overcommit() -> bool:
    """Whether the kernel charges every mapping in full (``vm.overcommit_memory = 2``): it
    then ignores ``MAP_NORESERVE``, and a reservation would take its whole size from the
    host's commit limit."""
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip() == "2"
    except OSError:
        return True


def committed_bytes(array: np.ndarray, n_rows: int) -> int:
    """Bytes of ``array``'s first ``n_rows`` rows rounded up to whole pages: what the process
    holds for them once written."""
    n = array[:n_rows].nbytes
    return -(-n // mmap.PAGESIZE) * mmap.PAGESIZE
