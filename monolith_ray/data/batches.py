"""Example tables (``monolith_ray.schemas``) turned into the arrays a training step takes.

A :class:`Batch` holds, per slot, the batch's unique fids and an index matrix into them, the
shape ``monolith_ray.model.pool`` pools and the parameter-server client pulls: rows are
fetched once per unique fid, and the model's row gradients come back one per unique fid.
Raw value ids become fids with ``make_fids(slot.slot_id, value)`` here, at batching time, so
stored data never depends on slot numbering.

Cost: this runs in the trainer's own thread once per batch, so it is kept lean: about 3 ms
for 2,048 examples of 26 slots and 13 dense features. Distinct fids come from a hash-based
``pandas.factorize`` (sorted), about half the time of ``np.unique``'s full sort on Zipf ids.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from monolith_ray.config import DenseFeature, SlotConfig
from monolith_ray.data.dense_values import dense_matrix
from monolith_ray.features import make_fids
from monolith_ray.schemas import (
    LABEL,
    TIME,
    WEIGHT,
    SchemaError,
    example_schema,
    label_column,
    validate_examples,
)


@dataclass(frozen=True)
class Batch:
    """B examples as arrays.

    - ``fids[slot]``: int64 (U_s,), the slot's distinct fids in the batch, sorted.
    - ``idx[slot]``: int32 (B, L_s), row of ``fids[slot]`` for each value of each example,
      -1 where there is none; L_s is 1 for a single-valued slot, else its ``max_values``.
    - ``labels``, ``weights``: float32 (B,); ``time``: int64 (B,), event time in seconds.
    - ``dense``: float32 (B, n_dense), the dense features after their host-side transform
      (``monolith_ray.data.dense_values``); (B, 0) when the config has none.
    - ``task_labels[task]``: float32 (B,), the labels of each task after the first (whose
      labels are ``labels``), NaN where an example has none; a task absent from it has no
      labels in this batch (see :meth:`targets`).
    """

    fids: dict[str, np.ndarray]
    idx: dict[str, np.ndarray]
    labels: np.ndarray
    weights: np.ndarray
    time: np.ndarray
    dense: np.ndarray | None = None
    task_labels: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dense is None:
            object.__setattr__(self, "dense", np.zeros((self.labels.shape[0], 0), np.float32))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def targets(self, tasks: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(labels, weights), float32 (T, B), of the ``tasks`` (names; the first's are
        :attr:`labels`): an example without a label for a task weighs 0 in that task's row, so
        a task missing from the data trains nothing."""
        labels = np.empty((len(tasks), len(self)), np.float32)
        weights = np.empty_like(labels)
        labels[0], weights[0] = self.labels, self.weights
        for t, task in enumerate(tasks[1:], 1):
            given = self.task_labels.get(task)
            if given is None:
                labels[t], weights[t] = 0.0, 0.0
            else:
                known = ~np.isnan(given)
                labels[t] = np.where(known, given, 0.0)
                weights[t] = np.where(known, self.weights, 0.0)
        return labels, weights

    @property
    def now(self) -> float:
        """The batch's latest event time (seconds): the clock its table updates are stamped with."""
        return float(self.time.max()) if len(self) else 0.0

    def padded(self, size: int) -> Batch:
        """This batch with examples appended up to ``size``: no values, label 0, weight 0, so
        they change neither loss nor gradients (a fixed B spares the jitted step a recompile)."""
        extra = size - len(self)
        if extra < 0:
            raise ValueError(f"cannot pad a batch of {len(self)} examples down to {size}")
        if extra == 0:
            return self
        return Batch(
            fids=self.fids,
            idx={n: np.pad(a, ((0, extra), (0, 0)), constant_values=-1)
                 for n, a in self.idx.items()},
            labels=np.pad(self.labels, (0, extra)),
            weights=np.pad(self.weights, (0, extra)),
            time=np.pad(self.time, (0, extra), mode="edge" if len(self) else "constant"),
            dense=np.pad(self.dense, ((0, extra), (0, 0))),
            task_labels={t: np.pad(a, (0, extra)) for t, a in self.task_labels.items()},
        )


