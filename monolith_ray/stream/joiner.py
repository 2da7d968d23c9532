"""The online joiner: ``features`` + ``actions`` -> ``examples``, on event time.

Three pieces, each usable alone:

- :class:`Joiner` — the core, with no Kafka and no Ray: records in, examples and dead letters
  out, and the offsets it is safe to commit.
- :class:`StreamJoiner` — one joiner's Kafka loop: a consumer of its share of both topics, a
  producer of examples and dead letters, and offset commits to a consumer group.
- :data:`JoinerActor` (``StreamJoiner`` as a Ray actor) and :func:`run_joiners`.

**Join.** An impression (a ``features`` message) is keyed by (request id, item id) and waits
for a positive action (``messages.POSITIVE_ACTIONS``) on the same key no later than
``window_s`` after it (event time). The first such action makes it a positive example at once;
an impression still waiting when the watermark passes ``time + window_s`` becomes a negative
example. Actions that arrive before their impression wait too (as *orphans*) until the
watermark passes their own time. Other actions (``skip``) and clicks after the window are
only counted. An example is its impression's ``features`` message with ``"label"`` and
``"weight"`` added (``messages.parse_example`` reads it; the extra fields ``user_id``,
``item_id`` and ``context`` ride along), spliced into the message's bytes so that the slots
are never encoded again.

**Event-time clock.** Each (topic, partition) keeps the newest event time read from it. The
clock is the oldest of these over the *active* partitions: those with unread records (so a
backlog read faster on one topic than the other cannot expire impressions whose actions are
merely unread) or with a record in the last ``idle_partition_s`` (so a live topic that
arrives a little behind the other holds the clock back too). When none is active, it is the
newest over all partitions, so a partition that has gone quiet stops nothing. The watermark is
the clock minus ``allowed_lateness_s``. Windows never read the wall clock, so a backlog
replayed at any speed gives the same examples; the wall clock only decides when a partition
counts as quiet.

**Spill.** Impressions waiting longer than ``spill_after_s`` (event time) move to an on-disk
store, and so do the oldest beyond ``max_in_memory`` (a backlog read faster on the features
topic than on the actions topic holds impressions ahead of the clock). The store is SQLite
from the standard library: a B-tree keyed by (request id, item id) with an index
on time, so a late action finds its impression in one lookup and expiry is one range scan;
it needs no server, no new dependency and no tuning, and is among the most tested storage
engines. It is a cache, not state: a restarted joiner starts with it empty and re-reads from
Kafka what was pending (see *Offsets*), so journaling and fsync are off.

**Negative sampling.** A negative is kept iff ``stable_unit(request_id) < r`` (BLAKE2b, so
every replay and every joiner agrees) and then weighs ``1 / r``. Weighted, the sampled
examples have the original data's expected loss, so a model trained on them is calibrated as
it is (the positive rate weighted by ``weight`` equals the true CTR). That is the same
correction as Monolith's log-odds correction: a model trained *without* the weights predicts
odds ``1 / r`` times too high, i.e. a logit ``-log r`` too high, which serving can undo with
:func:`log_odds_correction`. Use one or the other, never both.

**Partitions.** Producers key both topics by request id, so with equal partition counts a
request's feature and actions sit in the same partition number of both topics; joiner k of n
takes partitions p with ``p % n == k`` of both, and every join is local to one joiner.

**Offsets.** Each joiner commits, per partition, the offset of its oldest still-pending
feature (all below are joined or emitted), and for actions the oldest action still needed:
a waiting orphan, or the action that joined a feature at or above that feature offset (so a
restarted joiner that re-reads those features re-reads their actions too and labels them the
same). Commits go to Kafka (consumer group ``group_id``, manual assignment), after the
producer has flushed every example so far. Delivery is at-least-once: after a restart, the
examples of features at or above the committed offsets that were emitted before the crash are
emitted again; that is the traffic of about one ``window_s + allowed_lateness_s`` plus one
``commit_interval_s``.

Malformed messages (bad JSON, missing fields, wrong types, values out of the bounds of
``monolith_ray.validation``, a slot the model does not have, a second pending impression with
the same key) go to the dead-letter topic with the reason and are counted; nothing stops.
Event times are bounded before they reach the clock: a message whose time is more than
``limits.max_event_skew_s`` ahead of the joiner's wall clock (or before
``limits.min_event_time_s``) is a dead letter, so one message from the far future cannot move
the watermark and expire every impression, nor be pinned by a commit to return after a
restart (its offset is passed like any other dead letter's).
"""

