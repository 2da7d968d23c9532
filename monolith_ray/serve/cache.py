"""RowCache: a replica's bounded cache of hot embedding rows, kept fresh by sync updates.

With the rows on serving shards, a replica keeps only the rows its traffic reuses: ``lookup``
answers from the cache and reports which ids missed, the caller fetches those from the shards
and hands them to ``fill``, and ``apply`` keeps cached rows at the sync's version (an update
rewrites the ids it changes that are cached, never inserts others, and drops evicted ids).

Design:

- **One bound shared by every slot**, ``capacity_rows`` rows in all. Traffic decides how the
  rows split between slots (a ``/recommend`` request brings one user id and a hundred or more
  item ids; a genre slot has a few dozen ids in all), so no per-slot share has to be
  configured or goes unused. Rows sit in one ``(capacity_rows, max D+1)`` matrix in ``dtype``
  (slots of equal width, the usual case, waste nothing).
- **Index**: one :class:`CuckooMap` from fid to entry. A slot's ids are its feature ids (the
  slot id in their high bits, :mod:`monolith_ray.features`), so one map keyed by fid is exact
  across slots; ``lookup``/``fill``/``apply`` refuse ids outside their slot. The map hands out
  rows densely and reuses erased ones, and never holds more than ``capacity_rows`` keys, so its
  rows are the entries themselves and stay below the bound.
- **Policies**: ``"lru"``, least recently used out first: a doubly linked list over the
  entries (int32 links), O(1) per id. ``"tinylfu"``, W-TinyLFU (Einziger, Friedman & Manes
  2017, as in Caffeine but with a fixed window and a plain LRU main list): new rows enter a
  window LRU of 1% of the rows; the window's oldest then competes for the main LRU list with
  that list's oldest, and the one a frequency sketch has seen more often stays. The sketch
  is a count-min sketch (4 rows of 2**ceil(log2 capacity) counters, uint8 saturating at 15,
  conservative update: 4 to 8 bytes per row) counting every looked-up id, halved after 4
  counts per counter of a row so that old popularity fades. A burst of one-off ids passes
  through the window and cannot flush the rows asked for again and again; an id that turns
  hot earns its place within a few halvings.
- **Memory**: every array is allocated at construction for ``capacity_rows`` and never grows;
  ``nbytes`` is what is allocated: rows, entry keys, the LRU links and list flags, the map (16
  bytes a row at its 0.8 maximum load, its free list allocated up front) and the sketch.
  float16 rows of dim 16: about 70 bytes a row for lru, 76 for tinylfu.
- **Cost**: per id, a lookup is one map find (a cache line), a gather of one row and an LRU
  relink (plus four sketch counters for tinylfu); a fill adds a map insert. No Python runs per
  id: each call is a fixed number of NumPy operations and Numba loops over the batch
  (``python -m benchmarks.cache_policy`` measures µs per id at 200k and 1M rows).

Threads: every method, ``lookup`` included, mutates shared state (the LRU order, the sketch,
the counters). The caller must hold one lock around each call (the replica's lock around
scoring and apply). A lookup and the ``fill`` of its misses need not share one hold (the
shard fetch between them should not run under the lock), provided ``fill`` is told the sync
version the shards answered at: an ``apply`` in between skips the ids not yet cached, so rows
read before it are not cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numba as nb
import numpy as np

from monolith_ray.config import SlotConfig
from monolith_ray.features import VALUE_BITS
from monolith_ray.serve.store import SparseUpdate
from monolith_ray.table import CuckooMap

Policy = Literal["lru", "tinylfu"]
POLICIES: tuple[str, ...] = ("lru", "tinylfu")

_MAP_LOAD = 0.8  # the index is sized so capacity_rows keys fill it to this load: it never grows
_MAP_MIN = 256  # keys the index is sized for at least: a tiny map can fail to place a key
_SKETCH_DEPTH = 4
_COUNT_MAX = 15  # counters saturate here, as 4-bit ones: a once-hot id fades in a few halvings
_SKETCH_MIN_BITS = 10  # a sketch row has 2**bits counters, one or two per cached row
_WINDOW = 0.01  # W-TinyLFU's window: this share of the rows, admitted without a test
_AGE_EVERY = 4  # the sketch is halved after this many counts per counter of a sketch row
_HASH = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                  0xD6E8FEB86659FD93], dtype=np.uint64)


@nb.njit(inline="always")
def _unlink(prev: np.ndarray, nxt: np.ndarray, e: np.int64) -> None:
    p, n = prev[e], nxt[e]
    nxt[p] = n
    prev[n] = p
    prev[e] = -1
    nxt[e] = -1


@nb.njit(inline="always")
def _push(prev: np.ndarray, nxt: np.ndarray, e: np.int64, head: np.int64) -> None:
    first = nxt[head]
    nxt[e] = first
    prev[e] = head
    prev[first] = e
    nxt[head] = e


@nb.njit(cache=True, nogil=True)
def _touch(prev: np.ndarray, nxt: np.ndarray, main: np.ndarray, entries: np.ndarray) -> None:
    """Move each entry >= 0 to the most recent end of its list (linking it if it is in
    none). Two lists share the links: the window's head is the sentinel ``C`` and the main
    one's ``C + 1`` (``C`` entries); nxt[head] is a list's newest entry, prev[head] its
    oldest. ``main[e]`` says which list entry e is in."""
    window = main.shape[0]
    for i in range(entries.shape[0]):
        e = entries[i]
        if e >= 0:
            if prev[e] >= 0:
                _unlink(prev, nxt, e)
            _push(prev, nxt, e, window + main[e])


@nb.njit(cache=True, nogil=True)
def _drop(prev: np.ndarray, nxt: np.ndarray, main: np.ndarray, in_window: np.ndarray,
          entries: np.ndarray) -> None:
    """Unlink each entry >= 0 (erased from the index)."""
    for i in range(entries.shape[0]):
        e = entries[i]
        if e >= 0:
            _unlink(prev, nxt, e)
            in_window[0] -= 1 - main[e]


@nb.njit(inline="always")
def _cell(key: np.int64, d: int, shift: np.uint64) -> np.int64:
    return np.int64((np.uint64(key) * _HASH[d]) >> shift)


@nb.njit(inline="always")
def _estimate(sketch: np.ndarray, key: np.int64, shift: np.uint64) -> np.int64:
    low = np.int64(_COUNT_MAX)
    for d in range(_SKETCH_DEPTH):
        low = min(low, np.int64(sketch[d, _cell(key, d, shift)]))
    return low


@nb.njit(cache=True, nogil=True)
def _count(sketch: np.ndarray, shift: np.uint64, counted: np.ndarray, keys: np.ndarray,
           age_at: np.int64) -> None:
    """Count one use of each key (conservative update: only an id's smallest counters rise);
    halve every counter once ``age_at`` uses have been counted since the last halving. The
    sketch is uint8 (depth, 2**(64 - shift))."""
    for i in range(keys.shape[0]):
        low = _estimate(sketch, keys[i], shift)
        if low < _COUNT_MAX:
            for d in range(_SKETCH_DEPTH):
                c = _cell(keys[i], d, shift)
                if sketch[d, c] == low:
                    sketch[d, c] = low + 1
        counted[0] += 1
        if counted[0] >= age_at:
            for d in range(_SKETCH_DEPTH):
                for c in range(sketch.shape[1]):
                    sketch[d, c] >>= 1
            counted[0] = 0


@nb.njit(cache=True, nogil=True)
def _admit(prev: np.ndarray, nxt: np.ndarray, main: np.ndarray, in_window: np.ndarray,
           window_cap: np.int64, entry_key: np.ndarray, sketch: np.ndarray, shift: np.uint64,
           keys: np.ndarray, free: np.int64, admitted: np.ndarray,
           victims: np.ndarray) -> np.int64:
    """Decide which of ``keys`` (absent, distinct) enter the window; victims are unlinked and
    their keys written to ``victims`` -> victim count. While there is room every key enters,
    and the window's oldest moves to the main list past ``window_cap``. Then, without a
    sketch (LRU), each key takes the window's oldest entry. With one (W-TinyLFU), the
    window's oldest (or, if the window is empty, the key itself) is a candidate for the main
    list against the main list's oldest: the one the sketch has seen more often stays (a tie
    keeps the resident). Keys of this call are linked only after it, so they never evict
    each other: one with no window entry to displace and no main victim is refused."""
    window, main_head = main.shape[0], main.shape[0] + 1
    lfu = sketch.shape[1] > 0
    n_victims = 0
    for i in range(keys.shape[0]):
        admitted[i] = True
        oldest = prev[window]
        if free > 0:
            free -= 1
            in_window[0] += 1
            if in_window[0] > window_cap and oldest != window:
                _unlink(prev, nxt, oldest)
                main[oldest] = 1
                _push(prev, nxt, oldest, main_head)
                in_window[0] -= 1
            continue
        victim = prev[main_head]
        if oldest == window:
            if (victim == main_head or not lfu
                    or _estimate(sketch, keys[i], shift)
                    <= _estimate(sketch, entry_key[victim], shift)):
                admitted[i] = False
                continue
            _unlink(prev, nxt, victim)
            in_window[0] += 1
        elif (lfu and victim != main_head and _estimate(sketch, entry_key[oldest], shift)
              > _estimate(sketch, entry_key[victim], shift)):
            _unlink(prev, nxt, victim)
            _unlink(prev, nxt, oldest)
            main[oldest] = 1
            _push(prev, nxt, oldest, main_head)
        else:
            victim = oldest
            _unlink(prev, nxt, victim)
        victims[n_victims] = entry_key[victim]
        n_victims += 1
    return n_victims


class RowCache:
    """Per replica, at most ``capacity_rows`` rows ``(D+1,)`` of ``slots`` in ``dtype``,
    looked up by feature id; ``policy`` picks what leaves when it is full."""

    def __init__(self, slots: Sequence[SlotConfig], capacity_rows: int,
                 dtype: str = "float16", policy: Policy = "tinylfu") -> None:
        if capacity_rows < 1:
            raise ValueError(f"capacity_rows must be >= 1, got {capacity_rows}")
        if dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if len({s.slot_id for s in slots}) != len(slots):
            raise ValueError("slots must have distinct slot ids (the index is keyed by fid)")
        self.capacity = int(capacity_rows)
        self.dtype = np.dtype(dtype)
        self.policy = policy
        self.widths = {s.name: s.dim + 1 for s in slots}
        self.version = 0
        self._slot_ids = {s.name: s.slot_id for s in slots}
        self._rows = np.zeros((self.capacity, max(self.widths.values())), dtype=self.dtype)
        self._keys = np.zeros(self.capacity, dtype=np.int64)
        self._prev = np.empty(self.capacity + 2, dtype=np.int32)
        self._next = np.empty(self.capacity + 2, dtype=np.int32)
        self._main = np.zeros(self.capacity, dtype=np.int8)
        self._in_window = np.zeros(1, dtype=np.int64)
        self._window_cap = (max(1, int(_WINDOW * self.capacity)) if policy == "tinylfu"
                            else self.capacity)
        bits = (max(_SKETCH_MIN_BITS, int(np.ceil(np.log2(self.capacity))))
                if policy == "tinylfu" else 0)
        self._sketch = np.zeros((_SKETCH_DEPTH if bits else 0, (1 << bits) if bits else 0),
                                dtype=np.uint8)
        self._shift = np.uint64(64 - bits)
        self._counted = np.zeros(1, dtype=np.int64)
        self.hits = self.misses = self.evictions = self.rejected = self.dropped = 0
        self.stale = 0
        self.clear()

    def clear(self) -> None:
        """Drop every row (the version, sketch and counters are kept)."""
        self._index = CuckooMap(capacity=max(self.capacity, _MAP_MIN), max_load=_MAP_LOAD)
        # Every entry handed out once and erased: the map's free list is allocated now at its
        # full size, not grown later by erasures (which only ever erase held keys).
        placeholders = np.arange(self.capacity, dtype=np.int64)
        self._index.find_or_insert(placeholders)
        self._index.erase(placeholders)
        self._prev[:] = -1
        self._next[:] = -1
        for head in (self.capacity, self.capacity + 1):
            self._prev[head] = self._next[head] = head
        self._in_window[0] = 0

    def __len__(self) -> int:
        return self._index.size

    @property
    def nbytes(self) -> int:
        """Bytes allocated: rows, entry keys, LRU links, index and sketch."""
        return (self._rows.nbytes + self._keys.nbytes + self._prev.nbytes + self._next.nbytes
                + self._main.nbytes + self._index.nbytes + self._sketch.nbytes)

    def lookup(self, slot: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cached rows of ``slot``'s fids int64 (n,) -> (float32 (n, D+1), hit bool (n,));
        a missed id's row reads zeros. Hits become the most recently used."""
        keys = self._keys_of(slot, ids)
        at = self._index.find(keys)
        hit = at >= 0
        out = np.zeros((keys.shape[0], self.widths[slot]), dtype=np.float32)
        out[hit] = self._rows[at[hit], :self.widths[slot]]
        _touch(self._prev, self._next, self._main, at)
        if self._sketch.size:
            _count(self._sketch, self._shift, self._counted, keys,
                   _AGE_EVERY * self._sketch.shape[1])
        n_hits = int(np.count_nonzero(hit))
        self.hits += n_hits
        self.misses += keys.shape[0] - n_hits
        return out, hit

    def fill(self, slot: str, ids: np.ndarray, rows: np.ndarray,
             version: int | None = None) -> int:
        """Cache fetched rows (k, D+1) of ``slot``'s fids (k,): cached ids are rewritten, the
        policy decides which others enter and what they evict -> ids newly cached. Ids of one
        fill do not evict each other: past the free room and the rows held before it, the
        rest are not cached. ``version``: the sync version the rows were read at; rows read
        before the cache's ``version`` are not cached at all (an update applied since may
        have changed them, and it passed over ids the cache did not hold)."""
        keys = self._keys_of(slot, ids)
        rows = self._rows_of(slot, keys, rows)
        if version is not None and version < self.version:
            self.stale += keys.shape[0]
            return 0
        at = self._index.find(keys)
        held = at >= 0
        self._rows[at[held], :self.widths[slot]] = rows[held]
        _touch(self._prev, self._next, self._main, at)
        new, first = np.unique(keys[~held], return_index=True)
        order = np.argsort(first)  # the fill's own order: its last id is the most recent
        new, first = new[order], first[order]
        admitted = np.empty(new.shape[0], dtype=np.bool_)
        victims = np.empty(new.shape[0], dtype=np.int64)
        n_victims = _admit(self._prev, self._next, self._main, self._in_window,
                           self._window_cap, self._keys, self._sketch, self._shift, new,
                           self.capacity - len(self), admitted, victims)
        self._index.erase(victims[:n_victims])
        entries, _ = self._index.find_or_insert(new[admitted])
        self._rows[entries, :self.widths[slot]] = rows[~held][first[admitted]]
        self._keys[entries] = new[admitted]
        self._main[entries] = 0
        _touch(self._prev, self._next, self._main, entries)
        self.evictions += int(n_victims)
        self.rejected += int(new.shape[0] - entries.shape[0])
        return int(entries.shape[0])

    def apply(self, update: SparseUpdate) -> None:
        """Follow a sync update: ``reset`` clears the cache, evicted ids drop, changed ids
        that are cached take their new row (others are not cached); take its version."""
        if update.reset:
            self.clear()
        for slot, gone in update.evicted.items():
            keys = self._keys_of(slot, gone)
            held = np.unique(keys[self._index.find(keys) >= 0])
            _drop(self._prev, self._next, self._main, self._in_window, self._index.erase(held))
            self.dropped += int(held.shape[0])
        for slot, ids in update.ids.items():
            keys = self._keys_of(slot, ids)
            rows = self._rows_of(slot, keys, update.rows[slot])
            at = self._index.find(keys)
            held = at >= 0
            self._rows[at[held], :self.widths[slot]] = rows[held]
        self.version = update.version

    def stats(self) -> dict[str, float | int | str]:
        """Rows and bytes held, the bound, and counts since construction: ``hits`` and
        ``misses`` of lookups, ``evictions`` by the policy, ids of fills ``rejected`` (by
        tinylfu's admission, or past what one fill can place) or ``stale`` (read before the
        cache's version), ``dropped`` by sync evictions."""
        asked = self.hits + self.misses
        return {"rows": len(self), "bytes": self.nbytes, "capacity": self.capacity,
                "policy": self.policy, "version": self.version, "hits": self.hits,
                "misses": self.misses, "hit_rate": self.hits / asked if asked else 0.0,
                "evictions": self.evictions, "rejected": self.rejected, "stale": self.stale,
                "dropped": self.dropped}

    def _keys_of(self, slot: str, ids: np.ndarray) -> np.ndarray:
        try:
            slot_id = self._slot_ids[slot]
        except KeyError:
            raise KeyError(f"no slot {slot!r} in the row cache; slots: "
                           f"{', '.join(self._slot_ids)}") from None
        keys = np.ascontiguousarray(ids, dtype=np.int64)
        if keys.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {keys.shape}")
        if keys.size and np.any((keys >> VALUE_BITS) != slot_id):
            raise ValueError(f"slot {slot!r}: ids must be its fids (slot id {slot_id} in the "
                             f"high bits, features.make_fids)")
        return keys

    def _rows_of(self, slot: str, keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if rows.shape != (keys.shape[0], self.widths[slot]):
            raise ValueError(f"slot {slot!r}: rows of shape {rows.shape} for {keys.shape[0]} "
                             f"ids of width {self.widths[slot]}")
        return rows.astype(self.dtype, copy=False)
