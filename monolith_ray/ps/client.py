"""ShardClient: a trainer's view of the sharded parameter servers.

Per step and per direction it makes one call per shard carrying every slot: the batch's fids
are deduplicated per slot (``np.unique``, skipped for fids already distinct and sorted, as a
``Batch``'s are), the unique ids of all slots routed with one ``shard_of``, and the rows that
come back put back in order. Pushes sum the gradients of duplicate ids first, so a shard's
optimizer steps once per row. A call carries its ids, gradients and rows as ``PackedSlots`` arrays,
one array each however many slots. ``route`` gives a batch's :class:`Routes`, which pulls and
pushes take in place of its fids: a trainer that pulls a batch and later pushes its gradients
routes it once.

Calls are issued to all shards before any is waited for. ``pull_async`` returns a
:class:`Pending` that ``wait`` resolves, so a trainer can issue the next batch's pull and
compute the current step while it is in flight. How a call is made is pluggable
(:class:`DirectCalls` for plain ``ShardServer`` objects in this process, which run each call
when it is issued; :class:`RayCalls` for actor handles, ``.method.remote`` then one
``ray.get``; ``monolith_ray.ps.channel.ChannelCalls`` for shard actors over direct
connections, what trainers use); by default it is chosen from the shards given. Calls from
one client reach a shard in the order issued (Ray keeps a caller's actor tasks in order, a
channel serves its connection's calls in order), so a pull issued before a push reads the
rows before that push, whichever way calls are made.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monolith_ray.ps.calls import Calls, DirectCalls, RayCalls
from monolith_ray.ps.routing import shard_of
from monolith_ray.ps.packed_slots import PackedSlots


def calls_for(shards: Sequence[Any], method: str = "pull", timeout_s: float | None = 60.0,
              transport: str = "ray") -> Calls:
    """How to call ``shards``: :class:`DirectCalls` if none is an actor handle; if every one is
    (its ``method`` has ``.remote``), :class:`RayCalls` for ``transport="ray"`` or
    ``ChannelCalls`` (``monolith_ray.ps.channel``, shard actors only) for
    ``transport="channel"``. Mixing handles and objects is an error."""
    remote = [hasattr(getattr(s, method, None), "remote") for s in shards]
    if not any(remote):
        return DirectCalls()
    if not all(remote):
        raise TypeError("shards mix Ray actor handles and plain objects")
    if transport == "channel":
        from monolith_ray.ps.channel import ChannelCalls

        return ChannelCalls(timeout_s)
    if transport == "ray":
        return RayCalls(timeout_s)
    raise ValueError(f"unknown transport {transport!r}; use 'channel' or 'ray'")


def call(target: Any, method: str, *args: Any) -> Any:
    """Call ``method`` on one actor handle or plain object and wait for its result."""
    calls = calls_for([target], method=method)
    return calls.gather([calls.submit(target, method, *args)])[0]


@dataclass
class Pending:
    """Calls in flight: one handle per shard, how to combine their results, and for a pull
    the routes of the ids it pulls."""

    handles: list[Any]
    finish: Callable[[list[Any]], Any]
    routes: Routes | None = None


@dataclass(frozen=True)
class Routes:
    """Where one batch's fids go (``ShardClient.route``). Pulls and pushes take it in place of
    the fids, so a batch pulled and later pushed is routed once.

    - ``unique``: all slots' distinct ids int64, packed slot by slot in the order given, each
      slot's sorted (U_s of slot s).
    - ``inverse``: per slot the position among its unique ids of each fid given, int (n_s,),
      or None where the fids were already distinct and sorted (a ``Batch``'s are), so are
      their own unique ids.
    - ``ids``: per shard the unique ids it owns, packed slot by slot (one array per call).
    - ``positions``: per shard and slot the positions of those ids among the slot's unique ids.
    """

    unique: PackedSlots
    inverse: tuple[np.ndarray | None, ...]
    ids: list[PackedSlots]
    positions: list[list[np.ndarray]]

    @property
    def names(self) -> tuple[str, ...]:
        return self.unique.names

    def n_fids(self, slot: int) -> int:
        """How many fids (duplicates included) slot number ``slot`` was given."""
        inverse = self.inverse[slot]
        return self.unique.counts[slot] if inverse is None else inverse.size


FidsOrRoutes = Mapping[str, np.ndarray] | Routes


class ShardClient:
    """Pull rows from and push gradients to ``shards`` (``ShardServer`` objects or actor
    handles, all holding the slots named in ``slots``). Shard calls carry ``PackedSlots`` arrays."""

    def __init__(self, shards: Sequence[Any], slots: Sequence[str],
                 calls: Calls | None = None) -> None:
        if not shards:
            raise ValueError("need at least one shard")
        self.shards = list(shards)
        self.slots = tuple(slots)
        self.calls = calls if calls is not None else calls_for(self.shards)

    @property
    def n_shards(self) -> int:
        return len(self.shards)

    # ------------------------------------------------------------------ rows

    def route(self, fids: Mapping[str, np.ndarray]) -> Routes:
        """Deduplicate per slot fids int64 (n_s,) and route the unique ids to their shards."""
        uniques, inverses = {}, []
        for name, f in fids.items():
            if name not in self.slots:
                raise KeyError(f"unknown slot {name!r}; slots: {', '.join(self.slots)}")
            f = np.asarray(f)
            if f.ndim != 1 or (f.size and not np.issubdtype(f.dtype, np.integer)):
                raise TypeError(f"fids of slot {name!r} must be 1-D int64, got {f.dtype} {f.shape}")
            f = f.astype(np.int64, copy=False)
            if f.size < 2 or bool((f[1:] > f[:-1]).all()):
                uniques[name], inverse = f, None
            else:
                uniques[name], inverse = np.unique(f, return_inverse=True)
                inverse = inverse.ravel()
            inverses.append(inverse)
        unique = PackedSlots.of(uniques, np.int64)
        starts = np.cumsum((0, *unique.counts))
        owner = shard_of(unique.data, self.n_shards)
        order = np.argsort(owner, kind="stable")
        bounds = np.searchsorted(owner[order], np.arange(self.n_shards + 1))
        ids, positions = [], []
        for k in range(self.n_shards):
            mine = order[bounds[k]:bounds[k + 1]]  # ascending, so slot by slot
            cuts = np.searchsorted(mine, starts)
            ids.append(PackedSlots(unique.names, tuple(np.diff(cuts).tolist()), unique.shapes,
                              unique.data[mine]))
            positions.append([mine[a:b] - start
                              for a, b, start in zip(cuts[:-1], cuts[1:], starts)])
        return Routes(unique, tuple(inverses), ids, positions)

    def pull_async(self, fids: FidsOrRoutes, now: float) -> Pending:
        """Issue a training lookup of per slot fids int64 (n,) (or their ``Routes``) at event
        time ``now`` (seconds); ``wait`` gives per slot rows float32 (n, D+1) in the order of
        ``fids``."""
        return self._rows_async("pull", fids, now)

    def lookup_async(self, fids: FidsOrRoutes) -> Pending:
        """Issue a serving lookup (no inserts; unknown ids read zeros); ``wait`` gives rows as
        for ``pull_async``."""
        return self._rows_async("lookup", fids)

    def push_async(self, fids: FidsOrRoutes, grads: Mapping[str, np.ndarray],
                   now: float) -> Pending:
        """Issue a push of per slot gradients float32 (n, D+1) of fids (n,) (or their
        ``Routes``); duplicate ids' gradients are summed first. ``wait`` gives the number of
        rows updated."""
        routes = self._routes(fids)
        handles = [self.calls.submit(shard, "push", ids, shard_grads, now)
                   for shard, ids, shard_grads
                   in zip(self.shards, routes.ids, _shard_grads(routes, grads))]
        return Pending(handles, sum)

    def push_pull_async(self, fids: FidsOrRoutes, grads: Mapping[str, np.ndarray],
                        now: float, pull_fids: FidsOrRoutes, pull_now: float) -> Pending:
        """``push_async(fids, grads, now)`` then ``pull_async(pull_fids, pull_now)`` in one call
        per shard (``ShardServer.push_pull``), so the pull reads the rows after the push;
        ``wait`` gives the pulled rows as for ``pull_async``."""
        routes, pull = self._routes(fids), self._routes(pull_fids)
        handles = [
            self.calls.submit(shard, "push_pull", ids, shard_grads, now, pull_ids, pull_now)
            for shard, ids, shard_grads, pull_ids
            in zip(self.shards, routes.ids, _shard_grads(routes, grads), pull.ids)
        ]
        return Pending(handles, lambda results: _assemble(pull, results), pull)

    def wait(self, pending: Pending) -> Any:
        """Block until every call of ``pending`` is done -> its combined result."""
        return pending.finish(self.calls.gather(pending.handles))

    def pull(self, fids: FidsOrRoutes, now: float) -> dict[str, np.ndarray]:
        """``pull_async`` and ``wait``."""
        return self.wait(self.pull_async(fids, now))

    def lookup(self, fids: FidsOrRoutes) -> dict[str, np.ndarray]:
        """``lookup_async`` and ``wait``."""
        return self.wait(self.lookup_async(fids))

    def push(self, fids: FidsOrRoutes, grads: Mapping[str, np.ndarray], now: float) -> int:
        """``push_async`` and ``wait`` -> rows updated."""
        return self.wait(self.push_async(fids, grads, now))

    # ------------------------------------------------------------------ maintenance

    def evict_expired(self, now: float) -> dict[str, np.ndarray]:
        """Evict idle rows on every shard -> per slot the evicted ids int64."""
        results = self._all("evict_expired", now)
        return {name: np.concatenate([r[name] for r in results]) for name in results[0]}

    def stats(self) -> dict[str, dict[str, int]]:
        """Per slot the shards' rows, bytes and counters summed (table versions are per shard
        and left out; ask a shard's ``stats`` for them)."""
        results = self._all("stats")
        return {name: {k: sum(r[name][k] for r in results)
                       for k in results[0][name] if k != "version"}
                for name in results[0]}

    def snapshot(self, directory: str | os.PathLike[str]) -> None:
        """Every shard writes its tables under ``directory/shard-<k>/``."""
        self._each("snapshot", directory)

    def restore(self, directory: str | os.PathLike[str]) -> None:
        """Every shard reads its tables back from ``directory/shard-<k>/``."""
        self._each("restore", directory)

    def _rows_async(self, method: str, fids: FidsOrRoutes, *args: Any) -> Pending:
        routes = self._routes(fids)
        handles = [self.calls.submit(shard, method, ids, *args)
                   for shard, ids in zip(self.shards, routes.ids)]
        return Pending(handles, lambda results: _assemble(routes, results), routes)

    def _routes(self, fids: FidsOrRoutes) -> Routes:
        if not isinstance(fids, Routes):
            return self.route(fids)
        if len(fids.ids) != self.n_shards:
            raise ValueError(f"routes for {len(fids.ids)} shards given to a client of "
                             f"{self.n_shards}")
        return fids

    def _each(self, method: str, directory: str | os.PathLike[str]) -> None:
        """``method`` (snapshot, restore) on every shard at once, each with its own folder, as
        Ray calls whatever the transport: maintenance that names files is never a channel
        call, and has no step's deadline."""
        calls = calls_for(self.shards, method, timeout_s=None)
        calls.gather([calls.submit(shard, method, str(Path(directory) / f"shard-{k}"))
                      for k, shard in enumerate(self.shards)])

    def _all(self, method: str, *args: Any) -> list[Any]:
        return self.calls.gather([self.calls.submit(s, method, *args) for s in self.shards])


def _shard_grads(routes: Routes, grads: Mapping[str, np.ndarray]) -> list[PackedSlots]:
    """Per shard the gradients float32 of the unique ids it owns (``routes.ids``), packed, the
    gradients of duplicate fids summed."""
    if set(grads) != set(routes.names):
        raise ValueError(
            f"fids and grads name different slots: {sorted(routes.names)} vs {sorted(grads)}")
    summed = []
    for s, name in enumerate(routes.names):
        g = np.asarray(grads[name])
        n = routes.n_fids(s)
        if g.ndim != 2 or g.shape[0] != n or g.dtype.kind != "f":
            raise ValueError(f"grads of slot {name!r} must be float (n, D+1) for its {n} fids, "
                             f"got {g.dtype} {g.shape}")
        inverse = routes.inverse[s]
        summed.append(g if inverse is None else _sum_by(inverse, routes.unique.counts[s], g))
    return [PackedSlots.of({name: g[pos] for name, g, pos in zip(routes.names, summed, positions)},
                      np.float32)
            for positions in routes.positions]


def _assemble(routes: Routes, results: list[PackedSlots]) -> dict[str, np.ndarray]:
    """Per slot the shards' rows put back in unique-id order, then expanded by the inverse."""
    parts = [r.unpack() for r in results]
    out = {}
    for s, name in enumerate(routes.names):
        width = parts[0][name].shape[1:]
        rows = np.empty((routes.unique.counts[s], *width), dtype=np.float32)
        for positions, part in zip(routes.positions, parts):
            rows[positions[s]] = part[name]
        inverse = routes.inverse[s]
        out[name] = rows if inverse is None else rows[inverse]
    return out


def _sum_by(inverse: np.ndarray, n_unique: int, grads: np.ndarray) -> np.ndarray:
    """Gradients (n, W) summed per unique id -> float32 (n_unique, W): row ``inverse[i]`` of
    the result gets ``grads[i]``."""
    summed = np.zeros((n_unique, grads.shape[1]), dtype=np.float32)
    np.add.at(summed, inverse, grads)
    return summed