from __future__ import annotations

import hashlib
import heapq
import math
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import ray
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from monolith_ray.config import (
    Config,
    JoinerConfig,
    KafkaConfig,
    KafkaTopics,
    LimitsConfig,
    SlotConfig,
)
from monolith_ray.messages import (
    POSITIVE_ACTIONS,
    MessageError,
    dead_letter,
    decode,
    encode,
    parse_action,
    parse_feature,
)
from monolith_ray.stream.kafka import DeliveryReports, librdkafka_config

__all__ = [
    "COUNTERS",
    "Joiner",
    "JoinerActor",
    "SpillStore",
    "StreamJoiner",
    "log_odds_correction",
    "run_joiners",
    "stable_unit",
]

FEATURES, ACTIONS = "features", "actions"
COUNTERS = ("features", "actions", "positives", "negatives", "sampled_out", "dead_letters",
            "spilled", "pending", "orphans", "unmatched_actions", "late_features")
"""What a joiner counts: valid ``features`` and ``actions`` read; ``positives`` and
``negatives`` emitted; negatives dropped by sampling (``sampled_out``); messages sent to the
dead-letter topic; impressions ever moved to disk (``spilled``); impressions (``pending``) and
positive actions (``orphans``) waiting now; positive actions that joined nothing (after the
window, repeated, or their impression never came: ``unmatched_actions``); impressions that
arrived after their window had already closed (``late_features``, emitted as negatives)."""
_SAMPLING_SALT = b"neg-sampling"

Key = tuple[str, str]


def stable_unit(text: str, salt: bytes = _SAMPLING_SALT) -> float:
    """A uniform number in [0, 1) fixed by ``text`` and ``salt`` (BLAKE2b), the same in every
    process and run, unlike Python's salted ``hash()``."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, salt=salt).digest()
    return (int.from_bytes(digest, "little") >> 11) / float(1 << 53)


def log_odds_correction(logit: np.ndarray | float, negative_rate: float) -> np.ndarray | float:
    """The logit of a model trained on negatives kept at rate ``r`` *without* the ``1 / r``
    weights -> the logit of the true click probability: ``logit + log(r)``.

    Keeping each negative with probability r multiplies the odds the model learns by 1 / r;
    adding log r undoes that at serving time. Models trained on the joiner's weighted
    examples need no correction."""
    if not 0.0 < negative_rate <= 1.0:
        raise ValueError(f"negative_rate must be in (0, 1], got {negative_rate}")
    return logit + np.log(negative_rate)


def _reason(err: Exception) -> str:
    """A dead letter's reason: a validation error's own text, else the error's type too."""
    return str(err) if isinstance(err, MessageError) else f"{type(err).__name__}: {err}"


