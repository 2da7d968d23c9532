"""The ``limits`` section: bounds on what enters from outside (requests and messages)."""

from __future__ import annotations

import dataclasses

from monolith_ray.config.loader import _require


@dataclasses.dataclass(frozen=True)
class LimitsConfig:
    """Bounds on the event times and request contexts that serving, the joiner and the
    trainers accept (checked in ``monolith_ray.validation``), one setting for all of them.

    - ``max_event_skew_s``: an event time further than this many seconds ahead of the
      receiver's wall clock is refused (a message from the far future would move the joiner's
      event-time clock and expire every waiting impression).
    - ``min_event_time_s``: event times (unix seconds) before this are refused; 0 = any.
    - ``max_context_bytes``: largest encoded JSON ``context`` a request or message may carry
      (2 is the empty object ``{}``).
    - ``max_context_depth``: deepest nesting of ``context`` (1 = a flat object).
    """

    max_event_skew_s: float = 300.0
    min_event_time_s: int = 0
    max_context_bytes: int = 4096
    max_context_depth: int = 8

    def __post_init__(self) -> None:
        _require(self, "max_event_skew_s", gt=0)
        _require(self, "min_event_time_s", ge=0)
        _require(self, "max_context_bytes", ge=2)
        _require(self, "max_context_depth", ge=1)
