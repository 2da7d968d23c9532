"""A two-tower retrieval model over pooled slot rows, as pure JAX functions.

The user tower reads the pooled rows of the user-side slots, the item tower those of the
item-side slots (each slot's whole table row ``(B, dim_s + 1)``, as every model of
``monolith_ray.model.api`` gets it, so slots of different dims simply concatenate). Each tower
is an MLP (``layers.mlp_init``: ReLU hidden layers, linear output) to ``spec.dim`` numbers,
then **L2-normalised**: a score is the cosine ``<u, v>`` in [-1, 1], so an inner-product index
over the item vectors is a cosine index, no item wins on its vector's norm alone (a popular
item's norm would otherwise grow to beat everything), and ``temperature`` alone sets how
sharp the softmax is.

Loss: in-batch softmax with the sampling-bias (logQ) correction of Yi et al., "Sampling-Bias-
Corrected Neural Modeling for Large Corpus Item Recommendations" (RecSys 2019). For B
positive pairs (user i, item i) the items of the other pairs are i's negatives; an item is in
a batch with probability ``q_j`` that grows with its popularity, so a popular item is pushed
down as a negative far more often than the full softmax would. The correction scores column
j with ``<u_i, v_j> / temperature - log q_j`` (every column, the positive's too). ``q`` comes
from outside (``monolith_ray.retrieval.frequency``: a streaming estimate per item id), so the
loss stays pure. Columns holding the same item as row i's positive (a duplicate in the batch)
are not its negatives; rows and columns of weight 0 (batch padding, non-positive examples) do
not count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from monolith_ray.config import SlotConfig
from monolith_ray.model.api import Params, SlotSpec
from monolith_ray.model.layers import mlp_apply, mlp_init
from monolith_ray.model.pooling import pool

_MASKED = -1e9  # the logit of a column that is not a candidate (exp underflows to 0)


@dataclass(frozen=True)
class TwoTowerSpec:
    """The towers' inputs and shape: ``user`` and ``item`` slots (name, dim, combiner) in
    input order, the MLPs' ``hidden`` widths, the output ``dim`` and the softmax
    ``temperature`` (scores are cosines, so 0.05 spreads them over ±20 logits)."""

    user: tuple[SlotSpec, ...]
    item: tuple[SlotSpec, ...]
    dim: int = 32
    hidden: tuple[int, ...] = (64,)
    temperature: float = 0.05

    def __post_init__(self) -> None:
        if not self.user or not self.item:
            raise ValueError("a two-tower model needs at least one user and one item slot")
        shared = {s.name for s in self.user} & {s.name for s in self.item}
        if shared:
            raise ValueError(f"slot(s) {sorted(shared)} on both towers")
        if self.dim < 1 or self.temperature <= 0:
            raise ValueError(f"dim must be >= 1 and temperature > 0, got {self.dim}, "
                             f"{self.temperature}")


def spec_of(slots: Sequence[SlotConfig], user: Sequence[str], item: Sequence[str],
            dim: int = 32, hidden: Sequence[int] = (64,),
            temperature: float = 0.05) -> TwoTowerSpec:
    """The spec of the configured ``slots`` named in ``user`` and ``item`` (in those orders)."""
    by_name = {s.name: s for s in slots}
    missing = sorted((set(user) | set(item)) - set(by_name))
    if missing:
        raise ValueError(f"no slot(s) {missing}; slots: {', '.join(by_name)}")

    def specs(names: Sequence[str]) -> tuple[SlotSpec, ...]:
        return tuple(SlotSpec(n, by_name[n].dim, by_name[n].combiner) for n in names)

    return TwoTowerSpec(specs(user), specs(item), dim, tuple(hidden), temperature)


def init(key: jax.Array, spec: TwoTowerSpec) -> Params:
    """``{"user": layers, "item": layers}``: each tower's MLP from its slots' concatenated
    rows (Σ (dim_s + 1) wide) to ``spec.dim``."""
    user_key, item_key = jax.random.split(key)
    return {"user": mlp_init(user_key, (sum(s.width for s in spec.user), *spec.hidden,
                                        spec.dim)),
            "item": mlp_init(item_key, (sum(s.width for s in spec.item), *spec.hidden,
                                        spec.dim))}


def tower(layers: Sequence[Params], slots: Sequence[SlotSpec],
          pooled: Mapping[str, jax.Array]) -> jax.Array:
    """Unit vectors ``(B, dim)`` of one tower from its slots' pooled rows (name ->
    ``(B, dim_s + 1)``), read in ``slots`` order. An all-zero output stays zero (no NaN)."""
    x = jnp.concatenate([pooled[s.name] for s in slots], axis=-1)
    out = mlp_apply(layers, x)
    # max before the root: sqrt's gradient at 0 is infinite, and padding rows are all zero
    return out * jax.lax.rsqrt(jnp.maximum(jnp.sum(out * out, axis=-1, keepdims=True), 1e-24))


def user_vectors(params: Params, spec: TwoTowerSpec,
                 pooled: Mapping[str, jax.Array]) -> jax.Array:
    """The user tower: pooled rows of ``spec.user`` -> unit vectors ``(B, spec.dim)``."""
    return tower(params["user"], spec.user, pooled)


def item_vectors(params: Params, spec: TwoTowerSpec,
                 pooled: Mapping[str, jax.Array]) -> jax.Array:
    """The item tower: pooled rows of ``spec.item`` -> unit vectors ``(B, spec.dim)``."""
    return tower(params["item"], spec.item, pooled)


def corrected_softmax_loss(scores: jax.Array, log_q: jax.Array, item_key: jax.Array,
                           weights: jax.Array, temperature: float) -> jax.Array:
    """Mean over rows of weight > 0 of ``-log softmax_j(scores[i, j] / temperature -
    log_q[j])[i]``: ``scores (B, B)`` user i · item j, ``log_q (B,)`` each column's item's
    log probability of being in a batch (zeros: no correction), ``item_key (B,)`` int the
    column's item (a column of row i's item other than i is not a negative), ``weights (B,)``
    1 for a positive pair, 0 for padding."""
    b = scores.shape[0]
    valid = weights > 0
    eye = jnp.eye(b, dtype=bool)
    duplicate = (item_key[:, None] == item_key[None, :]) & ~eye
    candidate = valid[None, :] & ~duplicate
    logits = jnp.where(candidate, scores / temperature - log_q[None, :], _MASKED)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    w = valid.astype(scores.dtype)
    return -(jnp.diagonal(log_p) * w).sum() / jnp.maximum(w.sum(), 1.0)


def loss_fn(params: Params, spec: TwoTowerSpec, slot_rows: Mapping[str, jax.Array],
            slot_idx: Mapping[str, jax.Array], log_q: jax.Array, item_key: jax.Array,
            weights: jax.Array) -> jax.Array:
    """The corrected in-batch softmax loss of B pairs: per slot of both towers its unique
    rows ``(U_s, dim_s + 1)`` and index ``(B, L_s)`` (-1 padding; ``pooling.pool``); row i of
    every slot is pair i (its user's slots and its item's). ``log_q``, ``item_key``,
    ``weights``: see :func:`corrected_softmax_loss`."""
    pooled = {s.name: pool(slot_rows[s.name], slot_idx[s.name], s.combiner)
              for s in (*spec.user, *spec.item)}
    users = user_vectors(params, spec, pooled)
    items = item_vectors(params, spec, pooled)
    return corrected_softmax_loss(users @ items.T, log_q, item_key, weights, spec.temperature)