class SpillStore:
    """Impressions waiting on disk (SQLite): (request id, item id) -> partition, offset, time
    and the features message as read.

    A cache that Kafka can rebuild after a restart, so it is emptied when opened and written
    with journaling and fsync off. The keys stay in memory too (a set, a tenth of an
    impression's size), so the common miss costs no query. ``path=None`` uses SQLite's private
    temporary database: in memory while small, then a temp file, deleted when closed.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = "" if path is None else os.fspath(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._keys: set[Key] = set()
        self._db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
            "DROP TABLE IF EXISTS pending;"
            "CREATE TABLE pending (rid TEXT NOT NULL, item TEXT NOT NULL, part INTEGER NOT NULL,"
            " off INTEGER NOT NULL, time INTEGER NOT NULL, raw BLOB NOT NULL,"
            " PRIMARY KEY (rid, item)) WITHOUT ROWID;"
            "CREATE INDEX pending_time ON pending (time);")

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: Key) -> bool:
        return key in self._keys

    def put_many(self, rows: Sequence[tuple[str, str, int, int, int, bytes]]) -> None:
        """Store (request id, item id, partition, offset, time, message) rows; the keys must
        not be stored yet."""
        if rows:
            self._db.executemany("INSERT INTO pending VALUES (?, ?, ?, ?, ?, ?)", rows)
            self._keys.update((row[0], row[1]) for row in rows)

    def get(self, key: Key) -> tuple[int, int, int, bytes] | None:
        """(partition, offset, time, message) stored under ``key``, or None."""
        if key not in self._keys:
            return None
        return self._db.execute("SELECT part, off, time, raw FROM pending "
                                "WHERE rid = ? AND item = ?", key).fetchone()

    def delete(self, key: Key) -> None:
        """Forget ``key``, which must be stored."""
        self._db.execute("DELETE FROM pending WHERE rid = ? AND item = ?", key)
        self._keys.discard(key)

    def pop_older(self, before: int | None) -> list[tuple[str, int, int, int, bytes, str]]:
        """Remove and return (request id, partition, offset, time, message, item id) of
        every row with time < ``before`` (None: every row), oldest first."""
        if not self._keys:
            return []
        where, args = ("", ()) if before is None else (" WHERE time < ?", (before,))
        rows = self._db.execute(f"SELECT rid, part, off, time, raw, item FROM pending{where} "
                                f"ORDER BY time", args).fetchall()
        if rows:
            self._db.execute(f"DELETE FROM pending{where}", args)
            self._keys.difference_update((row[0], row[5]) for row in rows)
        return rows

    def close(self) -> None:
        """Close the database (a temporary one is deleted)."""
        self._db.close()


_WAITING = object()
_POSITIVE = b',"label":1.0,"weight":1.0}'


class Joiner:
    """The join of features and actions on event time; no I/O but the spill store.

    Feed one partition's records at a time with :meth:`add` (``kind`` ``"features"`` or
    ``"actions"``; records are (offset, value bytes) pairs), move the clock with
    :meth:`advance`, collect the output with :meth:`take_output`, and ask
    :meth:`commit_offsets` what is safe to commit. ``topics`` names the source topics in dead
    letters; ``slots`` (the config's) makes a features message naming another slot, or a
    value that does not fit its slot, a dead letter, as the trainer would refuse it;
    ``limits`` bounds event times and contexts. Rules: see the module docstring.
    """

    def __init__(self, cfg: JoinerConfig, topics: KafkaTopics | None = None,
                 store: SpillStore | None = None, slots: Sequence[SlotConfig] | None = None,
                 limits: LimitsConfig | None = None) -> None:
        self.cfg = cfg
        self._known = None if slots is None else {s.name: s for s in slots}
        self._limits = limits if limits is not None else LimitsConfig()
        topics = topics or KafkaTopics()
        self._topic = {FEATURES: topics.features, ACTIONS: topics.actions}
        self._store = store if store is not None else SpillStore()
        self._window = cfg.window_s
        self._weight = 1.0 / cfg.negative_rate
        self._negative_tail = b',"label":0.0,"weight":%s}' % encode(self._weight)
        # Impressions waiting in memory: key -> (partition, offset, time, message bytes); a
        # heap of (time, partition, offset, key) finds the oldest (stale entries are skipped).
        self._memory: dict[Key, tuple[int, int, int, bytes]] = {}
        self._by_time: list[tuple[int, int, int, Key]] = []
        # Positive actions waiting for their impression: key -> (partition, offset, time).
        self._orphans: dict[Key, tuple[int, int, int]] = {}
        self._orphans_by_time: list[tuple[int, int, int, Key]] = []
        # Per features partition, the offsets read since the oldest waiting one, in order, and
        # each one's fate: _WAITING, None (emitted as a negative or sampled out) or the
        # (partition, offset) of the action that joined it.
        self._order: dict[int, deque[int]] = {}
        self._fate: dict[int, dict[int, Any]] = {}
        self._next: dict[tuple[str, int], int] = {}
        self._newest: dict[tuple[str, int], int] = {}
        self.clock: int | None = None
        self._examples: list[tuple[int, bytes]] = []
        self._dead: list[bytes] = []
        self.counters = dict.fromkeys(COUNTERS, 0)

    # -- input -------------------------------------------------------------------------------

    def seek(self, kind: str, partition: int, offset: int) -> None:
        """Declare that ``kind``'s ``partition`` is read from ``offset`` on (what
        :meth:`commit_offsets` reports for it until records arrive)."""
        self._check_kind(kind)
        self._next[kind, partition] = offset
        if kind == FEATURES:
            self._order.setdefault(partition, deque())
            self._fate.setdefault(partition, {})

    def newest(self, kind: str, partition: int) -> int | None:
        """The newest event time read from ``kind``'s ``partition`` (None before any)."""
        return self._newest.get((kind, partition))

    def add(self, kind: str, partition: int,
            records: Sequence[tuple[int, bytes | None]]) -> None:
        """Join a batch of one partition's records, (offset, value) in offset order."""
        self._check_kind(kind)
        if not records:
            return
        if kind == FEATURES:
            self._add_features(partition, records)
        else:
            self._add_actions(partition, records)
        self._next[kind, partition] = records[-1][0] + 1

    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind not in (FEATURES, ACTIONS):
            raise ValueError(f"kind must be {FEATURES!r} or {ACTIONS!r}, got {kind!r}")

    def _add_features(self, partition: int,
                      records: Sequence[tuple[int, bytes | None]]) -> None:
        self.seek(FEATURES, partition, self._next.get((FEATURES, partition), 0))
        order, fate = self._order[partition], self._fate[partition]
        memory, orphans, store, window = self._memory, self._orphans, self._store, self._window
        expire_before = self._expire_before()
        newest = self._newest.get((FEATURES, partition), -1)
        known, limits, now = self._known, self._limits, time.time()
        count = 0
        for offset, value in records:
            try:
                msg = parse_feature(decode(value or b""), known, limits, now)
            except Exception as err:  # noqa: BLE001 - one bad record never fails its batch
                self._reject(FEATURES, partition, offset, value, _reason(err))
                continue
            t, rid = msg["time"], msg["request_id"]
            key = (rid, str(msg["item_id"]))
            if key in memory or key in store:
                self._reject(FEATURES, partition, offset, value, f"request_id/item_id {rid!r}/"
                             f"{key[1]!r}: an impression with this key is already waiting")
                continue
            count += 1
            newest = t if t > newest else newest
            order.append(offset)
            orphan = orphans.pop(key, None) if orphans else None
            if orphan is not None:
                if orphan[2] - t <= window:
                    fate[offset] = orphan[:2]
                    self._emit(partition, value, _POSITIVE)
                    continue
                self.counters["unmatched_actions"] += 1
            if expire_before is not None and t < expire_before:
                self.counters["late_features"] += 1
                fate[offset] = None
                self._negative(partition, rid, value)
                continue
            fate[offset] = _WAITING
            memory[key] = (partition, offset, t, value)
            heapq.heappush(self._by_time, (t, partition, offset, key))
        self._newest[FEATURES, partition] = newest
        self.counters["features"] += count

    def _add_actions(self, partition: int,
                     records: Sequence[tuple[int, bytes | None]]) -> None:
        memory, store, window, counters = self._memory, self._store, self._window, self.counters
        newest = self._newest.get((ACTIONS, partition), -1)
        limits, now = self._limits, time.time()
        count = 0
        for offset, value in records:
            try:
                msg = parse_action(decode(value or b""), limits, now)
            except Exception as err:  # noqa: BLE001 - one bad record never fails its batch
                self._reject(ACTIONS, partition, offset, value, _reason(err))
                continue
            count += 1
            t = msg["time"]
            newest = t if t > newest else newest
            if msg["action"] not in POSITIVE_ACTIONS:
                continue
            key = (msg["request_id"], str(msg["item_id"]))
            waiting = memory.get(key)
            spilled = None if waiting is not None else store.get(key)
            if waiting is not None or spilled is not None:
                fp, fo, ft, raw = waiting if waiting is not None else spilled
                if t - ft > window:
                    counters["unmatched_actions"] += 1
                    continue
                if waiting is not None:
                    del memory[key]
                else:
                    store.delete(key)
                self._fate[fp][fo] = (partition, offset)
                self._emit(fp, raw, _POSITIVE)
            elif key in self._orphans:
                counters["unmatched_actions"] += 1
            else:
                self._orphans[key] = (partition, offset, t)
                heapq.heappush(self._orphans_by_time, (t, partition, offset, key))
        self._newest[ACTIONS, partition] = newest
        counters["actions"] += count

    def _reject(self, kind: str, partition: int, offset: int, value: bytes | None,
                reason: str) -> None:
        self.counters["dead_letters"] += 1
        self._dead.append(encode(dead_letter(self._topic[kind], partition, offset, reason,
                                             value or b"", "joiner")))

    # -- output ------------------------------------------------------------------------------

    def _emit(self, partition: int, feature: bytes, label_weight: bytes) -> None:
        """Emit the example of an impression: its features message (validated JSON object
        bytes) with ``label_weight`` (``,"label":..,"weight":..}``) spliced in for the closing
        brace, so the slots are never encoded again."""
        self.counters["positives" if label_weight is _POSITIVE else "negatives"] += 1
        self._examples.append((partition, feature.rstrip()[:-1] + label_weight))

    def _negative(self, partition: int, rid: str, feature: bytes) -> None:
        """Emit a negative with weight 1/r, or drop it (kept with probability r)."""
        if self._weight == 1.0 or stable_unit(rid) < self.cfg.negative_rate:
            self._emit(partition, feature, self._negative_tail)
        else:
            self.counters["sampled_out"] += 1

    def take_output(self) -> tuple[list[tuple[int, bytes]], list[bytes]]:
        """The examples, as (features partition, JSON bytes), and the dead letters (JSON
        bytes) made since the last call."""
        out = self._examples, self._dead
        self._examples, self._dead = [], []
        return out

    # -- event time --------------------------------------------------------------------------

    def advance(self, active: Iterable[tuple[str, int]] = ()) -> int | None:
        """Move the clock, then expire and spill what it passed -> the clock.

        ``active``: the (kind, partition) pairs that hold the clock back (for
        :class:`StreamJoiner`: those with unread records or a recent one). The clock is the
        oldest newest-time among them (it stays put if one has none yet), or the newest over
        every partition when there are none; it never goes back.
        """
        active = list(active)
        times = [self._newest.get(tp) for tp in active]
        if not active:
            clock = max(self._newest.values(), default=None)
        else:
            clock = None if None in times else min(times)
        if clock is not None and (self.clock is None or clock > self.clock):
            self.clock = clock
        if self.clock is None:
            self._expire(-math.inf, -math.inf)
        else:
            self._expire(self._expire_before(), self.clock - self.cfg.spill_after_s)
        return self.clock

    def _expire_before(self) -> int | None:
        """Impressions older than this can no longer be joined (None before any clock)."""
        if self.clock is None:
            return None
        return self.clock - self.cfg.allowed_lateness_s - self._window

    def _expire(self, expire_before: float, spill_before: float) -> None:
        """Emit as negatives the impressions with time < ``expire_before``, spill the others
        with time < ``spill_before`` and the oldest beyond ``max_in_memory``, and drop the
        orphans behind the watermark (``expire_before + window_s``)."""
        memory, heap, fate, spill = self._memory, self._by_time, self._fate, []
        limit = max(expire_before, spill_before)
        over = len(memory) - self.cfg.max_in_memory
        while heap and (heap[0][0] < limit or over > 0):
            t, partition, offset, key = heapq.heappop(heap)
            waiting = memory.get(key)
            if waiting is None or waiting[:2] != (partition, offset):
                continue
            del memory[key]
            over -= 1
            if t < expire_before:
                fate[partition][offset] = None
                self._negative(partition, key[0], waiting[3])
            else:
                spill.append((*key, partition, offset, t, waiting[3]))
        self._store.put_many(spill)
        self.counters["spilled"] += len(spill)
        if expire_before > -math.inf:
            before = None if expire_before == math.inf else int(expire_before)
            for rid, partition, offset, _, raw, _ in self._store.pop_older(before):
                fate[partition][offset] = None
                self._negative(partition, rid, raw)
        watermark = expire_before + self._window
        orphans, heap = self._orphans, self._orphans_by_time
        while heap and heap[0][0] < watermark:
            t, partition, offset, key = heapq.heappop(heap)
            if orphans.get(key, ())[:2] == (partition, offset):
                del orphans[key]
                self.counters["unmatched_actions"] += 1
        self.counters["pending"] = len(memory) + len(self._store)
        self.counters["orphans"] = len(orphans)

    def drain(self) -> None:
        """End of input: emit every waiting impression as a negative and drop the orphans.
        Only for a finite stream (a replay that has ended): on a live one it would miss
        actions still to come."""
        self._expire(math.inf, math.inf)

    # -- offsets -----------------------------------------------------------------------------

    def commit_offsets(self) -> dict[tuple[str, int], int]:
        """(kind, partition) -> the offset to commit, for every partition read or seeked:
        every feature below it is joined or emitted, and every action below it is no longer
        needed (see the module docstring)."""
        out: dict[tuple[str, int], int] = {}
        needed: dict[int, int] = {}
        for partition, order in self._order.items():
            fate = self._fate[partition]
            while order and fate[order[0]] is not _WAITING:
                del fate[order.popleft()]
            out[FEATURES, partition] = order[0] if order else self._next[FEATURES, partition]
            for joined in fate.values():
                if joined is not None and joined is not _WAITING:
                    ap, ao = joined
                    if ao < needed.get(ap, ao + 1):
                        needed[ap] = ao
        for ap, ao, _ in self._orphans.values():
            if ao < needed.get(ap, ao + 1):
                needed[ap] = ao
        for (kind, partition), offset in self._next.items():
            if kind == ACTIONS:
                out[ACTIONS, partition] = min(offset, needed.get(partition, offset))
        return out

    def close(self) -> None:
        """Close the spill store."""
        self._store.close()


