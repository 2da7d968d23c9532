"""History checkpoints: the file format's round trip, the files kept per owner, and what a
reader skips (a history server restored from one: ``test_server.py``)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from monolith_ray.config import ConfigError, load_config
from monolith_ray.history.checkpoint import checkpoints, read_checkpoint, write_checkpoint
from monolith_ray.history.store import HistoryStore

T0 = 1_700_000_000


def _store(seed: int) -> HistoryStore:
    rng = np.random.default_rng(seed)
    store = HistoryStore(max_len=4, max_users=100)
    store.add(rng.integers(0, 30, 200), T0 + rng.integers(0, 1000, 200),
              rng.integers(0, 50, 200))
    return store


def _reads(store: HistoryStore) -> list:
    users = np.arange(30)
    return store.values_before(users, np.full(30, T0 + 2000)).to_pylist()


def _newest(root: str, owner: str = "a", topic: str = "examples"):
    return next(checkpoints(root, owner, topic), None)


def test_a_checkpoint_round_trips_and_each_owner_keeps_its_newest_two(tmp_path: Path) -> None:
    root = str(tmp_path / "history")
    stores = {"a": _store(0), "b": _store(1)}
    for k in range(3):
        where = write_checkpoint(root, "a", "examples", {0: 10 + k, 1: 7},
                                 {name: s.to_bytes() for name, s in stores.items()},
                                 config={"slots": ["a", "b"]})
    write_checkpoint(root, "other", "examples", {0: 99}, {"a": _store(2).to_bytes()})
    assert where.endswith("history-a-000003.bin")
    assert sorted(p.name for p in Path(root).iterdir()) == [
        "history-a-000002.bin", "history-a-000003.bin", "history-other-000001.bin"]
    file, header, frames = _newest(root)
    assert file.endswith("history-a-000003.bin")
    assert header["positions"] == {"0": 12, "1": 7} and list(frames) == ["a", "b"]
    assert header["config"] == {"slots": ["a", "b"]}
    for name, store in stores.items():
        again = HistoryStore.from_bytes(frames[name], max_len=4, max_users=100)
        assert _reads(again) == _reads(store)
    assert _newest(root, topic="other-topic") is None
    assert _newest(root, owner="other")[1]["positions"] == {"0": 99}
    with pytest.raises(ValueError, match="owner"):
        write_checkpoint(root, "../x", "examples", {}, {})


def _file(header: dict, body: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def test_files_cut_short_or_not_checkpoints_are_skipped_for_the_one_before(tmp_path) -> None:
    root = tmp_path / "history"
    write_checkpoint(str(root), "a", "examples", {0: 5}, {"a": _store(0).to_bytes()})
    whole = (root / "history-a-000001.bin").read_bytes()
    header = json.loads(whole[8:8 + struct.unpack_from("<Q", whole)[0]])
    bad = {
        2: whole[:-3],  # a write cut short
        3: b"\xff" * 64,  # a header far too long
        4: whole[:8] + b"{not json" + whole[17:],
        5: _file({**header, "slots": [{"name": "a", "bytes": -4}]}),  # a negative length
        6: _file({k: v for k, v in header.items() if k != "topic"}),  # a key missing
        7: _file({**header, "positions": {"0": -1}, "slots": []}),
    }
    for number, data in bad.items():
        (root / f"history-a-{number:06d}.bin").write_bytes(data)
    (root / "history-a-000008.bin.part").write_bytes(whole)  # never renamed: not a file
    found = list(checkpoints(str(root), "a", "examples"))
    assert [f.rsplit("/", 1)[-1] for f, _, _ in found] == ["history-a-000001.bin"]
    for data in [*bad.values(), whole + b"x", b""]:
        with pytest.raises(ValueError):
            read_checkpoint(data)
    assert _newest(str(tmp_path / "nothing-here")) is None


def _npy(array: np.ndarray) -> bytes:
    import io

    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def test_store_frames_are_checked_before_anything_is_allocated_for_them() -> None:
    good = _store(0).to_bytes()
    users = _npy(np.arange(3, dtype=np.int64))
    grid = _npy(np.zeros((3, 4), np.int64))
    huge = _npy(np.zeros((3, 4), np.int64)).replace(b"(3, 4)", b"(3, 4000000000000)")
    for data in [
        good + b"\x00",  # bytes after the frames
        good[:-8],  # cut short
        users + _npy(np.zeros((3, 4), np.float64)) + grid,  # not int64
        users + _npy(np.asfortranarray(np.zeros((3, 4), np.int64))) + grid,
        users + huge + grid,  # a shape far past the bytes there
        users + _npy(np.zeros((2, 4), np.int64)) + grid,  # rows that do not fit the users
        b"not npy at all",
    ]:
        with pytest.raises(ValueError):
            HistoryStore.from_bytes(data, max_len=4, max_users=100)


def test_a_store_written_with_more_users_than_the_bound_keeps_the_most_recently_active():
    store = HistoryStore(max_len=2, max_users=100)
    store.add(np.arange(10), T0 + np.arange(10) * 10, np.arange(10))
    smaller = HistoryStore.from_bytes(store.to_bytes(), max_len=2, max_users=4)
    assert len(smaller) == 4
    held = smaller.values_before(np.arange(10), np.full(10, T0 + 1000)).to_pylist()
    assert held == [[]] * 6 + [[6], [7], [8], [9]]


def test_config_refuses_a_bad_checkpoint_setting_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="history.checkpoint_every_s"):
        load_config(overrides=["history.checkpoint_every_s=-1"])
    with pytest.raises(ConfigError, match="history.checkpoint_root"):
        load_config(overrides=["history.checkpoint_root=nosuchscheme://bucket/x"])


def test_frames_of_another_max_len_are_added_again_keeping_each_users_newest():
    store = _store(3)  # max_len 4, in place: copied as they are
    again = HistoryStore.from_bytes(store.to_bytes(), max_len=4, max_users=100)
    assert _reads(again) == _reads(store)
    shorter = HistoryStore.from_bytes(store.to_bytes(), max_len=2, max_users=100)
    assert _reads(shorter) == [values[:2] for values in _reads(store)]


def test_files_of_owners_gone_for_long_and_cut_short_writes_are_deleted(tmp_path) -> None:
    import os
    import time

    root = tmp_path / "history"
    write_checkpoint(str(root), "gone", "examples", {0: 1}, {"a": _store(0).to_bytes()})
    write_checkpoint(str(root), "live", "examples", {0: 1}, {"a": _store(0).to_bytes()})
    (root / "history-gone-000002.bin.part").write_bytes(b"x")
    (root / "history-me-000009.bin.part").write_bytes(b"x")  # mine, cut short
    (root / "notes.txt").write_bytes(b"not a checkpoint")
    long_ago = time.time() - 8 * 86_400
    for name in ("history-gone-000001.bin", "history-gone-000002.bin.part", "notes.txt"):
        os.utime(root / name, (long_ago, long_ago))
    write_checkpoint(str(root), "me", "examples", {0: 2}, {"a": _store(1).to_bytes()})
    assert sorted(p.name for p in root.iterdir()) == [
        "history-live-000001.bin", "history-me-000001.bin", "notes.txt"]


def test_a_file_larger_than_the_config_can_hold_is_skipped_before_it_is_read(tmp_path):
    root = str(tmp_path / "history")
    write_checkpoint(root, "a", "examples", {0: 1}, {"a": _store(0).to_bytes()})
    size = next(Path(root).iterdir()).stat().st_size
    assert next(checkpoints(root, "a", "examples", max_bytes=size), None) is not None
    assert next(checkpoints(root, "a", "examples", max_bytes=size - 1), None) is None


def test_odd_shapes_and_users_without_entries_are_not_taken_as_they_are():
    users = _npy(np.arange(3, dtype=np.int64))
    bool_shape = _npy(np.zeros((3, 4), np.int64)).replace(b"(3, 4)", b"(3, True)")
    with pytest.raises(ValueError):
        HistoryStore.from_bytes(users + bool_shape + bool_shape, max_len=4, max_users=10)
    # user 2's row is all empty: added again (no entry, so not held), not copied as it is
    times = np.full((3, 2), np.iinfo(np.int64).min)
    times[0, 1], times[1] = T0, [T0, T0 + 1]
    store = HistoryStore.from_bytes(users + _npy(times) + _npy(np.ones((3, 2), np.int64)),
                                    max_len=2, max_users=10)
    assert len(store) == 2
