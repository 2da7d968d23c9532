"""The ``retrieval`` section: off by default, its tables beside the slots', and bad values
failing at load naming the key."""

from __future__ import annotations

import pytest

from monolith_ray.config import ConfigError, load_config

SLOTS = """
slots:
  - {name: user_id, slot_id: 1, dim: 8}
  - {name: item_id, slot_id: 2, dim: 8}
"""


def test_off_by_default_and_tower_tables_when_on() -> None:
    plain = load_config(SLOTS)
    assert not plain.retrieval.enabled and plain.table_slots == plain.slots
    cfg = load_config(SLOTS + "retrieval: {user_slots: [user_id], item_slots: [item_id]}")
    tower = cfg.table_slots[2:]
    assert [s.name for s in tower] == ["tower_user_id", "tower_item_id"]
    assert [s.slot_id for s in tower] == [1, 2]  # the same fids reach both tables
    assert tower[0].optimizer == cfg.retrieval.optimizer


@pytest.mark.parametrize(("text", "key"), [
    ("{user_slots: [user_id]}", "retrieval.item_slots"),
    ("{user_slots: [user_id], item_slots: [user_id]}", "retrieval.item_slots"),
    ("{user_slots: [nobody], item_slots: [item_id]}", "retrieval.user_slots[0]"),
    ("{user_slots: [user_id], item_slots: [item_id], candidates: 0}", "retrieval.candidates"),
    ("{user_slots: [user_id], item_slots: [item_id], hidden: [0]}", "retrieval.hidden[0]"),
    ("{user_slots: [user_id, user_id], item_slots: [item_id]}", "retrieval.user_slots"),
])
def test_bad_values_name_their_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_config(SLOTS + "retrieval: " + text)


def test_serving_checks_the_candidates_and_the_item_slot() -> None:
    on = SLOTS + "retrieval: {user_slots: [user_id], item_slots: [item_id], candidates: 50}\n"
    load_config(on).check_serving()
    load_config(on + "serve: {store: sharded}").check_serving()  # the shards hold the towers
    with pytest.raises(ConfigError, match="retrieval.candidates"):
        load_config(on + "serve: {max_candidates: 20}").check_serving()
    with pytest.raises(ConfigError, match=r"retrieval.item_slots\[0\]: must be serve.item_slot"):
        load_config(on + "serve: {item_slot: user_id}").check_serving()


def test_a_slot_may_not_take_a_tower_tables_name() -> None:
    with pytest.raises(ConfigError, match=r"slots\[2\].name: 'tower_item_id'"):
        load_config(SLOTS + "  - {name: tower_item_id, slot_id: 3, dim: 4}\n"
                    "retrieval: {user_slots: [user_id], item_slots: [item_id]}")
