"""RowCache policies on ``/recommend``-shaped traffic: hit rate of LRU vs TinyLFU, and cost.

Traffic: a catalogue of ``IDS`` ids, half users and half items (two slots of dim 16, float16
rows). A request is one user id and 100 to 200 distinct candidate item ids, each drawn from a
Zipf law over its slot's ranks (exponent ``s``). Popularity moves: every ``EPOCH`` requests
``drift`` random ranks of the top ``HEAD`` swap their ids with ranks drawn from the whole
range, and ``new`` never-seen ids take random ranks of the top ``HEAD`` (new ids arriving,
some of them popular). ``DRIFTS``: "slow" changes about 4% of the head's ranks in the run,
"fast" about a third. Both policies see the same requests.

A request is served as the replica will: ``lookup`` of each slot, then ``fill`` of its misses
(rows a shard would return). The cache holds ``CACHE_ROWS`` = 1% of the ids. ``hit_rate_*``
count the last ``1 - WARM`` of the requests (the cache is full and warm by then). Runs: each
exponent of ``EXPONENTS`` with slow drift (``hit_rate_*_by_s``), and ``S`` with fast drift
(``hit_rate_*_fast_drift``); the headline figures are ``S`` with slow drift. ``chosen`` is
the policy with the higher mean hit rate over all runs.

Cost, of the chosen policy: ``us_per_id_lookup`` / ``us_per_id_fill`` are wall time of the
``lookup`` / ``fill`` calls in the headline run over the ids they were given (the calls'
fixed overhead included, so ``fill``'s, given the ~25 misses of a request, is mostly that);
``us_per_request`` both for one request (two slots); ``*_1m`` the same for a cache of 1M
rows, full, serving requests of 150 random ids of which half are cached (the other half
filled). The machine may be shared: times are upper bounds.
"""

from __future__ import annotations

import json
import time

import numpy as np

from monolith_ray.config import SlotConfig
from monolith_ray.features import make_fids
from monolith_ray.serve.cache import POLICIES, RowCache

IDS = 20_000_000
CACHE_ROWS = IDS // 100
REQUESTS = 24_000
ITEMS_PER_REQUEST = (100, 200)
EXPONENTS = (1.0, 1.1, 1.2)
S = 1.1
EPOCH = 500
HEAD = 200_000
DRIFTS = {"slow": (100, 50), "fast": (1_000, 500)}  # per epoch: (ranks swapped, new ids)
DRAWS = 4  # Zipf draws per candidate: a request's items are its first k distinct ones
WARM = 0.25
SEED = 20_251_205
SLOTS = (SlotConfig("user_id", 1, 16), SlotConfig("item_id", 2, 16))


