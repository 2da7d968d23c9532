"""Slot values of JSON messages (Kafka examples, HTTP requests) as Arrow columns of raw value
ids, the example schema's slot columns (``monolith_ray.schemas``).

A single-valued slot takes a scalar or null; a multi-valued one a list (or a bare scalar, a
list of one) of at most ``max_values``, or null. Scalars are ints or strings, checked by
``monolith_ray.validation`` (the checks of the HTTP API and the Kafka messages) and turned
into raw value ids by :func:`monolith_ray.schemas.value_ids`.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping, Sequence
from itertools import chain, repeat
from typing import Annotated, Any

import msgspec
import numpy as np
import pyarrow as pa
from msgspec.structs import astuple

from monolith_ray import validation
from monolith_ray.config import DenseFeature, LimitsConfig, SlotConfig
from monolith_ray.messages import (
    Int64,
    MessageError,
    Name,
    PlainScalar,
    Propensity,
    RequestId,
    decode,
    parse_example,
    plain_dense_type,
    plain_slot_type,
)
from monolith_ray.schemas import LABEL, TIME, WEIGHT, example_schema, label_column, value_ids

def examples_table(rows: Sequence[Mapping[str, Any]], slots: Sequence[SlotConfig], time: int,
                   label: float = 0.0, weight: float = 1.0) -> pa.Table:
    """Examples of the example schema from ``rows`` (one mapping slot name -> value each;
    missing slots are null), all at event ``time`` with ``label`` and ``weight``.
    MessageError naming the slot if a value does not fit its slot."""
    n = len(rows)
    columns = {TIME: pa.array(np.full(n, time, dtype=np.int64)),
               LABEL: pa.array(np.full(n, label, dtype=np.float32)),
               WEIGHT: pa.array(np.full(n, weight, dtype=np.float32))}
    for slot in slots:
        values = [slot_value(r.get(slot.name), slot) for r in rows]
        columns[slot.name] = (list_column(values) if slot.max_values > 1
                              else scalar_column(values))
    schema = example_schema(slots)
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def slot_value(value: Any, slot: SlotConfig) -> Any:
    """A message's slot value checked against the slot (``validation.slot_value``): a
    scalar (or None) for a single-valued slot, a list (or None) of at most ``max_values`` for
    a multi-valued one."""
    return validation.slot_value(value, slot.max_values, f"slots.{slot.name}")


def scalar_column(values: Sequence[Any]) -> pa.Array:
    """A single-valued slot's column (int64 (n,), null where a value is None) of scalars or
    None: ints in one Arrow conversion, strings through :func:`value_ids`."""
    try:
        return pa.array(values, type=pa.int64())
    except (TypeError, ValueError, OverflowError):  # strings among them: value_ids decides
        pass
    objects = _objects(values)
    null = np.equal(objects, None)
    ids = np.zeros(len(objects), dtype=np.int64)
    ids[~null] = value_ids(objects[~null])
    return pa.array(ids, mask=null)


def list_column(values: Sequence[Any]) -> pa.Array:
    """A multi-valued slot's column (list<int64> (n,), null where a value is None) of lists
    of scalars, bare scalars (a list of one) or None: lists of ints in one Arrow conversion;
    others flattened and converted by :func:`value_ids`."""
    try:
        column = pa.array(values, type=_INT_LISTS)
    except (TypeError, ValueError, OverflowError):  # strings or bare scalars among them
        pass
    else:
        if column.values.null_count:
            raise TypeError("list_column: a value in a list is None")
        return column
    lists = [v if v is None or type(v) is list else [v] for v in values]
    lengths = np.fromiter(map(len, (v for v in lists if v is not None)), dtype=np.int32)
    null = np.fromiter(map(operator.is_, lists, repeat(None)), dtype=bool, count=len(lists))
    counts = np.zeros(len(lists), dtype=np.int32)
    counts[~null] = lengths
    offsets = np.zeros(len(lists) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    flat = value_ids(list(chain.from_iterable(v for v in lists if v is not None)))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.int64()),
                                    mask=pa.array(null))


def _objects(values: Sequence[Any]) -> np.ndarray:
    """``values`` as a 1-d object array (never split into dimensions)."""
    objects = np.empty(len(values), dtype=object)
    objects[:] = values
    return objects


_INT_LISTS = pa.list_(pa.int64())


class ExampleDecoder:
    """``examples`` messages (UTF-8 JSON bytes) -> the example columns, a micro-batch at a
    time, with the verdicts and values of ``messages.parse_example`` for each message.

    **Fast path.** msgspec decodes each message into typed structs, validating in C (one
    ``map`` over the batch, no Python loop per record): the message's fields, values within
    ``validation``'s bounds, only the given slots (scalars, and for a multi-valued slot lists
    of at most ``max_values``) and dense features (finite, within ``max_abs``), and of the
    fields ``parse_example`` ignores only ``user_id``, ``item_id`` and a flat ``context``
    (those the joiner's examples carry). What a typed decode cannot check is checked on the
    whole batch at once: event times at the wall clock, request id characters, a ``slots``
    object with no entries. Columns are then built a slot at a time from the structs (one
    Arrow conversion per column, :func:`scalar_column`, :func:`list_column`).

    **Slow path.** A message the fast path does not admit — any that is not plainly valid,
    a tombstone, not JSON, an unknown or nested field, a number it cannot compare exactly —
    goes on its own to ``messages.decode`` and ``parse_example``, which decide and name the
    reason, so a bad message is refused with the same text as ever; a valid one becomes a
    struct like the others. A batch pays for this only for its own such messages, and for
    decoding its other messages again one at a time to find them.
    """

    def __init__(self, slots: Sequence[SlotConfig], dense: Sequence[DenseFeature] = (),
                 limits: LimitsConfig | None = None, tasks: Sequence[str] = ()) -> None:
        self.slots, self.dense, self.tasks = tuple(slots), tuple(dense), tuple(tasks)
        self._known = {s.name: s for s in self.slots}
        self._known_dense = {f.name: f for f in self.dense}
        self._limits = limits
        defaults = LimitsConfig() if limits is None else limits
        self._min_time, self._skew = defaults.min_event_time_s, defaults.max_event_skew_s
        self._Slots = _struct("_Slots", [(s.name, plain_slot_type(s.max_values)) for s in self.slots])
        self._Dense = _struct("_Dense", [(f.name, plain_dense_type(f.max_abs)) for f in self.dense])
        self._Example = msgspec.defstruct("_Example", [
            ("time", Int64), ("label", _Label), ("weight", _Weight, 1.0),
            ("slots", self._Slots),
            ("dense", self._Dense, msgspec.field(default_factory=self._Dense)),
            ("request_id", RequestId), ("user_id", PlainScalar | None, None),
            ("item_id", PlainScalar | None, None), ("context", _Context | None, None),
            ("labels", _Labels | None, None),
            # the serving decision the impression carried (``validation.decision``)
            ("policy", Name | None, None), ("arm", Name | None, None),
            ("propensity", Propensity | None, None),
        ], kw_only=True, forbid_unknown_fields=True, gc=False)
        fast = len(self.slots) <= validation.MAX_SLOTS and len(self.dense) <= validation.MAX_DENSE
        self._decode = msgspec.json.Decoder(self._Example).decode if fast else None
        self._no_slots = self._Slots()

    def decode(self, raws: Sequence[bytes | None], now: float
               ) -> tuple[list[Any], list[tuple[int, Exception]]]:
        """Each message of ``raws`` validated at wall clock ``now`` -> (one example struct per
        message, None where refused; ``(index, error)`` of each refused message)."""
        examples: list[Any] = [None] * len(raws)
        if self._decode is not None:
            try:
                examples = list(map(self._decode, raws))
            except Exception:  # noqa: BLE001 - one is not plainly valid: find which
                examples = [self._decode_one(raw) for raw in raws]
        refused = []
        for i in self._unsure(examples, now):
            try:
                examples[i] = self._parse(raws[i], now)
            except Exception as err:  # noqa: BLE001 - the parser's verdict on this message
                examples[i] = None
                refused.append((i, err))
        return examples, refused

    def columns(self, examples: Sequence[Any]) -> dict[str, pa.Array]:
        """The example columns (``time``, ``label``, ``weight``, each slot's, each dense
        feature's and each task's after the first, by name) of ``examples`` (structs of
        :meth:`decode`), n >= 1 of them."""
        n = len(examples)
        columns = {TIME: pa.array(np.fromiter(map(_TIME, examples), np.int64, n)),
                   LABEL: pa.array(np.fromiter(map(_LABEL, examples), np.float64, n)
                                   .astype(np.float32)),
                   WEIGHT: pa.array(np.fromiter(map(_WEIGHT, examples), np.float64, n)
                                    .astype(np.float32))}
        if self.slots:
            values = list(map(astuple, map(_SLOTS, examples)))
            scalars = [i for i, s in enumerate(self.slots) if s.max_values == 1]
            for i, column in zip(scalars, _columns(values, scalars, pa.int64(), scalar_column)):
                columns[self.slots[i].name] = column
            for i, slot in enumerate(self.slots):
                if slot.max_values > 1:
                    columns[slot.name] = list_column(list(map(operator.itemgetter(i), values)))
        if self.dense:
            values = list(map(astuple, map(_DENSE, examples)))
            for feature, column in zip(self.dense, _columns(
                    values, range(len(self.dense)), pa.float32(),
                    functools.partial(pa.array, type=pa.float32()))):
                columns[feature.name] = column
        for i in range(1, len(self.tasks)):
            task = self.tasks[i]
            columns[label_column(self.tasks, i)] = pa.array(
                [None if e.labels is None else e.labels.get(task) for e in examples],
                type=pa.float32())
        return columns

    def _decode_one(self, raw: bytes | None) -> Any:
        assert self._decode is not None
        try:
            return self._decode(raw)
        except Exception:  # noqa: BLE001 - not plainly valid: the parser decides
            return None

    def _unsure(self, examples: list[Any], now: float) -> list[int]:
        """Indices of the messages the typed decode did not settle: not decoded, an event
        time out of bounds at ``now``, a request id of other characters than printable ASCII
        without spaces, or a ``slots`` object without entries (the parser refuses it, and
        the struct cannot tell it from one of nulls)."""
        n = len(examples)
        none = np.fromiter(map(operator.is_, examples, repeat(None)), dtype=bool, count=n)
        if none.all():
            return list(range(n))
        decoded = [examples[i] for i in np.flatnonzero(~none)] if none.any() else examples
        times = np.fromiter(map(_TIME, decoded), np.int64, len(decoded))
        bad = (times < self._min_time) | (times > now + self._skew)
        ids = "".join(map(_REQUEST_ID, decoded))
        if not (ids.isascii() and ids.isprintable() and " " not in ids):
            bad |= np.fromiter(map(_bad_request_id, map(_REQUEST_ID, decoded)), dtype=bool,
                               count=len(decoded))
        bad |= np.fromiter(map(operator.eq, map(_SLOTS, decoded), repeat(self._no_slots)),
                           dtype=bool, count=len(decoded))
        unsure = none.copy()
        unsure[np.flatnonzero(~none)[bad]] = True
        return np.flatnonzero(unsure).tolist()

    def _parse(self, raw: bytes | None, now: float) -> Any:
        """``raw`` validated by ``parse_example`` -> its example struct; the parser's error
        if it is refused."""
        if raw is None:
            raise MessageError("no value (a tombstone)")
        example = parse_example(decode(raw), self._known, self._limits, now, self._known_dense)
        given, dense = example["slots"], example["dense"]
        return self._Example(
            time=example["time"], label=example["label"], weight=example["weight"],
            slots=self._Slots(*map(given.get, self._known)),
            dense=self._Dense(*(None if dense.get(f) is None else float(dense[f])
                                for f in self._known_dense)),
            request_id=example["request_id"], labels=example.get("labels"))


# The plainly valid values of an example, as msgspec types: validation's bounds. A string's
# length is counted in characters, as Python's len; msgspec refuses lone surrogates and
# invalid UTF-8 in strings, and numbers JSON cannot hold as a double, as orjson does.
_Label = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
_Weight = Annotated[float, msgspec.Meta(gt=0.0, le=validation.MAX_WEIGHT)]
_Context = dict[str, Int64 | str | float | bool | None]
_Labels = Annotated[dict[Annotated[str, msgspec.Meta(max_length=32)], _Label],
                    msgspec.Meta(max_length=32)]
_TIME, _LABEL, _WEIGHT = (operator.attrgetter(f) for f in ("time", "label", "weight"))
_SLOTS, _DENSE, _REQUEST_ID = (operator.attrgetter(f) for f in ("slots", "dense", "request_id"))


def _struct(name: str, fields: Sequence[tuple[str, Any]]) -> type:
    """A struct of the JSON object of ``fields`` (name, type): each field at most once,
    None where absent, nothing else (its attributes are numbered, so any name will do)."""
    attrs = [f"f{i}" for i in range(len(fields))]
    return msgspec.defstruct(name, [(a, t, None) for a, (_, t) in zip(attrs, fields)],
                             rename=dict(zip(attrs, (n for n, _ in fields))),
                             forbid_unknown_fields=True, gc=False)


def _columns(rows: list[tuple[Any, ...]], fields: Sequence[int], type_: pa.DataType,
             convert: Callable[[list[Any]], pa.Array]) -> list[pa.Array]:
    """The columns of ``fields`` (indices into each row) of ``rows``: all in one Arrow
    conversion to ``type_`` (a numeric type) when every value is of that type or None, else
    each column by ``convert``."""
    if not fields:
        return []
    if len(fields) == 1:
        picked = list(map(operator.itemgetter(fields[0]), rows))
    elif len(fields) == len(rows[0]):
        picked = rows
    else:
        picked = list(map(operator.itemgetter(*fields), rows))
    try:
        flat = (pa.array(picked, type=type_) if len(fields) == 1
                else pa.array(picked, type=pa.list_(type_, len(fields))).flatten())
    except (TypeError, ValueError, OverflowError):  # other values among them: column by column
        return [convert(list(map(operator.itemgetter(i), rows))) for i in fields]
    shape, dtype = (len(rows), len(fields)), np.dtype(type_.to_pandas_dtype())
    values = np.frombuffer(flat.buffers()[1], dtype, len(flat),
                           flat.offset * dtype.itemsize).reshape(shape)
    if not flat.null_count:
        return [pa.array(values[:, j]) for j in range(shape[1])]
    null = flat.is_null().to_numpy(zero_copy_only=False).reshape(shape)
    return [pa.array(values[:, j], mask=null[:, j]) for j in range(shape[1])]


def _bad_request_id(value: str) -> bool:
    return not (value.isascii() and value.isprintable() and " " not in value)
