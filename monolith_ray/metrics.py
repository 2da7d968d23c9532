"""Every measure monolith_ray reports, in one place: metrics of ``ray.util.metrics``.

Each process records its own; Ray's metrics agent on each node serves them all to Prometheus
(``http://<node>:<MetricsExportPort>/metrics``; ``ray.nodes()`` lists the port) with ``ray_``
before the name, ``_total`` after a counter's, and the tags ``WorkerId``, ``NodeAddress`` and
``SessionName`` besides the metric's own. ``grafana_dashboard.json`` (beside ``cluster.yaml``)
charts every one; the README's "Metrics" section lists them with their units.

Rates (examples per second...) are Prometheus's ``rate()`` of the counters here, never
computed by a process. A point in time is a gauge of unix seconds (``*_timestamp_seconds``):
an age is ``time() - that``, which keeps growing when nothing happens, where a process's own
age gauge would stop with it.

A metric is made on its first use in a process where Ray is initialized, and recording is a
no-op where it is not, so plain in-process use (unit tests, a notebook) is untouched. Costs:
a record is a call into Ray's core worker, microseconds; the hot loops record per batch or
step, or at most once a second (:data:`REPORT_EVERY_S`), never per message.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

REPORT_EVERY_S = 1.0
"""Seconds between a loop's reports of what it reads from its own state (Kafka lag, a
joiner's counts); Ray exports every ``metrics_report_interval_ms`` (10 s by default)."""


class Metric:
    """One metric family: ``kind`` counter, gauge or histogram, named ``name`` (units in
    the name's tail or in ``doc``), recorded with the tags ``tags``."""

    def __init__(self, kind: str, name: str, doc: str, tags: tuple[str, ...] = (),
                 boundaries: Sequence[float] = ()) -> None:
        self.kind, self.name, self.doc, self.tags = kind, name, doc, tags
        self.boundaries = list(boundaries)
        self._made: Any = None
        self._lock = threading.Lock()

    @property
    def series(self) -> tuple[str, ...]:
        """The names Prometheus scrapes of this family."""
        base = "ray_" + self.name
        if self.kind == "counter":
            return (base + "_total",)
        if self.kind == "histogram":
            return (base + "_bucket", base + "_sum", base + "_count")
        return (base,)

    def _metric(self) -> Any:
        """Ray's metric, made on first use once Ray is initialized; None before."""
        if self._made is None:
            import ray

            if not ray.is_initialized():
                return None
            from ray.util import metrics

            with self._lock:
                if self._made is None:
                    if self.kind == "counter":
                        self._made = metrics.Counter(self.name, self.doc, self.tags)
                    elif self.kind == "gauge":
                        self._made = metrics.Gauge(self.name, self.doc, self.tags)
                    else:
                        self._made = metrics.Histogram(self.name, self.doc, self.boundaries,
                                                       self.tags)
        return self._made

    def _tags(self, tags: Mapping[str, Any]) -> dict[str, str]:
        return {k: str(v) for k, v in tags.items()}

    def inc(self, value: float = 1.0, **tags: Any) -> None:
        """Add ``value`` to a counter; nothing if ``value`` <= 0."""
        metric = self._metric() if value > 0 else None
        if metric is not None:
            metric.inc(value, self._tags(tags))

    def set(self, value: float, **tags: Any) -> None:
        """Set a gauge."""
        metric = self._metric()
        if metric is not None:
            metric.set(value, self._tags(tags))

    def observe(self, value: float, **tags: Any) -> None:
        """Add an observation to a histogram."""
        metric = self._metric()
        if metric is not None:
            metric.observe(value, self._tags(tags))


_SECONDS_FAST = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SECONDS_SLOW = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

KAFKA_LAG = Metric(
    "gauge", "monolith_ray_kafka_lag",
    "Records of a partition not yet read by its consumer: end offset (as last fetched) "
    "minus position. process: joiner | source (training's read tasks).",
    ("process", "topic", "partition"))
EXAMPLES_JOINED = Metric(
    "counter", "monolith_ray_examples_joined",
    "Examples a joiner wrote to the examples topic. label: positive | negative.",
    ("joiner", "label"))
EXAMPLES_READ = Metric(
    "counter", "monolith_ray_examples_read",
    "Examples training's Kafka source read (valid records; refused ones are dead letters).",
    ("topic",))
EXAMPLES_TRAINED = Metric(
    "counter", "monolith_ray_examples_trained",
    "Examples trainers stepped on (padding excluded).")
TRAIN_STEP_SECONDS = Metric(
    "histogram", "monolith_ray_train_step_seconds",
    "Seconds of a training step, from resuming to its gradients being ready.",
    boundaries=_SECONDS_FAST)
DEAD_LETTERS = Metric(
    "counter", "monolith_ray_dead_letters",
    "Records refused and sent to the dead-letter topic. stage: joiner | source | dump.",
    ("stage",))
DEAD_LETTERS_FAILED = Metric(
    "counter", "monolith_ray_dead_letters_failed",
    "Dead letters the brokers did not take (or not tried during a backoff).", ("stage",))
