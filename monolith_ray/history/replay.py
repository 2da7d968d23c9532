"""History slot columns of a table of examples, built by replaying its event time.

For each example at time t of user u, a history slot's value is the source values of u's
examples that count for it (the positives by default) with event time strictly before t
(ties excluded: an action in the same second is not yet known), younger than ``expire_s``
at t, the newest ``max_len`` of them, newest first (entries of one user in the same second
in row order, then value order, before reversing) — what
:class:`~monolith_ray.history.live.UserHistory` returns at t when fed the same examples in
event-time order. The table may be in any order; each example's columns
come out in its own row. An entry's time is its example's ``time``: the action's own time for
MovieLens ratings; for the joiner's examples, the impression's (the action comes up to
``joiner.window_s`` later).

Vectorized, with no Python step per row: sort the entries (one per source value of a counted
example) by (user, time rank), then each example's window is two binary searches.
O((n + e) log(n + e)) for n examples and e entries; MovieLens-100K's 100,000 rows take
about 0.15 s per slot.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from monolith_ray.config.history import HistoryConfig, HistorySlot
from monolith_ray.schemas import LABEL, TIME


def entries(table: pa.Table, slot: HistorySlot, user_slot: str
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The history entries the examples of ``table`` make for ``slot``: one per value of its
    source column in an example whose label is within [``slot.min_label``,
    ``slot.max_label``] (the positives by default) and whose user is set -> int64 (e,)
    (rows, users, times, values), in row order and, within a row, in the source's order."""
    users = table.column(user_slot).combine_chunks()
    label = table.column(LABEL)
    counted = (pc.and_(pc.greater_equal(label, slot.min_label),
                        pc.less_equal(label, slot.max_label)).to_numpy()
                & users.is_valid().to_numpy(zero_copy_only=False))
    source = table.column(slot.source).combine_chunks()
    if pa.types.is_list(source.type):
        rows = pc.list_parent_indices(source).to_numpy().astype(np.int64)
        source = pc.list_flatten(source)
    else:
        rows = np.arange(len(source), dtype=np.int64)
    keep = counted[rows] & source.is_valid().to_numpy(zero_copy_only=False)
    rows = rows[keep]
    values = source.fill_null(0).to_numpy(zero_copy_only=False)[keep].astype(np.int64)
    user_ids = users.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    times = table.column(TIME).to_numpy().astype(np.int64)
    return rows, user_ids[rows], times[rows], values


def replay_slot(table: pa.Table, slot: HistorySlot, user_slot: str) -> pa.ListArray:
    """The column of history slot ``slot`` for every example of ``table``: list<int64>, one
    list of at most ``slot.max_len`` values per row (empty where the user has no history or
    is null)."""
    rows, _, _, values = entries(table, slot, user_slot)
    users = table.column(user_slot).combine_chunks()
    known = users.is_valid().to_numpy(zero_copy_only=False)
    _, user_code = np.unique(users.fill_null(0).to_numpy(zero_copy_only=False),
                             return_inverse=True)
    times = table.column(TIME).to_numpy().astype(np.int64)
    distinct_times, time_rank = np.unique(times, return_inverse=True)
    stride = np.int64(distinct_times.size + 1)
    key = user_code.astype(np.int64) * stride + time_rank
    order = np.argsort(key[rows], kind="stable")
    entry_keys, entry_values = key[rows][order], values[order]
    end = np.searchsorted(entry_keys, key, side="left")
    if slot.expire_s:
        first_live = np.searchsorted(distinct_times, times - slot.expire_s, side="right")
    else:
        first_live = np.zeros(times.size, dtype=np.int64)
    start = np.searchsorted(entry_keys, user_code * stride + first_live, side="left")
    start = np.maximum(start, end - slot.max_len)
    lengths = np.where(known, end - start, 0)
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    back = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
    picked = entry_values[np.repeat(end, lengths) - 1 - back]
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(picked, pa.int64()))


def with_history(table: pa.Table, config: HistoryConfig) -> pa.Table:
    """``table`` with a column per history slot of ``config`` built by :func:`replay_slot`
    (replacing any column of that name)."""
    for slot in config.slots:
        column = replay_slot(table, slot, config.user_slot)
        at = table.schema.get_field_index(slot.name)
        table = (table.set_column(at, slot.name, column) if at >= 0
                 else table.append_column(slot.name, column))
    return table
