"""Bucketized cuckoo hash map, int64 key -> int32 row, Numba-jitted and batch-at-a-time.

Layout: one 64-byte cache line per bucket, 64-byte aligned: five int64 keys (words 0-4) and
their five int32 rows (int32 positions 10-14 of the same line), so a find that hits costs one
cache miss. ``keys`` is the int64 (n_buckets, 8) view and ``rows`` the int32 (n_buckets, 16)
view of the same memory. An empty slot holds ``EMPTY`` (-2**63, reserved: passing it as a key
is an error). Every key lives in one of
two buckets, chosen from the two 32-bit halves of one 64-bit mix of the key and mapped onto any
bucket count by multiply-shift, so the map can grow by 1.5x instead of doubling. A find reads at
most two buckets (2 x 64 bytes of keys). An insert that finds both buckets full moves a
resident key to its other bucket (a random walk of at most ``MAX_KICKS`` moves); a walk that
fails is undone step by step, so no key is ever lost, and the map grows and retries.

Rows are handed out densely from 0: an erased key's row goes on a free list and is reused
by the next insert, so rows index straight into an embedding matrix.

Memory: 12.8 bytes per slot. A batch that overflows a segment grows it once, by ``growth``
(1.4x) or to hold the batch's new keys at a load of 0.75, whichever is larger; inserts near
``max_load`` (0.9) displace more, so leaving room makes big batches cheaper. The load stays
in [0.64, 0.9]: 14.2 to 20 bytes per stored key (plus the free list).

Segments: past ``SEGMENT_KEYS`` keys the map is a directory of segments, each one such map,
that grow and split one at a time (``CuckooMap``), so no growth moves more than about
``SEGMENT_KEYS`` keys: the pause a growth puts on a table's lock is bounded at any size.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

SLOTS = 5
WORDS = 8  # int64 words per bucket: 5 keys, then 5 int32 rows + 4 spare bytes
_ROW0 = 10  # int32 index of slot 0's row within a bucket
_OVERFLOW = 15  # int32 index of the bucket's flag: 1 once a key of it was put in its other bucket
EMPTY = np.int64(-(2**63))
MAX_KICKS = 512
PREFETCH_AHEAD = 8  # keys ahead whose first bucket is prefetched: overlaps cache misses
_FIT_LOAD = 0.75  # a batch that overflows the map grows it to hold the batch at this load
SEGMENT_KEYS = 1 << 16  # a segment past this many keys splits instead of growing
MAX_DEPTH = 24  # at most 2**24 directory entries (64 MB); segments past it only grow
_DIR_SALT = np.int64(0x2545F4914F6CDD1D)  # the directory's hash: a second mix of key ^ salt

_OK = 0
_NEED_GROW = 1
_BAD_KEY = 2

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_LOW32 = np.uint64(0xFFFFFFFF)


@nb.njit(inline="always")
def _mix(key: np.int64) -> np.uint64:
    z = np.uint64(key) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@nb.njit(inline="always")
def _buckets(key: np.int64, n_buckets: np.uint64) -> tuple[np.int64, np.int64]:
    h = _mix(key)
    b1 = np.int64(((h & _LOW32) * n_buckets) >> np.uint64(32))
    b2 = np.int64(((h >> np.uint64(32)) * n_buckets) >> np.uint64(32))
    return b1, b2


@nb.njit(inline="always")
def _find_one(keys: np.ndarray, rows: np.ndarray, key: np.int64, n_buckets: np.uint64) -> np.int32:
    """Row of key or -1. Slots are compared with a mask select, not a branch: which slot
    matches is random, and a mispredicted branch costs more than the whole compare. The
    second bucket is read only if the first has ever overflowed into another bucket."""
    if key == EMPTY:
        return np.int32(-1)
    b1, b2 = _buckets(key, n_buckets)
    r = np.int32(-1)
    for s in range(SLOTS):
        hit = -np.int32(keys[b1, s] == key)
        r = (r & ~hit) | (rows[b1, _ROW0 + s] & hit)
    if r < 0 and rows[b1, _OVERFLOW] != 0:
        for s in range(SLOTS):
            hit = -np.int32(keys[b2, s] == key)
            r = (r & ~hit) | (rows[b2, _ROW0 + s] & hit)
    return r


@nb.njit(inline="always")
def _put(keys: np.ndarray, rows: np.ndarray, key: np.int64, row: np.int32, b: np.int64) -> bool:
    """Put key in an empty slot of bucket b, if it has one."""
    for s in range(SLOTS):
        if keys[b, s] == EMPTY:
            keys[b, s] = key
            rows[b, _ROW0 + s] = row
            return True
    return False


@nb.njit(cache=True, nogil=True)
def _kick(keys: np.ndarray, rows: np.ndarray, key: np.int64, row: np.int32, b: np.int64,
          rng: np.ndarray, path: np.ndarray) -> bool:
    """Random-walk displacement starting at full bucket b; undone entirely if it fails.

    Kept out of line: it runs for a few percent of inserts, and inlining it slows the rest.
    A key moved out of its first bucket marks that bucket as overflowed.
    """
    n_buckets = np.uint64(keys.shape[0])
    cur_k = key
    cur_r = row
    for kick in range(MAX_KICKS):
        x = rng[0]
        x ^= x << np.uint64(13)
        x ^= x >> np.uint64(7)
        x ^= x << np.uint64(17)
        rng[0] = x
        s = np.int64(x % np.uint64(SLOTS))
        path[kick, 0] = b
        path[kick, 1] = s
        tk = keys[b, s]
        tr = rows[b, _ROW0 + s]
        keys[b, s] = cur_k
        rows[b, _ROW0 + s] = cur_r
        cur_k = tk
        cur_r = tr
        c1, c2 = _buckets(cur_k, n_buckets)
        if c1 == b:
            rows[b, _OVERFLOW] = 1
            b = c2
        else:
            b = c1
        if _put(keys, rows, cur_k, cur_r, b):
            return True
    for kick in range(MAX_KICKS - 1, -1, -1):
        b = path[kick, 0]
        s = path[kick, 1]
        tk = keys[b, s]
        tr = rows[b, _ROW0 + s]
        keys[b, s] = cur_k
        rows[b, _ROW0 + s] = cur_r
        cur_k = tk
        cur_r = tr
    return False


@nb.njit(cache=True, nogil=True)
def _items(keys: np.ndarray, rows: np.ndarray, out_keys: np.ndarray, out_rows: np.ndarray) -> None:
    j = 0
    for b in range(keys.shape[0]):
        for s in range(SLOTS):
            if keys[b, s] != EMPTY:
                out_keys[j] = keys[b, s]
                out_rows[j] = rows[b, _ROW0 + s]
                j += 1


@nb.njit(inline="always")
def _segment_of(key: np.int64, directory: np.ndarray, shift: np.uint64) -> np.int64:
    """Segment of key: the directory entry at the top ``63 - shift`` bits of a second mix of
    the key (its own salt, so it says nothing about the key's buckets within a segment)."""
    d = _mix(key ^ _DIR_SALT)
    return np.int64(directory[np.int64((d >> np.uint64(1)) >> shift)])


@intrinsic
def _address_as(typingctx, address, like):
    """The int64 ``address`` as a pointer to ``like``'s dtype, for ``nb.carray``."""
    sig = types.CPointer(like.dtype)(address, like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return sig, codegen


@intrinsic
def _prefetch_address(typingctx, address):
    """Emit llvm.prefetch for the int64 ``address``: a hint, with no effect on results."""
    sig = types.void(address)

    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [builder.inttoptr(args[0], i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


_I64 = np.zeros(1, dtype=np.int64)
_I32 = np.zeros(1, dtype=np.int32)


@nb.njit(inline="always")
def _buckets_at(base: np.int64, n_buckets: np.int64):
    """The segment at address ``base`` -> its keys (n, WORDS) int64 and rows (n, 2 WORDS)
    int32 views."""
    keys = nb.carray(_address_as(base, _I64), (n_buckets, WORDS))
    rows = nb.carray(_address_as(base, _I32), (n_buckets, 2 * WORDS))
    return keys, rows


@nb.njit(inline="always")
def _segment(key: np.int64, directory: np.ndarray, shift: np.uint64, bases: np.ndarray,
             n_buckets: np.ndarray):
    """-> (key's segment index, its keys and rows views)."""
    s = _segment_of(key, directory, shift)
    keys, rows = _buckets_at(bases[s], n_buckets[s])
    return s, keys, rows


@nb.njit(inline="always")
def _prefetch_segmented(key: np.int64, directory: np.ndarray, shift: np.uint64,
                        bases: np.ndarray, n_buckets: np.ndarray) -> None:
    s = _segment_of(key, directory, shift)
    b1 = _buckets(key, np.uint64(n_buckets[s]))[0]
    _prefetch_address(bases[s] + b1 * (WORDS * 8))


@nb.njit(cache=True, nogil=True)
def _find_batch(bases: np.ndarray, n_buckets: np.ndarray, directory: np.ndarray,
                   shift: np.uint64, query: np.ndarray, out: np.ndarray) -> None:
    """out[i] = row of query[i] or -1; ``bases`` are the segments' addresses. The buckets of
    the keys ``PREFETCH_AHEAD`` on are prefetched, so cache misses overlap."""
    n = query.shape[0]
    for i in range(min(PREFETCH_AHEAD, n)):
        _prefetch_segmented(query[i], directory, shift, bases, n_buckets)
    for i in range(n):
        if i + PREFETCH_AHEAD < n:
            _prefetch_segmented(query[i + PREFETCH_AHEAD], directory, shift, bases, n_buckets)
        s, keys, rows = _segment(query[i], directory, shift, bases, n_buckets)
        out[i] = _find_one(keys, rows, query[i], np.uint64(n_buckets[s]))


@nb.njit(cache=True, nogil=True)
def _find_or_insert_batch(bases: np.ndarray, n_buckets: np.ndarray, sizes: np.ndarray,
                             limits: np.ndarray, directory: np.ndarray, shift: np.uint64,
                             counters: np.ndarray, free: np.ndarray, rng: np.ndarray,
                             query: np.ndarray, out: np.ndarray, inserted: np.ndarray,
                             start: np.int64) -> tuple[np.int64, np.int64, np.int64]:
    """Find or insert query[start:]: segment s takes keys while it holds fewer than
    limits[s]. Stops at the first key whose segment must grow -> (status, index reached,
    that segment or -1). counters = [size, next_fresh_row, n_free].

    Placement is spelled out here and in ``_split``: a shared helper, inlined or
    not, made Numba's code for this loop 2.4x slower."""
    path = np.empty((MAX_KICKS, 2), dtype=np.int64)
    fresh, n_free = counters[1], counters[2]
    n = query.shape[0]
    for i in range(start, min(start + PREFETCH_AHEAD, n)):
        _prefetch_segmented(query[i], directory, shift, bases, n_buckets)
    for i in range(start, n):
        if i + PREFETCH_AHEAD < n:
            _prefetch_segmented(query[i + PREFETCH_AHEAD], directory, shift, bases, n_buckets)
        key = query[i]
        s, keys, rows = _segment(key, directory, shift, bases, n_buckets)
        nbu = np.uint64(n_buckets[s])
        r = _find_one(keys, rows, key, nbu)
        if r >= 0:
            out[i] = r
            inserted[i] = False
            continue
        row = free[n_free - 1] if n_free > 0 else np.int32(fresh)
        b1, b2 = _buckets(key, nbu)
        placed = False
        if key != EMPTY and sizes[s] < limits[s]:
            placed = _put(keys, rows, key, row, b1)
            if not placed:
                rows[b1, _OVERFLOW] = 1
                placed = _put(keys, rows, key, row, b2) or _kick(keys, rows, key, row, b2, rng, path)
        if not placed:
            counters[1], counters[2] = fresh, n_free
            return np.int64(_BAD_KEY if key == EMPTY else _NEED_GROW), np.int64(i), s
        if n_free > 0:
            n_free -= 1
        else:
            fresh += 1
        sizes[s] += 1
        counters[0] += 1
        out[i] = row
        inserted[i] = True
    counters[1], counters[2] = fresh, n_free
    return np.int64(_OK), np.int64(n), np.int64(-1)


@nb.njit(cache=True, nogil=True)
def _erase_batch(bases: np.ndarray, n_buckets: np.ndarray, sizes: np.ndarray,
                    directory: np.ndarray, shift: np.uint64, counters: np.ndarray,
                    free: np.ndarray, query: np.ndarray, out: np.ndarray) -> None:
    """Erase each key present; out[i] is its freed row or -1. Freed rows go on the free
    list; each segment's key count follows."""
    for i in range(query.shape[0]):
        key = query[i]
        out[i] = -1
        if key == EMPTY:
            continue
        s, keys, rows = _segment(key, directory, shift, bases, n_buckets)
        b1, b2 = _buckets(key, np.uint64(n_buckets[s]))
        for b in (b1, b2):
            for j in range(SLOTS):
                if keys[b, j] == key:
                    out[i] = rows[b, _ROW0 + j]
                    free[counters[2]] = out[i]
                    counters[2] += 1
                    counters[0] -= 1
                    sizes[s] -= 1
                    keys[b, j] = EMPTY
                    break
            if out[i] >= 0:
                break


@nb.njit(cache=True, nogil=True)
def _split(old: np.ndarray, bases: np.ndarray, n_buckets: np.int64, depth: np.int64,
           bits: np.int64, rng: np.ndarray, counts: np.ndarray) -> bool:
    """Move old's keys into 2**bits empty segments of n_buckets each (at addresses ``bases``)
    by bits depth .. depth + bits - 1 (from the top) of their directory hash -> whether every
    key fit; counts[c] = keys put in segment c. With bits 0: a rehash into one new segment."""
    old_rows = old.view(np.int32)
    path = np.empty((MAX_KICKS, 2), dtype=np.int64)
    shift = np.uint64(64 - depth - bits)
    mask = np.uint64((1 << bits) - 1)
    n = np.uint64(n_buckets)
    for b in range(old.shape[0]):
        for s in range(SLOTS):
            key = old[b, s]
            if key != EMPTY:
                c = np.int64((_mix(key ^ _DIR_SALT) >> shift) & mask) if bits else 0
                keys, rows = _buckets_at(bases[c], n_buckets)
                row = old_rows[b, _ROW0 + s]
                b1, b2 = _buckets(key, n)
                if not _put(keys, rows, key, row, b1):
                    rows[b1, _OVERFLOW] = 1
                    if not (_put(keys, rows, key, row, b2)
                            or _kick(keys, rows, key, row, b2, rng, path)):
                        return False
                counts[c] += 1
    return True


class CuckooMap:
    """Collisionless int64 -> row map that grows with its keys and reuses erased rows.

    Every method takes and returns whole arrays; there is no per-key Python.

    **Segments bound the pause of growth.** The map is a directory of segments, each a cuckoo
    map of its own (extendible hashing: the top bits of a second hash of the key pick the
    directory entry). A segment that fills grows alone, by ``growth``, or, once growing would
    carry it past its split point (``segment_keys`` times 1 to 2, by segment, so that segments
    filling at one rate do not all split at once), splits by the next bits of that hash: in two,
    or, when a batch brings many new keys at once (a bulk load, a first growth of a map built
    large), straight into as many parts as leave each near ``segment_keys``, in one pass. So a
    growth rehashes at most about 2 x ``segment_keys`` keys (~50 ns a key: 3-6 ms at 65,536)
    once the map is past one segment, where one array would rehash every key (250 ms at 5M
    keys) while its table's lock is held. A map starts as one segment of ``capacity``, laid out
    as before segments existed. Cost: a key's segment is one more hash and two small array
    reads a lookup.

    Not thread-safe: callers serialize every call (the kernels reach segments by address, and
    a growth frees the segment it replaces).
    """

    def __init__(self, capacity: int = 1024, max_load: float = 0.9, growth: float = 1.4,
                 seed: int = 0x5EED, segment_keys: int = SEGMENT_KEYS) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if not 0.1 <= max_load <= 0.98:
            raise ValueError(f"max_load must be in [0.1, 0.98], got {max_load}")
        if growth <= 1.05:
            raise ValueError(f"growth must be > 1.05, got {growth}")
        if segment_keys < 2:
            raise ValueError(f"segment_keys must be >= 2, got {segment_keys}")
        self.max_load = float(max_load)
        self.growth = float(growth)
        self.segment_keys = int(segment_keys)
        self._rng = np.array([np.uint64(seed) | np.uint64(1)], dtype=np.uint64)
        # counters = [size, next_fresh_row, n_free]
        self._counters = np.zeros(3, dtype=np.int64)
        self._free = np.empty(0, dtype=np.int32)
        self._set_segments([_aligned(_buckets_for(capacity, max_load))], np.zeros(1, np.int64),
                           np.zeros(1, np.int64), np.zeros(1, np.int32), np.zeros(1, np.int64))
        self.largest_rehash = 0  # most keys moved by one growth so far (a pause's size)
        self.rehashed_keys = 0  # keys moved by every growth so far

    def _set_segments(self, segments: list[np.ndarray], sizes: np.ndarray, depth: np.ndarray,
                      directory: np.ndarray, prefix: np.ndarray) -> None:
        self._segments = segments  # holds every segment's memory: the kernels see addresses
        self._sizes = sizes  # keys per segment
        self._depth = depth  # per segment: how many top hash bits all its keys share
        self._prefix = prefix  # per segment: those bits
        self._directory = directory  # 2**global_depth entries -> segment
        self._shift = np.uint64(63 - (int(directory.shape[0]).bit_length() - 1))
        self._bases = np.array([k.ctypes.data for k in segments], dtype=np.int64)
        self._n_buckets = np.array([k.shape[0] for k in segments], dtype=np.int64)
        self._limits = np.array([int(self.max_load * (k.shape[0] * SLOTS)) for k in segments],
                                dtype=np.int64)  # keys a segment may take before it grows

    def _replace(self, s: int, segment: np.ndarray) -> None:
        self._segments[s] = segment
        self._bases[s] = segment.ctypes.data
        self._n_buckets[s] = segment.shape[0]
        self._limits[s] = int(self.max_load * (segment.shape[0] * SLOTS))

    @property
    def size(self) -> int:
        """Number of keys stored."""
        return int(self._counters[0])

    def __len__(self) -> int:
        return self.size

    @property
    def capacity(self) -> int:
        """Number of key slots (buckets x SLOTS, over every segment)."""
        return sum(k.shape[0] for k in self._segments) * SLOTS

    @property
    def segments(self) -> int:
        """Number of segments: each grows on its own."""
        return len(self._segments)

    @property
    def free_rows(self) -> int:
        """Erased rows waiting to be handed out again."""
        return int(self._counters[2])

    @property
    def row_bound(self) -> int:
        """Every row handed out so far is below this; size an embedding matrix to it."""
        return int(self._counters[1])

    @property
    def load_factor(self) -> float:
        return self.size / self.capacity

    @property
    def nbytes(self) -> int:
        """Bytes held by the map itself (keys, rows, free list, directory); embedding rows
        excluded."""
        return (sum(k.nbytes for k in self._segments) + self._free.nbytes
                + self._directory.nbytes + self._sizes.nbytes + self._depth.nbytes)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Rows of keys (n,) int64 -> int32 (n,), -1 where absent. Never inserts."""
        keys = _as_keys(keys)
        out = np.empty(keys.shape[0], dtype=np.int32)
        _find_batch(self._bases, self._n_buckets, self._directory, self._shift, keys, out)
        return out

    def find_or_insert(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows of keys (n,), inserting absent ones -> (rows int32 (n,), newly_inserted bool (n,)).

        A key repeated in the batch is inserted once; later copies report it as found. New
        keys get rows in the order they come.
        """
        keys = _as_keys(keys)
        n = keys.shape[0]
        out = np.empty(n, dtype=np.int32)
        inserted = np.empty(n, dtype=np.bool_)
        start = 0
        while True:
            status, start, s = _find_or_insert_batch(
                self._bases, self._n_buckets, self._sizes, self._limits, self._directory,
                self._shift, self._counters, self._free, self._rng, keys, out, inserted, start)
            if status == _OK:
                return out, inserted
            if status == _BAD_KEY:
                raise ValueError(
                    f"key {EMPTY} (-2**63) is reserved as the empty marker and cannot be"
                    f" stored; found at position {start}")
            # Segment s gets 2**-depth of the hash space: that share of the rest's new keys.
            new = self._estimate_new(keys[start:]) >> int(self._depth[s])
            self._grow(int(s), int(self._sizes[s]) + new + 1)

    def _estimate_new(self, keys: np.ndarray) -> int:
        """Estimate how many of keys are absent, from a strided sample of at most 4096."""
        sample = keys[:: max(1, keys.shape[0] // 4096)]
        absent = np.count_nonzero(self.find(sample) < 0) / sample.shape[0]
        return int(absent * keys.shape[0] * 1.02) + 1

    def erase(self, keys: np.ndarray) -> np.ndarray:
        """Erase keys (n,); returns the freed rows int32 (n,), -1 for keys that were absent."""
        keys = _as_keys(keys)
        if self._free.shape[0] < self._counters[2] + keys.shape[0]:
            free = np.empty(int(self._counters[2]) + keys.shape[0], dtype=np.int32)
            free[: self._counters[2]] = self._free[: self._counters[2]]
            self._free = free
        out = np.empty(keys.shape[0], dtype=np.int32)
        _erase_batch(self._bases, self._n_buckets, self._sizes, self._directory, self._shift,
                     self._counters, self._free, keys, out)
        return out

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """All (keys int64 (size,), rows int32 (size,)) in storage order (segment by segment)."""
        k = np.empty(self.size, dtype=np.int64)
        r = np.empty(self.size, dtype=np.int32)
        at = 0
        for seg, n in zip(self._segments, self._sizes):
            _items(seg, seg.view(np.int32), k[at: at + n], r[at: at + n])
            at += int(n)
        return k, r

    def reserve(self, n_keys: int) -> None:
        """Grow now so that ``n_keys`` keys fit without another rehash: exactly while they fit
        one segment; past ``segment_keys``, each segment is sized for its share of n_keys at
        a load of 0.75, and the rest up to ``max_load`` absorbs the uneven spread of keys
        over segments (a few standard deviations)."""
        if len(self._segments) == 1 and n_keys <= max(self.segment_keys, self.max_load
                                                      * self.capacity):
            if n_keys > self.max_load * self.capacity:
                self._grow(0, n_keys, self.max_load)
            return
        s = 0
        while s < len(self._segments):
            share = int(n_keys / 2.0 ** self._depth[s]) + 1
            too_big = share * self.growth > self._split_at(s) and self._depth[s] < MAX_DEPTH
            if too_big or share > int(self.max_load * (self._segments[s].shape[0] * SLOTS)):
                self._grow(s, share)
            else:
                s += 1

    def _grow(self, s: int, need: int, load: float = _FIT_LOAD) -> None:
        """Make segment s hold ``need`` keys: split it (``_split_segment``) when growth x need
        passes its split point (``_split_at``), else rehash it into max(room for need at
        ``load``, growth x its buckets) buckets, more if a key will not fit."""
        old = self._segments[s]
        # Split once growing would carry the segment past its split point: a segment holds at
        # most that many keys when it is rehashed, whichever way it grows.
        if need * self.growth > self._split_at(s) and self._depth[s] < MAX_DEPTH:
            self._split_segment(s, need)
            return
        load = min(load, self.max_load)
        target = max(_buckets_for(need, load), int(np.ceil(old.shape[0] * self.growth)))
        while True:
            new = _aligned(target)
            bases = np.array([new.ctypes.data], dtype=np.int64)
            if _split(old, bases, target, self._depth[s], 0, self._rng, np.zeros(1, np.int64)):
                break
            target = int(np.ceil(target * self.growth))
        self.largest_rehash = max(self.largest_rehash, int(self._sizes[s]))
        self.rehashed_keys += int(self._sizes[s])
        self._replace(s, new)

    def _split_at(self, s: int) -> int:
        """Keys past which segment s splits: ``segment_keys`` times 1 to 2, fixed by the
        segment's hash prefix. Keys spread evenly, so segments of one depth would otherwise
        fill, and split, within a few batches of each other: one batch would pay for many."""
        depth, prefix = int(self._depth[s]), int(self._prefix[s])
        u = ((prefix + 1) * 0x9E3779B97F4A7C15 + depth * 0xBF58476D1CE4E5B9) % 2**64 / 2**64
        return int(self.segment_keys * (1.0 + u))

    def _split_segment(self, s: int, need: int) -> None:
        """Split segment s by the next bits of the directory hash into 2**bits parts, bits
        the fewest that leave each part's share of ``need`` keys within 2 x
        ``segment_keys``; each part gets room for its share at a load of 0.75 (at most
        ``max_load``). One pass over s's keys; the map changes only once it is done."""
        depth = int(self._depth[s])
        bits = 1
        while need / 2 ** bits > 2 * self.segment_keys and depth + bits < MAX_DEPTH:
            bits += 1
        parts = 1 << bits
        n_buckets = _buckets_for(need // parts + 1, min(_FIT_LOAD, self.max_load))
        while True:
            children = [_aligned(n_buckets) for _ in range(parts)]
            counts = np.zeros(parts, dtype=np.int64)
            bases = np.array([c.ctypes.data for c in children], dtype=np.int64)
            if _split(self._segments[s], bases, n_buckets, depth, bits, self._rng, counts):
                break
            n_buckets = int(np.ceil(n_buckets * self.growth))
        self.largest_rehash = max(self.largest_rehash, int(self._sizes[s]))
        self.rehashed_keys += int(self._sizes[s])
        # The new directory, built aside: entries of s are one aligned run of its prefix.
        global_depth = int(self._directory.shape[0]).bit_length() - 1
        if depth + bits > global_depth:
            directory = np.repeat(self._directory, 1 << (depth + bits - global_depth))
            global_depth = depth + bits
        else:
            directory = self._directory.copy()
        run = 1 << (global_depth - depth)
        start = int(self._prefix[s]) * run
        n = len(self._segments)
        ids = np.array([s, *range(n, n + parts - 1)], dtype=np.int32)
        directory[start: start + run] = np.repeat(ids, run // parts)
        segments = self._segments[:]
        segments[s] = children[0]
        segments.extend(children[1:])
        sizes = np.concatenate([self._sizes, counts[1:]])
        sizes[s] = counts[0]
        depths = np.concatenate([self._depth, np.full(parts - 1, depth + bits)])
        depths[s] = depth + bits
        prefixes = (int(self._prefix[s]) << bits) + np.arange(parts, dtype=np.int64)
        prefix = np.concatenate([self._prefix, prefixes[1:]])
        prefix[s] = prefixes[0]
        bases = self._bases.copy()
        bases[s] = children[0].ctypes.data
        limit = int(self.max_load * (n_buckets * SLOTS))
        # Published together, after every array is built: an error above leaves the map as
        # it was. Only the new parts' addresses are computed (not every segment's).
        (self._segments, self._sizes, self._depth, self._prefix, self._directory,
         self._shift, self._bases, self._n_buckets, self._limits) = (
            segments, sizes, depths, prefix, directory,
            np.uint64(63 - global_depth), np.concatenate([bases, [c.ctypes.data for c in
                                                                   children[1:]]]),
            np.concatenate([self._n_buckets, np.full(parts - 1, n_buckets)]),
            np.concatenate([self._limits, np.full(parts - 1, limit)]))
        self._n_buckets[s], self._limits[s] = n_buckets, limit

    def state(self) -> dict[str, np.ndarray]:
        """Copies of the arrays that restore this map exactly with ``from_state``."""
        return {"buckets": np.concatenate(self._segments),
                "segment_buckets": np.array([k.shape[0] for k in self._segments], np.int64),
                "segment_sizes": self._sizes.copy(), "segment_depth": self._depth.copy(),
                "directory": self._directory.copy(),
                "counters": self._counters.copy(),
                "free": self._free[: self._counters[2]].copy(), "rng": self._rng.copy(),
                "params": np.array([self.max_load, self.growth, self.segment_keys])}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> "CuckooMap":
        """Inverse of ``state``; arrays are copied (they may be read-only). A state without
        segments (one array of buckets) restores as one segment. Every array is checked
        before use (a state may come from a file): a bad one raises ValueError."""
        try:
            return cls._from_state(state)
        except (KeyError, IndexError, TypeError, OverflowError) as err:
            raise ValueError(f"bad cuckoo map state: {err!r}") from None

    @classmethod
    def _from_state(cls, state: dict[str, np.ndarray]) -> "CuckooMap":
        def bad(why: str) -> ValueError:
            return ValueError(f"bad cuckoo map state: {why}")

        buckets = np.asarray(state["buckets"])
        if buckets.ndim != 2 or buckets.shape[1] != WORDS or buckets.dtype != np.int64:
            raise bad(f"buckets {buckets.dtype}{buckets.shape}")
        params = [float(x) for x in np.asarray(state["params"], dtype=np.float64).ravel()]
        if len(params) not in (2, 3):
            raise bad(f"{len(params)} params")
        max_load, growth = params[0], params[1]
        segment_keys = int(params[2]) if len(params) == 3 else SEGMENT_KEYS
        if not (0.1 <= max_load <= 0.98 and 1.05 < growth <= 16 and segment_keys >= 2):
            raise bad(f"params {params}")
        counters = np.array(state["counters"], dtype=np.int64).ravel()
        free = np.array(state["free"], dtype=np.int32).ravel()
        rng = np.array(state["rng"], dtype=np.uint64).ravel()
        if counters.shape != (3,) or rng.shape != (1,):
            raise bad(f"counters {counters.shape}, rng {rng.shape}")
        size, row_bound, n_free = (int(c) for c in counters)
        if not (0 <= size and 0 <= n_free == free.shape[0] and size + n_free == row_bound
                and row_bound <= 2**31 - 1):
            raise bad(f"counters {counters.tolist()} with {free.shape[0]} free rows")
        if "segment_buckets" in state:
            lengths = np.array(state["segment_buckets"], dtype=np.int64).ravel()
            sizes = np.array(state["segment_sizes"], dtype=np.int64).ravel()
            depth = np.array(state["segment_depth"], dtype=np.int64).ravel()
            directory = np.array(state["directory"], dtype=np.int32).ravel()
        else:
            lengths = np.array([buckets.shape[0]], dtype=np.int64)
            sizes, depth = np.array([size], np.int64), np.zeros(1, np.int64)
            directory = np.zeros(1, np.int32)
        n, entries = lengths.shape[0], directory.shape[0]
        global_depth = entries.bit_length() - 1
        if (n < 1 or sizes.shape != (n,) or depth.shape != (n,) or (lengths < 1).any()
                or lengths.sum() != buckets.shape[0] or entries < 1
                or entries & (entries - 1) or global_depth > MAX_DEPTH
                or directory.min() < 0 or directory.max() >= n
                or (depth < 0).any() or (depth > global_depth).any()):
            raise bad("segments and directory do not add up")
        # Each segment s owns one aligned run of 2**(D - depth[s]) entries: its prefix.
        owned = np.bincount(directory, minlength=n)
        first = np.full(n, -1, dtype=np.int64)
        first[directory[::-1]] = np.arange(entries - 1, -1, -1)
        runs = np.left_shift(1, global_depth - depth)
        if (owned != runs).any() or (first % runs).any():
            raise bad("a segment's directory entries are not one aligned run")
        run_of = np.repeat(np.arange(n), runs[np.argsort(first)].astype(np.int64))
        if not (directory == np.argsort(first)[run_of]).all():
            raise bad("a segment's directory entries are not one aligned run")
        keys = buckets[:, :SLOTS]
        rows = buckets.view(np.int32)[:, _ROW0: _ROW0 + SLOTS]
        live = keys != EMPTY
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        per_segment = np.add.reduceat(live.sum(axis=1), bounds[:-1])
        if (per_segment != sizes).any() or sizes.sum() != size:
            raise bad("segment sizes do not match the keys they hold")
        held = rows[live]
        if held.size and (held.min() < 0 or held.max() >= row_bound):
            raise bad(f"a row outside [0, {row_bound})")
        if free.size and (free.min() < 0 or free.max() >= row_bound):
            raise bad(f"a free row outside [0, {row_bound})")
        m = cls.__new__(cls)
        m.max_load, m.growth, m.segment_keys = max_load, growth, segment_keys
        segments = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            seg = _aligned(int(b - a))
            seg[:] = buckets[a:b]
            segments.append(seg)
        m._counters, m._free, m._rng = counters, free, rng
        m._set_segments(segments, sizes, depth, directory, first >> (global_depth - depth))
        m.largest_rehash = m.rehashed_keys = 0
        return m


def _aligned(n_buckets: int) -> np.ndarray:
    """Empty buckets (n_buckets, WORDS) int64, 64-byte aligned: one cache line a bucket."""
    if n_buckets >= 2**32:
        raise MemoryError(f"cuckoo map cannot hold {n_buckets} buckets")
    raw = np.empty(n_buckets * WORDS + WORDS, dtype=np.int64)
    skip = (-raw.ctypes.data % 64) // 8
    keys = raw[skip: skip + n_buckets * WORDS].reshape(n_buckets, WORDS)
    keys[:] = EMPTY
    keys.view(np.int32)[:, _OVERFLOW] = 0
    return keys


def _buckets_for(n_keys: int, max_load: float) -> int:
    """Fewest buckets whose key limit, int(max_load * capacity) as find_or_insert computes it,
    is at least n_keys: the ceil alone can land a rounding error short (0.7 * 90 < 63)."""
    n = max(1, int(np.ceil(n_keys / (max_load * SLOTS))))
    return n if int(max_load * (n * SLOTS)) >= n_keys else n + 1


def _as_keys(keys: np.ndarray) -> np.ndarray:
    a = np.asarray(keys)
    if a.ndim != 1:
        raise ValueError(f"keys must be a 1-D int64 array, got shape {a.shape}")
    if a.dtype != np.int64:
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"keys must be int64, got dtype {a.dtype}")
        if a.dtype == np.uint64 and a.size and a.max() > np.iinfo(np.int64).max:
            raise ValueError("uint64 keys above 2**63 - 1 do not fit int64 keys")
        a = a.astype(np.int64)
    return np.ascontiguousarray(a)
