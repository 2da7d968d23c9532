"""Slot values of JSON messages (Kafka examples, HTTP requests) as Arrow columns of raw value
ids, the example schema's slot columns (``monolith_ray.schemas``).

A single-valued slot takes a scalar or null; a multi-valued one a list (or a bare scalar, a
list of one) of at most ``max_values``, or null. Scalars are ints or strings, checked by
``monolith_ray.validation`` (the checks of the HTTP API and the Kafka messages) and turned
into raw value ids by :func:`monolith_ray.schemas.value_ids`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from monolith_ray import validation
from monolith_ray.config import SlotConfig
from monolith_ray.schemas import LABEL, TIME, WEIGHT, example_schema, value_ids

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


def scalar_column(values: list[Any]) -> pa.Array:
    null = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    ids = np.zeros(len(values), dtype=np.int64)
    ids[~null] = value_ids([v for v in values if v is not None])
    return pa.array(ids, mask=null)


def list_column(values: list[Any]) -> pa.Array:
    null = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    lengths = np.fromiter((0 if v is None else len(v) for v in values), dtype=np.int32,
                          count=len(values))
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = value_ids([x for v in values if v is not None for x in v])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.int64()),
                                    mask=pa.array(null))
