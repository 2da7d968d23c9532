"""Streaming estimate of how often each item appears in a training batch, for the two-tower
loss's logQ correction (``monolith_ray.model.two_tower``).

After Yi et al. (RecSys 2019), section 4: two arrays of ``buckets`` entries indexed by a hash
of the item id, ``last[h]`` (the step the bucket's item was last seen) and ``gap[h]`` (its
estimated number of steps between sightings), updated per batch as

    gap[h] <- (1 - alpha) * gap[h] + alpha * (step - last[h]);   last[h] <- step

so ``q = 1 / gap`` is the item's probability of being in a batch, estimated in one pass over
the stream with memory fixed by ``buckets`` however many items there are, and following a
drifting catalogue at the rate ``alpha``. Items that share a bucket share an estimate (the
paper's error bound; ``buckets`` well above the number of items active at once keeps that
rare). An item's first sighting only starts its clock: its gap stays ``initial_gap``.
Costs: 16 bytes per bucket (``last`` int64: an int32 step count would overflow after
2^31 batches, 16 days of batches of 64 at 100k examples a second); a batch's update is
vectorized over its distinct items.
"""

from __future__ import annotations

import numpy as np


class StreamingFrequency:
    """Per-item batch probabilities over a stream of batches (see the module doc)."""

    def __init__(self, buckets: int = 1 << 20, alpha: float = 0.01,
                 initial_gap: float = 100.0) -> None:
        if buckets < 1 or not 0 < alpha <= 1 or initial_gap < 1:
            raise ValueError(f"need buckets >= 1, 0 < alpha <= 1 and initial_gap >= 1, got "
                             f"{buckets}, {alpha}, {initial_gap}")
        self.alpha = alpha
        self.last = np.full(buckets, -1, np.int64)
        self.gap = np.full(buckets, float(initial_gap), np.float64)
        self.step = 0

    def _bucket(self, item_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(item_ids, np.int64).view(np.uint64)
        mixed = (ids ^ (ids >> np.uint64(31))) * np.uint64(0x9E3779B97F4A7C15)
        return ((mixed >> np.uint64(17)) % np.uint64(self.last.size)).astype(np.int64)

    def update(self, item_ids: np.ndarray) -> None:
        """Count one batch: ``item_ids`` int64 (n,), the items of its positives (duplicates
        count once: q is the probability of being in a batch at all)."""
        self.step += 1
        buckets = np.unique(self._bucket(item_ids))
        seen = buckets[self.last[buckets] >= 0]
        gaps = self.step - self.last[seen]
        self.gap[seen] = (1 - self.alpha) * self.gap[seen] + self.alpha * gaps
        self.last[buckets] = self.step

    def log_q(self, item_ids: np.ndarray) -> np.ndarray:
        """log q float32 (n,) of ``item_ids`` int64 (n,): ``-log gap``, at most 0 (q <= 1)."""
        return -np.log(np.maximum(self.gap[self._bucket(item_ids)], 1.0)).astype(np.float32)
