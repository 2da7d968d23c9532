"""The one validation layer: every bound holds, and HTTP, messages and Arrow columns agree."""

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monolith_ray import validation
from monolith_ray.config import LimitsConfig, SlotConfig
from monolith_ray.data.slot_columns import examples_table
from monolith_ray.messages import MessageError, decode, encode, parse_feature

SLOTS = (SlotConfig(name="user_id", slot_id=1, dim=4), SlotConfig(name="gender", slot_id=2, dim=4),
         SlotConfig(name="genres", slot_id=3, dim=4, max_values=3))
KNOWN = {s.name: s for s in SLOTS}
LIMITS = LimitsConfig(max_event_skew_s=60.0, min_event_time_s=1000, max_context_bytes=64,
                      max_context_depth=3)


@pytest.mark.parametrize("value, problem", [
    ("", "non-empty"),
    ("x" * (validation.MAX_TEXT_CHARS + 1), "characters"),
    ("a\ud800b", "UTF-8"),
    (1 << 63, "int64"),
    (-(1 << 63) - 1, "int64"),
    (True, "expected an int or a string"),
    (1.5, "expected an int or a string"),
    ({"a": 1}, "expected an int or a string"),
])
def test_scalars_out_of_bounds_are_refused(value, problem):
    with pytest.raises(MessageError, match=problem):
        validation.scalar(value, "v")


def test_scalars_in_bounds_pass():
    for value in (0, -(1 << 63), (1 << 63) - 1, "M", "é" * validation.MAX_TEXT_CHARS, "25"):
        assert validation.scalar(value, "v") == value


def test_slot_shapes():
    assert validation.slot_value(None, 1, "s") is None
    assert validation.slot_value("War", 3, "s") == ["War"]
    with pytest.raises(MessageError, match="single-valued"):
        validation.slot_value([1], 1, "s")
    with pytest.raises(MessageError, match="max_values 3"):
        validation.slot_value([1, 2, 3, 4], 3, "s")
    with pytest.raises(MessageError, match=r"s\[1\]"):
        validation.slot_value([1, "\udfff"], 3, "s")
    with pytest.raises(MessageError, match="slots.age: not a slot"):
        validation.slots({"age": 3}, KNOWN)
    with pytest.raises(MessageError, match="entries"):
        validation.slots({f"s{i}": 1 for i in range(validation.MAX_SLOTS + 1)})


def test_event_time_bounds():
    now = 10_000.0
    assert validation.event_time(10_060, LIMITS, now) == 10_060
    with pytest.raises(MessageError, match="max_event_skew_s"):
        validation.event_time(10_061, LIMITS, now)
    with pytest.raises(MessageError, match="min_event_time_s"):
        validation.event_time(999, LIMITS, now)
    with pytest.raises(MessageError, match="int unix seconds"):
        validation.event_time(10_000.5, LIMITS, now)
    with pytest.raises(MessageError, match="max_event_skew_s"):
        validation.event_time(10**18)  # default limits, wall clock


def test_context_depth_size_and_encoding():
    assert validation.context({"a": [1, {"b": 2}]}, LIMITS) == b'{"a":[1,{"b":2}]}'
    deep: dict = {}
    node = deep
    for _ in range(1000):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(MessageError, match="max_context_depth"):
        validation.context(deep, LIMITS)
    with pytest.raises(MessageError, match="max_context_bytes"):
        validation.context({"a": "x" * 100}, LIMITS)
    with pytest.raises(MessageError, match="JSON"):
        validation.context({"a": float("nan")}, LIMITS)
    with pytest.raises(MessageError, match="JSON"):
        validation.context({"a": "\ud800"}, LIMITS)


def test_messages_and_columns_refuse_the_same_values():
    """What a features message refuses, the Arrow columns refuse, and the other way round."""
    now = time.time()
    for value in ("", "\ud800", 1 << 64, [1], 2.5, True):
        feature = {"request_id": "r", "time": int(now), "user_id": 1, "item_id": 2,
                   "slots": {"gender": value}}
        with pytest.raises(MessageError):
            parse_feature(feature, KNOWN, LIMITS, now)
        with pytest.raises(MessageError):
            examples_table([{"gender": value}], SLOTS, 0)
    ok = {"request_id": "r", "time": int(now), "user_id": 1, "item_id": 2,
          "slots": {"gender": "F", "genres": ["War", 7]}}
    assert parse_feature(ok, KNOWN, LIMITS, now)["slots"] == ok["slots"]
    assert examples_table([ok["slots"]], SLOTS, 0).num_rows == 1


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=20))
def test_any_json_slot_value_is_accepted_by_both_or_refused_by_both(value):
    now = time.time()
    feature = {"request_id": "r", "time": int(now), "user_id": 1, "item_id": 2,
               "slots": {"genres": value}}
    try:
        parse_feature(feature, KNOWN, LIMITS, now)
        accepted = True
    except MessageError:
        accepted = False
    try:
        examples_table([{"genres": value}], SLOTS, 0)
        converted = True
    except MessageError:
        converted = False
    assert accepted == converted
    if accepted:  # and what is accepted survives the trip through Kafka's JSON
        assert decode(encode(feature))["slots"]["genres"] == value
