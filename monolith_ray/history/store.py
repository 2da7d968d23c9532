"""The live store of one history slot: per user the last N (event time, value) entries.

Layout: users map to rows through a :class:`~monolith_ray.table.CuckooMap`; row r of
``times`` and ``values`` (both int64 (rows, N)) holds that user's entries sorted by event
time, oldest first, right-aligned, with ``EMPTY`` times where there are fewer than N.
Entries are kept in event-time order whatever order they arrive in (a late entry is merged
into place; one older than a full row's oldest is dropped).

Bounds (N = ``max_len``, U = ``max_users``):

- memory per user: 16 N bytes of entries, 16 bytes of bookkeeping (the newest time, the
  row's user) and ~17 bytes of map, so about 0.8 KB at N = 50; at most U users are held
  (rows grow by doubling up to U).
- users held: at most U. Adding a new user to a full store first drops the least recently
  active users by event time (their newest entry is the oldest), U/16 of them at once, so
  the O(U) selection (over the rows' newest times: 23 ms at 1M users, was 46 ms with a
  pass over the map) is paid once per U/16 new users: O(1) amortized per new user.
  ``evict_expired(now)`` drops users whose newest entry has expired.
- time per update: a batch of m entries touching k users costs O((kN + m) log(kN + m))
  (one sort of the touched rows and the new entries), O(N log N) for a single entry; a read
  of q users costs O(qN). No Python step per user or entry.

:meth:`values_before` is exact (the user's last N entries strictly before t) when no held
entry of the user is at or after t, as when serving reads at the current time; for an
earlier t it returns those held entries that are before t, which may be fewer than N
(building a table's columns replays event time instead: ``history.replay``).
"""

from __future__ import annotations

import io
import math

import numpy as np
import pyarrow as pa

from monolith_ray.table import CuckooMap

EMPTY = np.iinfo(np.int64).min  # the time of an empty entry
_NEVER = np.iinfo(np.int64).max  # a row eviction must not pick
_EVICT_FRACTION = 16
REBUILD_USERS = 1 << 16  # users added at a time by ``from_bytes``
_INT64 = np.dtype("<i8")


def _frame(view: memoryview, at: int, ndim: int) -> tuple[np.ndarray, int]:
    """The int64 ``.npy`` array of ``ndim`` dimensions at byte ``at`` of ``view``, read in
    place (no copy) -> (it, the offset after it). ValueError unless its header is a version
    1-3 header of a C-order int64 array whose bytes lie within ``view``."""
    source = io.BytesIO(view[at:at + 65536 + 16])  # a header is at most 65,535 bytes
    try:
        version = np.lib.format.read_magic(source)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(source)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(source)
        else:
            raise ValueError(f"npy version {version}")
    except (ValueError, EOFError, SyntaxError) as err:
        raise ValueError(f"frame at byte {at}: not an npy array header ({err})") from None
    if not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError(f"frame at byte {at}: shape {shape!r}")
    if dtype != _INT64 or fortran or len(shape) != ndim:
        raise ValueError(f"frame at byte {at}: {dtype} {shape}{' (Fortran)' if fortran else ''}"
                         f", not a C-order {ndim}-d int64 array")
    start = at + source.tell()
    count = math.prod(shape)  # exact: a hostile shape cannot wrap around
    if count < 0 or start + 8 * count > len(view):
        raise ValueError(f"frame at byte {at}: {shape} int64 does not fit in "
                         f"{len(view) - start} bytes")
    array = np.frombuffer(view, dtype=_INT64, count=count, offset=start).reshape(shape)
    return array, start + 8 * count