class StreamJoiner:
    """Joiner ``index`` of ``count`` (default ``cfg.n_joiners``) on Kafka: reads partitions
    p with ``p % count == index`` of the features and actions topics from the offsets
    committed to ``cfg.group_id`` (else from ``cfg.start``), writes examples (to partition
    ``p % examples partitions``) and dead letters, and commits every ``commit_interval_s``.

    The clients are confluent-kafka's (librdkafka): they read and write records in C, where
    kafka-python spends more per record than the whole join. Step with :meth:`poll` or loop
    with :meth:`run`; :meth:`counters` any time (also from another thread: the actor allows
    two concurrent calls so that it answers during ``run``).
    """

    def __init__(self, kafka: KafkaConfig, cfg: JoinerConfig, index: int = 0,
                 count: int | None = None, timeout_s: float = 30.0,
                 slots: Sequence[SlotConfig] | None = None,
                 limits: LimitsConfig | None = None) -> None:
        count = cfg.n_joiners if count is None else count
        if not 0 <= index < count:
            raise ValueError(f"joiner index must be in [0, {count}), got {index}")
        self.cfg, self.index, self.count, self._timeout_s = cfg, index, count, timeout_s
        self._topics = kafka.topics
        conf = librdkafka_config(kafka)
        self._consumer = Consumer({
            **conf, "group.id": cfg.group_id, "enable.auto.commit": False,
            "enable.auto.offset.store": False, "auto.offset.reset": cfg.start,
            "enable.partition.eof": True})
        self._reports = DeliveryReports(kafka)
        self._producer = self._reports.producer
        store = None
        if cfg.spill_dir:
            os.makedirs(cfg.spill_dir, exist_ok=True)
            store = SpillStore(os.path.join(cfg.spill_dir, f"joiner-{index}-of-{count}.sqlite"))
        self._core = Joiner(cfg, kafka.topics, store, slots, limits)
        self._kinds = self._assign()
        self._n_examples = len(self._partitions(self._topics.examples))
        self._caught_up = dict.fromkeys(self._kinds, False)
        self._last_record = dict.fromkeys(self._kinds, -math.inf)
        self._last_commit = time.monotonic()
        self._stop = threading.Event()

    def _partitions(self, topic: str) -> list[int]:
        found = self._consumer.list_topics(topic, timeout=self._timeout_s).topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise ValueError(f"topic {topic!r} not found: {found and found.error}")
        return sorted(found.partitions)

    def _assign(self) -> dict[tuple[str, int], tuple[str, int]]:
        """Assign this joiner's partitions of both topics, each from its committed offset
        (librdkafka's default) -> (topic, partition): (kind, partition)."""
        names = {FEATURES: self._topics.features, ACTIONS: self._topics.actions}
        found = {kind: self._partitions(name) for kind, name in names.items()}
        if found[FEATURES] != found[ACTIONS]:
            raise ValueError(
                f"topics {names[FEATURES]!r} and {names[ACTIONS]!r} must have the same "
                f"partitions so that keying by request id co-partitions them; got "
                f"{len(found[FEATURES])} and {len(found[ACTIONS])}")
        kinds = {(names[kind], p): (kind, p) for kind in (FEATURES, ACTIONS)
                 for p in found[kind] if p % self.count == self.index}
        tps = [TopicPartition(topic, p) for topic, p in kinds]
        for tp in self._consumer.committed(tps, timeout=self._timeout_s):
            if tp.offset >= 0:
                self._core.seek(kinds[tp.topic, tp.partition][0], tp.partition, tp.offset)
        self._consumer.assign(tps)
        return kinds

    def poll(self, timeout_s: float = 0.1) -> int:
        """Read one batch (waiting up to ``timeout_s`` for it), join it, move the clock, send
        the output, and commit if ``commit_interval_s`` has passed -> records read."""
        messages = self._consumer.consume(self.cfg.max_poll_records, timeout_s)
        batches: dict[tuple[str, int], list[tuple[int, bytes | None]]] = {}
        caught_up, last_record, now = self._caught_up, self._last_record, time.monotonic()
        topic, partition, append = None, -1, None
        for m in messages:
            err = m.error()
            if err is None:
                # Runs of one partition are the rule: look the batch up only when it changes.
                if m.partition() != partition or m.topic() != topic:
                    topic, partition = m.topic(), m.partition()
                    caught_up[topic, partition] = False
                    last_record[topic, partition] = now
                    append = batches.setdefault((topic, partition), []).append
                append((m.offset(), m.value()))
            elif err.code() == KafkaError._PARTITION_EOF:
                caught_up[m.topic(), m.partition()] = True
                topic, partition = None, -1
            else:
                raise KafkaException(err)
        n = 0
        for tp, batch in batches.items():
            self._core.add(*self._kinds[tp], batch)
            n += len(batch)
        quiet_since = now - self.cfg.idle_partition_s
        self._core.advance(kp for tp, kp in self._kinds.items()
                           if not caught_up[tp] or last_record[tp] > quiet_since)
        self._send()
        if time.monotonic() - self._last_commit >= self.cfg.commit_interval_s:
            self.commit()
        return n

    def _send(self) -> None:
        examples, dead = self._core.take_output()
        topic, n = self._topics.examples, self._n_examples
        for p, value in examples:
            self._produce(topic, value, p % n)
        for value in dead:
            self._produce(self._topics.dead_letter, value, None)
        self._producer.poll(0)

    def _produce(self, topic: str, value: bytes, partition: int | None) -> None:
        kwargs = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(topic, value, **kwargs)
                return
            except BufferError:
                self._producer.poll(0.05)

    def commit(self) -> dict[tuple[str, int], int]:
        """Flush the producer, then commit the offsets :meth:`Joiner.commit_offsets` gives ->
        them. Raises (and commits nothing) if a message could not be written."""
        unsent = self._producer.flush(self._timeout_s)
        reports = self._reports
        if unsent or reports.failed:
            last = list(reports.recent)[-3:]
            raise RuntimeError(f"joiner {self.index}: {unsent} messages unsent, "
                               f"{reports.failed} failed (last: {last}); offsets not committed")
        offsets = self._core.commit_offsets()
        names = {FEATURES: self._topics.features, ACTIONS: self._topics.actions}
        if offsets:
            self._consumer.commit(offsets=[TopicPartition(names[kind], p, o)
                                           for (kind, p), o in offsets.items()],
                                  asynchronous=False)
        self._last_commit = time.monotonic()
        return offsets

    def run(self, max_seconds: float | None = None, stop_when_idle_s: float | None = None,
            drain: bool = False) -> dict[str, int]:
        """Poll until :meth:`stop`, ``max_seconds`` (wall) have passed, or no record has come
        for ``stop_when_idle_s`` (wall); then, if ``drain`` (a finished replay), emit every
        waiting impression as a negative; commit -> :meth:`counters`."""
        start = idle_since = time.monotonic()
        while not self._stop.is_set():
            if self.poll():
                idle_since = time.monotonic()
            now = time.monotonic()
            if max_seconds is not None and now - start >= max_seconds:
                break
            if stop_when_idle_s is not None and now - idle_since >= stop_when_idle_s:
                break
        if drain:
            self._core.drain()
            self._send()
        self.commit()
        return self.counters()

    def stop(self) -> None:
        """Make :meth:`run` return after its current poll."""
        self._stop.set()

    def counters(self) -> dict[str, int]:
        """Counts so far (see ``COUNTERS``) and this joiner's index."""
        return {**self._core.counters, "index": self.index}

    def close(self) -> None:
        """Commit, then close the clients and the spill store."""
        try:
            self.commit()
        finally:
            self._consumer.close()
            self._producer.flush(self._timeout_s)
            self._core.close()


