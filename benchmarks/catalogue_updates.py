"""Finding the catalogue items a sparse update touched (``serve.catalogue.Readers``), against
a scan of every item's values (what a replica did before: ``np.isin`` over the catalogue's
fids, then every item's values), in the same process on the same arrays.

Catalogue: ``N_ITEMS`` items (10,000,000 by default), two item slots: ``item_id`` (one value
an item, every item its own fid) and ``genres`` (up to 3 values of 20 fids, -1 where an item
has fewer). An update: ``CHANGED`` (10,000) ``item_id`` fids drawn from the catalogue and 5
outside it, plus one genre fid (read by about 1/7 of the items): the rows one sparse sync
carries at a busy stream. Each way timed ``REPEATS`` (3) times, the best kept.

Ends with one JSON line: ``items``, ``changed``, ``build_s`` (the index, once per replica),
``scan_ms``, ``readers_ms``, ``speedup`` (scan over readers), ``touched`` (items found, the
same both ways: checked), and ``item_only_*``: the same for an update of ``item_id`` rows
alone.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from monolith_ray.serve.catalogue import Readers, distinct

N_ITEMS = int(os.environ.get("N_ITEMS", "10000000"))
CHANGED = int(os.environ.get("CHANGED", "10000"))
REPEATS = int(os.environ.get("REPEATS", "3"))


def scan(fids: np.ndarray, idx: np.ndarray, changed: np.ndarray) -> np.ndarray:
    """Every item's values checked: O(F log F + n·L) per update."""
    read = np.isin(fids, changed)
    return np.flatnonzero(np.where(idx >= 0, read[np.maximum(idx, 0)], False).any(axis=1))


def best_ms(fn, *args) -> tuple[float, np.ndarray]:
    times, out = [], None
    for _ in range(REPEATS):
        start = time.perf_counter()
        out = fn(*args)
        times.append((time.perf_counter() - start) * 1e3)
    return min(times), out


def main() -> None:
    rng = np.random.default_rng(0)
    item_fids = np.sort(rng.choice(np.iinfo(np.int64).max, N_ITEMS, replace=False))
    item_idx = rng.permutation(N_ITEMS).astype(np.int32)[:, None]
    genre_fids = np.sort(rng.choice(1 << 40, 20, replace=False))
    genre_idx = rng.integers(-1, 20, size=(N_ITEMS, 3)).astype(np.int32)
    start = time.perf_counter()
    readers = {"item_id": Readers(item_fids, item_idx), "genres": Readers(genre_fids, genre_idx)}
    build_s = time.perf_counter() - start
    changed = np.concatenate([rng.choice(item_fids, CHANGED, replace=False),
                              rng.integers(0, 1 << 62, 5)])
    genre = genre_fids[:1]

    def old(slots: dict[str, np.ndarray]) -> np.ndarray:
        parts = [scan(item_fids, item_idx, slots["item_id"])]
        if "genres" in slots:
            parts.append(scan(genre_fids, genre_idx, slots["genres"]))
        return np.unique(np.concatenate(parts))

    def new(slots: dict[str, np.ndarray]) -> np.ndarray:
        return distinct(np.concatenate([readers[s].of(f) for s, f in slots.items()]), N_ITEMS)

    out = {"items": N_ITEMS, "changed": CHANGED, "build_s": round(build_s, 2)}
    for prefix, slots in (("", {"item_id": changed, "genres": genre}),
                          ("item_only_", {"item_id": changed})):
        scan_ms, by_scan = best_ms(old, slots)
        readers_ms, by_readers = best_ms(new, slots)
        if not np.array_equal(by_scan, by_readers):
            raise SystemExit("the two ways found different items")
        out.update({f"{prefix}scan_ms": round(scan_ms, 1),
                    f"{prefix}readers_ms": round(readers_ms, 2),
                    f"{prefix}speedup": round(scan_ms / readers_ms, 1),
                    f"{prefix}touched": int(by_readers.size)})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
