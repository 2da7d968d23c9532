"""Slot columns and the batch decoder of ``examples`` messages: ``value_ids`` vectorized gives
the ids of one value at a time, and ``ExampleDecoder`` gives each message of a micro-batch the
verdict, the refusal text and the values of the per-record parser (``messages.parse_example``)
on valid and hostile messages (property tests, bounded example counts)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monolith_ray.config import DenseFeature, LimitsConfig, SlotConfig
from monolith_ray.data.slot_columns import ExampleDecoder, list_column, scalar_column
from monolith_ray.features import hash_str
from monolith_ray.messages import decode, parse_example, refusal_reason
from monolith_ray.schemas import value_ids

SLOTS = (SlotConfig("user", 1, 4), SlotConfig("item", 2, 4),
         SlotConfig("tags", 3, 4, max_values=3))
DENSE = (DenseFeature("price", max_abs=100.0), DenseFeature("views"))
LIMITS = LimitsConfig(min_event_time_s=1_600_000_000)
NOW = 1_700_000_000.5
INT64 = (-(1 << 63), (1 << 63) - 1)


def one_at_a_time(value: int | str) -> int:
    """The raw value id of one value, as ``value_ids`` defined it before it was vectorized."""
    if isinstance(value, str):
        if re.fullmatch(r"-?[0-9]{1,18}", value):
            return int(value)
        return int(hash_str([value])[0])
    return int(value)


scalars = st.one_of(
    st.integers(*INT64),
    st.from_regex(r"-?[0-9]{1,20}", fullmatch=True),
    st.text(min_size=1, max_size=8).filter(lambda s: not any(0xD800 <= ord(c) < 0xE000
                                                             for c in s)),
    st.sampled_from(["0", "-0", "007", "+5", " 5", "5\n", "٣", "1_000", "", "a"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(scalars, max_size=20))
def test_value_ids_is_the_id_of_each_value(values) -> None:
    assert value_ids(values).tolist() == [one_at_a_time(v) for v in values]
    assert value_ids(iter(values)).tolist() == [one_at_a_time(v) for v in values]


def test_value_ids_refuses_what_int_refuses() -> None:
    for bad in ([None], [1 << 63], [1, None, "a"], ["a", -(1 << 63) - 1]):
        with pytest.raises((TypeError, OverflowError)):
            value_ids(bad)


def test_columns_of_ints_strings_bare_scalars_and_nulls() -> None:
    assert scalar_column([1, None, "25", "x"]).to_pylist() == [1, None, 25,
                                                              one_at_a_time("x")]
    assert scalar_column((None, None)).to_pylist() == [None, None]
    assert list_column([[1, 2], None, [], 7, ["8", "y"]]).to_pylist() == [
        [1, 2], None, [], [7], [8, one_at_a_time("y")]]
    assert list_column(([1], None)).to_pylist() == [[1], None]
    for bad in ([[1, None]], [None, ["a", None]]):
        with pytest.raises(TypeError):
            list_column(bad)


# Hostile messages: each field valid or not, of every JSON type, at and past its bounds.
_ids = st.one_of(st.integers(*INT64), st.integers(1 << 63, 1 << 65),
                 st.integers(-(1 << 65), -(1 << 63) - 1),
                 st.text(max_size=4), st.text(min_size=255, max_size=258, alphabet="ab"),
                 st.sampled_from(["\ud800", "é", "12", "-0", "9" * 19]),
                 st.booleans(), st.floats(allow_nan=False, allow_infinity=False), st.none())
_slot_values = st.one_of(_ids, st.lists(_ids, max_size=5), st.dictionaries(st.text(max_size=2),
                                                                          _ids, max_size=2))
_numbers = st.one_of(st.integers(-3, 3), st.integers(-(1 << 70), 1 << 70),
                     st.floats(allow_nan=False, allow_infinity=False),
                     st.floats(-200, 200), st.sampled_from([0.0, -0.0, 1.0, 0.5, 100.0, 100.5,
                                                            1e12, 1.0000001e12, 2.0 ** 53]),
                     st.booleans(), st.none(), st.text(max_size=2))
_absent = object()


def _field(values: st.SearchStrategy) -> st.SearchStrategy:
    """A field's hostile value, or the field absent."""
    return st.one_of(values, st.just(_absent))


