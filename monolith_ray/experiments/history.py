"""The history experiment: the shipped MovieLens-100K model plus real-time user-history slots
(``monolith_ray.history``), trained on train and frozen, with every split's history columns
replayed over train, valid and test in event time — so a test impression sees the test
actions before it, as serving reading the live store would, while the model never trains
on them.

Four slots of one length N: the user's last N positive items and their genres, and the last
N items they passed over (label 0) and their genres. The passed-over slots tell the model
how often this user rates high, which its user id cannot for the users it never saw (most
test users). Pooled by ``sum``, so a slot's vector also carries how many entries it holds.
"""

from __future__ import annotations

import dataclasses

import pyarrow as pa

from monolith_ray.config import SlotConfig
from monolith_ray.config.history import HistoryConfig, HistorySlot
from monolith_ray.data.movielens import SPLITS
from monolith_ray.history import with_history

FIRST_SLOT_ID = 101


def history_config(max_len: int, passed: bool = True) -> HistoryConfig:
    """The history slots of the experiment, items at most ``max_len`` and genres at most
    ``2 * max_len`` (a movie has 1.7 genres on average): the positives' and, if ``passed``,
    the passed-over ones'."""
    positive = (HistorySlot("recent_items", "item_id", max_len),
                HistorySlot("recent_genres", "genres", 2 * max_len))
    if not passed:
        return HistoryConfig(slots=positive)
    labels = {"min_label": 0.0, "max_label": 0.0}
    return HistoryConfig(slots=positive + (
        HistorySlot("recent_passed_items", "item_id", max_len, **labels),
        HistorySlot("recent_passed_genres", "genres", 2 * max_len, **labels)))


def history_slots(base: tuple[SlotConfig, ...], history: HistoryConfig) -> tuple[SlotConfig, ...]:
    """``base`` plus one multi-valued slot per history slot, shaped like ``base[0]`` (the
    model needs one dim for all slots) with room for its ``max_len`` values, pooled by sum."""
    return base + tuple(
        dataclasses.replace(base[0], name=h.name, slot_id=FIRST_SLOT_ID + i, combiner="sum",
                            max_values=h.max_len)
        for i, h in enumerate(history.slots))


def history_splits(splits: dict[str, pa.Table], history: HistoryConfig) -> dict[str, pa.Table]:
    """``splits`` with the history columns of ``history`` replayed over all of them at once
    (``with_history``): each example's values come from every split's earlier actions."""
    whole = with_history(pa.concat_tables([splits[name] for name in SPLITS]), history)
    out, start = {}, 0
    for name in SPLITS:
        out[name] = whole.slice(start, splits[name].num_rows)
        start += splits[name].num_rows
    return out


def describe_history(history: HistoryConfig) -> list[str]:
    """One line per history slot, e.g. ``recent_items: last 100 item_id, labels [1, 1]``."""
    return [f"{h.name}: last {h.max_len} {h.source}, labels [{h.min_label:g}, {h.max_label:g}]"
            for h in history.slots]
