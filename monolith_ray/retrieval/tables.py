"""The tower tables: each slot a two-tower model reads has a table of its own beside the
ranking slots' in the same shards, named ``tower_<slot>`` and keyed by the same fids (same
``slot_id``, so a request's fids reach both). Why not share the ranking model's rows: see
``monolith_ray.retrieval.train``. Also how to pool a batch's rows of those tables, for the
trainer's evaluation and for serving alike."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from monolith_ray.config import SlotConfig
from monolith_ray.data.batches import Batch
from monolith_ray.model.api import SlotSpec
from monolith_ray.model.pooling import bucket_size, pad_rows, pool

TOWER_PREFIX = "tower_"

Lookup = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]
"""Rows of fids: table name -> fids int64 (n,) in, table name -> rows float (n, dim + 1) out
(``ShardClient.lookup``; serving: its store's lookup per table)."""


def table_name(slot: str) -> str:
    """The name of the tower table of ranking slot ``slot``."""
    return TOWER_PREFIX + slot


def tower_slots(slots: Sequence[SlotConfig], names: Sequence[str],
                **overrides: object) -> tuple[SlotConfig, ...]:
    """The tower tables of the ``slots`` named in ``names``: the same settings (``slot_id``,
    dim, combiner ...) under :func:`table_name`, with ``overrides`` (e.g. ``optimizer=``,
    ``initializer=``) replaced. Give them to the ``ShardServer``s beside the ranking slots."""
    by_name = {s.name: s for s in slots}
    return tuple(dataclasses.replace(by_name[n], name=table_name(n), **overrides)
                 for n in names)


def tower_fids(batch: Batch, slots: Sequence[SlotSpec]) -> dict[str, np.ndarray]:
    """What to read for ``batch``'s ``slots``: tower table name -> the batch's distinct fids
    int64 (n_s,) of that slot (the ``batch.idx`` positions index them)."""
    return {table_name(s.name): batch.fids[s.name] for s in slots}


def pooled_rows(lookup: Lookup, batch: Batch, slots: Sequence[SlotSpec]
                ) -> dict[str, np.ndarray]:
    """``batch``'s rows in the tower tables of ``slots`` (one ``lookup`` call of
    :func:`tower_fids`), pooled per example with each slot's combiner -> slot name ->
    float32 (B, dim_s + 1), what the towers and the ``Retriever`` take. Use a serving lookup
    (unknown fids read zeros). A caller that has read the rows already (an async read)
    pools them with :func:`pool_rows`."""
    return pool_rows(lookup(tower_fids(batch, slots)), batch, slots)


def pool_rows(rows: Mapping[str, np.ndarray], batch: Batch, slots: Sequence[SlotSpec]
              ) -> dict[str, np.ndarray]:
    """Pool ``rows`` (tower table name -> float (n_s, dim_s + 1), the rows of
    :func:`tower_fids` in its order) per example of ``batch`` with each slot's combiner ->
    slot name -> float32 (B, dim_s + 1). Examples and unique rows are padded to powers of
    two, so a process compiles the pooling for a few shapes, not one per batch (a replica
    pools subsets of its catalogue of every size)."""
    b = len(batch)
    size = bucket_size(b)
    out = {}
    for s in slots:
        idx = batch.idx[s.name]
        idx = np.pad(idx, ((0, size - b), (0, 0)), constant_values=-1)
        unique = np.asarray(rows[table_name(s.name)], np.float32)
        out[s.name] = np.asarray(_pool(jnp.asarray(pad_rows(unique, bucket_size(unique.shape[0]))),
                                       idx, s.combiner))[:b]
    return out


_pool = jax.jit(pool, static_argnames="combiner")