valid_times = st.integers(1_600_000_000, int(NOW) + 300)
valid_messages = st.fixed_dictionaries(
    {"request_id": st.from_regex(r"[\x21-\x7e]{1,8}", fullmatch=True), "time": valid_times,
     "label": st.one_of(st.sampled_from([0, 1, 0.0, 1.0]), st.floats(0, 1)),
     "slots": st.fixed_dictionaries({"user": st.integers(*INT64)}, optional={
         "item": st.one_of(st.text(min_size=1, max_size=6), st.integers(0, 9), st.none()),
         "tags": st.one_of(st.lists(st.one_of(st.integers(0, 9), st.text(min_size=1,
                                                                          max_size=2)),
                                    max_size=3), st.integers(0, 9), st.none())})},
    optional={"weight": st.floats(1e-9, 1e6),
              "dense": st.fixed_dictionaries({}, optional={
                  "price": st.one_of(st.floats(-100, 100), st.integers(-100, 100), st.none()),
                  "views": st.one_of(st.integers(0, 10 ** 6), st.none())}),
              "user_id": st.integers(0, 9), "item_id": st.text(min_size=1, max_size=3),
              "context": st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2)})
hostile_fields = {
    "request_id": _field(st.one_of(st.text(max_size=3), st.just("x" * 129),
                                   st.just("x" * 128), st.integers(0, 9), st.none())),
    "time": _field(st.one_of(st.integers(), st.sampled_from(
        [1_599_999_999, 1_600_000_000, int(NOW) + 300, int(NOW) + 301, 1 << 63, 1 << 64]),
        st.floats(1.6e9, 1.7e9), st.booleans(), st.none(), st.text(max_size=2))),
    "label": _field(_numbers),
    "weight": _field(st.one_of(_numbers, st.sampled_from([0, 1e6, 1e6 + 1, 5e-324]))),
    "slots": st.one_of(
        st.dictionaries(st.sampled_from(["user", "item", "tags", "mood", "é"]), _slot_values,
                        max_size=4),
        st.none(), st.integers(), st.lists(st.integers(), max_size=2)),
    "dense": _field(st.one_of(
        st.dictionaries(st.sampled_from(["price", "views", "other"]), _numbers, max_size=3),
        st.none(), st.integers(), st.text(max_size=2))),
    "user_id": _field(_ids),
    "item_id": _field(_ids),
    "context": _field(st.one_of(
        st.dictionaries(st.text(max_size=3), st.one_of(_ids, st.floats(allow_nan=False)),
                        max_size=3),
        st.dictionaries(st.text(max_size=2), st.dictionaries(st.text(max_size=2), _ids,
                                                             max_size=2), max_size=2),
        st.none(), st.lists(st.integers(), max_size=2))),
    "extra": st.integers(),
}
# A valid message, or one with one or two of its fields hostile (which may still be valid).
messages = st.one_of(valid_messages, *(
    st.builds(lambda m, v, k=k: {**m, k: v}, valid_messages, values)
    for k, values in hostile_fields.items()), *(
    st.builds(lambda m, v, w, k=k, j=j: {**m, k: v, j: w}, valid_messages, hostile_fields[k],
              hostile_fields[j]) for k, j in (("slots", "dense"), ("time", "label"),
                                              ("request_id", "weight"))))


def _encoded(message: dict) -> bytes:
    """The message as JSON bytes (lone surrogates as ``\\ud800`` escapes)."""
    return json.dumps({k: v for k, v in message.items() if v is not _absent}).encode()


# Raw bytes, for what JSON encoding cannot make: broken or repeated syntax, duplicate keys,
# bytes that are not UTF-8, numbers no double holds, whitespace, other JSON values.
_VALID = (b'{"request_id":"r","time":1700000000,"label":1,"slots":{"user":5,"tags":[1,"a"]},'
          b'"dense":{"price":1.5,"views":null}}')
