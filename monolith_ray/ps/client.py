"""ShardClient: a trainer's view of the sharded parameter servers.

Per step and per direction it makes one call per shard carrying every slot: the batch's fids
are deduplicated per slot (``np.unique``), the unique ids routed with ``shard_of``, and the
rows that come back put back in order. Pushes sum the gradients of duplicate ids first, so a
shard's optimizer steps once per row.

Calls are issued to all shards before any is waited for. ``pull_async`` returns a
:class:`Pending` that ``wait`` resolves, so a trainer can issue the next batch's pull and
compute the current step while it is in flight. How a call is made is pluggable
(:class:`DirectCalls` for plain ``ShardServer`` objects in this process, which run each call
when it is issued; :class:`RayCalls` for actor handles, ``.method.remote`` then one
``ray.get``); by default it is chosen from the shards given. Calls from one client reach a
shard in the order issued (Ray keeps a caller's actor tasks in order), so a pull issued
before a push reads the rows before that push, the same in both modes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from monolith_ray.ps.routing import shard_of


class Calls(Protocol):
    """How a client reaches its shards: ``submit`` issues one call, ``gather`` waits for many."""

    def submit(self, shard: Any, method: str, *args: Any) -> Any: ...

    def gather(self, handles: list[Any]) -> list[Any]: ...


class DirectCalls:
    """Calls methods of in-process objects: the call runs when submitted."""

    def submit(self, shard: Any, method: str, *args: Any) -> Any:
        return getattr(shard, method)(*args)

    def gather(self, handles: list[Any]) -> list[Any]:
        return list(handles)


class ShardUnavailableError(RuntimeError):
    """A parameter server is dead or did not answer in time; the step did not happen."""


class RayCalls:
    """Calls Ray actor handles: ``submit`` is ``shard.method.remote(...)``, ``gather`` one
    ``ray.get`` over all the object refs, bounded by ``timeout_s``. A dead actor or a timeout
    raises :class:`ShardUnavailableError` naming the call's position (the shard index for a
    client's calls) instead of hanging."""

    def __init__(self, timeout_s: float | None = 60.0) -> None:
        self.timeout_s = timeout_s

    def submit(self, shard: Any, method: str, *args: Any) -> Any:
        return getattr(shard, method).remote(*args)

    def gather(self, handles: list[Any]) -> list[Any]:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        try:
            return ray.get(list(handles), timeout=self.timeout_s)
        except GetTimeoutError as err:
            ready, _ = ray.wait(list(handles), num_returns=len(handles), timeout=0)
            late = [i for i, h in enumerate(handles) if h not in ready]
            raise ShardUnavailableError(
                f"parameter server(s) {late} of {len(handles)} did not answer within "
                f"{self.timeout_s} s") from err
        except RayActorError as err:
            dead = []
            for i, h in enumerate(handles):
                try:
                    ray.get(h, timeout=0)
                except RayActorError:
                    dead.append(i)
                except GetTimeoutError:
                    pass  # still running: alive
            raise ShardUnavailableError(
                f"parameter server(s) {dead} of {len(handles)} are dead or unreachable "
                f"({type(err).__name__}); restart them from the latest snapshot") from err


def calls_for(shards: Sequence[Any], method: str = "pull", timeout_s: float | None = 60.0
              ) -> Calls:
    """:class:`RayCalls` if every shard is an actor handle (its ``method`` has ``.remote``),
    :class:`DirectCalls` if none is; mixing the two is an error."""
    remote = [hasattr(getattr(s, method, None), "remote") for s in shards]
    if all(remote):
        return RayCalls(timeout_s)
    if not any(remote):
        return DirectCalls()
    raise TypeError("shards mix Ray actor handles and plain objects")


def call(target: Any, method: str, *args: Any) -> Any:
    """Call ``method`` on one actor handle or plain object and wait for its result."""
    calls = calls_for([target], method=method)
    return calls.gather([calls.submit(target, method, *args)])[0]


@dataclass
class Pending:
    """Calls in flight: one handle per shard, and how to combine their results."""

    handles: list[Any]
    finish: Callable[[list[Any]], Any]


@dataclass
class _Routes:
    """Where one batch's ids go: per slot its unique ids (U,) and the inverse (n,) into them,
    and per shard the unique ids it owns and their positions among the slot's unique ids."""

    unique: dict[str, np.ndarray]
    inverse: dict[str, np.ndarray]
    ids: list[dict[str, np.ndarray]]
    positions: list[dict[str, np.ndarray]]


