"""Replayed history columns: never an action at or after the impression's time, at most
max_len values, expiry, and the same values as the live store fed in event-time order."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from monolith_ray.config.history import HistoryConfig, HistorySlot
from monolith_ray.history import UserHistory, replay_slot, with_history


def examples(rows: list[tuple[int, int, float, int, list[int]]]) -> pa.Table:
    """(time, user, label, item, genres) rows -> an example table."""
    times, users, labels, items, genres = zip(*rows) if rows else ((),) * 5
    return pa.table({"time": pa.array(times, pa.int64()),
                     "label": pa.array(labels, pa.float32()),
                     "user_id": pa.array(users, pa.int64()),
                     "item_id": pa.array(items, pa.int64()),
                     "genres": pa.array(genres, pa.list_(pa.int64()))})


def brute_force(table: pa.Table, slot: HistorySlot) -> list[list[int]]:
    """Per row: scan every row for the same user's earlier positives, one at a time."""
    rows = table.to_pylist()
    out = []
    for row in rows:
        found: list[tuple[int, int, int, int]] = []  # (time, row, position, value)
        for j, other in enumerate(rows):
            if (other["user_id"] != row["user_id"]
                    or not slot.min_label <= other["label"] <= slot.max_label
                    or not other["time"] < row["time"]):
                continue
            if slot.expire_s and not other["time"] > row["time"] - slot.expire_s:
                continue
            source = other[slot.source]
            values = source if isinstance(source, list) else [source]
            found += [(other["time"], j, p, v) for p, v in enumerate(values)]
        found.sort()
        out.append([v for *_, v in reversed(found[-slot.max_len:])])
    return out


row = st.tuples(st.integers(0, 40), st.integers(0, 3), st.sampled_from([0.0, 1.0]),
                st.integers(0, 9), st.lists(st.integers(100, 105), max_size=3))
slot_settings = st.tuples(st.sampled_from(["item_id", "genres"]), st.integers(1, 5),
                          st.sampled_from([0.0, 5.0, 12.5]),
                          st.sampled_from([(1.0, 1.0), (0.0, 0.0), (0.0, 1.0)]))


@settings(max_examples=200, deadline=None)
@given(st.lists(row, max_size=40), slot_settings)
def test_replay_is_the_brute_force_reference(rows, setting) -> None:
    source, max_len, expire_s, (low, high) = setting
    slot = HistorySlot("recent", source, max_len=max_len, expire_s=expire_s, min_label=low,
                       max_label=high)
    table = examples(rows)
    got = replay_slot(table, slot, "user_id").to_pylist()
    assert got == brute_force(table, slot)


@settings(max_examples=200, deadline=None)
@given(st.lists(row, max_size=40), st.integers(1, 5), st.sampled_from([0.0, 5.0, 12.5]))
def test_never_an_action_at_or_after_the_impression(rows, max_len, expire_s) -> None:
    """Each item is its row number, so every value names the action it came from."""
    rows = [(t, user, label, i, []) for i, (t, user, label, _, _) in enumerate(rows)]
    slot = HistorySlot("recent", "item_id", max_len=max_len, expire_s=expire_s)
    got = replay_slot(examples(rows), slot, "user_id").to_pylist()
    for values, (t, user, *_) in zip(got, rows):
        assert len(values) <= max_len
        for action in (rows[v] for v in values):
            assert action[0] < t and action[1] == user and action[2] == 1.0
            assert not expire_s or action[0] > t - expire_s
        assert [rows[v][0] for v in values] == sorted((rows[v][0] for v in values), reverse=True)


@settings(max_examples=100, deadline=None)
@given(st.lists(row, max_size=40), slot_settings)
def test_live_store_in_event_time_order_matches_replay(rows, setting) -> None:
    """Reading each second's impressions before observing them gives the replayed values."""
    source, max_len, expire_s, (low, high) = setting
    config = HistoryConfig(slots=(HistorySlot("recent", source, max_len, expire_s,
                                              min_label=low, max_label=high),))
    table = examples(rows).sort_by("time")
    live = UserHistory(config)
    got: list[list[int]] = []
    times = table.column("time").to_numpy()
    for t in np.unique(times):
        second = table.filter(pa.compute.equal(table.column("time"), t))
        got += live.read(second.column("user_id").to_numpy(),
                         second.column("time").to_numpy())["recent"].to_pylist()
        live.observe(second)
    assert got == replay_slot(table, config.slots[0], "user_id").to_pylist()


def test_ties_and_expiry() -> None:
    table = examples([(10, 1, 1.0, 5, []), (10, 1, 1.0, 6, []), (11, 1, 0.0, 7, []),
                      (20, 1, 1.0, 8, []), (30, 1, 1.0, 9, [])])
    slot = HistorySlot("recent", "item_id", max_len=5, expire_s=15)
    assert replay_slot(table, slot, "user_id").to_pylist() == [[], [], [6, 5], [6, 5], [8]]


def test_row_order_does_not_matter_and_columns_are_added() -> None:
    """(Entries of one user in the same second keep their row order, so times are distinct.)"""
    rng = np.random.default_rng(0)
    n = 2000
    table = examples([(int(t), int(u), float(l), int(i), [int(i) % 7, int(i) % 5])
                      for t, u, l, i in zip(rng.permutation(n), rng.integers(0, 30, n),
                                            rng.integers(0, 2, n), rng.integers(0, 300, n))])
    config = HistoryConfig(slots=(HistorySlot("recent_items", "item_id", 10, 100.0),
                                  HistorySlot("recent_genres", "genres", 4)))
    built = with_history(table, config)
    order = rng.permutation(n)
    shuffled = with_history(table.take(order), config)
    for name in ("recent_items", "recent_genres"):
        assert shuffled.column(name).to_pylist() == built.column(name).take(order).to_pylist()
    assert with_history(built, config).column_names == built.column_names


def test_null_users_have_no_history_and_leave_none() -> None:
    table = examples([(1, 1, 1.0, 5, []), (2, 1, 1.0, 6, []), (3, 1, 1.0, 7, [])])
    table = table.set_column(2, "user_id", pa.array([1, None, None], pa.int64()))
    slot = HistorySlot("recent", "item_id")
    assert replay_slot(table, slot, "user_id").to_pylist() == [[], [], []]


def test_movielens_sized_replay_takes_well_under_seconds() -> None:
    rng = np.random.default_rng(1)
    n = 100_000
    table = pa.table({"time": rng.integers(0, 10**6, n), "label": rng.integers(0, 2, n)
                      .astype(np.float32), "user_id": rng.integers(0, 1000, n),
                      "item_id": rng.integers(0, 2000, n)})
    slot = HistorySlot("recent", "item_id", max_len=20, expire_s=5e5)
    start = time.perf_counter()
    column = replay_slot(table, slot, "user_id")
    assert time.perf_counter() - start < 3.0
    assert pa.compute.max(pa.compute.list_value_length(column)).as_py() == 20


def test_the_experiments_history_slots_make_a_valid_config() -> None:
    from monolith_ray.config import Config, load_config
    from monolith_ray.experiments.history import history_config, history_slots

    base = load_config()
    history = history_config(100)
    config = Config(slots=history_slots(base.slots, history), history=history)
    assert {s.name: s.max_values for s in config.slots[-4:]} == {
        "recent_items": 100, "recent_genres": 200, "recent_passed_items": 100,
        "recent_passed_genres": 200}
    assert {s.dim for s in config.slots} == {base.slots[0].dim}
