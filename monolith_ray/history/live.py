"""The history slots of a config kept live: one :class:`HistoryStore` per history slot, fed
with examples as they happen and read for impressions at request time."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from monolith_ray.config.history import HistoryConfig
from monolith_ray.history.replay import entries
from monolith_ray.history.store import HistoryStore


class UserHistory:
    """Every history slot of ``config``: :meth:`observe` records the positive examples of a
    table, :meth:`read` gives each slot's values for (user, time) pairs. Fed the examples in
    event-time order, reading an example before observing it gives what
    :func:`~monolith_ray.history.replay.with_history` builds for it. Bounds: each slot's
    :class:`HistoryStore` (``config.max_users`` users, its ``max_len`` entries each)."""

    def __init__(self, config: HistoryConfig) -> None:
        self.config = config
        self.stores = {s.name: HistoryStore(s.max_len, config.max_users, s.expire_s)
                       for s in config.slots}

    def observe(self, examples: pa.Table) -> None:
        """Record the positive examples of ``examples`` (columns: time, label, the user slot
        and each history slot's source)."""
        for slot in self.config.slots:
            _, users, times, values = entries(examples, slot, self.config.user_slot)
            self.stores[slot.name].add(users, times, values)

    def read(self, users: np.ndarray, times: np.ndarray) -> dict[str, pa.ListArray]:
        """Each history slot's values for int64 (q,) users at event times (q,): entries
        strictly before each time, newest first (``HistoryStore.values_before``)."""
        return {name: store.values_before(users, times) for name, store in self.stores.items()}
