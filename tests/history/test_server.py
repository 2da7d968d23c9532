"""The history server in process: examples observed, read strictly before a time, bounds."""

from __future__ import annotations

import pyarrow as pa
import pytest
import yaml

from monolith_ray.config import DEFAULT_CONFIG, Config, load_config
from monolith_ray.config.loader import load_yaml
from monolith_ray.history.server import MAX_READ, HistoryServer


def history_config() -> Config:
    """The default config plus ``recent_items`` (the last 5 positive item ids) and
    ``recent_genres`` (their last 5 genres)."""
    slots = load_yaml(DEFAULT_CONFIG)["slots"] + [
        {"name": "recent_items", "slot_id": 101, "dim": 16, "max_values": 5},
        {"name": "recent_genres", "slot_id": 102, "dim": 16, "max_values": 5}]
    history = {"slots": [{"name": "recent_items", "source": "item_id", "max_len": 5},
                         {"name": "recent_genres", "source": "genres", "max_len": 5}]}
    return load_config(overrides=[
        f"{key}={yaml.safe_dump(value, default_flow_style=True, width=1 << 20)}"
        for key, value in (("slots", slots), ("history", history))])


def examples(rows: list[tuple[int, float, int, int, list[int]]]) -> pa.Table:
    """A table of (time, label, user_id, item_id, genres) rows."""
    time, label, user, item, genres = zip(*rows)
    return pa.table({"time": pa.array(time, pa.int64()), "label": pa.array(label, pa.float32()),
                     "user_id": pa.array(user, pa.int64()), "item_id": pa.array(item, pa.int64()),
                     "genres": pa.array(genres, pa.list_(pa.int64()))})


def test_a_read_at_t_holds_only_actions_strictly_before_t() -> None:
    server = HistoryServer(history_config(), follow=False)
    t1, t2 = 1_700_000_000, 1_700_000_060
    server.observe(examples([(t1, 1.0, 7, 11, [1, 2]), (t2, 1.0, 7, 22, [3]),
                             (t2 + 1, 1.0, 7, 33, [4]), (t1, 0.0, 7, 44, [5])]))
    at_t2 = server.read([7, 8], [t2, t2])
    assert at_t2 == {"recent_items": [[11], []], "recent_genres": [[2, 1], []]}
    assert server.read([7], [t2 + 1])["recent_items"] == [[22, 11]]
    assert server.read([7], [t1])["recent_items"] == [[]]  # the action at t1 is not yet known
    assert server.stats()["observed"] == 4 and server.stats()["users"]["recent_items"] == 1


def test_a_read_is_bounded_and_a_config_without_history_slots_is_refused() -> None:
    server = HistoryServer(history_config(), follow=False)
    with pytest.raises(ValueError, match="more than"):
        server.read([1] * (MAX_READ + 1), [0] * (MAX_READ + 1))
    with pytest.raises(ValueError, match="no history slots"):
        HistoryServer(load_config(), follow=False)