raw_messages = st.one_of(
    st.just(_VALID),
    st.none(),
    st.sampled_from([
        b"", b"{", b"null", b"[]", b'"x"', b"1", _VALID + b",{}", _VALID[:-1], b" " + _VALID,
        _VALID + b"\n", b"\xef\xbb\xbf" + _VALID, _VALID.replace(b'"r"', b'"\xff"'),
        _VALID.replace(b'"r"', b'"\\ud800"'), _VALID.replace(b'"a"', b'"\\udc00"'),
        _VALID.replace(b"1.5", b"1e400"), _VALID.replace(b"1.5", b"NaN"),
        _VALID.replace(b"1.5", b"100.0000000000000001"), _VALID.replace(b"1.5", b"1E2"),
        _VALID.replace(b":5", b":18446744073709551616"), _VALID.replace(b":5", b":-0"),
        _VALID.replace(b":5", b":05"), _VALID.replace(b'"label":1', b'"label":1,"label":2'),
        _VALID.replace(b'"label":1', b'"label":2,"label":1'),
        _VALID.replace(b'"user":5', b'"user":5,"user":"x"'),
        _VALID.replace(b'"user":5', b'"user":"x","user":5'),
        _VALID.replace(b"1700000000", b"1700000000.0"),
        _VALID.replace(b'"slots":{', b'"slots":{"user":1,"user":null,'),
        _VALID.replace(b'"slots":{"user":5,"tags":[1,"a"]}', b'"slots":{}'),
        _VALID.replace(b'"slots":{"user":5,"tags":[1,"a"]}', b'"slots":{"user":null}'),
        _VALID.replace(b'"dense":{', b'"dense":{"price":1,"price":null,'),
        _VALID.replace(b'"dense":{"price":1.5,"views":null}', b'"dense":null'),
        _VALID.replace(b"}}", b'},"context":{"a":"\\u0000"}}'),
        _VALID.replace(b"}}", b'},"context":{"a":[' * 3 + b"]" * 3 + b"}}"),
        _VALID.replace(b"}}", b'},"context":{"a":"\x7f\xc3\xa9"}}'),
        # the serving decision an impression carries: valid, null, and out of its bounds
        _VALID.replace(b"}}", b'},"policy":"epsilon","arm":"exp/b","propensity":0.25}'),
        _VALID.replace(b"}}", b'},"policy":null,"arm":null,"propensity":null}'),
        _VALID.replace(b"}}", b'},"policy":"two words"}'),
        _VALID.replace(b"}}", b'},"arm":""}'), _VALID.replace(b"}}", b'},"arm":"\u00e9"}'),
        _VALID.replace(b"}}", b'},"policy":1}'),
        _VALID.replace(b"}}", b'},"propensity":0}'), _VALID.replace(b"}}", b'},"propensity":1.5}'),
        _VALID.replace(b"}}", b'},"propensity":"0.5"}'),
    ]),
    st.binary(max_size=40),
    st.builds(lambda i, b: _VALID[:i] + b + _VALID[i:], st.integers(0, len(_VALID)),
              st.binary(min_size=1, max_size=3)),
)


def _expected(raw: bytes | None) -> tuple[str | None, dict | None]:
    """The per-record parser's verdict on ``raw``: (refusal reason, None) or (None, the row's
    values as the source's columns hold them)."""
    try:
        if raw is None:
            from monolith_ray.messages import MessageError

            raise MessageError("no value (a tombstone)")
        example = parse_example(decode(raw), {s.name: s for s in SLOTS}, LIMITS, NOW,
                                {f.name: f for f in DENSE})
    except Exception as err:  # noqa: BLE001 - the verdict under test
        return refusal_reason(err), None
    row = {"time": example["time"], "label": float(np.float32(example["label"])),
           "weight": float(np.float32(example["weight"]))}
    for slot in SLOTS:
        value = example["slots"].get(slot.name)
        if value is None:
            row[slot.name] = None
        elif slot.max_values > 1:
            row[slot.name] = [one_at_a_time(v) for v in (value if type(value) is list
                                                         else [value])]
        else:
            row[slot.name] = one_at_a_time(value)
    for feature in DENSE:
        value = example["dense"].get(feature.name)
        row[feature.name] = None if value is None else float(np.float32(float(value)))
    return None, row


