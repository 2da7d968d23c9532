"""The example record: the one Arrow schema for training rows in Parquet and Ray Data.

An example is one impression with its outcome. Columns, in order:

==============  ===============  ==========================================================
column          type             meaning
==============  ===============  ==========================================================
``time``        int64, no nulls  event time, unix seconds (windows and splits use this)
``label``       float32, no      1.0 = click / positive, 0.0 = negative
                nulls
``weight``      float32, no      sample weight; 1.0 unless a sampler reweights the row
                nulls
``<slot>``      int64            one column per single-valued slot, named after the slot
``<slot>``      list<int64>      one column per multi-valued slot (``max_values > 1``)
``<dense>``     float32          one column per dense feature (config ``dense``), after the
                                 slots; the raw value, null where the example has none
``label_<t>``   float32          one column per task ``t`` after the first (config
                                 ``tasks``), last; null where the example has no label for
                                 it. Optional: data without it has no labels for ``t``
==============  ===============  ==========================================================

``label`` is the first task's label (``click`` unless ``tasks`` says otherwise), so data and
readers of one task are unchanged by multi-task configs.

Slot columns hold *raw value ids*, not fids: integers as they are, strings hashed with
:func:`monolith_ray.features.hash_str` (see :func:`value_ids`). The trainer turns them into
fids with :func:`monolith_ray.features.make_fids` and the slot's id, so a slot can be
renumbered without rewriting data. Columns not in the schema are allowed and ignored.
"""

from __future__ import annotations

import functools
import re
from itertools import repeat
from typing import Iterable, Protocol, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from monolith_ray.features import hash_str

TIME, LABEL, WEIGHT = "time", "label", "weight"
_DECIMAL_DIGITS = "-?[0-9]{1,18}"  # a string value_ids reads as an int
_DECIMAL = f"^{_DECIMAL_DIGITS}$"  # for Arrow's RE2: $ is the end of the text only
_DECIMAL_TEXT = re.compile(_DECIMAL_DIGITS)  # for re.fullmatch (its $ would pass a "\n")
_DENSE = {b"kind": b"dense"}  # field metadata of a dense feature's column
_TASK_LABEL = {b"kind": b"task_label"}  # field metadata of a task's label column (optional)
_BASE_FIELDS = (
    pa.field(TIME, pa.int64(), nullable=False),
    pa.field(LABEL, pa.float32(), nullable=False),
    pa.field(WEIGHT, pa.float32(), nullable=False),
)


class SchemaError(ValueError):
    """A table does not match the example schema; the message names the column."""


class _Slot(Protocol):
    name: str
    max_values: int


class _Dense(Protocol):
    name: str


SlotSpec = Union[tuple[str, bool], _Slot]


def label_column(tasks: Sequence[str], index: int) -> str:
    """The column of task ``tasks[index]``'s labels: ``label`` for the first, else
    ``label_<task>``."""
    return LABEL if index == 0 else f"{LABEL}_{tasks[index]}"


def example_schema(slots: Sequence[SlotSpec], dense: Sequence[str | _Dense] = (),
                   tasks: Sequence[str] = ()) -> pa.Schema:
    """Arrow schema of examples with the given slots, each ``(name, multi_valued)`` or an
    object with ``.name`` and ``.max_values`` (a ``SlotConfig``), then the dense features,
    each a name or an object with ``.name`` (a ``DenseFeature``), then the label columns of
    the ``tasks`` (names) after the first."""
    fields = list(_BASE_FIELDS)
    for slot in slots:
        name, multi = slot if isinstance(slot, tuple) else (slot.name, slot.max_values > 1)
        if name in (f.name for f in fields):
            raise SchemaError(f"column {name!r}: slot name repeats or clashes with a base column")
        fields.append(pa.field(name, pa.list_(pa.int64()) if multi else pa.int64()))
    for feature in dense:
        name = feature if isinstance(feature, str) else feature.name
        if name in (f.name for f in fields):
            raise SchemaError(f"column {name!r}: dense feature name repeats or clashes with "
                              "another column")
        fields.append(pa.field(name, pa.float32(), metadata=_DENSE))
    for i in range(1, len(tasks)):
        name = label_column(tasks, i)
        if name in (f.name for f in fields):
            raise SchemaError(f"column {name!r}: task label column clashes with another column")
        fields.append(pa.field(name, pa.float32(), metadata=_TASK_LABEL))
    return pa.schema(fields)


