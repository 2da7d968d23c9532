"""A model of your own, as small as a useful one gets: what ``model.kind:
monolith_ray.model.examples:make`` trains and serves, and a template to copy.

A plain deep network: an MLP (``model.hidden``) over every slot's whole pooled row and the
dense features, concatenated, with no FM or cross term: ``logits = MLP([row_1 … row_S, dense])``,
one output per task of ``spec.tasks`` (a shared network, a head column each). The embedding
rows train through it like any model's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from monolith_ray.config import ModelConfig
from monolith_ray.model.api import ModelSpec, Params
from monolith_ray.model.layers import mlp_apply, mlp_init, named_logits, task_heads


class PlainMLP:
    """``init``/``apply`` of the model (see ``monolith_ray.model.api``) with hidden layers of
    widths ``hidden``."""

    def __init__(self, hidden: Sequence[int]) -> None:
        self.hidden = tuple(hidden)

    def init(self, key: jax.Array, spec: ModelSpec) -> Params:
        # ``task_heads`` records the tasks' names in the parameters: ``apply`` is given
        # nothing else (a serving replica calls it with parameters it did not init).
        width = sum(s.width for s in spec.slots) + spec.n_dense
        return {"mlp": mlp_init(key, (width, *self.hidden, len(spec.tasks))),
                **task_heads(spec.tasks)}

    def apply(self, params: Params, embeddings: Mapping[str, jax.Array],
              dense: jax.Array) -> dict[str, jax.Array]:
        x = jnp.concatenate([*embeddings.values(), dense], axis=-1)
        return named_logits(params, mlp_apply(params["mlp"], x))  # {task: (B,)}


def make(cfg: ModelConfig) -> PlainMLP:
    """The factory ``model.kind`` names: called with the ``model`` section."""
    return PlainMLP(cfg.hidden)
