"""A model of your own, as small as a useful one gets: what ``model.kind:
monolith_ray.model.examples:make`` trains and serves, and a template to copy.

A plain deep network: an MLP (``model.hidden``) over every slot's whole pooled row and the
dense features, concatenated, with no FM or cross term: ``logit = MLP([row_1 … row_S, dense])``.
The embedding rows train through it like any model's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from monolith_ray.config import ModelConfig
from monolith_ray.model.api import ModelSpec, Params
from monolith_ray.model.layers import mlp_apply, mlp_init


class PlainMLP:
    """``init``/``apply`` of the model (see ``monolith_ray.model.api``) with hidden layers of
    widths ``hidden``."""

    def __init__(self, hidden: Sequence[int]) -> None:
        self.hidden = tuple(hidden)

    def init(self, key: jax.Array, spec: ModelSpec) -> Params:
        width = sum(s.width for s in spec.slots) + spec.n_dense
        return {"mlp": mlp_init(key, (width, *self.hidden, 1))}

    def apply(self, params: Params, embeddings: Mapping[str, jax.Array],
              dense: jax.Array) -> dict[str, jax.Array]:
        x = jnp.concatenate([*embeddings.values(), dense], axis=-1)
        return {"click": mlp_apply(params["mlp"], x)[:, 0]}


def make(cfg: ModelConfig) -> PlainMLP:
    """The factory ``model.kind`` names: called with the ``model`` section."""
    return PlainMLP(cfg.hidden)
