"""Pooling of looked-up embedding rows into one vector per example and slot, and the
shape-bucketing policy that keeps the jitted step from recompiling every batch.

A slot arrives from the parameter servers as the matrix of its *unique* rows
(`rows: (U, D1)` float32) plus an index matrix `idx: (B, L)` int32 into those rows, where -1
marks padding (a single-valued slot has L = 1). Pooling is a masked gather, so the gradient
with respect to `rows` is a dense `(U, D1)` matrix with one line per unique id: exactly the
sparse gradient the trainer pushes back, with duplicates already summed.

Padding policy: U changes every batch, and every new shape costs an XLA compile. Pad U up to
`bucket_size(U, cap=B * L)`: the next power of two, but never beyond `B * L`, the most unique
ids a slot can have in a batch. A slot then compiles for at most ~log2(B * L) + 2 row counts.
Padding rows are zero and never indexed, so their gradients are zero; slice `grads[:U]`
before pushing.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Combiner = Literal["sum", "mean"]


def pool(rows: jax.Array, idx: jax.Array, combiner: Combiner = "sum") -> jax.Array:
    """Combine the rows each example references: `rows (U, D1)`, `idx (B, L)` → `(B, D1)`.

    Entries of `idx` equal to -1 contribute nothing. "sum" adds the referenced rows; "mean"
    divides by the number of valid entries, and an example with none gets zeros (no NaN).
    `rows` must have at least one row (`pad_rows` guarantees it).
    """
    valid = idx >= 0
    gathered = rows[jnp.where(valid, idx, 0)] * valid[..., None].astype(rows.dtype)
    total = gathered.sum(axis=1)
    if combiner == "sum":
        return total
    if combiner == "mean":
        count = valid.sum(axis=1, keepdims=True).astype(rows.dtype)
        return total / jnp.maximum(count, 1)
    raise ValueError(f"unknown combiner {combiner!r}; expected 'sum' or 'mean'")


def bucket_size(n: int, cap: int | None = None) -> int:
    """Padded row count for `n` unique rows: the next power of two ≥ max(n, 1), at most `cap`
    (pass `cap = B * L`, the most unique rows a slot can have in a batch of B examples)."""
    size = 1 << max(n - 1, 0).bit_length()
    if cap is not None:
        size = min(size, max(cap, n, 1))
    return size


def pad_rows(rows: np.ndarray, to: int) -> np.ndarray:
    """Append zero rows to `rows (U, D1)` so it has `to` rows (host-side, before the step)."""
    n = rows.shape[0]
    if to < n:
        raise ValueError(f"cannot pad {n} rows down to {to}")
    out = np.zeros((to, rows.shape[1]), dtype=rows.dtype)
    out[:n] = rows
    return out


def pad_slots(
    slot_rows: tuple[np.ndarray, ...], slot_idx: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, ...]:
    """Apply the padding policy to every slot: each `rows` padded to
    `bucket_size(U, cap=idx.size)`."""
    return tuple(
        pad_rows(rows, bucket_size(rows.shape[0], cap=idx.size))
        for rows, idx in zip(slot_rows, slot_idx, strict=True)
    )
