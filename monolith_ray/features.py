"""Feature ids: Monolith's slot/fid scheme with stable 64-bit hashing.

A feature id (fid) is an int64 whose high bits name the slot and whose low 48 bits hold the
hashed raw value: ``fid = slot_id << 48 | (hash(value) & (2**48 - 1))``. Slot ids are kept
below 2**15 so every fid is non-negative. Hashes are fixed functions of the value's bytes,
never Python's salted ``hash()``, so fids agree across processes, machines and runs.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np

VALUE_BITS = 48
SLOT_BITS = 15
MAX_SLOT_ID = (1 << SLOT_BITS) - 1
VALUE_MASK = (1 << VALUE_BITS) - 1

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(values: np.ndarray, seed: int = 0) -> np.ndarray:
    """SplitMix64 finalizer of int64 values (n,) -> uint64 (n,); a bijection for each seed."""
    x = np.asarray(values).astype(np.int64, copy=False).view(np.uint64)
    with np.errstate(over="ignore"):
        z = x + _GOLDEN * np.uint64(seed + 1)
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def hash_str(values: Iterable[str]) -> np.ndarray:
    """Stable 48-bit hash of each string's UTF-8 bytes (BLAKE2b) -> int64 (n,), all >= 0."""
    out = [
        int.from_bytes(hashlib.blake2b(v.encode("utf-8"), digest_size=8).digest(), "little")
        & VALUE_MASK
        for v in values
    ]
    return np.asarray(out, dtype=np.int64)


def make_fids(slot_id: int, values: np.ndarray) -> np.ndarray:
    """Fids of raw int64 values (n,) in ``slot_id`` -> int64 (n,); the value is hashed first."""
    _check_slot(slot_id)
    hashed = (mix64(values) & np.uint64(VALUE_MASK)).astype(np.int64)
    return hashed | np.int64(slot_id << VALUE_BITS)


def slot_of(fids: np.ndarray) -> np.ndarray:
    """Slot id of each fid (n,) -> int64 (n,)."""
    return np.asarray(fids, dtype=np.int64) >> VALUE_BITS


def _check_slot(slot_id: int) -> None:
    if not 0 <= int(slot_id) <= MAX_SLOT_ID:
        raise ValueError(f"slot_id must be in [0, {MAX_SLOT_ID}], got {slot_id}")
