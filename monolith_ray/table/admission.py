"""Feature admission: which new ids earn a row, counted in bounded memory.

Monolith keeps rare ids out of the tables (most ids appear a handful of times and would only
add noise and memory). Two modes, per slot:

- **Occurrence threshold**: an id gets a row once it has been seen ``occurrence_threshold``
  times. Counts of not-yet-admitted ids live in a count-min sketch (Cormode & Muthukrishnan
  2005) of ``sketch_depth`` rows x ``sketch_width`` saturating uint8 counters with
  conservative update (only the smallest of an id's counters are raised). We chose it over a
  4-bit counting Bloom filter with fingerprints because its one error is one-sided: an id's
  estimate never falls below its true count, so an id that has truly reached the threshold is
  always admitted; collisions can only admit an id a little early, and conservative update
  keeps that rare. Memory is fixed (depth x width bytes, 4 MiB by default) however many ids
  stream past. Thresholds go up to 255, the counter ceiling.

  Counts age: every ``HALVE_EVERY`` x width occurrences counted, every counter halves (the
  reset of TinyLFU, Einziger et al. 2017). Without it the counters only rise: once some 5 x
  width distinct ids had passed, 77% of ids seen twice passed a threshold of 5 on their
  first sighting, and past 20 x width all of them (at 10^8 ids a day, the filter would
  admit everything within the first day). Halving every 2 x width, ids seen twice were
  admitted 0.02% of the time after 30 x width distinct ids (width 2^14, depth 4: a
  simulation over ``_observe``), and every id seen ``threshold`` times between two
  halvings still is. So the threshold counts recent occurrences: at the default width
  (2^20) an id must reach it within some 2M occurrences of unadmitted ids at its shard and
  slot; size ``sketch_width`` to the horizon wanted (16 MiB at 2^22 for 8M).
- **Probabilistic**: each occurrence of an unadmitted id admits it with probability
  ``admit_probability``, decided by a hash of (id, occurrence count, halvings so far), so a
  replay admits the same ids at the same occurrences (a restored table starts its count
  towards the next halving over: the sketch is in a snapshot, this count is not).

Both may be combined: an id must pass the threshold and then the coin.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from monolith_ray.config import AdmissionConfig, SlotConfig

HALVE_EVERY = 2  # counters halve every HALVE_EVERY x sketch_width occurrences counted
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@nb.njit(inline="always")
def _mix(x: np.uint64) -> np.uint64:
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@nb.njit(cache=True, nogil=True)
def _observe(sketch: np.ndarray, ids: np.ndarray, threshold: np.int64, prob: np.float64,
             out: np.ndarray, age: np.ndarray) -> None:
    """Count one occurrence of each id; out[i] = admitted now. sketch: uint8 (depth, width);
    age: int64 [occurrences counted since the last halving, halvings so far]: every
    ``HALVE_EVERY * width`` occurrences the counters halve, at the same occurrence however
    the stream is batched."""
    depth, width = sketch.shape
    period = np.int64(HALVE_EVERY * width)
    mask = np.uint64(width - 1)
    idx = np.empty(depth, dtype=np.int64)
    for i in range(ids.shape[0]):
        h = np.uint64(ids[i])
        low = np.int64(255)
        for d in range(depth):
            idx[d] = np.int64(_mix(h ^ (np.uint64(d + 1) * np.uint64(0xD6E8FEB86659FD93))) & mask)
            low = min(low, np.int64(sketch[d, idx[d]]))
        if low < 255:
            for d in range(depth):
                if sketch[d, idx[d]] == low:
                    sketch[d, idx[d]] = low + 1
            low += 1
        ok = low >= threshold
        if ok and prob < 1.0:  # keyed by the halvings too: a count met again is a new coin
            coin = _mix(h ^ (np.uint64(low) * np.uint64(0xA0761D6478BD642F))
                        ^ (np.uint64(age[1]) * np.uint64(0xE7037ED1A0B428DB)))
            ok = (coin >> np.uint64(11)) * (1.0 / 9007199254740992.0) < prob
        out[i] = ok
        age[0] += 1
        if age[0] >= period:
            for d in range(depth):
                for j in range(width):
                    sketch[d, j] >>= np.uint8(1)
            age[0] = 0
            age[1] += 1


class AdmissionFilter:
    """Decides, one batch at a time, which unadmitted ids get a row."""

    def __init__(self, slot: SlotConfig, cfg: AdmissionConfig) -> None:
        self.threshold = int(slot.occurrence_threshold)
        self.probability = float(slot.admit_probability)
        counting = self.threshold > 1 or self.probability < 1.0
        shape = (cfg.sketch_depth, cfg.sketch_width) if counting else (0, 0)
        self.sketch = np.zeros(shape, dtype=np.uint8)
        self.age = np.zeros(2, dtype=np.int64)  # occurrences since the last halving, halvings

    @property
    def admits_all(self) -> bool:
        """True when every id is admitted at first sight (no counting needed)."""
        return self.sketch.size == 0

    def observe(self, ids: np.ndarray) -> np.ndarray:
        """Count one occurrence of each unadmitted id (n,) int64 -> admitted bool (n,)."""
        out = np.ones(ids.shape[0], dtype=np.bool_)
        if not self.admits_all:
            _observe(self.sketch, ids, self.threshold, self.probability, out, self.age)
        return out

    @property
    def nbytes(self) -> int:
        return self.sketch.nbytes
