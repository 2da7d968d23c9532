"""The channel's wire format (``monolith_ray.ps.wire``): round trips of every kind of value a
shard method takes or returns, errors by type, and malformed input refused without running
anything."""

from __future__ import annotations

import pickle
import struct
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from monolith_ray.ps import wire
from monolith_ray.ps.calls import ShardUnavailableError
from monolith_ray.ps.packed_slots import PackedSlots
from monolith_ray.table import TableDelta


def round_trip(value: Any, kind: int = wire.REQUEST) -> Any:
    """``value`` encoded then decoded as a receiver does: head checked, buffers copied into
    fresh writable memory."""
    head_part, body, *buffers = wire.encode(kind, 3, 7, 5, value)
    head = wire.parse_head(head_part)
    assert (head.kind, head.method, head.seq, head.acked) == (kind, 3, 7, 5)
    assert wire.parse_sizes(head, head_part) == tuple(memoryview(b).nbytes for b in buffers)
    return wire.decode(bytes(body), [bytearray(b) for b in buffers])


def assert_same(a: Any, b: Any) -> None:
    """Equal values of the same types, arrays by dtype, shape and contents."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, float) and a != a:
        assert b != b  # NaN
    else:
        assert a == b


def test_the_values_of_every_channel_method_round_trip():
    rng = np.random.default_rng(0)
    ids = PackedSlots.of({"user": np.arange(50, dtype=np.int64), "item": np.empty(0, np.int64)})
    rows = PackedSlots.of({"user": rng.standard_normal((50, 17)).astype(np.float32),
                      "item": np.empty((0, 17), np.float32)})
    frozen = np.arange(7, dtype=np.float32)
    frozen.flags.writeable = False  # as arrays from Ray's object store come
    delta = TableDelta(np.arange(3, dtype=np.int64), np.ones((3, 17), np.float32),
                       np.empty(0, np.int64), 12)
    values = [
        (ids, rows, 1.5, ids, 2.25),  # push_pull's arguments
        ({"user": np.arange(4, dtype=np.int64)}, 0.0),
        {"user": {"rows": 3, "version": 9, "bytes": 1 << 40}},  # stats
        ("incarnation", {"user": delta}),  # changes_since
        ({"user": 4}, None), (), None, 12345, -3, "str", b"bytes",
        {"frozen": frozen, "strided": np.arange(100.0)[::7], "scalar": np.array(2.5),
         "flag": np.array([True, False]), 1: np.uint8(7).item()},
    ]
    for value in values:
        got = round_trip(value)
        assert_same(got, value)
    got = round_trip({"frozen": frozen})["frozen"]
    assert got.flags.writeable and not np.shares_memory(got, frozen)


def test_numpy_scalars_travel_as_python_scalars_and_lists_as_tuples():
    assert_same(round_trip((np.int64(3), np.float32(0.5), np.bool_(True), [1, [2.0]])),
                (3, 0.5, True, (1, (2.0,))))


def test_arrays_travel_out_of_band_as_raw_bytes():
    big = np.arange(1_000_000, dtype=np.float32)
    head, body, *buffers = wire.encode(wire.RESULT, 0, 0, 0, {"rows": big})
    assert len(body) < 100 and [memoryview(b).nbytes for b in buffers] == [big.nbytes]
    assert np.shares_memory(np.frombuffer(buffers[0], np.float32), big)  # not copied


@pytest.mark.parametrize("value", [
    object(), {("tuple", "key"): 1}, {True: 1}, np.zeros(3, np.complex64),
    np.zeros(3, ">f4"), np.zeros((1,) * 5), 1 << 70, Exception("x"),
    len,
])
def test_values_the_format_does_not_carry_are_refused_when_encoding(value):
    with pytest.raises(wire.WireError):
        wire.encode(wire.REQUEST, 0, 0, 0, (value,))


def test_nesting_is_bounded_both_ways():
    deep: Any = 1
    for _ in range(wire.MAX_DEPTH + 2):
        deep = (deep,)
    with pytest.raises(wire.WireError, match="deeper"):
        wire.encode(wire.REQUEST, 0, 0, 0, deep)
    with pytest.raises(wire.WireError):
        wire.decode(b"\x91" * 100_000 + b"\xc0", [])  # msgpack nested 100,000 deep


@pytest.mark.parametrize("error, cls, message", [
    (ShardUnavailableError("shard 1 dead"), ShardUnavailableError, "shard 1 dead"),
    (KeyError("no slot 'x'"), KeyError, "no slot 'x'"),
    (ValueError("bad"), ValueError, "bad"),
    (FileNotFoundError("gone"), FileNotFoundError, "gone"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad byte"), ValueError, "UnicodeDecodeError"),
    (type("Custom", (Exception,), {})("mine"), RuntimeError, "Custom: mine"),
])
def test_errors_are_raised_as_their_listed_type_or_nearest_base(error, cls, message):
    got = wire.error_of(round_trip(wire.error_value(error), wire.ERROR))
    assert type(got) is cls and message in str(got)


def test_an_error_naming_an_unlisted_type_is_a_runtime_error_and_nothing_is_imported():
    got = wire.error_of(("os.system", "rm -rf /"))
    assert type(got) is RuntimeError and "os.system: rm -rf /" in str(got)
    with pytest.raises(wire.WireError):
        wire.error_of(("ValueError",))


def _message(body: bytes, buffers: list[bytes], kind: int = wire.REQUEST) -> list[bytes]:
    head = wire.HEAD.pack(wire.MAGIC, kind, 0, len(buffers), len(body), 0, 0)
    return [head + struct.pack(f"<{len(buffers)}Q", *map(len, buffers)), body, *buffers]


def _array_ext(index: int, code: int, shape: tuple[int, ...]) -> msgspec.msgpack.Ext:
    return msgspec.msgpack.Ext(1, struct.pack("<IBB", index, code, len(shape))
                               + struct.pack(f"<{len(shape)}Q", *shape))


@pytest.mark.parametrize("node, buffers, match", [
    ([_array_ext(0, 4, (3,))], [b"\0" * 8], "over a buffer of 8 bytes"),
    ([_array_ext(1, 4, (1,))], [b"\0" * 4], "missing"),
    ([_array_ext(0, 4, (1,)), _array_ext(0, 4, (1,))], [b"\0" * 4], "used twice"),
    ([_array_ext(0, 99, (1,))], [b"\0"], "dtype code"),
    ([_array_ext(0, 1, (1,) * 9)], [b"\0"], "dimensions"),
    ([_array_ext(0, 1, (1 << 62, 1 << 62))], [b"\0"], "over a buffer"),
    ([1], [b"unused"], "not used"),
    ([msgspec.msgpack.Ext(2, b""), 1], [], "PackedSlots of 1 fields"),
    ([msgspec.msgpack.Ext(9, b"x")], [], "Ext is not a value"),
])
def test_malformed_bodies_are_refused(node, buffers, match):
    with pytest.raises(wire.WireError, match=match):
        wire.decode(msgspec.msgpack.encode(node), [bytearray(b) for b in buffers])


@pytest.mark.parametrize("head, match", [
    (b"PKL5" + bytes(wire.HEAD.size - 4), "not a channel message"),
    (wire.HEAD.pack(wire.MAGIC, 9, 0, 0, 0, 0, 0), "kind"),
    (wire.HEAD.pack(wire.MAGIC, 0, 200, 0, 0, 0, 0), "method id"),
    (wire.HEAD.pack(wire.MAGIC, 0, 0, 60_000, 0, 0, 0), "buffers"),
    (wire.HEAD.pack(wire.MAGIC, 0, 0, 0, 1 << 31, 0, 0), "body"),
    (b"short", "needs"),
])
def test_bad_headers_are_refused(head, match):
    with pytest.raises(wire.WireError, match=match):
        wire.parse_head(head)


def test_declared_sizes_are_bounded_before_anything_is_allocated():
    head_part = wire.HEAD.pack(wire.MAGIC, 0, 0, 1, 10, 0, 0) + struct.pack("<Q", 1 << 40)
    with pytest.raises(wire.WireError, match="more than"):
        wire.parse_sizes(wire.parse_head(head_part), head_part)
    with pytest.raises(wire.WireError, match="head part"):
        wire.parse_sizes(wire.parse_head(head_part), head_part[:-1])


def test_a_pickle_is_not_a_message():
    payload = pickle.dumps(ValueError("would be built by unpickling"))
    with pytest.raises(wire.WireError):
        wire.parse_head(payload.ljust(wire.HEAD.size, b"\0"))
    with pytest.raises(wire.WireError):
        wire.decode(payload, [])


scalars = st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 63) - 1) | st.floats() \
    | st.text(max_size=20) | st.binary(max_size=20)
arrays = hnp.arrays(st.sampled_from(wire.DTYPES), hnp.array_shapes(min_dims=0, max_dims=3,
                                                                   min_side=0, max_side=4))
values = st.recursive(scalars | arrays, lambda inner: st.tuples(inner, inner)
                      | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), inner,
                                        max_size=4), max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(values)
def test_any_value_of_the_format_round_trips(value):
    assert_same(round_trip(value), value)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.lists(st.binary(max_size=40), max_size=3))
def test_garbage_is_refused_with_a_wire_error_or_decodes_to_plain_values(body, buffers):
    try:
        value = wire.decode(body, [bytearray(b) for b in buffers])
    except wire.WireError:
        return
    _assert_plain(value)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=wire.HEAD.size, max_size=wire.HEAD.size + 40))
def test_garbage_heads_are_refused_or_within_bounds(data):
    try:
        head = wire.parse_head(data)
        sizes = wire.parse_sizes(head, data)
    except wire.WireError:
        return
    assert head.n_buffers <= wire.MAX_BUFFERS and sum(sizes) <= wire.MAX_MESSAGE_BYTES


def _assert_plain(value: Any) -> None:
    """Only the types the format carries."""
    if isinstance(value, (tuple, PackedSlots, TableDelta)):
        for v in value:
            _assert_plain(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            assert type(k) in (str, int)
            _assert_plain(v)
    else:
        assert value is None or type(value) in (bool, int, float, str, bytes, np.ndarray)
