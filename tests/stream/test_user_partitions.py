"""Examples keyed by user: the partition a joiner writes an example to, as history shards and
serving compute it."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from monolith_ray.messages import encode
from monolith_ray.schemas import value_ids
from monolith_ray.stream.user_partitions import (
    example_partitions,
    history_shard_of,
    user_partition,
)


def example(user: object) -> bytes:
    return encode({"request_id": "r", "time": 1, "user_id": user, "item_id": 2,
                   "slots": {"user_id": user, "item_id": 2}, "label": 1.0, "weight": 1.0})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(-(2 ** 63), 2 ** 63 - 1),
                          st.text(min_size=1, max_size=20)), min_size=1, max_size=30),
       st.integers(1, 64))
def test_an_example_goes_to_its_users_partition(users, partitions) -> None:
    """Whatever the id (an int, a decimal string, another string), the partition is the one
    serving and the history shards compute from the user's raw id."""
    got = example_partitions([example(u) for u in users], [0] * len(users), partitions)
    ids = value_ids(users)
    assert got.tolist() == user_partition(ids, partitions).tolist()
    assert ((got >= 0) & (got < partitions)).all()
    for shards in (1, 2, 3):  # a history shard holds whole partitions
        assert (history_shard_of(ids, shards, partitions) == got % shards).all()


def test_the_same_user_written_as_int_or_decimal_string_shares_a_partition() -> None:
    got = example_partitions([example(25), example("25"), example("alice"), example("alice")],
                             [0, 1, 2, 3], 64)
    assert got[0] == got[1] and got[2] == got[3]


def test_an_example_without_a_usable_user_id_keeps_its_features_partition() -> None:
    values = [b'{"request_id": "r"}', encode({"user_id": None}), b"not json",
              encode({"user_id": 2 ** 64}), encode({"user_id": 1.5}), example(7)]
    got = example_partitions(values, [5, 6, 7, 8, 9, 3], 4)
    assert got[:5].tolist() == [1, 2, 3, 0, 1]
    assert got[5] == user_partition(np.array([7]), 4)[0]


def test_the_partition_is_that_of_the_user_column_the_history_keeps() -> None:
    """The joiner reads the top-level ``user_id``; the history store keeps the user slot's
    column as the examples reader decodes it: the two give the same partition."""
    import pyarrow as pa

    from monolith_ray.config import load_config
    from monolith_ray.data.slot_columns import ExampleDecoder

    cfg = load_config()
    users = [7, "alice", "25", "007", "+5", -3, 2 ** 62, "Ünïcode"]
    raws = [example(u) for u in users]
    decoder = ExampleDecoder(cfg.slots, limits=cfg.limits)
    examples, refused = decoder.decode(raws, now=2.0)
    assert not refused
    column = pa.array(decoder.columns(examples)["user_id"]).to_numpy(zero_copy_only=False)
    for partitions in (2, 7, 64):
        assert example_partitions(raws, [0] * len(raws), partitions).tolist() == \
            user_partition(column.astype(np.int64), partitions).tolist()