def validate_examples(table: pa.Table, schema: pa.Schema) -> None:
    """Raise :class:`SchemaError` unless ``table`` has every column of ``schema`` with its
    type and no nulls where the schema forbids them (a dense feature's column may be any
    numeric type). A task's label column may be missing (that task has no labels) or of any
    floating type. Extra columns are ignored. Runs once per training batch: about 50 µs for
    42 columns (types compared by name, nulls counted only where forbidden)."""
    have = dict(zip(table.schema.names, table.schema.types))
    for field, dense, task in _fields(schema):
        kind = have.get(field.name)
        if kind is None:
            if task:
                continue
            raise SchemaError(f"column {field.name!r}: missing (expected {field.type})")
        if kind != field.type and not (dense and (pa.types.is_floating(kind)
                                                  or pa.types.is_integer(kind))
                                       or task and pa.types.is_floating(kind)):
            raise SchemaError(f"column {field.name!r}: expected {field.type}, got {kind}")
        if not field.nullable:
            nulls = table.column(field.name).null_count
            if nulls:
                raise SchemaError(f"column {field.name!r}: {nulls} nulls, none allowed")


@functools.lru_cache(maxsize=64)
def _fields(schema: pa.Schema) -> tuple[tuple[pa.Field, bool, bool], ...]:
    """Each field of ``schema``, whether it is a dense feature's and whether a task label's
    (its metadata says so)."""
    return tuple((field, field.metadata == _DENSE, field.metadata == _TASK_LABEL)
                 for field in schema)


def value_text(value: str | int) -> str:
    """The text one value is known by, as :func:`value_ids` reads it: an int, or a string
    that spells a decimal integer, as that integer's decimal (``7``, ``"7"`` and ``"007"``
    -> ``"7"``); any other string as itself. For hashes that must agree with the model's
    ids (an A/B arm, a repeated report). One exception: an int of 19 digits and the same
    digits as a string are one text here but two ids to the model (it hashes a string of
    more than 18 digits), so such a user shares an arm across the two spellings."""
    if isinstance(value, str) and _DECIMAL_TEXT.fullmatch(value) is None:
        return value
    return str(int(value))


def value_ids(values: Iterable[str | int]) -> np.ndarray:
    """Raw value ids of feature values -> int64 (n,).

    Integers, and strings that spell a decimal integer, are kept as that integer, so ``25``
    from JSON and ``"25"`` from a text file are the same value; other strings are hashed with
    :func:`hash_str`. Hashes are 48-bit, so they seldom meet the small integers of real data.

    Vectorized: ints and decimal strings are converted in Arrow and numpy, without a Python
    loop per value; only the strings that are hashed are taken one by one (BLAKE2b, by
    :func:`hash_str`). A value that is neither an int nor a string raises (TypeError or
    OverflowError, as ``int`` would), as does an int beyond int64.
    """
    values = values if isinstance(values, (list, tuple, np.ndarray)) else list(values)
    try:
        ids = pa.array(values, type=pa.int64())
    except (TypeError, ValueError):  # strings among them (or a bad value: decided below)
        pass
    else:
        if ids.null_count:
            raise TypeError("value_ids: a value is None")
        return ids.to_numpy()
    objects = np.empty(len(values), dtype=object)
    objects[:] = values
    text = np.fromiter(map(isinstance, objects, repeat(str)), dtype=bool, count=len(objects))
    out = np.empty(len(objects), dtype=np.int64)
    out[~text] = objects[~text].astype(np.int64)
    strings = pa.array(objects[text], type=pa.string())
    decimal = pc.match_substring_regex(strings, _DECIMAL).to_numpy(zero_copy_only=False)
    at = np.flatnonzero(text)
    out[at[decimal]] = pc.cast(strings.filter(decimal), pa.int64()).to_numpy()
    hashed = strings.filter(~decimal).to_pylist()
    if hashed:
        out[at[~decimal]] = hash_str(hashed)
    return out
