"""The ``supervision`` section: how often a run's processes may be restarted."""

from __future__ import annotations

import dataclasses

from monolith_ray.config.loader import _require


@dataclasses.dataclass(frozen=True)
class SupervisionConfig:
    """Restarts of a run's processes (see ``monolith_ray.supervision``).

    - ``max_restarts``: restarts each process may take over a run (each shard, the dense
      server, the sync actor, each joiner, the source monitor, and the trainers together)
      before the run fails naming it; -1: no limit. A restart comes back from committed
      offsets or the latest snapshot; a crash loop uses the allowance up in minutes, a month
      of node losses does not.
    - ``check_every_s``: seconds between the job's looks at its processes (restart counts,
      trainers' committed offsets); what a dead trainer trains again is at most this much
      of its stream beyond its last commit.
    - ``backoff_s``, ``max_backoff_s``, ``backoff_reset_s``: the pause before a restart the
      job makes itself (its trainers, its stream) when it follows another of the same
      process: the first restart of a streak comes at once, the second after ``backoff_s``
      (1), each further one after twice the last, at most ``max_backoff_s`` (60, at most a
      day); a streak ends once that process goes ``backoff_reset_s`` (600) after a restart's
      pause without another. A crash that
      repeats at the same offset then spends ``train.max_failures`` (20) restarts over at
      least 14 minutes at the defaults, not in one burst.
    """

    max_restarts: int = 20
    check_every_s: float = 2.0
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    backoff_reset_s: float = 600.0

    def __post_init__(self) -> None:
        _require(self, "max_restarts", ge=-1)
        _require(self, "check_every_s", gt=0)
        _require(self, "backoff_s", ge=0)
        _require(self, "max_backoff_s", ge=self.backoff_s, le=86_400)
        _require(self, "backoff_reset_s", gt=0)
