"""DCN-v2 (Wang et al. 2021) over pooled slot rows, as pure JAX functions (``model.kind:
dcn_v2``).

The input ``x0`` concatenates every slot's whole row (``(B, dim_s + 1)``: the first-order
column is one more learned coordinate here) and the standardized dense features, so slots
of any dims mix freely. ``model.cross_layers`` full-rank cross layers

    x_{l+1} = x0 ⊙ (x_l W_l + b_l) + x_l          (W_l: d × d, d = width of x0)

run in *parallel* with the MLP (``model.hidden``) over the same ``x0``:

    logit = x_L · w_cross + MLP(x0)

(the paper's parallel structure: a linear layer over [x_L, deep output], its bias being the
MLP's). Why parallel rather than stacked (cross, then MLP): each branch reaches the logit
in one hop, so neither starves the other's gradient at the start, and the deep branch is
exactly DeepFM's, so comparing the two models compares the cross network with the FM term.
Cost per example: cross_layers · d² multiply-adds and as many parameters (d = 136 for the
MovieLens config's eight slots of dim 16: 55k multiply-adds with the default 3 layers).

Several tasks share the cross layers and the MLP's hidden layers; each has its own column of
``w_cross`` and of the MLP's output layer, and a bias (``layers.task_heads``).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from monolith_ray.model.api import ModelSpec, Params
from monolith_ray.model.layers import mlp_apply, mlp_init, named_logits, task_heads


def init(key: jax.Array, spec: ModelSpec) -> Params:
    """Cross layers (Glorot-normal ``w``, zero ``b``), the cross heads ``w_cross`` (d, T), a
    column a task (Glorot-normal), the MLP (``layers.mlp_init``, T outputs), all over ``x0``'s
    width d, and the tasks' heads (``layers.task_heads``)."""
    d = sum(s.width for s in spec.slots) + spec.n_dense
    mlp_key, head_key, *cross_keys = jax.random.split(key, 2 + spec.model.cross_layers)
    glorot = jax.nn.initializers.glorot_normal()
    n_tasks = len(spec.tasks)
    return {
        "cross": [{"w": glorot(k, (d, d), jnp.float32), "b": jnp.zeros((d,), jnp.float32)}
                  for k in cross_keys],
        "w_cross": glorot(head_key, (d, n_tasks), jnp.float32),
        "mlp": mlp_init(mlp_key, (d, *spec.model.hidden, n_tasks)),
        **task_heads(spec.tasks),
    }


def apply(params: Params, embeddings: Mapping[str, jax.Array],
          dense: jax.Array) -> dict[str, jax.Array]:
    """``{task: logits (B,)}`` from the pooled rows ``embeddings`` (name -> (B, dim_s + 1),
    in spec order) and the standardized ``dense (B, n_dense)``."""
    x0 = jnp.concatenate([*embeddings.values(), dense], axis=-1)
    x = x0
    for layer in params["cross"]:
        x = x0 * (x @ layer["w"] + layer["b"]) + x
    return named_logits(params, x @ params["w_cross"] + mlp_apply(params["mlp"], x0))
