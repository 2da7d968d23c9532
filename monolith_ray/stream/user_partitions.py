"""Examples keyed by user: the partition of the ``examples`` topic each user's examples go to,
the contract between the joiners that write them and the history shards that read them.

A user's examples go to partition ``user_partition(user, P)`` of the P-partition examples
topic (the parameter servers' fixed SplitMix64 routing of the user's raw id), so history
shard ``i`` of ``n`` (``history.server``) holds the users of partitions ``p % n == i`` and
reads only those: the shards together decode the stream once, where with examples keyed by
request each decoded all of it. Training reads every partition and is indifferent to the key.
Within a partition a user's examples keep the order their joiner wrote them in. A user with
a large share of the stream loads one partition with it (a request key spreads it).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np

from monolith_ray.ps.routing import shard_of
from monolith_ray.schemas import value_ids


class _User(msgspec.Struct, gc=False):
    """The one field of an example (or features message) the partition needs."""

    user_id: int | str | None = None


_decode_user = msgspec.json.Decoder(_User).decode


def user_partition(users: np.ndarray, partitions: int) -> np.ndarray:
    """The examples partition of each raw user id: int64 (n,) -> int64 (n,) in
    ``[0, partitions)``."""
    return shard_of(np.asarray(users, dtype=np.int64), partitions)


def history_shard_of(users: np.ndarray, shards: int, partitions: int) -> np.ndarray:
    """The history shard in ``[0, shards)`` holding each user (``history.server``): int64 raw
    user ids (n,) -> int64 (n,), the shard of the user's examples partition of
    ``partitions`` (``kafka.partitions``): partitions ``p % shards == i`` are shard i's."""
    return user_partition(users, partitions) % shards


def example_partitions(values: Sequence[bytes], fallback: Sequence[int],
                       partitions: int) -> np.ndarray:
    """The partition of each example (JSON object bytes, as the joiner writes them): its
    top-level ``user_id``'s :func:`user_partition`; an example without a usable one goes to
    its ``fallback`` (the features partition) modulo ``partitions``. int64 (n,). Costs one
    decode of each message that reads ``user_id`` and skips the rest."""
    out = np.asarray(fallback, dtype=np.int64) % partitions
    users: list[int | str] = []
    at: list[int] = []
    for i, value in enumerate(values):
        try:
            user = _decode_user(value).user_id
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if user is not None:
            users.append(user)
            at.append(i)
    if users:
        try:
            ids = value_ids(users)
        except (TypeError, ValueError, OverflowError):  # one bad id: each decided alone
            ids, kept = [], []
            for i, user in zip(at, users):
                try:
                    ids.append(int(value_ids([user])[0]))
                    kept.append(i)
                except (TypeError, ValueError, OverflowError):
                    pass
            at, ids = kept, np.asarray(ids, dtype=np.int64)
        if len(at):
            out[np.asarray(at)] = user_partition(ids, partitions)
    return out
