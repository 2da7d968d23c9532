"""Kafka message schemas: valid messages parse, every malformed one names its field."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monolith_ray import messages, validation
from monolith_ray.config import LimitsConfig, SlotConfig
from monolith_ray.messages import (MessageError, Reader, dead_letter, decode, encode, parse_action,
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


def _verdict(call, *args):
    """What a read gives: its result, or the error's type and text."""
    try:
        return call(*args)
    except Exception as err:  # noqa: BLE001 - compared, not handled
        return type(err).__name__, str(err)


def _parsed_feature(raw, known, limits, now):
    msg = parse_feature(decode(raw or b""), known, limits, now)
    return msg["request_id"], msg["time"], msg["item_id"]


def _parsed_action(raw, limits, now):
    msg = parse_action(decode(raw or b""), limits, now)
    return msg["request_id"], msg["item_id"], msg["time"], msg["action"]


_SLOTS = (SlotConfig(name="user_id", slot_id=1, dim=4), SlotConfig(name="gender", slot_id=2, dim=4),
          SlotConfig(name="genres", slot_id=3, dim=4, max_values=3),
          SlotConfig(name="age", slot_id=4, dim=4), SlotConfig(name="s0", slot_id=5, dim=4))
_KNOWN = {s.name: s for s in _SLOTS}
_LIMITS = LimitsConfig(max_event_skew_s=60.0, min_event_time_s=1000)
_NOW = 1_700_000_000.0
_F = (b'{"request_id":"r-1","time":1700000000,"user_id":7,"item_id":42,'
      b'"slots":{"user_id":7,"gender":"M","genres":["Drama","War"],"age":null}}')
_A = b'{"request_id":"r-1","item_id":42,"time":1700000030,"action":"click"}'
_BIG = "9" * 30
# Bytes the typed decode and orjson might read differently: each must get the parser's verdict.
_FEATURES = [
    _F, b" " + _F + b"\n", _F.replace(b'"M"', b'"\\u00e9"'), _F.replace(b'"M"', "é".encode()),
    _F.replace(b'"M"', b'"' + b"x" * 256 + b'"'), _F.replace(b'"M"', b'"' + b"x" * 257 + b'"'),
    _F.replace(b'"M"', b'"' + "😀".encode() * 256 + b'"'),
    _F.replace(b'"M"', b'"' + "😀".encode() * 257 + b'"'),
    _F.replace(b'"M"', b'""'), _F.replace(b'"M"', b'"\\ud800"'), _F.replace(b'"M"', b'"\xff"'),
    _F.replace(b'"M"', b'"\xed\xa0\x80"'), _F.replace(b'"M"', b'"\\u0000"'),
    _F.replace(b'"M"', b'["M"]'), _F.replace(b'"M"', b"1.0"), _F.replace(b'"M"', b"true"),
    _F.replace(b'"M"', str(1 << 63).encode()), _F.replace(b'"M"', str(-(1 << 63)).encode()),
    _F.replace(b'"M"', _BIG.encode()), _F.replace(b'"M"', b"1e400"),
    _F.replace(b'["Drama","War"]', b'"Drama"'), _F.replace(b'["Drama","War"]', b"[]"),
    _F.replace(b'["Drama","War"]', b'["a","b","c"]'),
    _F.replace(b'["Drama","War"]', b'["a","b","c","d"]'),
    _F.replace(b'["Drama","War"]', b'["a",null]'), _F.replace(b'["Drama","War"]', b'[["a"]]'),
    _F.replace(b'["Drama","War"]', b'[1,""]'), _F.replace(b'"age":null', b'"s0":3'),
    _F.replace(b'"age":null', b'"height":3'), _F.replace(b'"age":null', b'"gender":null'),
    _F.replace(b'"age":null', b'"gender":[1]'),
    _F.replace(b'"slots":{', b'"slots":{"gender":[1],'),
    _F.replace(b'{"user_id":7,"gender":"M","genres":["Drama","War"],"age":null}', b"{}"),
    _F.replace(b'{"user_id":7,"gender":"M","genres":["Drama","War"],"age":null}', b'{"age":null}'),
    _F.replace(b'{"user_id":7,"gender":"M","genres":["Drama","War"],"age":null}', b"null"),
    _F.replace(b'"r-1"', b'"r 1"'), _F.replace(b'"r-1"', b'"r-1\\n"'), _F.replace(b'"r-1"', b'""'),
    _F.replace(b'"r-1"', b'"' + b"r" * 128 + b'"'), _F.replace(b'"r-1"', b'"' + b"r" * 129 + b'"'),
    _F.replace(b'"r-1"', b"1"), _F.replace(b'"r-1"', '"ré"'.encode()),
    _F.replace(b'"r-1"', b'"r\\t1"'), _F.replace(b'"r-1"', b'"r\\u007f"'),
    _F.replace(b'"r-1"', b'"r\\u0000"'), _F.replace(b'"r-1"', b'"~!"'),
    _F.replace(b"1700000000", b"1700000060"), _F.replace(b"1700000000", b"1700000061"),
    _F.replace(b"1700000000", b"1000"), _F.replace(b"1700000000", b"999"),
    _F.replace(b"1700000000", b"-" + _BIG.encode()), _F.replace(b"1700000000", _BIG.encode()),
    _F.replace(b"1700000000", b"1700000000.0"), _F.replace(b"1700000000", b'"1700000000"'),
    _F.replace(b'"item_id":42', b'"item_id":"42"'), _F.replace(b'"item_id":42', b'"item_id":null'),
    _F.replace(b'"item_id":42,', b""), _F.replace(b'"user_id":7,', b"", 1),
    _F.replace(b'"item_id":42', b'"item_id":[42]'),
    _F.replace(b'"item_id":42', b'"item_id":42,"item_id":"x"'),
    _F.replace(b'"item_id":42', b'"item_id":[],"item_id":43'),
    _F.replace(b'"request_id":"r-1"', b'"request_id":"r 1","request_id":"r-2"'),
    _F[:-1] + b',"context":null}', _F[:-1] + b',"context":{"page":"home"}}',
    _F[:-1] + b',"context":[]}', _F[:-1] + b',"extra":1}', _F[:-1] + b',"extra":"\xff"}',
    _F[:-1] + b',"extra":1e400}', _F[:-1] + b',"extra":' + b"[" * 2000 + b"]" * 2000 + b"}",
    _F[:-1] + b",}", _F + b"x", b"\xef\xbb\xbf" + _F, _F[:-1], b"", None, b"null", b"[]", b"{}",
    b"[" * 100_000,
]
_ACTIONS = [
    _A, _A.replace(b"click", b"skip"), _A.replace(b"click", b"stare"),
    _A.replace(b'"click"', b"1"), _A.replace(b'"click"', b'"\\u0063lick"'),
    _A.replace(b"1700000030", b"1700000061"), _A.replace(b"1700000030", b"999"),
    _A.replace(b"1700000030", b"true"), _A.replace(b"42", b'"42"'), _A.replace(b"42", b"4.2"),
    _A.replace(b"42", str(1 << 63).encode()), _A.replace(b'"r-1"', b'"r 1"'),
    _A.replace(b'"r-1"', b'"r\\u001f"'), _A.replace(b'"r-1"', '"r\u00a0"'.encode()),
    _A[:-1] + b',"context":{}}', _A[:-1] + b',"extra":"\xff"}',
    _A.replace(b',"action":"click"', b""),
    _A.replace(b'"action":"click"', b'"action":"click","action":"stare"'), b"", None, b"[1]",
]