class HistoryStore:
    """Per user, the last ``max_len`` entries by event time, for at most ``max_users`` users;
    an entry older than ``expire_s`` (0 = never) at the reading time is never returned."""

    def __init__(self, max_len: int, max_users: int, expire_s: float = 0.0) -> None:
        if max_len < 1 or max_users < 1 or expire_s < 0:
            raise ValueError(f"need max_len >= 1, max_users >= 1, expire_s >= 0; got "
                             f"{max_len}, {max_users}, {expire_s}")
        self.max_len, self.max_users, self.expire_s = int(max_len), int(max_users), expire_s
        self._map = CuckooMap(capacity=min(max_users, 1024))
        self.times = np.full((0, max_len), EMPTY, dtype=np.int64)
        self.values = np.zeros((0, max_len), dtype=np.int64)
        self._newest = np.full(0, EMPTY, dtype=np.int64)  # newest entry time of each row
        self._row_users = np.zeros(0, dtype=np.int64)  # the user of each held row

    def __len__(self) -> int:
        return len(self._map)

    @property
    def nbytes(self) -> int:
        """Bytes held: entries, bookkeeping and the user map."""
        return (self.times.nbytes + self.values.nbytes + self._newest.nbytes
                + self._row_users.nbytes + self._map.nbytes)

    def add(self, users: np.ndarray, times: np.ndarray, values: np.ndarray) -> None:
        """Record entries: int64 (m,) users, event times (unix seconds) and values. A source
        with several values per action (genres) gives one entry per value, same user and
        time. Entries of one user at equal times keep their arrival order."""
        users, times, values = (np.atleast_1d(np.asarray(a, dtype=np.int64))
                                for a in (users, times, values))
        if not users.shape == times.shape == values.shape or users.ndim != 1:
            raise ValueError(f"users, times and values must be equal (m,) arrays, got "
                             f"{users.shape}, {times.shape}, {values.shape}")
        if users.size == 0:
            return
        if np.any(times == EMPTY):
            raise ValueError(f"time {EMPTY} is reserved for empty entries")
        rows = self._rows_for(users)
        touched, group = np.unique(rows, return_inverse=True)
        k, n = touched.size, self.max_len
        old_t, old_v = self.times[touched].ravel(), self.values[touched].ravel()
        keep = old_t != EMPTY
        all_group = np.concatenate([np.repeat(np.arange(k), n)[keep], group])
        all_t = np.concatenate([old_t[keep], times])
        all_v = np.concatenate([old_v[keep], values])
        order = np.lexsort((all_t, all_group))  # stable: held entries before new ones on ties
        all_group, all_t, all_v = all_group[order], all_t[order], all_v[order]
        ends = np.searchsorted(all_group, np.arange(k), side="right")
        from_end = ends[all_group] - 1 - np.arange(all_group.size)
        kept = from_end < n
        new_t = np.full((k, n), EMPTY, dtype=np.int64)
        new_v = np.zeros((k, n), dtype=np.int64)
        new_t[all_group[kept], n - 1 - from_end[kept]] = all_t[kept]
        new_v[all_group[kept], n - 1 - from_end[kept]] = all_v[kept]
        self.times[touched], self.values[touched] = new_t, new_v
        self._newest[touched] = new_t[:, -1]

    def values_before(self, users: np.ndarray, times: np.ndarray) -> pa.ListArray:
        """For each (user, t) of int64 (q,) arrays, the values of the user's held entries with
        event time strictly before t (and younger than ``expire_s`` at t), newest first:
        a list<int64> array of q lists of at most ``max_len`` values."""
        users, times = (np.atleast_1d(np.asarray(a, dtype=np.int64)) for a in (users, times))
        if users.shape != times.shape or users.ndim != 1:
            raise ValueError(f"users and times must be equal (q,) arrays, got {users.shape}, "
                             f"{times.shape}")
        rows = self._map.find(users)
        known = rows >= 0
        t = np.full((users.size, self.max_len), EMPTY, dtype=np.int64)
        v = np.zeros((users.size, self.max_len), dtype=np.int64)
        t[known], v[known] = self.times[rows[known]], self.values[rows[known]]
        live = (t != EMPTY) & (t < times[:, None])
        if self.expire_s:
            live &= t > times[:, None] - self.expire_s
        live, v = live[:, ::-1], v[:, ::-1]
        offsets = np.zeros(users.size + 1, dtype=np.int64)
        np.cumsum(live.sum(axis=1), out=offsets[1:])
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(v[live]))

    def evict_expired(self, now: float) -> int:
        """Drop the users whose newest entry is ``expire_s`` or more before ``now`` (none if
        ``expire_s`` is 0) -> how many were dropped."""
        if not self.expire_s or not len(self):
            return 0
        users, rows = self._map.items()
        stale = self._newest[rows] <= now - self.expire_s
        self._drop(users[stale], rows[stale])
        return int(stale.sum())

    def to_bytes(self) -> bytes:
        """The held entries as ``.npy`` frames (users (U,), times and values (U, N) int64; no
        pickle), for :meth:`from_bytes`. Peak: about 2.5 times the result while it is built
        (the gathered rows, then the frames)."""
        users, rows = self._map.items()
        out = io.BytesIO()
        for array in (users.astype(np.int64), self.times[rows], self.values[rows]):
            np.save(out, array, allow_pickle=False)
        return out.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes | memoryview, max_len: int, max_users: int,
                   expire_s: float = 0.0) -> HistoryStore:
        """A store holding the entries :meth:`to_bytes` wrote, the newest ``max_len`` of each
        user; past ``max_users`` users, those most recently active. ValueError if the frames
        are not three int64 arrays that fit together and within ``data`` (each frame's
        header is checked before anything is allocated for it). Rows written with this
        ``max_len``, in time order, are copied into place; others are added again
        ``REBUILD_USERS`` users at a time, so the peak beyond the store is one chunk's
        sort."""
        view = memoryview(data).cast("B")
        users, at = _frame(view, 0, 1)
        times, at = _frame(view, at, 2)
        values, at = _frame(view, at, 2)
        if at != len(view):
            raise ValueError(f"{len(view) - at} bytes after the three frames")
        if times.shape != values.shape or times.shape[0] != users.size:
            raise ValueError(f"snapshot shapes do not match: {users.shape}, {times.shape}, "
                             f"{values.shape}")
        store = cls(max_len, max_users, expire_s)
        if users.size > max_users:  # a smaller bound than the one written: the most active
            newest = times[:, -1] if times.shape[1] else np.zeros(users.size, np.int64)
            keep = np.sort(np.argpartition(newest, users.size - max_users)[-max_users:])
            users, times, values = users[keep], times[keep], values[keep]
        if (times.shape[1] == max_len and np.unique(users).size == users.size
                and bool(np.all(times[:, 1:] >= times[:, :-1]))
                and not np.any(times[:, -1] == EMPTY)):
            # rows as this store keeps them (distinct users, each row in time order, empty
            # entries first, at least one entry): copied into place, O(U·N)
            rows = store._rows_for(users)
            store.times[rows], store.values[rows] = times, values
            store._newest[rows] = times[:, -1]
            return store
        for start in range(0, users.size, REBUILD_USERS):
            part = slice(start, start + REBUILD_USERS)
            held = times[part] != EMPTY
            store.add(np.repeat(users[part], held.sum(axis=1)), times[part][held],
                      values[part][held])
        return store

    def _rows_for(self, users: np.ndarray) -> np.ndarray:
        """Rows of ``users``, inserting new ones (after making room for them)."""
        distinct = np.unique(users)
        if distinct.size > self.max_users:
            raise ValueError(f"{distinct.size} users in one batch, more than max_users "
                             f"{self.max_users}")
        new = distinct[self._map.find(distinct) < 0]
        room = self.max_users - len(self)
        if new.size > room:
            self._evict_least_active(max(new.size - room, self.max_users // _EVICT_FRACTION),
                                     keep=distinct)
        rows, _ = self._map.find_or_insert(users)
        bound = self._map.row_bound
        if bound > self.times.shape[0]:
            self._grow(max(bound, min(2 * self.times.shape[0], self.max_users)))
        rows = rows.astype(np.int64)
        self._row_users[rows] = users
        return rows

    def _evict_least_active(self, count: int, keep: np.ndarray) -> None:
        """Drop ``count`` users with the oldest newest entry, never one of ``keep``: one
        selection over the rows' newest times (O(rows), no pass over the map)."""
        bound = self._map.row_bound
        newest = self._newest[:bound].copy()
        kept = self._map.find(keep)
        newest[kept[kept >= 0]] = _NEVER
        newest[newest == EMPTY] = _NEVER  # free rows
        count = min(count, int(np.count_nonzero(newest != _NEVER)))
        if count:
            rows = np.argpartition(newest, count - 1)[:count].astype(np.int64)
            self._drop(self._row_users[rows], rows)

    def _drop(self, users: np.ndarray, rows: np.ndarray) -> None:
        self._map.erase(users)
        self.times[rows], self._newest[rows] = EMPTY, EMPTY

    def _grow(self, n_rows: int) -> None:
        extra = n_rows - self.times.shape[0]
        self.times = np.concatenate([self.times, np.full((extra, self.max_len), EMPTY)])
        self.values = np.concatenate([self.values, np.zeros((extra, self.max_len), np.int64)])
        self._newest = np.concatenate([self._newest, np.full(extra, EMPTY)])
        self._row_users = np.concatenate([self._row_users, np.zeros(extra, np.int64)])
