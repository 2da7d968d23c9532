"""The live history store: last N per user by event time, strictly before t, bounded users,
expiry, late entries, snapshots without pickle."""

from __future__ import annotations

import numpy as np
import pytest

from monolith_ray.history import HistoryStore


def read(store: HistoryStore, user: int, t: int) -> list[int]:
    return store.values_before(np.array([user]), np.array([t])).to_pylist()[0]


def test_last_n_before_t_newest_first() -> None:
    store = HistoryStore(max_len=3, max_users=10)
    store.add([1, 1, 1, 1, 2], [10, 20, 30, 40, 15], [100, 200, 300, 400, 900])
    assert read(store, 1, 100) == [400, 300, 200]
    assert read(store, 1, 40) == [300, 200]  # strictly before: the action at 40 is left out
    assert read(store, 2, 16) == [900]
    assert read(store, 3, 100) == []


def test_late_entries_merge_in_event_time_and_old_ones_drop() -> None:
    store = HistoryStore(max_len=3, max_users=10)
    store.add([1, 1, 1], [10, 30, 50], [1, 3, 5])
    store.add([1], [40], [4])      # late: merged into place, the oldest (10) goes
    store.add([1], [5], [0])       # older than a full row's oldest: dropped
    assert read(store, 1, 100) == [5, 4, 3]


def test_expiry_at_read_time_and_eviction_of_expired_users() -> None:
    store = HistoryStore(max_len=5, max_users=10, expire_s=100)
    store.add([1, 1, 2], [0, 50, 10], [7, 8, 9])
    assert read(store, 1, 120) == [8]
    assert read(store, 1, 150) == []  # 100 s old at 150: expired
    assert store.evict_expired(now=110) == 1  # user 2's newest is 100 s old
    assert len(store) == 1 and read(store, 2, 50) == []


def test_users_are_bounded_and_the_least_recently_active_go_first() -> None:
    store = HistoryStore(max_len=2, max_users=32)
    store.add(np.arange(32), np.arange(32) + 1000, np.arange(32))
    store.add([100, 101], [5000, 5000], [1, 2])
    assert len(store) <= 32
    assert read(store, 0, 10**6) == [] and read(store, 1, 10**6) == []  # least active gone
    assert read(store, 31, 10**6) == [31] and read(store, 101, 10**6) == [2]
    for batch in range(50):  # many rounds of new users: never beyond the bound
        store.add(np.arange(7) + 1000 * batch + 10**5, np.full(7, 6000 + batch), np.arange(7))
        assert len(store) <= 32
    assert store.times.shape[0] <= 32


def test_a_batch_of_more_users_than_the_bound_is_refused() -> None:
    store = HistoryStore(max_len=2, max_users=4)
    with pytest.raises(ValueError, match="5 users in one batch, more than max_users 4"):
        store.add(np.arange(5), np.zeros(5), np.zeros(5))
    store.add(np.arange(4), np.zeros(4), np.zeros(4))
    store.add([9], [2], [9])  # one new: the least active goes
    assert len(store) == 4 and read(store, 9, 3) == [9]


def test_matches_a_per_user_reference_over_random_batches() -> None:
    rng = np.random.default_rng(3)
    store = HistoryStore(max_len=4, max_users=1000, expire_s=300)
    held: dict[int, list[tuple[int, int]]] = {}
    for _ in range(30):
        m = int(rng.integers(1, 40))
        users, times = rng.integers(0, 20, m), rng.integers(0, 1000, m)
        values = rng.integers(0, 99, m)
        store.add(users, times, values)
        for u, t, v in zip(users, times, values):
            held.setdefault(int(u), []).append((int(t), int(v)))
            held[int(u)] = sorted(held[int(u)], key=lambda e: e[0])[-4:]
        at = rng.integers(0, 1300, 20)
        who = rng.integers(0, 20, 20)
        got = store.values_before(who, at).to_pylist()
        want = [[v for t, v in reversed(held.get(int(u), [])) if t < a and t > a - 300]
                for u, a in zip(who, at)]
        assert got == want


def test_snapshot_round_trip_without_pickle() -> None:
    store = HistoryStore(max_len=3, max_users=100, expire_s=50)
    store.add([1, 1, 2, 3, 3, 3, 3], [1, 2, 3, 4, 5, 6, 7], [10, 11, 12, 13, 14, 15, 16])
    copy = HistoryStore.from_bytes(store.to_bytes(), 3, 100, 50)
    users, at = np.array([1, 2, 3, 4]), np.full(4, 40)
    assert copy.values_before(users, at).to_pylist() == store.values_before(users, at).to_pylist()
    assert b"pickle" not in store.to_bytes()


def test_bad_input() -> None:
    store = HistoryStore(max_len=3, max_users=10)
    with pytest.raises(ValueError, match="equal"):
        store.add([1, 2], [1], [1, 2])
    with pytest.raises(ValueError, match="equal"):
        store.values_before([1, 2], [1])
    with pytest.raises(ValueError, match="reserved"):
        store.add([1], [np.iinfo(np.int64).min], [1])
    with pytest.raises(ValueError):
        HistoryStore(max_len=0, max_users=10)
