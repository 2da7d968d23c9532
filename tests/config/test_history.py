"""The history section: history slots are multi-valued slots of the model; bad values fail
at load naming the key."""

from __future__ import annotations

import pytest

from monolith_ray.config import ConfigError, load_config
from monolith_ray.config.history import HistorySlot

SLOTS = """
slots:
  - {name: user_id, slot_id: 1, dim: 8}
  - {name: item_id, slot_id: 2, dim: 8}
  - {name: genres, slot_id: 3, dim: 8, max_values: 6}
  - {name: recent_items, slot_id: 4, dim: 8, max_values: 20}
  - {name: recent_genres, slot_id: 5, dim: 8, max_values: 30}
history:
  max_users: 1000
  slots:
    - {name: recent_items, source: item_id, max_len: 20, expire_s: 86400}
    - {name: recent_genres, source: genres, max_len: 30, min_label: 0.5}
"""


def test_loads() -> None:
    history = load_config(SLOTS).history
    assert history.user_slot == "user_id" and history.max_users == 1000
    assert history.slots[0] == HistorySlot("recent_items", "item_id", 20, 86400.0)
    assert (history.slots[1].min_label, history.slots[1].max_label) == (0.5, 1.0)


def test_no_history_by_default() -> None:
    assert load_config("slots:\n  - {name: a, slot_id: 0, dim: 4}\n").history.slots == ()


@pytest.mark.parametrize("override, message", [
    ("history.user_slot=genres", "^history.user_slot: 'genres' is not a single-valued slot"),
    ("history.max_users=0", "^history.max_users: must be >= 1, got 0$"),
    ("history.shards=0", "^history.shards: must be >= 1 and <= 256, got 0$"),
    ("history.shards=257", "^history.shards: must be >= 1 and <= 256, got 257$"),
    ("history.shards=3", "^history.shards: 3 history shards for kafka.partitions 2: each"),
    ("serve.exclude_seen=recent_genres", "^serve.exclude_seen: 'recent_genres' is not a "
     "history slot of serve.item_slot \\('item_id'\\); those: recent_items$"),
])
def test_bad_section_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(SLOTS, [override])


@pytest.mark.parametrize("entry, message", [
    ("{name: nope, source: item_id}", r"^history.slots\[0\].name: 'nope' is not a slot"),
    ("{name: item_id, source: genres}",
     r"^history.slots\[0\].name: slot 'item_id' must be multi-valued"),
    ("{name: recent_items, source: item_id, max_len: 21}",
     r"^history.slots\[0\].name: .* max_values >= max_len 21, has 20$"),
    ("{name: recent_items, source: nope}", r"^history.slots\[0\].source: 'nope' is not an item "
     "slot"),
    ("{name: recent_items, source: user_id}", r"^history.slots\[0\].source:"),
    ("{name: recent_items, source: recent_items}", r"^history.slots\[0\].source: must differ"),
    ("{name: recent_items, source: item_id, max_len: 0}",
     r"^history.slots\[0\].max_len: must be >= 1 and <= 1024, got 0$"),
    ("{name: recent_items, source: item_id, expire_s: -1}", r"^history.slots\[0\].expire_s:"),
    ("{name: recent_items, source: item_id, min_label: -0.5}", r"^history.slots\[0\].min_label:"),
    ("{name: recent_items, source: item_id, min_label: 0.5, max_label: 0.4}",
     r"^history.slots\[0\].max_label: must be >= 0.5 and <= 1, got 0.4$"),
    ("{name: recent_items, source: item_id, max_lenn: 3}",
     r"^history.slots\[0\].max_lenn: unknown key"),
])
def test_bad_slot_values_name_the_key(entry: str, message: str) -> None:
    text = SLOTS.split("history:")[0] + f"history:\n  slots:\n    - {entry}\n"
    with pytest.raises(ConfigError, match=message):
        load_config(text)


def test_duplicate_history_slots_are_refused() -> None:
    entry = "    - {name: recent_items, source: item_id}\n"
    text = SLOTS.split("history:")[0] + "history:\n  slots:\n" + entry * 2
    with pytest.raises(ConfigError, match=r"^history.slots\[1\].name: duplicate"):
        load_config(text)


def test_a_history_of_a_history_slot_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^history.slots\[1\].source: 'recent_items'"):
        load_config(SLOTS.replace("source: genres", "source: recent_items"))


def test_exclude_seen_names_a_history_slot_of_items() -> None:
    assert load_config(SLOTS, ["serve.exclude_seen=recent_items"]).serve.exclude_seen == \
        "recent_items"
    with pytest.raises(ConfigError, match="^serve.exclude_seen: 'recent_items' .* those: none"):
        load_config(overrides=["serve.exclude_seen=recent_items"])