class ShardClient:
    """Pull rows from and push gradients to ``shards`` (``ShardServer`` objects or actor
    handles, all holding the slots named in ``slots``)."""

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

    def pull_async(self, fids: Mapping[str, np.ndarray], now: float) -> Pending:
        """Issue a training lookup of per slot fids int64 (n,) at event time ``now`` (seconds);
        ``wait`` gives per slot rows float32 (n, D+1) in the order of ``fids``."""
        return self._rows_async("pull", fids, now)

    def lookup_async(self, fids: Mapping[str, np.ndarray]) -> Pending:
        """Issue a serving lookup (no inserts; unknown ids read zeros); ``wait`` gives rows as
        for ``pull_async``."""
        return self._rows_async("lookup", fids)

    def push_async(self, fids: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray],
                   now: float) -> Pending:
        """Issue a push of per slot gradients float32 (n, D+1) of fids (n,); duplicate ids'
        gradients are summed first. ``wait`` gives the number of rows updated."""
        handles = [self.calls.submit(shard, "push", ids, shard_grads, now)
                   for shard, (ids, shard_grads) in zip(self.shards, self._push_args(fids, grads))]
        return Pending(handles, sum)

    def push_pull_async(self, fids: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray],
                        now: float, pull_fids: Mapping[str, np.ndarray], pull_now: float
                        ) -> Pending:
        """``push_async(fids, grads, now)`` then ``pull_async(pull_fids, pull_now)`` in one call
        per shard (``ShardServer.push_pull``), so the pull reads the rows after the push;
        ``wait`` gives the pulled rows as for ``pull_async``."""
        routes = self._route(pull_fids)
        handles = [
            self.calls.submit(shard, "push_pull", ids, shard_grads, now, pull_ids, pull_now)
            for shard, (ids, shard_grads), pull_ids
            in zip(self.shards, self._push_args(fids, grads), routes.ids)
        ]
        return Pending(handles, lambda results: _assemble(routes, results))

    def wait(self, pending: Pending) -> Any:
        """Block until every call of ``pending`` is done -> its combined result."""
        return pending.finish(self.calls.gather(pending.handles))

    def pull(self, fids: Mapping[str, np.ndarray], now: float) -> dict[str, np.ndarray]:
        """``pull_async`` and ``wait``."""
        return self.wait(self.pull_async(fids, now))

    def lookup(self, fids: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``lookup_async`` and ``wait``."""
        return self.wait(self.lookup_async(fids))

    def push(self, fids: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray],
             now: float) -> int:
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

    def _rows_async(self, method: str, fids: Mapping[str, np.ndarray], *args: Any) -> Pending:
        routes = self._route(fids)
        handles = [self.calls.submit(shard, method, ids, *args)
                   for shard, ids in zip(self.shards, routes.ids)]
        return Pending(handles, lambda results: _assemble(routes, results))

    def _each(self, method: str, directory: str | os.PathLike[str]) -> None:
        self.calls.gather([self.calls.submit(shard, method, str(Path(directory) / f"shard-{k}"))
                           for k, shard in enumerate(self.shards)])

    def _all(self, method: str, *args: Any) -> list[Any]:
        return self.calls.gather([self.calls.submit(s, method, *args) for s in self.shards])

    def _push_args(self, fids: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]
                   ) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """Per shard the unique ids it owns and their gradients, duplicates summed."""
        if fids.keys() != grads.keys():
            raise ValueError(
                f"fids and grads name different slots: {sorted(fids)} vs {sorted(grads)}")
        routes = self._route(fids)
        summed = {name: _sum_by(routes.inverse[name], routes.unique[name].size, grads[name], name)
                  for name in fids}
        return [(ids, {n: summed[n][pos[n]] for n in ids})
                for ids, pos in zip(routes.ids, routes.positions)]

    def _route(self, fids: Mapping[str, np.ndarray]) -> _Routes:
        n = self.n_shards
        routes = _Routes({}, {}, [{} for _ in range(n)], [{} for _ in range(n)])
        for name, f in fids.items():
            if name not in self.slots:
                raise KeyError(f"unknown slot {name!r}; slots: {', '.join(self.slots)}")
            f = np.asarray(f)
            if f.ndim != 1 or (f.size and not np.issubdtype(f.dtype, np.integer)):
                raise TypeError(f"fids of slot {name!r} must be 1-D int64, got {f.dtype} {f.shape}")
            unique, inverse = np.unique(f.astype(np.int64, copy=False), return_inverse=True)
            routes.unique[name], routes.inverse[name] = unique, inverse.ravel()
            owner = shard_of(unique, n)
            order = np.argsort(owner, kind="stable")
            bounds = np.searchsorted(owner[order], np.arange(n + 1))
            for k in range(n):
                pos = order[bounds[k]:bounds[k + 1]]
                routes.ids[k][name] = unique[pos]
                routes.positions[k][name] = pos
        return routes


def _assemble(routes: _Routes, results: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per slot the shards' rows put back in unique-id order, then expanded by the inverse."""
    out = {}
    for name, inverse in routes.inverse.items():
        width = results[0][name].shape[1]
        rows = np.empty((routes.unique[name].size, width), dtype=np.float32)
        for pos, result in zip(routes.positions, results):
            rows[pos[name]] = result[name]
        out[name] = rows[inverse]
    return out


def _sum_by(inverse: np.ndarray, n_unique: int, grads: np.ndarray, name: str) -> np.ndarray:
    """Gradients (n, W) summed per unique id -> (n_unique, W): row ``inverse[i]`` of the result
    gets ``grads[i]``."""
    grads = np.asarray(grads)
    if grads.ndim != 2 or grads.shape[0] != inverse.size or grads.dtype.kind != "f":
        raise ValueError(f"grads of slot {name!r} must be float (n, D+1) for its {inverse.size} "
                         f"fids, got {grads.dtype} {grads.shape}")
    summed = np.zeros((n_unique, grads.shape[1]), dtype=np.float32)
    np.add.at(summed, inverse, grads)
    return summed
