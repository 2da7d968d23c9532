"""The live history of a serving deployment: a Ray actor holding a :class:`UserHistory`, fed
from the joiner's ``examples`` topic in event time and read by serving at request time.

Why it follows the ``examples`` topic with a consumer of its own rather than being called by
the joiners: the joined examples are already on that topic, decoded and validated by the
reader training uses (``data.kafka_source.KafkaExampleReader``: event times bounded by
``limits``, bad records to the dead-letter topic), so the joiners need no handle on it and are
never slowed or failed by it. Every ``history.checkpoint_every_s`` the reading thread writes
the stores and its read positions (``history.checkpoint``); an actor Ray restarts loads the
newest checkpoint and reads on from its positions, so it catches up on what came since, not
on the topic's whole retention. With no checkpoint (or ``checkpoint_every_s`` 0) it reads the
topic again from the brokers' earliest offsets (the store's own bounds keep what it holds).
A checkpoint holds the frames of every slot (about 16 bytes an entry) while it is written,
and about 2.5 times a slot's store while that slot's are built; reads go on meanwhile, and
the reading waits for the copy but not for the write, which has a thread of its own
(measured at 1M users of 20 entries, one slot: 1.2-1.9 s to copy, 0.16 s to write 328 MB
to a local disk, 3.5 s to restore). Checkpoints go under the actor's id, which
a restart keeps, so a restart loads only its own.

An entry's time is its example's ``time``, the impression's: the joiner's examples do not
carry the action's time. A serving read is never early all the same: an entry reaches the
store only once its action has been joined, so at request time t it holds only actions
received before t, dated by their impressions, which are earlier still. What serving read is
logged with the impression (``serve/app.py``), so the joined example trains on exactly the
values the model was served.

**Shards** (``history.shards``): at 10^8 users one actor cannot hold them all (about 0.33 GB
per 1M users of one 20-entry slot), so ``n`` actors share them, actor ``i`` keeping the
users whose id :func:`history_shard_of` maps to ``i`` and serving reads of those only: the
users of examples partitions ``p % n == i`` (``stream.user_partitions``). The joiners key
examples by user, so a shard reads only those partitions and the shards decode the stream
once between them. When the topic is not keyed that way (``joiner.examples_key: request``,
a history ``user_slot`` other than ``serve.user_slot``, or a topic with other than
``kafka.partitions`` partitions), each shard reads every partition and drops the other
shards' rows before they reach its stores: n shards decode the stream n times (the
observing measured in ``benchmarks.history_shards``). A serving replica sends one read per
shard its request's users fall on, at once.

A shard that finds other shards' users in its own partitions after all (an older joiner, a
producer of its own) reads every partition from then on and, unless a sibling told it first,
tells its siblings (named actors of one group): n - 1 calls, in at most ``SIBLINGS_ROUNDS``
rounds a minute apart for a sibling that does not answer (or has no actor yet). A sibling Ray restarts reads
every partition if its checkpoint did, and otherwise asks its siblings the same way whether
any does. Nothing is repeated on a timer: n - 1 calls for each shard that found the strays
before it was told (one or a few; n at worst, if all find them at once) and for each
restart, not O(n^2) a minute.
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from monolith_ray.config import Config
from monolith_ray.files import absolute_location
from monolith_ray.history.checkpoint import (
    ABANDONED_S,
    MAX_HEADER,
    checkpoints,
    write_checkpoint,
)
from monolith_ray.history.live import UserHistory
from monolith_ray.history.store import HistoryStore
from monolith_ray.stream.user_partitions import history_shard_of

logger = logging.getLogger(__name__)

EVICT_EVERY_S = 60.0  # how often expired users are dropped while following the stream
REWRITE_S = ABANDONED_S / 7  # an unchanged checkpoint is written again this often (a day)
RETRY_AFTER_S = 1.0  # pause before reading again after the reader failed
SIBLINGS_WAIT_S = 10.0  # how long the calls to sibling shards are waited for
SIBLINGS_AGAIN_S = 60.0  # pause before calling again siblings that did not answer
SIBLINGS_ROUNDS = 5  # the most rounds of calls to siblings that do not answer
MAX_READ = 1024  # most (user, time) pairs one read takes


class HistoryServer:
    """The history slots of ``cfg.history``, live: :meth:`observe` records examples,
    :meth:`read` gives each slot's values strictly before given times. With ``follow``, a
    thread reads ``cfg.kafka.topics.examples`` from its earliest offsets (or, with
    ``restore``, from the newest checkpoint's positions, its stores loaded) in micro-batches
    of at most ``poll_records`` examples, observes each and writes checkpoints on schedule.
    ``restore`` None: whether Ray restarted this actor. ``owner``: the name its checkpoints
    go under (default: the Ray actor's id, which a restart keeps; outside an actor a new
    random one); ``root``: where (default :func:`checkpoint_root`). ``shard``: which of
    ``history.shards`` this is; it keeps and serves only the users :func:`history_shard_of`
    gives it. ``group``: the name its sibling shards' actors go under
    (:func:`history_actor_name`), told when it finds the topic is not keyed by user."""

    def __init__(self, cfg: Config, follow: bool = True, poll_records: int = 2000,
                 restore: bool | None = None, owner: str | None = None,
                 root: str | None = None, shard: int = 0, group: str = "") -> None:
        if not cfg.history.slots:
            raise ValueError("the config has no history slots (history.slots)")
        if not 0 <= shard < cfg.history.shards:
            raise ValueError(f"shard {shard} is not one of history.shards "
                             f"{cfg.history.shards}")
        self.cfg = cfg
        self.shard, self.shards = shard, cfg.history.shards
        self.partitions = cfg.kafka.partitions
        self.reading: str | None = None  # what the current reader reads: "own partitions"
        # or "all partitions"; _wide: read every partition from the next micro-batch on (it
        # found other shards' rows in its own, a sibling said so, or its checkpoint did)
        self._wide = threading.Event()
        self.group = group
        self.history = UserHistory(cfg.history)
        self._lock = threading.Lock()  # the stores: readers and writers
        self._feed = threading.Lock()  # writers and checkpoints, taken before ``_lock``
        self._stop = threading.Event()
        self.counts = {"observed": 0, "other_shards": 0, "reads": 0, "reader_errors": 0, "evicted": 0,
                       "checkpoints": 0, "checkpoint_failures": 0, "checkpoints_busy": 0,
                       "no_user": 0}
        self._reader: Any = None
        self._writer: threading.Thread | None = None  # the thread writing a checkpoint
        self._writer_started, self._busy_logged = 0.0, False
        self.root = None
        if cfg.history.checkpoint_every_s > 0:
            self.root = root or checkpoint_root(cfg)
        self.owner = owner or _actor_id() or uuid.uuid4().hex
        # what the stores are built with: a checkpoint of anything else is not loaded
        self._built_with = {"user_slot": cfg.history.user_slot,
                            "slots": [dataclasses.asdict(h) for h in cfg.history.slots],
                            "shard": [shard, self.shards],
                            "partitions": cfg.kafka.partitions}
        self.restored: dict[str, Any] | None = None  # the checkpoint loaded: file, positions
        self._resume: dict[int, int] = {}
        # what the last checkpoint held (positions, observed, evicted) and when (monotonic s)
        self._checkpointed: tuple[tuple[dict[int, int], int, int], float] | None = None
        if restore is None:
            from monolith_ray.supervision import restarted_actor

            restore = restarted_actor()
        if restore and self.root is not None:
            self._restore()
        if any(p % self.shards != self.shard for p in self._resume):
            self._wide.set()  # it had widened before this restart
        self._restarted = bool(restore)
        self._thread: threading.Thread | None = None
        self._sibling_threads: list[threading.Thread] = []  # telling or asking siblings
        if follow:
            self._thread = threading.Thread(target=self._follow, args=(poll_records,),
                                            name="history-follow", daemon=True)
            self._thread.start()

    def observe(self, examples: pa.Table) -> int:
        """Record the examples of this shard's users that count for each slot (columns:
        time, label, the user slot, each slot's source) -> rows observed (the other shards'
        are dropped first and counted as ``other_shards``; rows with no user count for no
        slot and are dropped too, as ``no_user``)."""
        own, others = self._own(examples)
        with self._feed, self._lock:
            self.history.observe(own)
            self.counts["observed"] += own.num_rows
            self.counts["other_shards"] += others
            self.counts["no_user"] += examples.num_rows - own.num_rows - others
        return own.num_rows

    def _own(self, examples: pa.Table) -> tuple[pa.Table, int]:
        """The rows of ``examples`` whose user is this shard's, and how many rows belong to
        other shards' users: one vectorized hash of the user column, O(rows)."""
        users = examples.column(self.cfg.history.user_slot).combine_chunks()
        if self.shards == 1 and not users.null_count:
            return examples, 0
        ids = users.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        valid = users.is_valid().to_numpy(zero_copy_only=False)
        ours = (history_shard_of(ids, self.shards, self.partitions) == self.shard
                if self.shards > 1 else np.ones(len(ids), dtype=bool))
        return examples.filter(pa.array(ours & valid)), int((~ours & valid).sum())

    def read(self, users: Sequence[int], times: Sequence[int]) -> dict[str, list[list[int]]]:
        """Each history slot's values for (raw user id, event time) pairs: the user's entries
        strictly before that time, newest first, at most the slot's ``max_len``; at most
        ``MAX_READ`` pairs (ValueError beyond)."""
        if len(users) > MAX_READ:
            raise ValueError(f"{len(users)} users in one read, more than {MAX_READ}")
        users_a = np.asarray(users, dtype=np.int64)
        times_a = np.asarray(times, dtype=np.int64)
        if self.shards > 1 and users_a.size:
            wrong = history_shard_of(users_a, self.shards, self.partitions) != self.shard
            if wrong.any():
                raise ValueError(f"user {int(users_a[wrong][0])} is not held by history shard "
                                 f"{self.shard} of {self.shards} (history_shard_of)")
        with self._lock:
            values = self.history.read(users_a, times_a)
            self.counts["reads"] += 1
        return {name: column.to_pylist() for name, column in values.items()}

    def stats(self) -> dict[str, Any]:
        """Counters, users held per slot, bytes held, the reader's positions, the
        checkpoint restored from (None: none) and the owner its checkpoints go under."""
        with self._lock:
            stores = self.history.stores
            out = {**self.counts, "shard": [self.shard, self.shards],
                   "partitions": self.partitions, "user_slot": self.cfg.history.user_slot,
                   "reading": self.reading, "users": {n: len(s) for n, s in stores.items()},
                   "bytes": sum(s.nbytes for s in stores.values()),
                   "restored": self.restored, "owner": self.owner}
        reader = self._reader  # the reading thread may replace it meanwhile
        if reader is not None:
            out["positions"] = dict(reader.positions)
        return out

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop following the stream: return once the reading thread has ended (after its
        current micro-batch), a checkpoint being written is written and the threads calling
        sibling shards have ended (at their next wait), or ``timeout_s`` has passed."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        if self._thread is not None:
            self._thread.join(timeout_s)
        writer = self._writer  # read after the reading thread ended: it may have started one
        if writer is not None:
            writer.join(max(deadline - time.monotonic(), 0.0))
            if writer.is_alive():
                logger.warning("history: stopped with a checkpoint still being written")
        for thread in list(self._sibling_threads):  # they end at their next wait
            thread.join(max(deadline - time.monotonic(), 0.0))

    def _checkpoint(self) -> None:
        """Copy the stores and the reader's positions (none if neither moved since the last
        checkpoint) and write them under the checkpoint root on a thread of its own; only
        the reading thread calls it, between micro-batches (it feeds the stores, so the two
        agree). The copy holds off other writers (``observe`` calls), not reads; the write
        holds off nothing, so reading goes on while it lasts (seconds for a few hundred MB
        on remote storage). One checkpoint is written at a time: one due while the last is
        still being written is skipped (``checkpoints_busy``), so at most one copy of the
        stores is held. A failure is counted and logged, and reading goes on."""
        if self._writer is not None and self._writer.is_alive():
            self.counts["checkpoints_busy"] += 1
            busy = time.monotonic() - self._writer_started
            if busy > 3 * self.cfg.history.checkpoint_every_s and not self._busy_logged:
                self._busy_logged = True  # once a stretch: storage is down or very slow
                logger.warning("history: a checkpoint has been written for %.0f s; later "
                               "ones are skipped until it ends", busy)
            return
        self._busy_logged = False
        try:
            # positions restored but not read since (none unless widened) are kept too
            positions = {**self._resume, **self._reader.positions}
            state = (positions, self.counts["observed"], self.counts["evicted"])
            if (self._checkpointed is not None and self._checkpointed[0] == state
                    and time.monotonic() - self._checkpointed[1] < REWRITE_S):
                return  # unchanged; rewritten anyway each REWRITE_S, so none looks abandoned
            with self._feed:  # writers wait; reads go on (a copy does not change the stores)
                frames = {name: store.to_bytes() for name, store in self.history.stores.items()}
        except Exception as err:  # noqa: BLE001 - a checkpoint must never stop the history
            self._checkpoint_failed(err)
            return
        self._writer = threading.Thread(target=self._write, args=(positions, frames, state),
                                        name="history-checkpoint", daemon=True)
        self._writer_started = time.monotonic()
        self._writer.start()

    def _write(self, positions: dict[int, int], frames: dict[str, bytes],
               state: tuple[dict[int, int], int, int]) -> None:
        """Write one checkpoint copied by :meth:`_checkpoint` (the checkpoint thread)."""
        try:
            write_checkpoint(self.root, self.owner, self.cfg.kafka.topics.examples, positions,
                             frames, config=self._built_with)
        except Exception as err:  # noqa: BLE001 - a checkpoint must never stop the history
            self._checkpoint_failed(err)
            return
        with self._lock:
            self._checkpointed = (state, time.monotonic())
            self.counts["checkpoints"] += 1

    def _checkpoint_failed(self, err: BaseException) -> None:
        with self._lock:
            self.counts["checkpoint_failures"] += 1
        logger.warning("history: checkpoint not written: %r", err)

    def _restore(self) -> None:
        """Load this owner's newest checkpoint of the examples topic that was built with
        this config's history slots and whose stores load; a file that fails is skipped for
        the one before it, and with none (or any other failure) the topic is read from its
        earliest offsets. Logged either way."""
        topic, history = self.cfg.kafka.topics.examples, self.cfg.history
        slots = {h.name: h for h in history.slots}
        # the most a checkpoint of this config holds, with room for headers
        most = sum(history.max_users * (8 + 16 * h.max_len) + 4096 for h in history.slots)
        try:
            for file, header, frames in checkpoints(self.root, self.owner, topic,
                                                    max_bytes=most + MAX_HEADER + 8):
                if header.get("config") != self._built_with or set(frames) != set(slots):
                    logger.warning("history: skipping checkpoint %s: built with other "
                                   "history slots", file)
                    continue
                try:
                    stores = {name: HistoryStore.from_bytes(
                        frames[name], h.max_len, history.max_users, h.expire_s)
                        for name, h in slots.items()}
                except (ValueError, TypeError) as err:
                    logger.warning("history: skipping checkpoint %s: %s", file, err)
                    continue
                with self._feed, self._lock:
                    self.history.stores = stores
                self._resume = {int(p): o for p, o in header["positions"].items()}
                self.restored = {"file": file, "taken_at": header["taken_at"],
                                 "positions": dict(self._resume)}
                logger.warning("history: restored %s, reading on from %s", file, self._resume)
                return
        except Exception as err:  # noqa: BLE001 - a history that starts empty beats none
            logger.warning("history: no checkpoint restored (%r): reading the topic from its "
                           "earliest offsets", err)
            return
        logger.warning("history: no checkpoint of %s under %s: reading the topic from its "
                       "earliest offsets", self.owner, self.root)

    def _examples_reader(self, poll_records: int) -> Any:
        from monolith_ray.data.kafka_source import (
            KafkaExampleReader,
            StreamSpec,
            earliest_offsets,
        )

        cfg, topic = self.cfg, self.cfg.kafka.topics.examples
        starts = earliest_offsets(cfg.kafka, topic)
        # a checkpoint's position, unless retention has dropped it since (then the earliest)
        starts = {p: max(o, self._resume.get(p, o)) for p, o in starts.items()}
        if self.shards > 1:
            starts = self._own_partitions(starts)
        else:
            self.reading = "all partitions"
        return KafkaExampleReader(StreamSpec(
            kafka=cfg.kafka, topic=topic, slots=tuple(cfg.slots),
            starts=starts, poll_records=poll_records,
            limits=cfg.limits, stage="history", heartbeats=True, dense=tuple(cfg.dense),
            tasks=tuple(cfg.task_names)))

    def _own_partitions(self, starts: dict[int, int]) -> dict[int, int]:
        """Of the examples topic's partitions, those this shard reads: its own when the
        topic is keyed by the history's user (``stream.user_partitions``), else every one
        (logged: n shards then decode the stream n times)."""
        cfg = self.cfg
        why = ("joiner.examples_key is 'request'" if cfg.joiner.examples_key != "user"
               else f"history.user_slot {cfg.history.user_slot!r} is not serve.user_slot "
                    f"{cfg.serve.user_slot!r}" if cfg.history.user_slot != cfg.serve.user_slot
               else f"the topic has {len(starts)} partitions, not kafka.partitions "
                    f"{self.partitions}" if len(starts) != self.partitions or set(starts)
               != set(range(self.partitions)) else None)
        if why is None and self._wide.is_set():
            why = ("it found the topic not keyed by user (other shards' users in its own "
                   "partitions, another shard said so, or its checkpoint read every "
                   "partition)")
        if why is None:
            self.reading = "own partitions"
            if self.partitions % self.shards:  # the config keeps partitions >= shards
                most, least = -(-self.partitions // self.shards), self.partitions // self.shards
                logger.warning("history: kafka.partitions %d is not a multiple of "
                               "history.shards %d: shards of %d partitions hold %.2f times "
                               "the users of those of %d (size max_users for the larger)",
                               self.partitions, self.shards, most, most / least, least)
            return {p: o for p, o in starts.items() if p % self.shards == self.shard}
        self.reading = "all partitions"
        logger.warning("history shard %d of %d reads every partition of %s: %s", self.shard,
                       self.shards, cfg.kafka.topics.examples, why)
        return starts

    def _follow(self, poll_records: int) -> None:
        """Observe the examples topic until :meth:`stop`; the reader is made here, not in the
        constructor, so that brokers down at start-up delay the history, not the actor."""
        evicted_at = checkpointed_at = time.monotonic()
        every = self.cfg.history.checkpoint_every_s
        if self._restarted and not self._wide.is_set():
            self._siblings_soon(self.ask_siblings)  # one may have widened while it was down
        while not self._stop.is_set():
            try:
                if self._reader is None:
                    self._reader = self._examples_reader(poll_records)
                for table in self._reader:  # resumes from the reader's positions
                    if table.num_rows:
                        self.observe(table)
                    if self.reading == "own partitions" and (
                            self.counts["other_shards"] or self._wide.is_set()):
                        self._widen()
                        break
                    if time.monotonic() - evicted_at >= EVICT_EVERY_S:
                        evicted_at = time.monotonic()
                        self._evict_expired()
                    if self.root is not None and time.monotonic() - checkpointed_at >= every:
                        checkpointed_at = time.monotonic()
                        self._checkpoint()
                    if self._stop.is_set():
                        return
            except Exception as err:  # noqa: BLE001 - history must outlive a Kafka outage
                self.counts["reader_errors"] += 1
                logger.warning("history: reading the examples failed, retrying: %s", err)
                self._stop.wait(RETRY_AFTER_S)

    def _widen(self) -> None:
        """Rows of other shards' users came in this shard's own partitions (or a sibling said
        so): the topic is not keyed by the history's user after all (examples from a joiner
        keyed by request, an older one, a producer of its own, partitions added since). Read
        every partition from here on: the others from their earliest offsets (or a
        checkpoint's positions), the own ones on from where the reading is. Logged as an
        error, as its users' history was missing until now. A shard that found the rows
        itself tells its siblings, once."""
        found, told = self.counts["other_shards"], self._wide.is_set()
        logger.error("history shard %d of %d: %s; the topic %s is not keyed by user: reading "
                     "every partition from now on", self.shard, self.shards,
                     f"{found} rows of other shards' users in its own partitions" if found
                     else "told so by another shard", self.cfg.kafka.topics.examples)
        self._wide.set()
        self._resume = {**self._resume, **self._reader.positions}
        self._reader = None
        if found and not told:  # its users may be in the others' partitions: they read too
            self._siblings_soon(self.tell_siblings)

    def widen(self) -> None:
        """Read every partition from the next micro-batch on: another shard found other
        shards' users in its own partitions (called by that shard)."""
        self._wide.set()

    def reads_every_partition(self) -> bool:
        """Whether this shard reads every partition, or will from its next micro-batch (asked
        by a restarted sibling)."""
        return self._wide.is_set()

    def _siblings_soon(self, call: Any) -> None:
        """``call`` (:meth:`tell_siblings` or :meth:`ask_siblings`) on a thread of its own:
        actor lookups and calls must not hold up the reading. Only for a shard of a group;
        :meth:`stop` waits for it."""
        if self.group and self.shards > 1:
            thread = threading.Thread(target=call, name="history-siblings", daemon=True)
            self._sibling_threads = [t for t in self._sibling_threads if t.is_alive()]
            self._sibling_threads.append(thread)
            thread.start()

    def tell_siblings(self) -> None:
        """Ask every other shard of this group to :meth:`widen`: a call each, all at once.
        Those that did not answer (restarting, not started yet, the Ray cluster busy) are
        called again after ``SIBLINGS_AGAIN_S``, in at most ``SIBLINGS_ROUNDS`` rounds in
        all, then logged and given up."""
        self._siblings_rounds("widen", lambda answers: False)

    def ask_siblings(self) -> None:
        """After a restart that did not restore a checkpoint reading every partition: ask each
        sibling whether it reads every partition (one may have found the topic not keyed by
        user, and told this shard, while it was down). One that does widens this one too.
        Rounds as :meth:`tell_siblings`, ended early by a yes."""

        def any_wide(answers: dict[int, Any]) -> bool:
            wide = sorted(k for k, yes in answers.items() if yes)
            if wide:
                logger.warning("history shard %d of %d: shard %d reads every partition, so "
                               "does this one", self.shard, self.shards, wide[0])
                self._wide.set()
            return bool(wide)

        self._siblings_rounds("reads_every_partition", any_wide)

    def _siblings_rounds(self, method: str, done: Any) -> None:
        """Call ``method`` on every sibling that has not answered yet, in at most
        ``SIBLINGS_ROUNDS`` rounds ``SIBLINGS_AGAIN_S`` apart, until all have, ``done``
        (given each round's answers) says so, or the reading stops. O(shards) calls a round."""
        left = set(range(self.shards)) - {self.shard}
        for attempt in range(SIBLINGS_ROUNDS):
            if attempt and self._stop.wait(SIBLINGS_AGAIN_S):
                return
            if self._stop.is_set():
                return
            answers = self._call_siblings(method, left)
            if done(answers):
                return
            left -= set(answers)
            if not left:
                return
        logger.error("history shard %d: sibling shards %s did not answer %s in %d rounds; "
                     "given up", self.shard, sorted(left), method, SIBLINGS_ROUNDS)

    def _call_siblings(self, method: str, shards: set[int]) -> dict[int, Any]:
        """Call ``method`` (no arguments) on the named actors of the sibling ``shards`` at
        once and wait up to ``SIBLINGS_WAIT_S`` for them (the late ones cancelled) -> the
        answers of those that answered; the others (no actor by that name yet or any more,
        failed, late) are logged (one line)."""
        refs, failed = {}, {}
        for k in sorted(shards):
            try:
                actor = ray.get_actor(history_actor_name(self.group, k))
            except Exception as err:  # noqa: BLE001 - best effort: logged, called again
                failed[k] = err
                continue
            refs[k] = getattr(actor, method).remote()
        answers = {}
        if refs:
            ready = set(ray.wait(list(refs.values()), num_returns=len(refs),
                                 timeout=SIBLINGS_WAIT_S)[0])
            for k, ref in refs.items():
                try:
                    if ref not in ready:
                        ray.cancel(ref)
                        raise TimeoutError(f"no answer in {SIBLINGS_WAIT_S:.0f} s")
                    answers[k] = ray.get(ref)
                except Exception as err:  # noqa: BLE001 - best effort: logged, called again
                    failed[k] = err
        if failed:
            k = min(failed)
            logger.warning("history shard %d: %d sibling shards did not answer %s (shard %d: "
                           "%r)", self.shard, len(failed), method, k, failed[k])
        return answers

    def _evict_expired(self) -> None:
        now = time.time()
        with self._feed, self._lock:
            for store in self.history.stores.values():
                self.counts["evicted"] += store.evict_expired(now)


def checkpoint_root(cfg: Config) -> str:
    """Where ``cfg``'s history checkpoints go, as every process reads it (a local path made
    absolute here): ``history.checkpoint_root``, or ``<data.output_dir>/history``."""
    return absolute_location(cfg.history.checkpoint_root
                             or posixpath.join(cfg.data.output_dir, "history"))


def _actor_id() -> str | None:
    """The Ray actor id of this process (kept over its restarts), None outside an actor."""
    if not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_actor_id()


HistoryActor = ray.remote(max_concurrency=4)(HistoryServer)
"""``HistoryServer`` as a Ray actor; reads from serving replicas run beside each other and
beside the thread following the stream (a lock guards the store)."""


def history_actor_name(group: str, shard: int) -> str:
    """The Ray actor name of history shard ``shard`` of the shards started as ``group``."""
    return f"monolith_ray-history-{group}-{shard}"


def check_history(cfg: Config, history: Sequence[Any], timeout_s: float = 60.0) -> None:
    """ConfigError naming the key unless the ``history`` actors (shard i at index i) are
    the ``history.shards`` shards of this config: the same count, each at its place, the same
    ``kafka.partitions``, ``history.user_slot`` and slot names. A serving config that
    disagrees with its history actors would route reads to shards that refuse them.
    Actors that do not answer within ``timeout_s`` are not checked (logged)."""
    from monolith_ray.config import ConfigError

    if len(history) != cfg.history.shards:
        raise ConfigError("history.shards", f"{cfg.history.shards} in this config, "
                                            f"{len(history)} history actors given")
    try:
        stats = ray.get([actor.stats.remote() for actor in history], timeout=timeout_s)
    except Exception as err:  # noqa: BLE001 - a restarting actor answers later
        logger.warning("could not check the history actors: %r", err)
        return
    names = sorted(h.name for h in cfg.history.slots)
    for i, held in enumerate(stats):
        if held["shard"] != [i, cfg.history.shards]:
            raise ConfigError("history.shards", f"history actor {i} holds shard "
                                                f"{held['shard'][0]} of {held['shard'][1]}, "
                                                f"this config wants shard {i} of "
                                                f"{cfg.history.shards} there")
        if cfg.history.shards > 1 and held["partitions"] != cfg.kafka.partitions:
            raise ConfigError("kafka.partitions", f"history actor {i} routes users over "
                                                  f"{held['partitions']} partitions, this "
                                                  f"config over {cfg.kafka.partitions}")
        if held["user_slot"] != cfg.history.user_slot:
            raise ConfigError("history.user_slot", f"history actor {i} keys users by "
                                                   f"{held['user_slot']!r}, this config by "
                                                   f"{cfg.history.user_slot!r}")
        if sorted(held["users"]) != names:
            raise ConfigError("history.slots", f"history actor {i} holds slots "
                                               f"{sorted(held['users'])}, this config reads "
                                               f"{names}")


def start_history_shards(cfg: Config) -> list[Any]:
    """Start the ``history.shards`` history actors of ``cfg`` (shard i at index i, named
    :func:`history_actor_name` under a new group), each following its examples topic if
    ``kafka.bootstrap_servers`` is set, restarted by Ray like the other actors
    (``supervision``) -> their handles; none if the config has no history slots."""
    from monolith_ray.supervision import actor_options

    if not cfg.history.slots:
        return []
    group = uuid.uuid4().hex[:12]
    return [HistoryActor.options(name=history_actor_name(group, i), num_cpus=0,
                                 **actor_options(cfg.supervision)).remote(
        cfg, follow=bool(cfg.kafka.bootstrap_servers), root=checkpoint_root(cfg), shard=i,
        group=group) for i in range(cfg.history.shards)]
