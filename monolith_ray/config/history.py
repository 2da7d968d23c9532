"""The ``history`` section: real-time user-history slots (``monolith_ray.history``).

A history slot holds a user's last ``max_len`` values of a source slot from their positive
examples (or, by its label range, other ones) — the item id (``recent_items``) or an item slot
such as ``genres`` (``recent_genres``) — newest first, each younger than ``expire_s``, and
only from actions whose event time is strictly before the impression's. It is also an
ordinary multi-valued slot of ``slots`` (same tables, same pooling, same model input as
``genres``), so its ``max_values`` must hold ``max_len``. Serving reads it from the history
actor (``history.server``) at most ``read_timeout_s`` per request::

    history:
      user_slot: user_id
      max_users: 1000000
      slots:
        - {name: recent_items, source: item_id, max_len: 20, expire_s: 2592000}
        - {name: recent_genres, source: genres, max_len: 30}
        - {name: recent_passed_items, source: item_id, max_len: 20, min_label: 0, max_label: 0}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from monolith_ray.config.loader import ConfigError, _require, require_unique_names
from monolith_ray.config.slots import SlotConfig
from monolith_ray.files import filesystem_and_path

MAX_LEN = 1024  # the most values any slot may hold (``validation``'s list bound)
MAX_SHARDS = 256  # the most history actors


@dataclasses.dataclass(frozen=True)
class HistorySlot:
    """One history slot.

    - ``name``: the slot it fills, a multi-valued slot of ``slots`` with ``max_values >=
      max_len``.
    - ``source``: the slot of the impression whose values a positive action records (the
      item id, or an item slot such as ``genres``: each of its values is one entry).
    - ``max_len``: N, the most recent entries kept and read per user.
    - ``expire_s``: an entry older than this at the reading time is left out; 0 = never.
    - ``min_label``, ``max_label``: an example (Parquet, ``examples`` topic) counts when its
      label is within [min_label, max_label]; the default [1, 1] is the positives (the
      joiner's label 1 = a positive action, ``messages.POSITIVE_ACTIONS``). A slot of what a
      user passed over sets [0, 0].
    """

    name: str
    source: str
    max_len: int = 20
    expire_s: float = 0.0
    min_label: float = 1.0
    max_label: float = 1.0

    def __post_init__(self) -> None:
        _require(self, "max_len", ge=1, le=MAX_LEN)
        _require(self, "expire_s", ge=0)
        _require(self, "min_label", ge=0, le=1)
        _require(self, "max_label", ge=self.min_label, le=1)
        if self.source == self.name:
            raise ConfigError("source", f"must differ from the slot itself, got {self.source!r}")


@dataclasses.dataclass(frozen=True)
class HistoryConfig:
    """Where the user id comes from, how many users the store holds, and the history slots.

    - ``user_slot``: the single-valued slot holding the user id.
    - ``max_users``: the most users a store holds, per history shard; past it the least
      recently active are dropped (``history.store``).
    - ``shards``: how many history actors share the users, each holding the users of whole
      examples partitions (``history.server``, ``stream.user_partitions``): at most
      ``kafka.partitions``, best a divisor of it (else some shards hold more users than
      others); ``shards × max_users`` users in all, at about 16 bytes an entry plus 8 a
      user (1M users of one 20-entry slot: 0.33 GB an actor). With examples keyed by user
      (``joiner.examples_key``) a shard reads only its own partitions; else every one.
    - ``read_timeout_s``: how long serving waits for the history actor per request; past it
      the request is served without history (``history.server``).
    - ``retry_s``: after a read that failed or was late, a replica serves without history
      for this long without asking (``serve.guarded``).
    - ``max_in_flight``: the most reads a replica waits for at once, per history shard (as
      ``retry_s``); a request past it is served without history at once.
    - ``checkpoint_every_s``: how often the history actor writes its stores and read
      positions (``history.checkpoint``), so that a restart resumes from there rather than
      from the examples topic's earliest offsets; 0 = never, at most a day (other actors
      delete checkpoints not written for 7 days: ``history.checkpoint``).
    - ``checkpoint_root``: where (a folder or a ``pyarrow.fs`` URI; on a cluster, storage
      every node reaches); empty: ``<data.output_dir>/history``.
    """

    user_slot: str = "user_id"
    max_users: int = 1_000_000
    shards: int = 1
    slots: tuple[HistorySlot, ...] = ()
    read_timeout_s: float = 0.1
    retry_s: float = 1.0
    max_in_flight: int = 64
    checkpoint_every_s: float = 300.0
    checkpoint_root: str = ""

    def __post_init__(self) -> None:
        _require(self, "max_users", ge=1)
        _require(self, "shards", ge=1, le=MAX_SHARDS)
        _require(self, "read_timeout_s", gt=0)
        _require(self, "retry_s", ge=0)
        _require(self, "max_in_flight", ge=1)
        _require(self, "checkpoint_every_s", ge=0, le=86_400)
        if self.checkpoint_root:
            try:
                filesystem_and_path(self.checkpoint_root)
            except (ValueError, OSError) as err:
                raise ConfigError("checkpoint_root", f"{self.checkpoint_root!r}: {err}"
                                  ) from None
        require_unique_names(self.slots, "slots", "slots")

    def check_slots(self, slots: Sequence[SlotConfig]) -> None:
        """ConfigError (key relative to this section) unless every name it uses is a fitting
        slot of ``slots``: the user slot single-valued, each history slot multi-valued with
        room for ``max_len`` values, each source a slot that is not a history slot."""
        by_name = {s.name: s for s in slots}
        names = ", ".join(by_name)
        history = {h.name for h in self.slots}
        if not self.slots:
            return
        user = by_name.get(self.user_slot)
        if user is None or user.max_values != 1:
            raise ConfigError("user_slot", f"{self.user_slot!r} is not a single-valued slot; "
                                           f"slots: {names}")
        for i, h in enumerate(self.slots):
            slot = by_name.get(h.name)
            if slot is None:
                raise ConfigError(f"slots[{i}].name", f"{h.name!r} is not a slot; slots: {names}")
            if slot.max_values < max(2, h.max_len):
                raise ConfigError(f"slots[{i}].name", f"slot {h.name!r} must be multi-valued "
                                  f"with max_values >= max_len {h.max_len}, has "
                                  f"{slot.max_values}")
            if h.source not in by_name or h.source in history or h.source == self.user_slot:
                raise ConfigError(f"slots[{i}].source", f"{h.source!r} is not an item slot; "
                                  f"slots: {names}")