def _traffic(s: float, drift: int, new: int,
             rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """Fids of each request: users int64 (REQUESTS,) and per request its items (k,)."""
    per_slot = IDS // 2
    cdf = np.cumsum(np.arange(1, per_slot + 1, dtype=np.float64) ** -s)
    cdf /= cdf[-1]
    sizes = rng.integers(*ITEMS_PER_REQUEST, endpoint=True, size=REQUESTS)
    ranks = {name: np.searchsorted(cdf, rng.random(n))
             for name, n in (("user", REQUESTS), ("item", int(DRAWS * sizes.sum())))}
    users, items, used = [], [], 0
    for name, slot_id in (("user", 1), ("item", 2)):
        id_of = np.arange(per_slot, dtype=np.int64)  # rank -> raw id; moves every epoch
        fresh = per_slot
        for start in range(0, REQUESTS, EPOCH):
            stop = min(start + EPOCH, REQUESTS)
            if name == "user":
                users.append(make_fids(slot_id, id_of[ranks["user"][start:stop]]))
            else:
                for k in sizes[start:stop]:
                    drawn = id_of[ranks["item"][used: used + DRAWS * k]]
                    first = np.sort(np.unique(drawn, return_index=True)[1])[:k]
                    used += DRAWS * k
                    items.append(make_fids(slot_id, drawn[first]))
            head, anywhere = rng.integers(0, HEAD, drift), rng.integers(0, per_slot, drift)
            id_of[head], id_of[anywhere] = id_of[anywhere], id_of[head]
            id_of[rng.integers(0, HEAD, new)] = np.arange(fresh, fresh + new)
            fresh += new
    return np.concatenate(users), items


def _serve(policy: str, users: np.ndarray, items: list[np.ndarray]) -> dict[str, float]:
    """Run the requests through a fresh cache -> steady-state hit rate and µs per id."""
    cache = RowCache(SLOTS, CACHE_ROWS, "float16", policy)
    block = np.zeros((max(x.size for x in items), 17), dtype=np.float16)
    hits = asked = looked = filled = 0
    t_lookup = t_fill = 0.0
    warm = int(WARM * len(items))
    for r, item_ids in enumerate(items):
        for slot, ids in (("user_id", users[r: r + 1]), ("item_id", item_ids)):
            t0 = time.perf_counter()
            _, hit = cache.lookup(slot, ids)
            t1 = time.perf_counter()
            missed = ids[~hit]
            cache.fill(slot, missed, block[: missed.size])
            t_fill += time.perf_counter() - t1
            t_lookup += t1 - t0
            looked += ids.size
            filled += missed.size
            if r >= warm:
                hits += int(hit.sum())
                asked += ids.size
    return {"hit_rate": hits / asked, "us_lookup": 1e6 * t_lookup / looked,
            "us_fill": 1e6 * t_fill / max(filled, 1),
            "us_request": 1e6 * (t_lookup + t_fill) / len(items), "ids_asked": asked}


def _cost_at_1m(policy: str, rng: np.random.Generator) -> tuple[float, float]:
    """µs per id of lookup and of fill on a full 1M-row cache, requests of 150 ids."""
    rows, batch, requests = 1_000_000, 150, 2_000
    cache = RowCache(SLOTS, rows, "float16", policy)
    held = make_fids(2, np.arange(rows, dtype=np.int64))
    block = np.zeros((rows, 17), dtype=np.float16)
    for part in np.array_split(held, 10):
        cache.lookup("item_id", part)
        cache.fill("item_id", part, block[: part.size])
    fresh = make_fids(2, np.arange(rows, rows + requests * batch // 2, dtype=np.int64))
    t_lookup = t_fill = 0.0
    filled = 0
    for r in range(requests):
        new = fresh[r * batch // 2: (r + 1) * batch // 2]
        ids = np.concatenate([held[rng.integers(0, rows, batch - new.size)], new])
        t0 = time.perf_counter()
        _, hit = cache.lookup("item_id", ids)
        t1 = time.perf_counter()
        cache.fill("item_id", ids[~hit], block[: int((~hit).sum())])
        t_fill += time.perf_counter() - t1
        t_lookup += t1 - t0
        filled += int((~hit).sum())
    return 1e6 * t_lookup / (requests * batch), 1e6 * t_fill / filled


def main() -> None:
    rng = np.random.default_rng(SEED)
    RowCache(SLOTS, 10, "float16", "tinylfu").fill(  # compile the Numba kernels first
        "item_id", make_fids(2, np.arange(20)), np.zeros((20, 17), np.float16))
    runs = [(s, "slow") for s in EXPONENTS] + [(S, "fast")]
    rates: dict[tuple[float, str], dict[str, dict[str, float]]] = {}
    for s, drift in runs:
        users, items = _traffic(s, *DRIFTS[drift], rng)
        rates[s, drift] = {policy: _serve(policy, users, items) for policy in POLICIES}
        print(f"s={s} {drift} drift: " + ", ".join(
            f"{p} hit rate {r['hit_rate']:.4f}" for p, r in rates[s, drift].items()), flush=True)
    mean = {p: float(np.mean([r[p]["hit_rate"] for r in rates.values()])) for p in POLICIES}
    chosen = max(POLICIES, key=mean.__getitem__)
    lookup_1m, fill_1m = _cost_at_1m(chosen, rng)
    head = rates[S, "slow"]
    print(json.dumps({
        "ids": IDS, "cache_rows": CACHE_ROWS, "zipf_s": S, "requests": REQUESTS,
        "ids_measured": head["lru"]["ids_asked"],
        "hit_rate_lru": round(head["lru"]["hit_rate"], 4),
        "hit_rate_lfu": round(head["tinylfu"]["hit_rate"], 4),
        "hit_rate_lru_by_s": {str(s): round(rates[s, "slow"]["lru"]["hit_rate"], 4)
                              for s in EXPONENTS},
        "hit_rate_lfu_by_s": {str(s): round(rates[s, "slow"]["tinylfu"]["hit_rate"], 4)
                              for s in EXPONENTS},
        "hit_rate_lru_fast_drift": round(rates[S, "fast"]["lru"]["hit_rate"], 4),
        "hit_rate_lfu_fast_drift": round(rates[S, "fast"]["tinylfu"]["hit_rate"], 4),
        "lfu_policy": "tinylfu",
        "us_per_id_lookup": round(head[chosen]["us_lookup"], 3),
        "us_per_id_fill": round(head[chosen]["us_fill"], 3),
        "us_per_request": round(head[chosen]["us_request"], 1),
        "us_per_id_lookup_1m": round(lookup_1m, 3), "us_per_id_fill_1m": round(fill_1m, 3),
        "chosen": chosen,
    }))


if __name__ == "__main__":
    main()
