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

Memory: 12.8 bytes per slot. A batch that overflows the map grows it once, by ``growth``
(1.4x) or to hold the batch's new keys at a load of 0.75, whichever is larger; inserts near
``max_load`` (0.9) displace more, so leaving room makes big batches cheaper. The load stays
in [0.64, 0.9]: 14.2 to 20 bytes per stored key (plus the free list).
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


@intrinsic
def _prefetch_bucket(typingctx, table, bucket):
    """Emit llvm.prefetch for table[bucket, 0]: a hint, with no effect on results."""
    sig = types.void(table, bucket)

    def codegen(context, builder, signature, args):
        ty = signature.args[0]
        ary = context.make_array(ty)(context, builder, args[0])
        zero = context.get_constant(types.intp, 0)
        ptr = cgutils.get_item_pointer(context, builder, ty, ary, [args[1], zero])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


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


@nb.njit(cache=True, nogil=True)
def _find_batch(keys: np.ndarray, rows: np.ndarray, query: np.ndarray, out: np.ndarray) -> None:
    n_buckets = np.uint64(keys.shape[0])
    n = query.shape[0]
    for i in range(min(PREFETCH_AHEAD, n)):
        _prefetch_bucket(keys, _buckets(query[i], n_buckets)[0])
    for i in range(n):
        if i + PREFETCH_AHEAD < n:
            _prefetch_bucket(keys, _buckets(query[i + PREFETCH_AHEAD], n_buckets)[0])
        out[i] = _find_one(keys, rows, query[i], n_buckets)


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
def _find_or_insert_batch(keys: np.ndarray, rows: np.ndarray, counters: np.ndarray,
                          free: np.ndarray, rng: np.ndarray, query: np.ndarray, out: np.ndarray,
                          inserted: np.ndarray, start: np.int64,
                          max_size: np.int64) -> tuple[np.int64, np.int64]:
    """Find or insert query[start:]; stops early at the first key that needs a bigger map.

    counters = [size, next_fresh_row, n_free], kept in locals while running (an array
    that may alias the map would be reloaded every iteration). Returns (status, index reached).
    """
    n_buckets = np.uint64(keys.shape[0])
    path = np.empty((MAX_KICKS, 2), dtype=np.int64)
    size, fresh, n_free = counters[0], counters[1], counters[2]
    n = query.shape[0]
    for i in range(start, min(start + PREFETCH_AHEAD, n)):
        _prefetch_bucket(keys, _buckets(query[i], n_buckets)[0])
    for i in range(start, n):
        if i + PREFETCH_AHEAD < n:
            _prefetch_bucket(keys, _buckets(query[i + PREFETCH_AHEAD], n_buckets)[0])
        key = query[i]
        r = _find_one(keys, rows, key, n_buckets)
        if r >= 0:
            out[i] = r
            inserted[i] = False
            continue
        row = free[n_free - 1] if n_free > 0 else np.int32(fresh)
        b1, b2 = _buckets(key, n_buckets)
        placed = False
        if key != EMPTY and size < max_size:
            # Placement is spelled out here and in _rehash: a shared helper, inlined or not,
            # made Numba's code for this loop 2.4x slower.
            placed = _put(keys, rows, key, row, b1)
            if not placed:
                rows[b1, _OVERFLOW] = 1
                placed = _put(keys, rows, key, row, b2) or _kick(keys, rows, key, row, b2, rng, path)
        if not placed:
            counters[0], counters[1], counters[2] = size, fresh, n_free
            return (_BAD_KEY if key == EMPTY else _NEED_GROW), i
        if n_free > 0:
            n_free -= 1
        else:
            fresh += 1
        size += 1
        out[i] = row
        inserted[i] = True
    counters[0], counters[1], counters[2] = size, fresh, n_free
    return _OK, query.shape[0]


@nb.njit(cache=True, nogil=True)
def _erase_batch(keys: np.ndarray, rows: np.ndarray, counters: np.ndarray, free: np.ndarray,
                 query: np.ndarray, out: np.ndarray) -> None:
    """Erase each key present; out[i] is its freed row or -1. Freed rows go on the free list."""
    n_buckets = np.uint64(keys.shape[0])
    for i in range(query.shape[0]):
        key = query[i]
        out[i] = -1
        b1, b2 = _buckets(key, n_buckets)
        for b in (b1, b2):
            for s in range(SLOTS):
                if keys[b, s] == key and key != EMPTY:
                    out[i] = rows[b, _ROW0 + s]
                    free[counters[2]] = rows[b, _ROW0 + s]
                    counters[2] += 1
                    counters[0] -= 1
                    keys[b, s] = EMPTY
                    break
            if out[i] >= 0:
                break


@nb.njit(cache=True, nogil=True)
def _rehash(old_keys: np.ndarray, old_rows: np.ndarray, keys: np.ndarray, rows: np.ndarray,
            rng: np.ndarray) -> bool:
    """Move every key of the old arrays into the (empty) new ones; False if one will not fit."""
    n_buckets = np.uint64(keys.shape[0])
    path = np.empty((MAX_KICKS, 2), dtype=np.int64)
    for b in range(old_keys.shape[0]):
        for s in range(SLOTS):
            key = old_keys[b, s]
            if key != EMPTY:
                row = old_rows[b, _ROW0 + s]
                b1, b2 = _buckets(key, n_buckets)
                if not _put(keys, rows, key, row, b1):
                    rows[b1, _OVERFLOW] = 1
                    if not (_put(keys, rows, key, row, b2)
                            or _kick(keys, rows, key, row, b2, rng, path)):
                        return False
    return True


