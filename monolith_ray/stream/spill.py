"""The joiner's on-disk store: what waits beyond its memory budget, and what it must remember
to commit offsets.

Three tables in SQLite from the standard library (no server, no new dependency, no tuning,
among the most tested storage engines):

- ``pending``: impressions moved out of memory (older than ``spill_after_s``, or beyond the
  memory budget), keyed by (request id, item id), indexed on time (expiry is one range scan)
  and on (partition, offset) (the oldest waiting offset is one ``MIN()`` over the index),
  with the task labels their actions so far set (``labels``, a bit a task: multi-task joins);
- ``orphans``: positive actions waiting for their impression, the same keys and indexes (one
  row a key: a later action for the same key adds its task bits to the row's ``labels``);
- ``joined``: per action joined to an impression, (the impression's partition and offset, the
  action's partition and offset), indexed both ways: the commit drops the rows below a
  partition's commit point by a range delete and finds each action partition's oldest still
  needed offset by a ``MIN()``.

So no per-key or per-offset state of the store is in Python: it holds only counts and
:class:`KeyFilter`, a fixed-size filter that answers "certainly not stored" for most keys
without a query. It is a cache, not state: a restarted joiner starts with it empty and
re-reads from Kafka what was pending (see *Offsets* in ``stream/join.py``), so journaling and
fsync are off.
"""

from __future__ import annotations

import math
import mmap
import os
import sqlite3
from collections.abc import Iterator, Sequence

Key = tuple[str, str]
"""(request id, item id as text): what an impression and its actions are joined on."""

_CHUNK = 10_000  # rows a scan of expired impressions reads at a time


class KeyFilter:
    """A counting Bloom filter of keys (two one-byte counters a key, from Python's ``hash``):
    :meth:`may_hold` is False for a key never added or added and removed as often, and True
    for a stored key; a key not stored passes with probability about ``(1 - exp(-2n/m))**2``
    (n keys, m counters: 0.8% at 3 million keys in 64 million counters, 7% at 10 million).
    A false pass costs one indexed query, so a full filter slows lookups and never makes them
    wrong. Counters stop at 255 and then stay there (the key they count stays "maybe").

    Why a filter and not SQLite's index alone: every impression read asks whether its key is
    already waiting and whether an action waits for it; at 50k impressions/s one B-tree
    descent each (a few µs, pages read from disk) would take a large share of a core, the
    filter's answer takes ~0.3 µs. Unlike a Python set of the keys (~100 B a key), its size
    is fixed. ``hash`` is salted per process, which is fine for a store emptied when opened.
    """

    def __init__(self, n_counters: int) -> None:
        self._m = max(int(n_counters), 1)
        # Anonymous memory: pages are zero until touched, so a large filter costs nothing
        # to make (and its indexing is as fast as a bytearray's).
        self._counts = mmap.mmap(-1, self._m)

    @property
    def nbytes(self) -> int:
        """Bytes of counters."""
        return self._m

    def add(self, key: Key) -> None:
        h, m, counts = hash(key), self._m, self._counts
        i, j = h % m, (h >> 29) % m
        if counts[i] < 255:
            counts[i] += 1
        if counts[j] < 255:
            counts[j] += 1

    def remove(self, key: Key) -> None:
        """Forget one :meth:`add` of ``key`` (which must have been added)."""
        h, m, counts = hash(key), self._m, self._counts
        i, j = h % m, (h >> 29) % m
        if counts[i] < 255:
            counts[i] -= 1
        if counts[j] < 255:
            counts[j] -= 1

    def may_hold(self, key: Key) -> bool:
        h, m, counts = hash(key), self._m, self._counts
        return counts[h % m] > 0 and counts[(h >> 29) % m] > 0

    def close(self) -> None:
        """Free the counters."""
        self._counts.close()


