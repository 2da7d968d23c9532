"""The joiner's on-disk store of waiting impressions.

Impressions waiting longer than ``spill_after_s`` (event time) move to an on-disk
store, and so do the oldest beyond ``max_in_memory`` (a backlog read faster on the features
topic than on the actions topic holds impressions ahead of the clock). The store is SQLite
from the standard library: a B-tree keyed by (request id, item id) with an index
on time, so a late action finds its impression in one lookup and expiry is one range scan;
it needs no server, no new dependency and no tuning, and is among the most tested storage
engines. It is a cache, not state: a restarted joiner starts with it empty and re-reads from
Kafka what was pending (see *Offsets*), so journaling and fsync are off.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence

Key = tuple[str, str]
"""(request id, item id as text): what an impression and its actions are joined on."""


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