TABLE_ROWS = Metric(
    "gauge", "monolith_ray_table_rows", "Rows (ids) a shard holds of a slot.",
    ("slot", "shard"))
TABLE_BYTES = Metric(
    "gauge", "monolith_ray_table_bytes",
    "Bytes a shard holds of a slot: id map, rows, optimizer state, admission filter.",
    ("slot", "shard"))
TABLE_EVICTIONS = Metric(
    "counter", "monolith_ray_table_evictions", "Rows a shard evicted of a slot (ids).",
    ("slot", "shard"))
TABLE_ADMISSIONS = Metric(
    "counter", "monolith_ray_table_admissions", "Rows a shard inserted of a slot (ids).",
    ("slot", "shard"))
SNAPSHOT_SECONDS = Metric(
    "histogram", "monolith_ray_snapshot_seconds",
    "Seconds a snapshot took, from its first file to its manifest and pruning.",
    boundaries=_SECONDS_SLOW)
SNAPSHOT_BYTES = Metric(
    "gauge", "monolith_ray_snapshot_bytes", "Bytes of the newest snapshot's files.")
SNAPSHOT_TIMESTAMP = Metric(
    "gauge", "monolith_ray_snapshot_timestamp_seconds",
    "Unix seconds when the newest snapshot was complete; age: time() - this.")
SYNC_VERSION = Metric(
    "gauge", "monolith_ray_sync_version",
    "The parameter sync's newest version, the one a current replica serves. kind: sparse "
    "| dense.", ("kind",))
SERVING_VERSION = Metric(
    "gauge", "monolith_ray_serving_version",
    "The version a serving replica answers with (compare with monolith_ray_sync_version: "
    "a replica behind is stale). kind: sparse | dense.", ("kind",))
SYNC_TIMESTAMP = Metric(
    "gauge", "monolith_ray_sync_timestamp_seconds",
    "Unix seconds of the last successful sync of a kind; serving's freshness: time() - this.",
    ("kind",))
SYNC_SECONDS = Metric(
    "histogram", "monolith_ray_sync_seconds", "Seconds a sync took (failed ones too).",
    ("kind",), boundaries=_SECONDS_FAST)
SYNC_ROWS = Metric(
    "counter", "monolith_ray_sync_rows",
    "Rows changed or evicted that sparse syncs moved to serving.")
SYNC_FAILURES = Metric(
    "counter", "monolith_ray_sync_failures", "Syncs that failed (serving keeps its versions).",
    ("kind",))
RESTARTS = Metric(
    "counter", "monolith_ray_restarts",
    "Restarts of a run's process (Ray's restarts of its actors, the job's of its trainers). "
    "process: shard-K, dense, sync, joiner-K, source-monitor, trainers.", ("process",))


METRICS: dict[str, Metric] = {m.name: m for m in globals().values() if isinstance(m, Metric)}
"""Every family above by name."""


class Deltas:
    """Increments of cumulative counts kept elsewhere (a joiner's counters, a shard's table
    counters): :meth:`step` -> how much a count grew since the last one seen under its key
    (all of it the first time). A count that fell (its process restarted, or restored from a
    snapshot) grew by nothing and is the base from then on."""

    def __init__(self) -> None:
        self._last: dict[Hashable, float] = {}

    def step(self, key: Hashable, total: float) -> float:
        last = self._last.get(key, 0)
        self._last[key] = total
        return total - last if total > last else 0


class TableReporter:
    """The table metrics of a run's shards, from their ``stats()`` (per slot: rows, bytes
    and the table's counters): rows and bytes per slot and shard, and the growth of their
    evictions and admissions. Keep one per run (it remembers the counts it has reported)."""

    def __init__(self) -> None:
        self._deltas = Deltas()

    def report(self, shard_stats: Sequence[Mapping[str, Mapping[str, int]]]) -> None:
        """Record ``shard_stats``: shard K's ``stats()`` at index K."""
        for shard, stats in enumerate(shard_stats):
            for slot, s in stats.items():
                TABLE_ROWS.set(s["rows"], slot=slot, shard=shard)
                TABLE_BYTES.set(s["bytes"], slot=slot, shard=shard)
                TABLE_EVICTIONS.inc(self._deltas.step((slot, shard, "evicted"),
                                                      s.get("evicted", 0)),
                                    slot=slot, shard=shard)
                TABLE_ADMISSIONS.inc(self._deltas.step((slot, shard, "admitted"),
                                                       s.get("admitted", 0)),
                                     slot=slot, shard=shard)

    def poll(self, shards: Sequence[Any], timeout_s: float) -> bool:
        """Ask every shard actor for its ``stats()`` and :meth:`report` them -> whether they
        answered within ``timeout_s`` (a shard restarting does not; metrics never fail a
        run, so nothing is raised)."""
        import ray

        try:
            self.report(ray.get([s.stats.remote() for s in shards], timeout=timeout_s))
        except (ray.exceptions.RayError, TimeoutError):
            return False
        return True


def rss_bytes() -> int:
    """This process's resident set size in bytes (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
