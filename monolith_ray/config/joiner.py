"""The ``joiner`` section: the online joiner's windows, spill, sampling and commits."""

from __future__ import annotations

import dataclasses
from typing import Literal

from monolith_ray.config.loader import ConfigError, _require

JoinerStart = Literal["earliest", "latest"]
ExamplesKey = Literal["user", "request"]


@dataclasses.dataclass(frozen=True)
class JoinerConfig:
    """The online joiner (``monolith_ray.stream.joiner``): features + actions -> examples.

    Spans marked *event time* are seconds of the messages' own clock, so a replay at any speed
    joins the same way; the others are wall-clock schedules.

    - ``window_s`` (event time): how long after its impression a positive action still counts;
      an impression with none by then is a negative example.
    - ``allowed_lateness_s`` (event time): how far behind the newest event time a message may
      arrive and still be joined; the watermark is the event-time clock minus this.
    - ``spill_after_s`` (event time): features waiting longer than this move from memory to
      the on-disk store (and are still joined from there).
    - ``max_in_memory``: most waiting features kept in memory; beyond it the oldest move to
      the on-disk store whatever their age (a backlog may be read ahead on one topic). A cap
      on top of ``memory_budget_mb``, which bounds them by their bytes.
    - ``memory_budget_mb``: what the joiner's state may take in memory (MiB): the waiting
      impressions it holds (their messages plus ~450 B each) and the on-disk store's key
      filter and page cache (three eighths of it). Beyond it the oldest impressions move to
      the on-disk store, which keeps orphan actions and the per-offset records of commits
      too, so the state in memory stays within the budget however many impressions wait.
    - ``idle_partition_s`` (wall clock): a partition read to its end with no record for this
      long stops holding back the event-time clock (until its next record).
    - ``negative_rate``: probability of keeping a negative example (by a stable hash of its
      request id); kept negatives carry weight ``1 / negative_rate``.
    - ``n_joiners``: joiner actors; joiner k reads the partitions p with p % n_joiners == k.
    - ``group_id``: Kafka consumer group the joiners commit their offsets to.
    - ``commit_interval_s`` (wall clock): time between offset commits; 0 = after every poll.
      It bounds the examples a restarted joiner emits twice.
    - ``start``: where a partition with no committed offset is read from.
    - ``max_poll_records``: most records handled per poll.
    - ``spill_dir``: folder of the on-disk store; empty = a fresh temp folder.
    - ``cpus``: Ray CPUs reserved per joiner actor.
    - ``examples_key``: which partition of ``examples`` an example goes to: ``user``, its
      user's (``stream.user_partitions``: history shards then read only their own
      partitions), or ``request``, its features partition's number (every history shard
      reads the whole topic).
    - ``recoveries_per_hour``: times within an hour a joiner may start again from its
      committed offsets after a fatal consumer error or a message the brokers did not take
      (``monolith_ray.stream.joiner``); one more fails its run.
    """

    window_s: int = 600
    allowed_lateness_s: int = 30
    spill_after_s: int = 120
    max_in_memory: int = 200_000
    memory_budget_mb: int = 256
    idle_partition_s: float = 5.0
    negative_rate: float = 1.0
    n_joiners: int = 1
    group_id: str = "monolith_ray-joiner"
    commit_interval_s: float = 5.0
    start: JoinerStart = "earliest"
    max_poll_records: int = 5000
    spill_dir: str = ""
    cpus: float = 0.25
    recoveries_per_hour: int = 10
    examples_key: ExamplesKey = "user"

    def __post_init__(self) -> None:
        _require(self, "window_s", ge=0)
        _require(self, "allowed_lateness_s", ge=0)
        _require(self, "spill_after_s", ge=0)
        _require(self, "max_in_memory", ge=0)
        _require(self, "memory_budget_mb", ge=16)
        _require(self, "idle_partition_s", ge=0)
        _require(self, "negative_rate", gt=0, le=1)
        _require(self, "n_joiners", ge=1)
        _require(self, "commit_interval_s", ge=0)
        _require(self, "max_poll_records", ge=1)
        _require(self, "cpus", ge=0)
        _require(self, "recoveries_per_hour", ge=0)
        if not self.group_id:
            raise ConfigError("group_id", "must not be empty")
