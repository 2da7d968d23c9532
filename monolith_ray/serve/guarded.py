"""Calls from a replica's event loop to an actor that must never hold requests up.

:class:`GuardedCalls` waits for each call at most ``timeout_s``; a call that fails or is late
is cancelled (``ray.cancel``: a call still queued at the actor is dropped, so calls for
requests already answered do not pile up there behind a slow actor), and none is made for
``retry_s`` after it. At most ``max_in_flight`` calls wait at once; one more is not made.
Either way the caller gets :class:`Skipped` at once and serves without the answer.

Bound: with an actor that answers ``r`` calls a second and a replica asked ``q > r``, the
actor's queue holds at most ``max_in_flight`` of this replica's calls, where without the cap
and the cancel it grew by ``q - r`` a second for as long as the load lasted (the requests'
own waits ended after ``timeout_s`` each; the actor's work did not).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


class Skipped(Exception):
    """A call not made: the actor failed or was late within ``retry_s``, or ``max_in_flight``
    calls wait already."""


def _cancel(ref: Any) -> None:
    import ray

    ray.cancel(ref)


class GuardedCalls:
    """Calls to one actor from one event loop (not thread-safe: the loop is its only user).
    ``counts``: ``calls`` made, ``failed`` (errors and timeouts), ``skipped``."""

    def __init__(self, timeout_s: float, retry_s: float, max_in_flight: int,
                 cancel: Callable[[Any], None] = _cancel,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s, self.retry_s, self.max_in_flight = timeout_s, retry_s, max_in_flight
        self._cancel, self._clock = cancel, clock
        self.in_flight = 0
        self.down_until = 0.0
        self.counts = {"calls": 0, "failed": 0, "skipped": 0}

    async def call(self, submit: Callable[[], Awaitable[Any]]) -> Any:
        """``await submit()`` (e.g. ``lambda: actor.read.remote(...)``) within ``timeout_s``
        -> its result; :class:`Skipped` if not made, else what it raised (TimeoutError if
        late)."""
        if self.in_flight >= self.max_in_flight or self._clock() < self.down_until:
            self.counts["skipped"] += 1
            raise Skipped(f"{self.in_flight} calls in flight, or the last one failed under "
                          f"{self.retry_s} s ago")
        ref = submit()
        self.counts["calls"] += 1
        self.in_flight += 1
        try:
            return await asyncio.wait_for(ref, self.timeout_s)
        except asyncio.CancelledError:  # the request's client went away: not the actor's fault
            self._drop(ref)
            raise
        except Exception:
            self.counts["failed"] += 1
            self.down_until = self._clock() + self.retry_s
            self._drop(ref)
            raise
        finally:
            self.in_flight -= 1

    def _drop(self, ref: Any) -> None:
        """Cancel ``ref``'s call if it is still to run."""
        try:
            self._cancel(ref)
        except Exception:  # noqa: BLE001 - already done or gone: nothing to drop
            pass