JoinerActor = ray.remote(max_concurrency=2)(StreamJoiner)
"""``StreamJoiner`` as a Ray actor: ``JoinerActor.options(num_cpus=...).remote(kafka, cfg,
index, count)``; ``run`` blocks one of its two threads, the other answers ``counters`` and
``stop``."""


def run_joiners(cfg: Config, n: int | None = None, *, max_seconds: float | None = None,
                stop_when_idle_s: float | None = None, drain: bool = False) -> list[dict[str, int]]:
    """Run ``n`` (default ``cfg.joiner.n_joiners``) joiner actors on ``cfg.kafka`` until each
    stops (see :meth:`StreamJoiner.run`) -> each one's counters. Needs a running Ray and
    ``cfg.kafka.bootstrap_servers``."""
    n = cfg.joiner.n_joiners if n is None else n
    actors = [JoinerActor.options(num_cpus=cfg.joiner.cpus).remote(
                  cfg.kafka, cfg.joiner, k, n, slots=cfg.slots, limits=cfg.limits)
              for k in range(n)]
    try:
        counters = ray.get([a.run.remote(max_seconds, stop_when_idle_s, drain) for a in actors])
        ray.get([a.close.remote() for a in actors])
        return counters
    finally:
        for actor in actors:
            ray.kill(actor)