@nb.njit(cache=True, nogil=True)
def _items(keys: np.ndarray, rows: np.ndarray, out_keys: np.ndarray, out_rows: np.ndarray) -> None:
    j = 0
    for b in range(keys.shape[0]):
        for s in range(SLOTS):
            if keys[b, s] != EMPTY:
                out_keys[j] = keys[b, s]
                out_rows[j] = rows[b, _ROW0 + s]
                j += 1


class CuckooMap:
    """Collisionless int64 -> row map that grows with its keys and reuses erased rows.

    Every method takes and returns whole arrays; there is no per-key Python.
    """

    def __init__(self, capacity: int = 1024, max_load: float = 0.9, growth: float = 1.4,
                 seed: int = 0x5EED) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if not 0.1 <= max_load <= 0.98:
            raise ValueError(f"max_load must be in [0.1, 0.98], got {max_load}")
        if growth <= 1.05:
            raise ValueError(f"growth must be > 1.05, got {growth}")
        self.max_load = float(max_load)
        self.growth = float(growth)
        self._rng = np.array([np.uint64(seed) | np.uint64(1)], dtype=np.uint64)
        # counters = [size, next_fresh_row, n_free]
        self._counters = np.zeros(3, dtype=np.int64)
        self._free = np.empty(0, dtype=np.int32)
        self._allocate(_buckets_for(capacity, max_load))

    def _allocate(self, n_buckets: int) -> None:
        if n_buckets >= 2**32:
            raise MemoryError(f"cuckoo map cannot hold {n_buckets} buckets")
        raw = np.empty(n_buckets * WORDS + WORDS, dtype=np.int64)
        skip = (-raw.ctypes.data % 64) // 8
        self._keys = raw[skip: skip + n_buckets * WORDS].reshape(n_buckets, WORDS)
        self._keys[:] = EMPTY
        self._rows = self._keys.view(np.int32)
        self._rows[:, _OVERFLOW] = 0

    @property
    def size(self) -> int:
        """Number of keys stored."""
        return int(self._counters[0])

    def __len__(self) -> int:
        return self.size

    @property
    def capacity(self) -> int:
        """Number of key slots (buckets x SLOTS)."""
        return self._keys.shape[0] * SLOTS

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
        """Bytes held by the map itself (keys, rows, free list); embedding rows excluded."""
        return self._keys.nbytes + self._free.nbytes

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Rows of keys (n,) int64 -> int32 (n,), -1 where absent. Never inserts."""
        keys = _as_keys(keys)
        out = np.empty(keys.shape[0], dtype=np.int32)
        _find_batch(self._keys, self._rows, keys, out)
        return out

    def find_or_insert(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows of keys (n,), inserting absent ones -> (rows int32 (n,), newly_inserted bool (n,)).

        A key repeated in the batch is inserted once; later copies report it as found.
        """
        keys = _as_keys(keys)
        n = keys.shape[0]
        out = np.empty(n, dtype=np.int32)
        inserted = np.empty(n, dtype=np.bool_)
        start = 0
        while True:
            max_size = int(self.max_load * self.capacity)
            status, start = _find_or_insert_batch(
                self._keys, self._rows, self._counters, self._free, self._rng, keys, out,
                inserted, start, max_size)
            if status == _OK:
                return out, inserted
            if status == _BAD_KEY:
                raise ValueError(
                    f"key {EMPTY} (-2**63) is reserved as the empty marker and cannot be stored;"
                    f" found at position {start}")
            self._grow(_buckets_for(self.size + self._estimate_new(keys[start:]), _FIT_LOAD))

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
        _erase_batch(self._keys, self._rows, self._counters, self._free, keys, out)
        return out

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """All (keys int64 (size,), rows int32 (size,)) in storage order."""
        k = np.empty(self.size, dtype=np.int64)
        r = np.empty(self.size, dtype=np.int32)
        _items(self._keys, self._rows, k, r)
        return k, r

    def reserve(self, n_keys: int) -> None:
        """Grow now so that ``n_keys`` keys fit without another rehash."""
        if n_keys > self.max_load * self.capacity:
            self._grow(_buckets_for(n_keys, self.max_load))

    def _grow(self, n_buckets: int) -> None:
        """Rehash into max(n_buckets, growth x current) buckets, more if a key will not fit."""
        old_keys, old_rows = self._keys, self._rows
        target = max(n_buckets, int(np.ceil(old_keys.shape[0] * self.growth)))
        while True:
            self._allocate(target)
            if _rehash(old_keys, old_rows, self._keys, self._rows, self._rng):
                return
            target = int(np.ceil(target * self.growth))

    def state(self) -> dict[str, np.ndarray]:
        """Copies of the arrays that restore this map exactly with ``from_state``."""
        return {"buckets": self._keys.copy(), "counters": self._counters.copy(),
                "free": self._free[: self._counters[2]].copy(), "rng": self._rng.copy(),
                "params": np.array([self.max_load, self.growth])}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> "CuckooMap":
        """Inverse of ``state``; arrays are copied (they may be read-only)."""
        buckets = np.asarray(state["buckets"])
        if buckets.ndim != 2 or buckets.shape[1] != WORDS or buckets.dtype != np.int64:
            raise ValueError(f"bad cuckoo map state: buckets {buckets.dtype}{buckets.shape}")
        m = cls.__new__(cls)
        m.max_load, m.growth = (float(x) for x in state["params"])
        m._allocate(buckets.shape[0])
        m._keys[:] = buckets
        m._counters = np.array(state["counters"], dtype=np.int64)
        m._free = np.array(state["free"], dtype=np.int32)
        m._rng = np.array(state["rng"], dtype=np.uint64)
        return m


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
