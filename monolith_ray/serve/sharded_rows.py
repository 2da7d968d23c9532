"""ShardedRows: a replica's embedding rows with ``serve.store: sharded``: a bounded
:class:`RowCache` over the serving shards.

A lookup takes what the cache holds, then fetches the misses (distinct fids only) from the
serving shards that own them (``ps.routing.shard_of``), one batched call per shard per
request, all at once, and waits at most ``timeout_s``. A shard that does not answer in time,
fails, or is not ready (starting, loading a snapshot) gives the default row (zeros, as an id
no table holds) for its misses, is counted, and is not asked again for ``retry_s``: a request
never fails and never waits long for a shard. Fetched rows fill the cache tagged with the
version the shard served them at, so rows read before an update the cache has applied since
are used once but not kept (``RowCache.fill``).

A bulk read (:meth:`ShardedRows.fetch_blocking`: the retrieval catalogue's tower rows, a
refresh thread's) goes to the shards straight, neither reading nor filling the cache, so it
never evicts the rows requests use, and fails as a whole if a shard does not answer rather
than give defaults.

Memory: the cache's arrays are allocated once at their bound (``RowCache.nbytes``); a
request adds its own rows, nothing that grows with the table; a bulk read its ids' rows.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from monolith_ray.config import SlotConfig
from monolith_ray.ps.routing import shard_of
from monolith_ray.serve.cache import RowCache
from monolith_ray.serve.serving_shard import Fetched
from monolith_ray.serve.store import SparseUpdate


BULK_IDS = 8192  # the most ids one call of a bulk read asks a shard for
BULK_IN_FLIGHT = 2  # the most calls of a bulk read in flight to one shard


class _Lookup(NamedTuple):
    rows: dict[str, np.ndarray]  # per slot float32 (n, D+1), misses zero so far
    version: int  # the cache's sync version at the lookup
    # per slot (distinct missed fids, each miss's index into them, the misses' positions)
    misses: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    asks: dict[int, dict[str, np.ndarray]]  # shard -> slot -> its fids to fetch


class ShardedRows:
    """Rows of ``slots`` from ``shards`` (``ServingShard`` actor handles or objects) through a
    cache of ``cache_rows`` rows."""

    def __init__(self, slots: Sequence[SlotConfig], shards: Sequence[Any], cache_rows: int,
                 policy: str = "tinylfu", dtype: str = "float16", timeout_s: float = 0.25,
                 retry_s: float = 1.0) -> None:
        if not shards:
            raise ValueError("sharded rows need at least one serving shard")
        self.cache = RowCache(slots, cache_rows, dtype, policy)  # type: ignore[arg-type]
        self.shards = list(shards)
        self.timeout_s, self.retry_s = timeout_s, retry_s
        self._remote = hasattr(getattr(self.shards[0], "get", None), "remote")
        self._down_until = [0.0] * len(self.shards)
        self._lock = threading.Lock()  # the cache: requests' lookups and fills vs applies
        self.counters = {"fetches": 0, "ids_fetched": 0, "default_rows": 0,
                         "shard_failures": 0, "shard_timeouts": 0, "not_ready": 0}

    @property
    def version(self) -> int:
        """The sync version the cache follows."""
        return self.cache.version

    def apply(self, update: SparseUpdate) -> None:
        """Follow a sync update (``RowCache.apply``), its slots of this cache's only (the
        ranking's and the towers' tables have caches of their own)."""
        mine = self.cache.widths
        if any(name not in mine for part in (update.ids, update.evicted) for name in part):
            update = update._replace(
                ids={k: v for k, v in update.ids.items() if k in mine},
                rows={k: v for k, v in update.rows.items() if k in mine},
                evicted={k: v for k, v in update.evicted.items() if k in mine})
        with self._lock:
            self.cache.apply(update)

    async def lookup(self, fids: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """Rows of per slot fids int64 (n,) -> (per slot float32 (n, D+1), the cache's version
        at the lookup), fetching misses from the shards on this event loop."""
        found = self._begin(fids)
        shards = list(found.asks)
        futures = [asyncio.wrap_future(self.shards[k].get.remote(found.asks[k]).future())
                   if self._remote else _done(self.shards[k].get(found.asks[k]))
                   for k in shards]
        answers: list[Fetched | BaseException | None] = [None] * len(shards)
        if futures:
            done, _ = await asyncio.wait(futures, timeout=self.timeout_s)
            for i, future in enumerate(futures):
                if future in done:
                    answers[i] = future.exception() or future.result()
                else:
                    future.cancel()
        return self._finish(found, dict(zip(shards, answers))), found.version

    def lookup_blocking(self, fids: Mapping[str, np.ndarray]
                        ) -> tuple[dict[str, np.ndarray], int]:
        """:meth:`lookup` for a caller outside an event loop (waits on Ray directly)."""
        found = self._begin(fids)
        answers: dict[int, Fetched | BaseException | None] = {}
        if self._remote:
            import ray

            refs = {k: self.shards[k].get.remote(ask) for k, ask in found.asks.items()}
            ready, _ = ray.wait(list(refs.values()), num_returns=len(refs),
                                timeout=self.timeout_s)
            for k, ref in refs.items():
                try:
                    answers[k] = ray.get(ref) if ref in ready else None
                except Exception as err:  # noqa: BLE001 - counted as a shard failure
                    answers[k] = err
        else:
            for k, ask in found.asks.items():
                try:
                    answers[k] = self.shards[k].get(ask)
                except Exception as err:  # noqa: BLE001 - counted as a shard failure
                    answers[k] = err
        return self._finish(found, answers), found.version

    def fetch_blocking(self, fids: Mapping[str, np.ndarray], timeout_s: float
                       ) -> dict[str, np.ndarray]:
        """Rows of per slot fids int64 (n,) straight from the shards, the cache neither read
        nor filled (a bulk read: the catalogue's tower rows) -> per slot float32 (n, D+1),
        zeros for ids no shard holds. Calls of at most ``BULK_IDS`` ids, at most
        ``BULK_IN_FLIGHT`` a shard at a time (the next sent as one returns), so requests'
        reads queue behind a few calls, not the whole read; all within ``timeout_s``, the
        late ones cancelled. Raises (RuntimeError, or the shard's own error) if a shard
        fails, is late, holds no state yet, or restarted and has not caught up with any
        version yet (version 0 while this cache follows a later one: a snapshot's rows);
        a caller that needs every row tries again later rather than use default or old
        rows."""
        parts, calls = {}, []  # calls: (shard, slot, its ids)
        for name, ids in fids.items():
            distinct, inverse = np.unique(np.asarray(ids, np.int64), return_inverse=True)
            parts[name] = (distinct, inverse)
            for k, mine in self._route(distinct):
                calls += [(k, name, mine[at:at + BULK_IDS])
                          for at in range(0, mine.size, BULK_IDS)]
        answers = (self._bulk_remote(calls, timeout_s) if self._remote
                   else [self.shards[k].get({name: ask}) for k, name, ask in calls])
        out = {name: np.zeros((distinct.size, self.cache.widths[name]), np.float32)
               for name, (distinct, _) in parts.items()}
        following = self.version
        for (k, name, ask), answer in zip(calls, answers):
            if not answer.ready:
                raise RuntimeError(f"serving shard {k} holds no rows yet (starting or "
                                   f"loading a snapshot)")
            if answer.version == 0 and following > 0:
                raise RuntimeError(f"serving shard {k} restarted and has not caught up with "
                                   f"version {following} yet")
            out[name][np.searchsorted(parts[name][0], ask)] = answer.rows[name]
        return {name: out[name][inverse] for name, (_, inverse) in parts.items()}

    def _bulk_remote(self, calls: list[tuple[int, str, np.ndarray]], timeout_s: float
                     ) -> list[Any]:
        """The answers of ``calls`` (shard, slot, ids) to actor shards, in order, at most
        ``BULK_IN_FLIGHT`` in flight a shard; RuntimeError once ``timeout_s`` has passed
        (those in flight cancelled)."""
        import ray

        queued: dict[int, list[int]] = {}
        for i, (k, _, _) in enumerate(calls):
            queued.setdefault(k, []).append(i)
        answers: list[Any] = [None] * len(calls)
        flying: dict[Any, tuple[int, int]] = {}  # ref -> (call index, shard)

        def send(k: int) -> None:
            i = queued[k].pop(0)
            _, name, ask = calls[i]
            flying[self.shards[k].get.remote({name: ask})] = (i, k)

        for k, waiting in queued.items():
            for _ in range(min(BULK_IN_FLIGHT, len(waiting))):
                send(k)
        deadline = time.monotonic() + timeout_s
        while flying:
            ready, _ = ray.wait(list(flying), num_returns=1,
                                timeout=max(deadline - time.monotonic(), 0.0))
            if not ready:
                for ref in flying:
                    ray.cancel(ref)
                raise RuntimeError(f"bulk reads of the serving shards not answered in "
                                   f"{timeout_s:.0f} s ({len(flying)} in flight, "
                                   f"{sum(map(len, queued.values()))} not sent)")
            i, k = flying.pop(ready[0])
            answers[i] = ray.get(ready[0])
            if queued[k]:
                send(k)
        return answers

    def stats(self) -> dict[str, Any]:
        """The cache's stats (rows, bytes, hit rate...) and the fetch counters."""
        with self._lock:
            return {**self.cache.stats(), **self.counters,
                    "shards_down": sum(t > time.monotonic() for t in self._down_until)}

    # ------------------------------------------------------------------ internals

    def _begin(self, fids: Mapping[str, np.ndarray]) -> _Lookup:
        rows, misses = {}, {}
        with self._lock:
            version = self.cache.version
            for name, ids in fids.items():
                rows[name], hit = self.cache.lookup(name, ids)
                if not hit.all():
                    miss_at = np.flatnonzero(~hit)
                    misses[name] = (*np.unique(ids[miss_at], return_inverse=True), miss_at)
        asks: dict[int, dict[str, np.ndarray]] = {}
        now = time.monotonic()
        for name, (distinct, _, _) in misses.items():
            for k, mine in self._route(distinct):
                if self._down_until[k] <= now:
                    asks.setdefault(k, {})[name] = mine
        return _Lookup(rows, version, misses, asks)

    def _route(self, distinct: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """``distinct`` fids int64 (sorted, distinct) split by the serving shard that owns
        them -> (shard, its fids, still sorted) for each shard owning any. O(n log n) in
        NumPy for n fids, no Python loop per fid."""
        owner = shard_of(distinct, len(self.shards))
        return [(k, distinct[owner == k]) for k in np.unique(owner).tolist()]

    def _finish(self, found: _Lookup, answers: Mapping[int, Fetched | BaseException | None]
                ) -> dict[str, np.ndarray]:
        """Fill the cache with the answers and the lookup's rows with fetched rows."""
        fetched: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        now = time.monotonic()
        with self._lock:
            for k, answer in answers.items():
                if not isinstance(answer, Fetched):
                    key = "shard_timeouts" if answer is None else "shard_failures"
                    self.counters[key] += 1
                    self._down_until[k] = now + self.retry_s
                    continue
                if not answer.ready:
                    self.counters["not_ready"] += 1
                    continue
                self.counters["fetches"] += 1
                for name, ids in found.asks[k].items():
                    got = answer.rows[name]
                    self.counters["ids_fetched"] += int(ids.size)
                    self.cache.fill(name, ids, got, version=answer.version)
                    fetched.setdefault(name, []).append((ids, got))
        for name, (distinct, inverse, miss_at) in found.misses.items():
            parts = fetched.get(name, [])
            width = found.rows[name].shape[1]
            held = np.zeros((distinct.size, width), dtype=np.float32)
            got_any = np.zeros(distinct.size, dtype=bool)
            for ids, got in parts:
                at = np.searchsorted(distinct, ids)
                held[at] = got
                got_any[at] = True
            self.counters["default_rows"] += int(distinct.size - got_any.sum())
            found.rows[name][miss_at] = held[inverse]
        return found.rows


def _done(value: Any) -> asyncio.Future:
    """A finished future holding ``value`` (plain shard objects answer at once)."""
    future = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future
