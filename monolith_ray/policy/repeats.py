"""Recognising a repeated report: a client that retries ``/feedback`` after a timeout sends
the same (request id, item, action) again, and an A/B arm must count it once.

:class:`RecentKeys` remembers the last ``capacity`` keys a replica saw, each as a 16-byte
BLAKE2b digest of its length-prefixed parts, forgotten in the order they were first seen (a
repeat does not refresh its key). A repeat is recognised while its first report is among
the last ``capacity`` at this replica: a retry seconds later is, at any realistic rate (the
default ``policy.repeat_memory`` of 200,000 keys holds 10 s of feedback at 10,000 reports a
second, each positive report taking a second key for its impression's reward). One
that reaches another replica, or comes after ``capacity`` other reports or a restart, is
not: tokens are stateless, so complete deduplication would need state shared by every
replica. The joiner deduplicates the ``actions`` stream on its own, so training never
counts a repeat. Memory: about 155 bytes a key (``tracemalloc``: 31 MB at 200,000); a
check costs 3-5 µs (the digest and the dict).
"""

from __future__ import annotations

import collections
import hashlib

__all__ = ["RecentKeys"]


class RecentKeys:
    """The last ``capacity`` keys seen (tuples of text), for recognising repeats in O(1)."""

    def __init__(self, capacity: int = 200_000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: at least 1, got {capacity}")
        self.capacity = capacity
        self._keys: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def first(self, *parts: str) -> bool:
        """True if the key ``parts`` is not among the last ``capacity`` seen (it is then
        remembered as the newest); False for a repeat."""
        text = "".join(f"{len(part)}:{part}" for part in parts)  # ("a", "bc") != ("ab", "c")
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if digest in self._keys:
            return False
        self._keys[digest] = None
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return True
