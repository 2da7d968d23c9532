"""The live history of a serving deployment: a Ray actor holding a :class:`UserHistory`, fed
from the joiner's ``examples`` topic in event time and read by serving at request time.

Why it follows the ``examples`` topic with a consumer of its own rather than being called by
the joiners: the joined examples are already on that topic, decoded and validated by the
reader training uses (``data.kafka_source.KafkaExampleReader``: event times bounded by
``limits``, bad records to the dead-letter topic), so the joiners need no handle on it and are
never slowed or failed by it; a restarted actor rebuilds its store by reading the topic again
from the brokers' earliest offsets (the store's own bounds keep what it holds).

An entry's time is its example's ``time``, the impression's: the joiner's examples do not
carry the action's time. A serving read is never early all the same: an entry reaches the
store only once its action has been joined, so at request time t it holds only actions
received before t, dated by their impressions, which are earlier still. What serving read is
logged with the impression (``serve/app.py``), so the joined example trains on exactly the
values the model was served.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from monolith_ray.config import Config
from monolith_ray.history.live import UserHistory

logger = logging.getLogger(__name__)

EVICT_EVERY_S = 60.0  # how often expired users are dropped while following the stream
RETRY_AFTER_S = 1.0  # pause before reading again after the reader failed
MAX_READ = 1024  # most (user, time) pairs one read takes


class HistoryServer:
    """The history slots of ``cfg.history``, live: :meth:`observe` records examples,
    :meth:`read` gives each slot's values strictly before given times. With ``follow``, a
    thread reads ``cfg.kafka.topics.examples`` from its earliest offsets in micro-batches of
    at most ``poll_records`` examples and observes each."""

    def __init__(self, cfg: Config, follow: bool = True, poll_records: int = 2000) -> None:
        if not cfg.history.slots:
            raise ValueError("the config has no history slots (history.slots)")
        self.cfg = cfg
        self.history = UserHistory(cfg.history)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.counts = {"observed": 0, "reads": 0, "reader_errors": 0, "evicted": 0}
        self._reader: Any = None
        if follow:
            threading.Thread(target=self._follow, args=(poll_records,), name="history-follow",
                             daemon=True).start()

    def observe(self, examples: pa.Table) -> int:
        """Record the examples that count for each slot (columns: time, label, the user slot,
        each slot's source) -> rows observed."""
        with self._lock:
            self.history.observe(examples)
            self.counts["observed"] += examples.num_rows
        return examples.num_rows

    def read(self, users: Sequence[int], times: Sequence[int]) -> dict[str, list[list[int]]]:
        """Each history slot's values for (raw user id, event time) pairs: the user's entries
        strictly before that time, newest first, at most the slot's ``max_len``; at most
        ``MAX_READ`` pairs (ValueError beyond)."""
        if len(users) > MAX_READ:
            raise ValueError(f"{len(users)} users in one read, more than {MAX_READ}")
        users_a = np.asarray(users, dtype=np.int64)
        times_a = np.asarray(times, dtype=np.int64)
        with self._lock:
            values = self.history.read(users_a, times_a)
            self.counts["reads"] += 1
        return {name: column.to_pylist() for name, column in values.items()}

    def stats(self) -> dict[str, Any]:
        """Counters, users held per slot, bytes held, and the reader's positions."""
        with self._lock:
            stores = self.history.stores
            out = {**self.counts, "users": {n: len(s) for n, s in stores.items()},
                   "bytes": sum(s.nbytes for s in stores.values())}
        if self._reader is not None:
            out["positions"] = dict(self._reader.positions)
        return out

    def stop(self) -> None:
        """Stop following the stream (after the current micro-batch)."""
        self._stop.set()

    def _examples_reader(self, poll_records: int) -> Any:
        from monolith_ray.data.kafka_source import (
            KafkaExampleReader,
            StreamSpec,
            earliest_offsets,
        )

        cfg, topic = self.cfg, self.cfg.kafka.topics.examples
        return KafkaExampleReader(StreamSpec(
            kafka=cfg.kafka, topic=topic, slots=tuple(cfg.slots),
            starts=earliest_offsets(cfg.kafka, topic), poll_records=poll_records,
            limits=cfg.limits, stage="history", heartbeats=True, dense=tuple(cfg.dense),
            tasks=tuple(cfg.task_names)))

    def _follow(self, poll_records: int) -> None:
        """Observe the examples topic until :meth:`stop`; the reader is made here, not in the
        constructor, so that brokers down at start-up delay the history, not the actor."""
        evicted_at = time.monotonic()
        while not self._stop.is_set():
            try:
                if self._reader is None:
                    self._reader = self._examples_reader(poll_records)
                for table in self._reader:  # resumes from the reader's positions
                    if table.num_rows:
                        self.observe(table)
                    if time.monotonic() - evicted_at >= EVICT_EVERY_S:
                        evicted_at = time.monotonic()
                        self._evict_expired()
                    if self._stop.is_set():
                        return
            except Exception as err:  # noqa: BLE001 - history must outlive a Kafka outage
                self.counts["reader_errors"] += 1
                logger.warning("history: reading the examples failed, retrying: %s", err)
                self._stop.wait(RETRY_AFTER_S)

    def _evict_expired(self) -> None:
        now = time.time()
        with self._lock:
            for store in self.history.stores.values():
                self.counts["evicted"] += store.evict_expired(now)


HistoryActor = ray.remote(max_concurrency=4)(HistoryServer)
"""``HistoryServer`` as a Ray actor; reads from serving replicas run beside each other and
beside the thread following the stream (a lock guards the store)."""


def start_history_server(cfg: Config) -> Any:
    """Start the history actor of ``cfg``, following its examples topic if
    ``kafka.bootstrap_servers`` is set, restarted by Ray like the other actors
    (``supervision``) -> its handle, or None if the config has no history slots."""
    from monolith_ray.supervision import actor_options

    if not cfg.history.slots:
        return None
    return HistoryActor.options(num_cpus=0, **actor_options(cfg.supervision)).remote(
        cfg, follow=bool(cfg.kafka.bootstrap_servers))