@pytest.mark.parametrize("raw", _FEATURES)
def test_reader_gives_the_parsers_verdict_on_features(raw):
    reader = Reader(_KNOWN, _LIMITS)
    expected = _verdict(_parsed_feature, raw, _KNOWN, _LIMITS, _NOW)
    assert _verdict(reader.feature, raw, _NOW) == expected
    without = _verdict(_parsed_feature, raw, None, _LIMITS, _NOW)
    assert _verdict(Reader(None, _LIMITS).feature, raw, _NOW) == without


@pytest.mark.parametrize("raw", _ACTIONS)
def test_reader_gives_the_parsers_verdict_on_actions(raw):
    expected = _verdict(_parsed_action, raw, _LIMITS, _NOW)
    assert _verdict(Reader(_KNOWN, _LIMITS).action, raw, _NOW) == expected


def test_reader_keeps_the_parser_for_more_known_slots_than_a_message_may_hold():
    many = {f"s{i}": SlotConfig(name=f"s{i}", slot_id=i + 1, dim=4)
            for i in range(validation.MAX_SLOTS + 1)}
    raw = encode({"request_id": "r", "time": 1_700_000_000, "user_id": 1, "item_id": 2,
                  "slots": dict.fromkeys(many, 1)})
    assert _verdict(Reader(many, _LIMITS).feature, raw, _NOW) == _verdict(
        _parsed_feature, raw, many, _LIMITS, _NOW)
    assert _verdict(Reader(many, _LIMITS).feature, raw, _NOW)[0] == "MessageError"


def test_reader_reads_plain_messages_without_the_parsers(monkeypatch):
    reader = Reader(_KNOWN, _LIMITS)
    expected = (reader.feature(_F, _NOW), reader.action(_A, _NOW))
    monkeypatch.setattr(messages, "parse_feature", None)
    monkeypatch.setattr(messages, "parse_action", None)
    assert (reader.feature(_F, _NOW), reader.action(_A, _NOW)) == expected
    assert expected == (("r-1", 1_700_000_000, 42), ("r-1", 42, 1_700_000_030, "click"))


_VALUES = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1000, 999, 1_700_000_060, 1_700_000_061, 1 << 63, (1 << 63) - 1,
                     -(1 << 63), -(1 << 63) - 1, 1 << 64, 10**30]),
    st.integers(), st.text(max_size=3),
    st.sampled_from(["", "x" * 256, "x" * 257, "r 1", "\ud800"]),
    st.lists(st.one_of(st.integers(), st.text(max_size=2), st.none()), max_size=4))


@settings(max_examples=400, derandomize=True, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(["request_id", "time", "user_id", "item_id", "slots",
                                               "context", "action", "x"]), _VALUES, max_size=4),
       slots=st.dictionaries(st.sampled_from(list(_KNOWN) + ["x"]), _VALUES, max_size=3))
def test_reader_gives_the_parsers_verdict_on_any_fields(fields, slots):
    feature = json.loads(_F)
    feature["slots"].update(slots)
    action = json.loads(_A)
    raw_feature = json.dumps({**feature, **fields}).encode()
    raw_action = json.dumps({**action, **fields}).encode()
    reader = Reader(_KNOWN, _LIMITS)
    assert _verdict(reader.feature, raw_feature, _NOW) == _verdict(
        _parsed_feature, raw_feature, _KNOWN, _LIMITS, _NOW)
    assert _verdict(reader.action, raw_action, _NOW) == _verdict(
        _parsed_action, raw_action, _LIMITS, _NOW)
