"""Supervision: every process of a running loop is restarted, counted, logged and bounded.

Who restarts what (the README's fault-tolerance table says what each restart costs):

- **Ray** restarts the actors whose state lives elsewhere or is rebuilt on start: shards and the
  dense server (restore the latest snapshot), the sync actor (reloads everything from the
  shards), joiners (resume from the offsets committed to their consumer group) and the source
  monitor (counts from zero). They are started with :func:`actor_options`:
  ``max_restarts = supervision.max_restarts`` and ``max_task_retries = -1``, so calls in flight
  (a joiner's ``run``, a trainer's pull) are retried on the new process instead of failing.
- **The online job** restarts its trainers itself (``monolith_ray.train.online``): a trainer's
  split of the stream cannot move to a new process, so the job replaces its trainers and
  reads the stream again from the offsets they committed. It counts those restarts here, and
  pauses before each that follows another closely (:meth:`Supervisor.backoff_s`: Ray's own
  restarts of an actor come at once, so a crash loop there is bounded by count alone).
- **Ray Serve** restarts replicas (its controller health-checks them).

A :class:`Supervisor` watches a run's actors: :meth:`Supervisor.check` reads each one's restart
count from Ray's control store (the count ``ray list actors`` shows; no dashboard needed),
logs every new restart at WARNING (``monolith_ray.supervision``) and raises
:class:`RestartLimitError` naming the process once one has died for good: past its allowance,
or killed outside the job. :meth:`Supervisor.counts` is what the demo's table, the online
job's ``metrics.json`` and ``/healthz`` show as ``restarts``; each restart it sees is also
counted in the metric ``monolith_ray_restarts`` (``monolith_ray.metrics``).

An actor whose state is restored on a restart asks :func:`restarted_actor` (Ray's own word
on it, never a guess) and :func:`restore_if_restarted` loads its snapshot then.

Costs: :meth:`Supervisor.check` makes one control-store read per watched actor (a few per
shard, joiner and server: tens per check at most, every ``supervision.check_every_s``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from monolith_ray import metrics
from monolith_ray.config.supervision import SupervisionConfig

logger = logging.getLogger(__name__)


def restore_if_restarted(server: Any, restore_on_restart: Callable[[], str | None] | None
                         ) -> str | None:
    """If this process is a Ray actor restarted after its process died and
    ``restore_on_restart`` names a snapshot, ``server.restore`` it -> the folder restored
    (None: a first start, or nothing to restore)."""
    if restore_on_restart is None or not restarted_actor():
        return None
    folder = restore_on_restart()
    if folder is not None:
        server.restore(folder)
    return folder


class RestartUnknownError(RuntimeError):
    """A server could not tell whether Ray restarted it, so it cannot tell whether it must
    restore its snapshot: it refuses to start rather than serve a table that may be empty."""


def restarted_actor() -> bool:
    """Whether this process is a Ray actor restarted after a failure: False outside Ray and
    in a driver or a task. An error while asking Ray raises :class:`RestartUnknownError`,
    never passes for a first start: a restarted shard that skipped its restore would serve
    empty rows as if nothing had happened."""
    import ray

    if not ray.is_initialized():
        return False
    try:
        context = ray.get_runtime_context()
        if context.get_actor_id() is None:
            return False
        return bool(context.was_current_actor_reconstructed)
    except Exception as err:  # noqa: BLE001 - any failure here is reported, not guessed at
        raise RestartUnknownError(
            f"cannot tell whether this actor was restarted ({type(err).__name__}: {err}); "
            f"refusing to start rather than skip restoring its snapshot") from err


class RestartLimitError(RuntimeError):
    """A process of the run died for good: past ``supervision.max_restarts`` restarts, or
    killed outside the run. Its message names the process, its restarts and the cause."""


def actor_options(cfg: SupervisionConfig) -> dict[str, int]:
    """Ray options of an actor that Ray restarts: at most ``cfg.max_restarts`` times (-1: no
    limit), with the calls in flight and queued retried on the new process."""
    return {"max_restarts": cfg.max_restarts, "max_task_retries": -1}


def actor_state(handle: Any) -> dict[str, Any]:
    """Ray's control-store record of an actor: its ``State`` (ALIVE, RESTARTING, DEAD...),
    ``NumRestarts`` and ``DeathCause`` ({} if Ray does not know it)."""
    from ray._private import state  # the record `ray list actors` reads, without a dashboard

    return state.actors(actor_id=handle._actor_id.hex())


class Supervisor:
    """A run's restart ledger: actors Ray restarts (:meth:`watch`) and restarts the run makes
    itself (:meth:`restarted`), counted per name and bounded by ``cfg.max_restarts``, each
    of the latter with the pause :meth:`backoff_s` gives (``clock``: seconds, monotonic).
    Thread-safe."""

    def __init__(self, cfg: SupervisionConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self._clock = clock
        self._watched: dict[str, Any] = {}
        self._counts: dict[str, int] = {}
        # per name the run restarted: (restarts in its current streak, when the last one's
        # pause ends, that pause)
        self._streaks: dict[str, tuple[int, float, float]] = {}
        self._lock = threading.Lock()

    def watch(self, name: str, handle: Any) -> None:
        """Watch ``handle`` (a Ray actor started with :func:`actor_options`) as ``name``."""
        with self._lock:
            self._watched[name] = handle
            self._counts.setdefault(name, 0)

    def watch_all(self, handles: Mapping[str, Any]) -> None:
        for name, handle in handles.items():
            self.watch(name, handle)

    def restarted(self, name: str, cause: BaseException | str,
                  limit: tuple[str, int] | None = None) -> int:
        """Count a restart the run makes of ``name``, log it -> its restarts so far.
        RestartLimitError (before restarting) once that is past the ``limit`` (the key that
        sets it and its value; default ``supervision.max_restarts``)."""
        key, most = limit or ("supervision.max_restarts", self.cfg.max_restarts)
        now = self._clock()
        with self._lock:
            n = self._counts.get(name, 0) + 1
            self._counts[name] = n
            streak, last, _ = self._streaks.get(name, (0, now, 0.0))
            streak = 1 if now - last > self.cfg.backoff_reset_s else streak + 1
            pause = 0.0 if streak == 1 else min(
                self.cfg.backoff_s * 2.0 ** min(streak - 2, 60), self.cfg.max_backoff_s)
            self._streaks[name] = (streak, now + pause, pause)  # quiet counts after the pause
        metrics.RESTARTS.inc(process=name)
        if 0 <= most < n:
            raise RestartLimitError(
                f"{name} failed {n} times, more than {key}={most}; last cause: {_short(cause)}")
        logger.warning("monolith_ray: restarting %s (restart %d%s): %s", name, n,
                       _of(most), _short(cause))
        return n

    def backoff_s(self, name: str) -> float:
        """Seconds to wait before the restart of ``name`` last counted by :meth:`restarted`:
        0 for the first of a streak, then ``backoff_s`` doubling up to ``max_backoff_s``
        (see :class:`~monolith_ray.config.SupervisionConfig`)."""
        with self._lock:
            return self._streaks.get(name, (0, 0.0, 0.0))[2]

    def check(self) -> dict[str, int]:
        """Read every watched actor's restarts, log new ones -> :meth:`counts`.
        RestartLimitError if one is dead for good."""
        with self._lock:
            watched = dict(self._watched)
        for name, handle in watched.items():
            record = actor_state(handle)
            if not record:
                continue
            n = int(record.get("NumRestarts", 0))
            with self._lock:
                seen = self._counts.get(name, 0)
                self._counts[name] = max(seen, n)
            if n > seen:
                metrics.RESTARTS.inc(n - seen, process=name)
                logger.warning("monolith_ray: %s was restarted by Ray (restart %d%s)", name, n,
                               _of(self.cfg.max_restarts))
            if record.get("State") == "DEAD":
                raise RestartLimitError(
                    f"{name} died for good after {n} restart(s) (supervision.max_restarts="
                    f"{self.cfg.max_restarts}): {_short(record.get('DeathCause', ''))}")
        return self.counts()

    def counts(self) -> dict[str, int]:
        """Restarts so far per name (watched actors and the run's own restarts)."""
        with self._lock:
            return dict(self._counts)

    def total(self) -> int:
        return sum(self.counts().values())


def _of(limit: int) -> str:
    return f" of {limit} allowed" if limit >= 0 else ""


def _short(cause: Any, limit: int = 400) -> str:
    """A cause in one bounded line."""
    text = " ".join(str(cause).split())
    return text if len(text) <= limit else text[:limit] + "..."
