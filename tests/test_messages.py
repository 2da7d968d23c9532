"""Kafka message schemas: valid messages parse, every malformed one names its field."""

import pytest

from monolith_ray.messages import (MessageError, dead_letter, decode, encode, parse_action,
                                   parse_example, parse_feature)

FEATURE = {"request_id": "r-1", "time": 1_700_000_000, "user_id": 7, "item_id": 42,
           "slots": {"user_id": 7, "gender": "M", "genres": ["Drama", "War"], "age": None}}
ACTION = {"request_id": "r-1", "item_id": 42, "time": 1_700_000_030, "action": "click"}
EXAMPLE = {"request_id": "r-1", "time": 1_700_000_000, "slots": {"user_id": 7}, "label": 1.0,
           "weight": 5.0}


def test_valid_messages_round_trip_through_json():
    assert parse_feature(decode(encode(FEATURE)))["slots"] == FEATURE["slots"]
    assert parse_feature(FEATURE)["context"] == {}
    assert parse_action(decode(encode(ACTION))) == ACTION
    assert parse_example(decode(encode(EXAMPLE)))["weight"] == 5.0
    assert parse_example({**EXAMPLE, "weight": 1})["weight"] == 1.0


@pytest.mark.parametrize("parse, message, field", [
    (parse_feature, {**FEATURE, "time": "soon"}, "time"),
    (parse_feature, {**FEATURE, "time": True}, "time"),
    (parse_feature, {k: v for k, v in FEATURE.items() if k != "request_id"}, "request_id"),
    (parse_feature, {**FEATURE, "slots": {}}, "slots"),
    (parse_feature, {**FEATURE, "slots": {"genres": [1.5]}}, "slots.genres"),
    (parse_feature, {**FEATURE, "item_id": None}, "item_id"),
    (parse_feature, {**FEATURE, "context": []}, "context"),
    (parse_action, {**ACTION, "action": "stare"}, "action"),
    (parse_action, {**ACTION, "time": -1}, "time"),
    (parse_example, {**EXAMPLE, "label": 2}, "label"),
    (parse_example, {**EXAMPLE, "label": float("nan")}, "label"),
    (parse_example, {**EXAMPLE, "weight": 0}, "weight"),
    (parse_action, ["not", "an", "object"], "object"),
])
def test_malformed_messages_name_the_field(parse, message, field):
    with pytest.raises(MessageError, match=field):
        parse(message)


def test_bad_bytes_and_dead_letters():
    with pytest.raises(MessageError, match="JSON"):
        decode(b"{not json")
    with pytest.raises(MessageError, match="UTF-8"):
        decode(b"\xff\xfe")
    record = dead_letter("actions", 1, 17, "time: expected int", b"x" * 10_000, "joiner")
    assert record["topic"] == "actions" and record["offset"] == 17
    assert record["stage"] == "joiner"
    assert len(record["payload"]) == 4096
    with pytest.raises(ValueError):
        encode({"label": float("nan")})


def test_json_round_trip_and_refusals() -> None:
    obj = {"id": "r-1", "fids": [1, 2**62], "w": 0.5, "name": "café", "ok": True, "x": None}
    assert decode(encode(obj)) == obj
    assert encode({"a": 1}) == b'{"a":1}'
    with pytest.raises(ValueError):
        encode({"w": float("nan")})
    with pytest.raises(ValueError):
        decode(b"\x80\x04K\x01.")


@pytest.mark.parametrize("parse, message, field", [
    (parse_feature, {**FEATURE, "time": 10**18}, "max_event_skew_s"),
    (parse_action, {**ACTION, "time": 10**18}, "max_event_skew_s"),
    (parse_example, {**EXAMPLE, "time": 10**18}, "max_event_skew_s"),
    (parse_feature, {**FEATURE, "request_id": "has space"}, "request_id"),
    (parse_feature, {**FEATURE, "request_id": "r" * 129}, "request_id"),
    (parse_feature, {**FEATURE, "slots": {"gender": ""}}, "slots.gender"),
    (parse_feature, {**FEATURE, "slots": {"gender": "\ud800"}}, "slots.gender"),
    (parse_feature, {**FEATURE, "context": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {
        "h": {"i": 1}}}}}}}}}}, "max_context_depth"),
    (parse_example, {**EXAMPLE, "weight": 1e300}, "weight"),
])
def test_values_out_of_bounds_are_refused(parse, message, field):
    with pytest.raises(MessageError, match=field):
        parse(message)


def test_too_deep_json_is_a_message_error():
    with pytest.raises(MessageError, match="JSON"):
        decode(b"[" * 100_000)
