"""History checkpoints: the file format's round trip, the files kept, and what a reader
skips (a history server restored from one: ``test_server.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from monolith_ray.config import ConfigError, load_config
from monolith_ray.history.checkpoint import (
    latest_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
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


def test_a_checkpoint_round_trips_and_only_the_newest_two_are_kept(tmp_path: Path) -> None:
    root = str(tmp_path / "history")
    stores = {"a": _store(0), "b": _store(1)}
    for k in range(3):
        where = write_checkpoint(root, "examples", {0: 10 + k, 1: 7},
                                 {name: s.to_bytes() for name, s in stores.items()})
    assert where.endswith("history-000003.bin")
    assert sorted(p.name for p in Path(root).iterdir()) == ["history-000002.bin",
                                                            "history-000003.bin"]
    header, frames = latest_checkpoint(root, "examples")
    assert header["positions"] == {"0": 12, "1": 7} and list(frames) == ["a", "b"]
    for name, store in stores.items():
        again = HistoryStore.from_bytes(frames[name], max_len=4, max_users=100)
        assert _reads(again) == _reads(store)
    assert latest_checkpoint(root, "other-topic") is None


def test_a_checkpoint_cut_short_or_not_one_is_skipped_for_the_one_before(tmp_path) -> None:
    root = tmp_path / "history"
    write_checkpoint(str(root), "examples", {0: 5}, {"a": _store(0).to_bytes()})
    whole = (root / "history-000001.bin").read_bytes()
    (root / "history-000002.bin").write_bytes(whole[:-3])  # a write cut short
    (root / "history-000003.bin").write_bytes(b"\xff" * 64)  # a header far too long
    (root / "history-000004.bin").write_bytes(whole[:8] + b"{not json" + whole[17:])
    header, _ = latest_checkpoint(str(root), "examples")
    assert header["positions"] == {"0": 5}
    for bad in (whole[:-3], whole + b"x", b"", b"\x02" + b"\x00" * 7 + b"[]"):
        with pytest.raises(ValueError):
            read_checkpoint(bad)
    assert latest_checkpoint(str(tmp_path / "nothing-here"), "examples") is None


def test_config_refuses_a_bad_checkpoint_setting_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="history.checkpoint_every_s"):
        load_config(overrides=["history.checkpoint_every_s=-1"])
    with pytest.raises(ConfigError, match="history.checkpoint_root"):
        load_config(overrides=["history.checkpoint_root=nosuchscheme://bucket/x"])
