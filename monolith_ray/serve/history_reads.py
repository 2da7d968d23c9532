"""A replica's reads of the history shards (``history.server``): a request's users' history
slots at the request's time, strictly before it, one call per history shard the users fall
on (or per ``MAX_READ`` of them), all at once, each guarded (``serve.guarded``): a read that
fails or is late (``history.read_timeout_s``) serves its users without them, is cancelled
at the actor, and for ``history.retry_s`` after it requests skip that shard, as do those past
``history.max_in_flight`` reads waiting on it. A request never fails for its history."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from monolith_ray.config import Config
from monolith_ray.history.server import MAX_READ
from monolith_ray.schemas import value_ids
from monolith_ray.serve.guarded import GuardedCalls, Skipped
from monolith_ray.stream.user_partitions import history_shard_of

logger = logging.getLogger(__name__)


class HistoryReads:
    """Reads of the history ``actors`` (shard i at index i; none without history slots)."""

    def __init__(self, cfg: Config, actors: Sequence[Any]) -> None:
        self.actors = list(actors) if cfg.history.slots else []
        if self.actors and len(self.actors) != cfg.history.shards:
            raise ValueError(f"{len(self.actors)} history actors for history.shards "
                             f"{cfg.history.shards}")
        self.slots = {s.name for s in cfg.history.slots}
        self._key, self._partitions = cfg.history.user_slot, cfg.kafka.partitions
        history = cfg.history
        self._calls = [GuardedCalls(history.read_timeout_s, history.retry_s,
                                    history.max_in_flight) for _ in self.actors]

    def shard_counts(self) -> list[dict[str, int]]:
        """Per shard its calls' counts (``GuardedCalls.counts``), for ``/healthz``."""
        return [dict(g.counts) for g in self._calls]

    async def add(self, users: Sequence[dict[str, Any]], now: int) -> tuple[bool, bool]:
        """Put into each user's slots their history slots' values held strictly before
        ``now`` (a slot with no value is left out) -> (a read failed or was skipped, a read
        was skipped); a failed read leaves its users out."""
        known = [u for u in users if isinstance(u.get(self._key), (int, str))]
        if not self.actors or not known:
            return False, False
        ids = value_ids([u[self._key] for u in known])
        distinct = np.unique(ids)
        owners = history_shard_of(distinct, len(self.actors), self._partitions)
        # At most MAX_READ users a call (a /predict of many users on one shard is several).
        reads = [(int(k), held[at:at + MAX_READ])
                 for k in np.unique(owners) for held in [distinct[owners == k].tolist()]
                 for at in range(0, len(held), MAX_READ)]
        answers = await asyncio.gather(*(self._read(k, held, now) for k, held in reads))
        failed = [a for a in answers if isinstance(a, BaseException)]
        at: dict[int, tuple[dict[str, list[list[int]]], int]] = {}
        for (_, held), values in zip(reads, answers):
            if not isinstance(values, BaseException):
                at.update({user_id: (values, i) for i, user_id in enumerate(held)})
        for user, user_id in zip(known, ids.tolist()):
            found = at.get(user_id)
            if found is None:
                continue
            values, i = found
            for name, lists in values.items():
                if lists[i]:
                    user[name] = lists[i]
        return bool(failed), any(isinstance(a, Skipped) for a in failed)

    async def _read(self, shard: int, users: list[int], now: int
                    ) -> dict[str, list[list[int]]] | BaseException:
        """History shard ``shard``'s values for ``users`` at ``now`` -> them, or the error
        (:class:`Skipped` if the call was not made)."""
        try:
            return await self._calls[shard].call(
                lambda: self.actors[shard].read.remote(users, [now] * len(users)))
        except Skipped as err:  # the shard failed or was late a moment ago, or is busy
            return err
        except Exception as err:  # noqa: BLE001 - logged and counted by the caller
            logger.warning("served without history: reading shard %d failed: %r", shard, err)
            return err
