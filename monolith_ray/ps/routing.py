"""Which parameter-server shard owns a feature id.

Routing hashes the fid with SplitMix64 under its own seed, not the seed the cuckoo map uses
for buckets (nor the one ``make_fids`` uses for values): with a shared hash, every id on a
shard would agree in the hash bits the shard index took, and each shard's table would use a
skewed subset of its buckets. The function is fixed, so any process routes an id the same way.
"""

from __future__ import annotations

import numpy as np

from monolith_ray.features import mix64

ROUTING_SEED = 0x5A4D_0001


def shard_of(fids: np.ndarray, n_shards: int) -> np.ndarray:
    """Shard index in ``[0, n_shards)`` of each fid: int64 (n,) -> int64 (n,)."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    fids = np.asarray(fids)
    if fids.ndim != 1 or (fids.size and not np.issubdtype(fids.dtype, np.integer)):
        raise TypeError(f"fids must be a 1-D int64 array, got {fids.dtype} {fids.shape}")
    return (mix64(fids, seed=ROUTING_SEED) % np.uint64(n_shards)).astype(np.int64)