class SpillStore:
    """Impressions, orphan actions and join records on disk (SQLite); see the module docstring.

    ``memory_bytes``: what the store may hold in this process: two thirds go to the
    :class:`KeyFilter`'s counters, one third to SQLite's page cache. Its file is deleted when
    opened and written with journaling and fsync off, in one transaction open until :meth:`close`
    (committing each write would write its pages out: 40 µs an impression instead of 10;
    SQLite moves dirty pages to the file when its cache is full). ``path=None`` uses
    SQLite's private temporary database (a temp file deleted when closed).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None,
                 memory_bytes: int = 48 << 20) -> None:
        self.path = "" if path is None else os.fspath(path)
        if self.path and os.path.exists(self.path):
            os.remove(self.path)  # a store left open by a crash may be torn: start afresh
        self.memory_bytes = int(memory_bytes)
        self._filter = KeyFilter(self.memory_bytes * 2 // 3)
        # may_hold(key): False if neither an impression nor an orphan is stored under key;
        # True if one is (and, rarely, if none is). The filter's own method, no query: one
        # Python call a features message when anything is stored.
        self.may_hold = self._filter.may_hold
        cache_kib = max((self.memory_bytes - self._filter.nbytes) >> 10, 64)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._n = self.orphans = 0
        self._db.executescript(
            f"PRAGMA page_size=16384; PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
            f"PRAGMA cache_size=-{cache_kib}; PRAGMA temp_store=FILE;"
            "CREATE TABLE pending (rid TEXT NOT NULL, item TEXT NOT NULL, part INTEGER NOT NULL,"
            " off INTEGER NOT NULL, time INTEGER NOT NULL, raw BLOB NOT NULL,"
            " labels INTEGER NOT NULL DEFAULT 0);"
            "CREATE UNIQUE INDEX pending_key ON pending (rid, item);"
            "CREATE INDEX pending_time ON pending (time);"
            "CREATE INDEX pending_offset ON pending (part, off);"
            "CREATE TABLE orphans (rid TEXT NOT NULL, item TEXT NOT NULL, part INTEGER NOT NULL,"
            " off INTEGER NOT NULL, time INTEGER NOT NULL, labels INTEGER NOT NULL DEFAULT 1,"
            " PRIMARY KEY (rid, item)) WITHOUT ROWID;"
            "CREATE INDEX orphans_time ON orphans (time);"
            "CREATE INDEX orphans_offset ON orphans (part, off);"
            "CREATE TABLE joined (fpart INTEGER NOT NULL, foff INTEGER NOT NULL,"
            " apart INTEGER NOT NULL, aoff INTEGER NOT NULL,"
            " PRIMARY KEY (fpart, foff, apart, aoff)) WITHOUT ROWID;"
            "CREATE INDEX joined_action ON joined (apart, aoff);"
            "BEGIN;")

    # -- pending impressions -----------------------------------------------------------------

    def __len__(self) -> int:
        """Impressions stored."""
        return self._n

    def __contains__(self, key: Key) -> bool:
        return self.get(key) is not None

    def put_many(self, rows: Sequence[tuple]) -> None:
        """Store (request id, item id, partition, offset, time, message) rows, or in one call
        rows of those and their task ``labels`` bits (0 when not given); the keys must not be
        stored yet."""
        if rows:
            self._db.executemany("INSERT INTO pending VALUES (?, ?, ?, ?, ?, ?, ?)"
                                 if len(rows[0]) == 7 else
                                 "INSERT INTO pending (rid, item, part, off, time, raw) "
                                 "VALUES (?, ?, ?, ?, ?, ?)", rows)
            add = self._filter.add
            for row in rows:
                add((row[0], row[1]))
            self._n += len(rows)

    def get(self, key: Key) -> tuple[int, int, int, bytes] | None:
        """(partition, offset, time, message) stored under ``key``, or None."""
        if not self._n or not self._filter.may_hold(key):
            return None
        return self._db.execute("SELECT part, off, time, raw FROM pending "
                                "WHERE rid = ? AND item = ?", key).fetchone()

    def labels(self, key: Key) -> int:
        """The task bits the actions joined so far set on the impression stored under
        ``key`` (which must be stored)."""
        return self._db.execute("SELECT labels FROM pending WHERE rid = ? AND item = ?",
                                key).fetchone()[0]

    def set_labels(self, key: Key, labels: int) -> None:
        """Set the task bits of the impression stored under ``key``."""
        self._db.execute("UPDATE pending SET labels = ? WHERE rid = ? AND item = ?",
                         (labels, *key))

    def delete(self, key: Key) -> None:
        """Forget ``key``, which must be stored."""
        self._db.execute("DELETE FROM pending WHERE rid = ? AND item = ?", key)
        self._filter.remove(key)
        self._n -= 1

    def pop_older(self, before: int | None, limit: int | None = None
                  ) -> Iterator[tuple[str, int, int, int, bytes, str, int]]:
        """Remove and yield (request id, partition, offset, time, message, item id, task
        labels) of the rows with time < ``before`` (None: every row), oldest first, at most
        ``limit`` of them (None: all), reading a few thousand at a time. A row is removed
        only as its chunk is read: stopping early leaves the rest stored."""
        where, args = ("", ()) if before is None else (" WHERE time < ?", (before,))
        query = (f"SELECT rid, part, off, time, raw, item, labels, rowid FROM pending{where} "
                 f"ORDER BY time LIMIT ?")
        remove = self._filter.remove
        left = math.inf if limit is None else limit
        while self._n and left > 0:
            rows = self._db.execute(query, (*args, int(min(_CHUNK, left)))).fetchall()
            if not rows:
                return
            self._db.executemany("DELETE FROM pending WHERE rowid = ?",
                                 [(row[7],) for row in rows])
            self._n -= len(rows)
            left -= len(rows)
            for row in rows:
                remove((row[0], row[5]))
                yield row[:7]

    def oldest_offset(self, partition: int) -> int | None:
        """The lowest offset of an impression of ``partition`` stored, or None."""
        if not self._n:
            return None
        return self._db.execute("SELECT MIN(off) FROM pending WHERE part = ?",
                                (partition,)).fetchone()[0]

    # -- orphan actions ----------------------------------------------------------------------

    def add_orphan(self, key: Key, partition: int, offset: int, time: int,
                   labels: int = 1) -> bool:
        """Keep a positive action (setting task bits ``labels``) waiting for its impression
        -> False (and nothing stored) if one already waits under ``key`` and this one sets
        no new bit; one that does adds its bits to the waiting one's (which keeps its
        offset, the older, and its time)."""
        if self.orphans and self._filter.may_hold(key):
            stored = self._db.execute("INSERT OR IGNORE INTO orphans VALUES (?, ?, ?, ?, ?, ?)",
                                      (*key, partition, offset, time, labels)).rowcount
            if not stored:
                return self._db.execute(
                    "UPDATE orphans SET labels = labels | ? WHERE rid = ? AND item = ? "
                    "AND labels | ? != labels", (labels, *key, labels)).rowcount > 0
        else:
            self._db.execute("INSERT INTO orphans VALUES (?, ?, ?, ?, ?, ?)",
                             (*key, partition, offset, time, labels))
        self._filter.add(key)
        self.orphans += 1
        return True

    def take_orphan(self, key: Key) -> tuple[int, int, int] | None:
        """Remove and return the (partition, offset, time) of the action waiting under
        ``key``, or None."""
        row = self.take_labelled_orphan(key)
        return None if row is None else row[:3]

    def take_labelled_orphan(self, key: Key) -> tuple[int, int, int, int] | None:
        """Remove and return the (partition, offset, time, task labels) of the action(s)
        waiting under ``key``, or None."""
        if not self.orphans or not self._filter.may_hold(key):
            return None
        row = self._db.execute("DELETE FROM orphans WHERE rid = ? AND item = ? "
                               "RETURNING part, off, time, labels", key).fetchone()
        if row is not None:
            self._filter.remove(key)
            self.orphans -= 1
        return row

    def drop_orphans(self, before: float) -> int:
        """Forget the orphans with time < ``before`` -> how many."""
        if not self.orphans:
            return 0
        keys = self._db.execute("DELETE FROM orphans WHERE time < ? RETURNING rid, item",
                                (before,)).fetchall()
        for key in keys:
            self._filter.remove(tuple(key))
        self.orphans -= len(keys)
        return len(keys)

    def oldest_orphan(self, partition: int) -> int | None:
        """The lowest offset of an orphan of actions ``partition``, or None."""
        if not self.orphans:
            return None
        return self._db.execute("SELECT MIN(off) FROM orphans WHERE part = ?",
                                (partition,)).fetchone()[0]

    # -- join records ------------------------------------------------------------------------

    def add_joined(self, rows: Sequence[tuple[int, int, int, int]]) -> None:
        """Record (features partition, offset, actions partition, offset) of joins."""
        if rows:
            self._db.executemany("INSERT INTO joined VALUES (?, ?, ?, ?)", rows)

    def drop_joined(self, partition: int, below: int) -> None:
        """Forget the joins of features ``partition`` at offsets below ``below``."""
        self._db.execute("DELETE FROM joined WHERE fpart = ? AND foff < ?", (partition, below))

    def oldest_joining(self, partition: int) -> int | None:
        """The lowest offset of actions ``partition`` that joined a recorded impression."""
        return self._db.execute("SELECT MIN(aoff) FROM joined WHERE apart = ?",
                                (partition,)).fetchone()[0]

    def close(self) -> None:
        """Close the database (a temporary one is deleted)."""
        if self._db.in_transaction:
            self._db.execute("COMMIT")
        self._db.close()
        self._filter.close()
