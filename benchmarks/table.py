"""Cuckoo map and embedding table throughput, against pandas' khash (``Int64HashTable``).

Both maps get the same random int64 keys in the same process, at 1M and 8M keys. Every time
is the median of ``REPEATS`` runs; the two sides' runs are interleaved (order alternating), so
background load on the shared cores hits both alike. Numba compilation is done on a small
batch before any timing. A ratio is pandas' time over ours: above 1.0 we are faster.

- ``insert_vs_khash_*``: a fresh default-constructed ``CuckooMap()`` plus one
  ``find_or_insert(keys)``, vs a fresh ``Int64HashTable()`` plus ``map_locations(keys)``;
  both grow from their defaults. ``insert_vs_khash_presized_*``: the same with
  ``CuckooMap(capacity=n)`` vs ``Int64HashTable(n)``. Construction is timed, freeing is not.
- ``lookup_vs_khash_*``: every key, in a random permutation order, ``find`` vs ``lookup``
  on the maps built by the default insert.
- ``bytes_per_key``, ``bytes_per_key_8m``: ``nbytes / size`` of the default-built map
  (embedding rows excluded); ``khash_bytes_per_key*``: pandas' ``sizeof() / n``.
- ``max_load_factor``: the highest load the map reaches before it has to grow. A
  ``CuckooMap(capacity=1M, max_load=0.98)`` is sized so that 1M keys need a load of 0.98;
  keys go in by batches of 1% of 1M until the capacity changes, and the figure is the load
  before that batch (so it is exact to within one batch, about 0.01). ``max_load_bound``
  says what stopped it: ``"cap"`` if the batch would have crossed ``max_load`` (the map never
  failed to place a key), ``"displacement"`` if a cuckoo walk failed first.
- ``embedding_lookups_per_s_1m``: ids per second of ``EmbeddingTable.lookup_serve`` (id to
  dim-16 float32 row) over 1M ids in a random order, the ids inserted by ``lookup_train``.

- ``growth_pause_max_ms_segments`` / ``growth_pause_max_ms_one_array``: the longest
  ``find_or_insert`` of 4,096 new keys while a map grows from empty to 8M keys, for the map as
  shipped and for one array of buckets (no segments), batches alternating between the two;
  ``insert_batch_median_ms_*`` the median batch; ``segments_8m`` the segments at the end.

Random 64-bit keys may repeat; at 8M the expected number of repeats is about 2e-6.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
from typing import Callable

import numpy as np
from pandas._libs.hashtable import Int64HashTable

from monolith_ray.config import SlotConfig
from monolith_ray.table.cuckoo import CuckooMap
from monolith_ray.table.embedding import EmbeddingTable

REPEATS = 5
SIZES = {"1m": 1_000_000, "8m": 8_000_000}
LOAD_PROBE_KEYS = 1_000_000
LOAD_PROBE_MAX = 0.98
SEED = 20_251_127


def random_keys(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random int64 keys (n,), never the map's reserved empty marker -2**63."""
    return rng.integers(-(2**63) + 1, 2**63 - 1, size=n, dtype=np.int64, endpoint=True)