def _check_batch(raws: list[bytes | None]) -> None:
    decoder = ExampleDecoder(SLOTS, DENSE, LIMITS)
    examples, refused = decoder.decode(raws, NOW)
    reasons = {i: refusal_reason(err) for i, err in refused}
    expected = [_expected(raw) for raw in raws]
    assert reasons == {i: r for i, (r, _) in enumerate(expected) if r is not None}
    assert [e is None for e in examples] == [r is not None for r, _ in expected]
    kept = [e for e in examples if e is not None]
    if not kept:
        return
    columns = decoder.columns(kept)
    got = [dict(zip(columns, values)) for values in zip(*(c.to_pylist()
                                                           for c in columns.values()))]
    assert got == [row for _, row in expected if row is not None]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, min_size=1, max_size=6))
def test_decoder_agrees_with_the_parser_on_hostile_messages(batch) -> None:
    _check_batch([_encoded(m) for m in batch])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(raw_messages, messages.map(_encoded)), min_size=1, max_size=6))
def test_decoder_agrees_with_the_parser_on_hostile_bytes(batch) -> None:
    _check_batch(batch)


@settings(max_examples=150, deadline=None)
@given(st.lists(valid_messages, min_size=1, max_size=30))
def test_valid_batches_take_the_fast_path(batch) -> None:
    """Plainly valid messages are all decoded by the typed decode, none by the parser."""
    raws = [_encoded(m) for m in batch]
    decoder = ExampleDecoder(SLOTS, DENSE, LIMITS)
    decoder._parse = None  # the parser is not called
    examples, refused = decoder.decode(raws, NOW)
    assert not refused and all(e is not None for e in examples)
    _check_batch(raws)


def test_an_impression_s_serving_decision_takes_the_fast_path() -> None:
    decided = _VALID.replace(b"}}", b'},"policy":"thompson","arm":"e/a","propensity":0.5}')
    decoder = ExampleDecoder(SLOTS, DENSE, LIMITS)
    decoder._parse = None  # the parser is not called
    examples, refused = decoder.decode([decided, _VALID], NOW)
    assert not refused and (examples[0].policy, examples[0].arm,
                            examples[0].propensity) == ("thompson", "e/a", 0.5)
    assert examples[1].propensity is None


def test_the_event_time_bound_moves_with_the_wall_clock() -> None:
    raw = _VALID.replace(b"1700000000", b"1700000301")
    decoder = ExampleDecoder(SLOTS, DENSE, LIMITS)
    assert decoder.decode([raw], 1_700_000_001.0)[1] == []
    [(_, err)] = decoder.decode([raw], 1_700_000_000.5)[1]
    assert "max_event_skew_s" in str(err)


def test_an_unknown_dense_feature_is_refused_and_a_missing_one_is_null() -> None:
    decoder = ExampleDecoder(SLOTS, DENSE, LIMITS)
    raws = [_VALID, _VALID.replace(b'"views":null', b'"other":1'),
            _VALID.replace(b',"dense":{"price":1.5,"views":null}', b"")]
    examples, refused = decoder.decode(raws, NOW)
    assert [i for i, _ in refused] == [1] and "not a dense feature" in str(refused[0][1])
    columns = decoder.columns([examples[0], examples[2]])
    assert columns["price"].to_pylist() == [1.5, None]
    assert columns["views"].to_pylist() == [None, None]
    assert math.isclose(columns["weight"].to_pylist()[0], 1.0)


def test_string_lengths_are_counted_in_characters_on_both_paths() -> None:
    batch = []
    for n in (255, 256, 257):
        for char in ("😀", "é", "a"):
            message = {"request_id": "r", "time": 1_700_000_000, "label": 1,
                       "slots": {"item": char * n, "tags": [char * n]}}
            batch += [json.dumps(message).encode(),
                      json.dumps(message, ensure_ascii=False).encode()]
    _check_batch(batch)