def make_batch(examples: pa.Table | pa.RecordBatch, slots: Sequence[SlotConfig],
               dense: Sequence[DenseFeature] = (), tasks: Sequence[str] = ()) -> Batch:
    """The :class:`Batch` of all rows of ``examples`` for ``slots`` and ``dense`` features,
    with the labels of the ``tasks`` (names) after the first read from their ``label_<task>``
    columns where the table has them (null: NaN).

    Raises :class:`~monolith_ray.schemas.SchemaError` naming the column if a column is
    missing, mistyped, null where it may not be, or holds more values than ``max_values``,
    or a dense value is NaN, infinite or beyond its ``max_abs``. A null slot value (or list)
    means the example has no value in that slot; a null dense value takes its default.
    """
    table = pa.Table.from_batches([examples]) if isinstance(examples, pa.RecordBatch) else examples
    tasks = tuple(tasks)
    validate_examples(table, _schema(tuple(slots), tuple(dense), tasks))
    values = {slot.name: slot_values(table.column(slot.name).combine_chunks(), slot)
              for slot in slots}
    batch = batch_of_values(values, slots, _numpy(table.column(LABEL), np.float32),
                            _numpy(table.column(WEIGHT), np.float32),
                            _numpy(table.column(TIME), np.int64),
                            dense_matrix(table, dense) if dense else None)
    names = table.schema.names
    task_labels = {task: pc.fill_null(table.column(column), np.nan).to_numpy()
                   .astype(np.float32, copy=False)
                   for i, task in enumerate(tasks[1:], 1)
                   if (column := label_column(tasks, i)) in names}
    return replace(batch, task_labels=task_labels) if task_labels else batch


SlotValues = tuple[np.ndarray, np.ndarray, np.ndarray]


def batch_of_values(values: Mapping[str, SlotValues], slots: Sequence[SlotConfig],
                    labels: np.ndarray, weights: np.ndarray, time: np.ndarray,
                    dense: np.ndarray | None = None) -> Batch:
    """The :class:`Batch` of B = ``labels.size`` examples given, per slot, its values as
    :func:`slot_values` returns them (raw value ids, example rows, positions), and the dense
    matrix float32 (B, n_dense) (None: no dense features)."""
    n = labels.shape[0]
    fids, idx = {}, {}
    for slot in slots:
        raw, rows, pos = values[slot.name]
        inverse, unique = pd.factorize(make_fids(slot.slot_id, raw), sort=True)
        if rows.size == n and slot.max_values == 1:  # every example has its one value
            matrix = inverse.astype(np.int32).reshape(n, 1)
        else:
            matrix = np.full((n, slot.max_values), -1, dtype=np.int32)
            matrix[rows, pos] = inverse
        fids[slot.name], idx[slot.name] = unique, matrix
    return Batch(fids=fids, idx=idx, labels=labels, weights=weights, time=time, dense=dense)


def iter_batches(examples: pa.Table, slots: Sequence[SlotConfig],
                 batch_size: int, dense: Sequence[DenseFeature] = (),
                 tasks: Sequence[str] = ()) -> Iterator[Batch]:
    """Consecutive batches of ``batch_size`` rows (the last may be shorter), in table order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, examples.num_rows, batch_size):
        yield make_batch(examples.slice(start, batch_size), slots, dense, tasks)


def slot_values(column: pa.Array, slot: SlotConfig) -> SlotValues:
    """A slot column -> (raw values int64 (k,), their example rows (k,), their positions in
    the example's list (k,)), nulls left out."""
    if slot.max_values == 1:
        if not column.null_count:
            n = len(column)
            return (column.to_numpy(zero_copy_only=False), np.arange(n),
                    np.zeros(n, dtype=np.int64))
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        values = column.fill_null(0).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(valid)
        return values[rows], rows, np.zeros(rows.size, dtype=np.int64)
    lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False)
    if lengths.size and lengths.max() > slot.max_values:
        raise SchemaError(f"column {slot.name!r}: an example has {int(lengths.max())} values, "
                          f"more than the slot's max_values {slot.max_values}")
    flat = pc.list_flatten(column)
    rows = pc.list_parent_indices(column).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.cumsum(lengths) - lengths
    pos = np.arange(rows.size) - starts[rows]
    valid = flat.is_valid().to_numpy(zero_copy_only=False)
    values = flat.fill_null(0).to_numpy(zero_copy_only=False)
    return values[valid], rows[valid], pos[valid]


@functools.lru_cache(maxsize=16)
def _schema(slots: tuple[SlotConfig, ...], dense: tuple[DenseFeature, ...],
            tasks: tuple[str, ...] = ()) -> pa.Schema:
    return example_schema(slots, dense, tasks)


def _numpy(column: pa.ChunkedArray, dtype: type) -> np.ndarray:
    return column.to_numpy().astype(dtype, copy=False)