def median_seconds(runs: dict[str, Callable[[], object]], repeats: int = REPEATS) -> dict[str, float]:
    """Median wall seconds of each run; runs interleave, and what they return is freed untimed."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            gc.collect()
            t0 = time.perf_counter()
            result = runs[name]()
            times[name].append(time.perf_counter() - t0)
            del result
    return {name: statistics.median(ts) for name, ts in times.items()}


def cuckoo_built(keys: np.ndarray, capacity: int | None = None) -> CuckooMap:
    """A fresh map (default-constructed unless capacity is given) holding keys."""
    m = CuckooMap() if capacity is None else CuckooMap(capacity=capacity)
    m.find_or_insert(keys)
    return m


def khash_built(keys: np.ndarray, size_hint: int | None = None) -> Int64HashTable:
    """A fresh pandas table (default-constructed unless size_hint is given) holding keys."""
    t = Int64HashTable() if size_hint is None else Int64HashTable(size_hint)
    t.map_locations(keys)
    return t


def warm_up() -> None:
    """Compile (or load from Numba's cache) every jitted function the timed runs call."""
    rng = np.random.default_rng(0)
    keys = random_keys(rng, 20_000)
    m = cuckoo_built(keys)
    m.find(keys)
    table = EmbeddingTable(SlotConfig(name="bench", slot_id=1, dim=16))
    table.lookup_train(keys, now=0.0)
    table.lookup_serve(keys)


def compare_maps(n: int, rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Per figure ("insert", "insert_presized", "lookup" in seconds, "bytes_per_key"), the
    value for each side ("ours", "khash") at n keys."""
    keys = random_keys(rng, n)
    query = rng.permutation(keys)
    figures = {
        "insert": median_seconds({"ours": lambda: cuckoo_built(keys),
                                  "khash": lambda: khash_built(keys)}),
        "insert_presized": median_seconds({"ours": lambda: cuckoo_built(keys, n),
                                           "khash": lambda: khash_built(keys, n)}),
    }
    ours, khash = cuckoo_built(keys), khash_built(keys)
    if (ours.find(query) < 0).any() or (khash.lookup(query) < 0).any():
        raise AssertionError("a map lost a key it was given")
    figures["lookup"] = median_seconds({"ours": lambda: ours.find(query),
                                        "khash": lambda: khash.lookup(query)})
    figures["bytes_per_key"] = {"ours": ours.nbytes / ours.size, "khash": khash.sizeof() / n}
    return figures


def max_load_factor(rng: np.random.Generator, n: int = LOAD_PROBE_KEYS) -> tuple[float, str]:
    """Load of a map sized to need ``LOAD_PROBE_MAX`` for n keys, just before it first grows,
    and what made it grow: ``"cap"`` (max_load reached) or ``"displacement"`` (a walk failed)."""
    m = CuckooMap(capacity=n, max_load=LOAD_PROBE_MAX)
    step = n // 100
    keys = random_keys(rng, n + 10 * step)
    for start in range(0, keys.shape[0], step):
        capacity, size = m.capacity, m.size
        m.find_or_insert(keys[start: start + step])
        if m.capacity != capacity:
            would_cross = size + step > int(LOAD_PROBE_MAX * capacity)
            return size / capacity, "cap" if would_cross else "displacement"
    raise AssertionError(f"a map sized for {n} keys at load {LOAD_PROBE_MAX} held "
                         f"{keys.shape[0]} without growing")


def growth_pauses(rng: np.random.Generator, n: int = 8_000_000, batch: int = 4096
                  ) -> dict[str, float]:
    """Longest single ``find_or_insert`` of ``batch`` new keys while a map grows from empty to
    n keys, and the median batch, for the map as shipped (segments) and for one array
    (``segment_keys`` past n: every growth rehashes every key). Batches alternate between the
    two maps, so load on the machine hits both alike. Milliseconds."""
    maps = {"segments": CuckooMap(), "one_array": CuckooMap(segment_keys=1 << 40)}
    times: dict[str, list[float]] = {name: [] for name in maps}
    for start in range(0, n, batch):
        keys = random_keys(rng, batch)
        for name, m in maps.items():
            t0 = time.perf_counter()
            m.find_or_insert(keys)
            times[name].append(time.perf_counter() - t0)
    out = {}
    for name, ts in times.items():
        out[f"growth_pause_max_ms_{name}"] = round(max(ts) * 1e3, 2)
        out[f"insert_batch_median_ms_{name}"] = round(statistics.median(ts) * 1e3, 3)
    out["segments_8m"] = maps["segments"].segments
    return out


def embedding_lookups_per_s(rng: np.random.Generator, n: int = 1_000_000) -> float:
    """Serving lookups per second: n ids, each to its dim-16 row, in a random order."""
    table = EmbeddingTable(SlotConfig(name="bench", slot_id=1, dim=16))
    ids = random_keys(rng, n)
    table.lookup_train(ids, now=0.0)
    query = rng.permutation(ids)
    return n / median_seconds({"serve": lambda: table.lookup_serve(query)})["serve"]


TIMED = ("insert", "insert_presized", "lookup")


def report(per_size: dict[str, dict[str, dict[str, float]]], figures: dict[str, float | str]) -> None:
    """Human-readable table on stderr."""
    err = sys.stderr
    print(f"{'keys':>5}  {'figure':<17}{'ours':>10}{'khash':>10}{'ours/khash':>12}", file=err)
    for label, by_figure in per_size.items():
        for name in TIMED:
            ours, khash = by_figure[name]["ours"], by_figure[name]["khash"]
            print(f"{label:>5}  {name + ' ms':<17}{ours * 1e3:>10.1f}{khash * 1e3:>10.1f}"
                  f"{khash / ours:>11.2f}x", file=err)
        bpk = by_figure["bytes_per_key"]
        print(f"{label:>5}  {'bytes per key':<17}{bpk['ours']:>10.1f}{bpk['khash']:>10.1f}",
              file=err)
    print(f"max load factor {figures['max_load_factor']:.3f} (stopped by "
          f"{figures['max_load_bound']}); embedding lookup_serve "
          f"{figures['embedding_lookups_per_s_1m'] / 1e6:.2f}M ids/s (dim 16)", file=err)


def main() -> None:
    rng = np.random.default_rng(SEED)
    warm_up()
    per_size = {label: compare_maps(n, rng) for label, n in SIZES.items()}
    figures: dict[str, float | str] = {}
    for label, by_figure in per_size.items():
        for name in TIMED:
            key = "insert_vs_khash_presized" if name == "insert_presized" else f"{name}_vs_khash"
            figures[f"{key}_{label}"] = round(by_figure[name]["khash"] / by_figure[name]["ours"], 3)
        for name in ("insert", "lookup"):
            figures[f"{name}_mkeys_per_s_{label}"] = round(
                SIZES[label] / by_figure[name]["ours"] / 1e6, 2)
        suffix = "" if label == "1m" else f"_{label}"
        figures[f"bytes_per_key{suffix}"] = round(by_figure["bytes_per_key"]["ours"], 2)
        figures[f"khash_bytes_per_key{suffix}"] = round(by_figure["bytes_per_key"]["khash"], 2)
    load, bound = max_load_factor(rng)
    figures.update(max_load_factor=round(load, 4), max_load_bound=bound,
                   embedding_lookups_per_s_1m=round(embedding_lookups_per_s(rng)),
                   repeats=REPEATS)
    figures.update(growth_pauses(rng))
    report(per_size, figures)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
