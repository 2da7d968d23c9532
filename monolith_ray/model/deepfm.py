"""DeepFM (Guo et al. 2017) over pooled slot rows, as pure JAX functions (``model.kind:
deepfm``, the default).

Slot ``s`` arrives as its whole table row ``(B, dim_s + 1)`` (``monolith_ray.model.api``):
column 0 is its first-order weight ``w_s``, columns 1.. its vector ``v_s``, shared by the
FM and deep parts. The logit is

    bias + Σ_s w_s + Σ_{s<t} <P_s v_s, P_t v_t> + MLP([v_1 … v_S, dense]) + dense · w_dense

Slots of different dims: the FM term pairs *every* two slots in a common FM dim, the largest
slot dim K. A slot of dim K enters as it is (``P_s`` is the identity, no parameter); a
smaller slot through a learned projection ``P_s`` (dim_s × K, ``params["fm_proj"][name]``),
initialized to the zero-padding embedding ``[v_s, 0]``. Why not pair only slots of equal
dims: a user id of dim 32 and an item id of dim 16 would then never meet in the FM term,
which is the interaction a recommender most needs; a projection costs dim_s × K dense
parameters per such slot and nothing when every slot has one dim, where DeepFM is exactly
the classic model (no ``fm_proj`` at all). The deep part concatenates every slot's vector,
whatever its dim.

Several tasks (``spec.tasks``) share everything but the MLP's output layer, one column (and
bias) per task: task t's logit is the shared bias, first-order and FM terms plus MLP column t.
With one task this is the single-task DeepFM exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from monolith_ray.model.api import ModelSpec, Params
from monolith_ray.model.layers import mlp_apply, mlp_init, named_logits, task_heads


def init(key: jax.Array, spec: ModelSpec) -> Params:
    """Dense parameters: the MLP (``layers.mlp_init``, input every slot's vector and the dense
    features), zero global bias, zero dense-feature weights (if ``spec.n_dense``) and the FM
    projections of the slots narrower than the widest (zero-padding identity)."""
    widths = (sum(s.dim for s in spec.slots) + spec.n_dense, *spec.model.hidden,
              len(spec.tasks))
    params: Params = {"bias": jnp.zeros((), jnp.float32), "mlp": mlp_init(key, widths),
                      **task_heads(spec.tasks)}
    if spec.n_dense:
        params["dense_w"] = jnp.zeros((spec.n_dense,), jnp.float32)
    fm_dim = max(s.dim for s in spec.slots)
    projections = {s.name: jnp.eye(s.dim, fm_dim, dtype=jnp.float32)
                   for s in spec.slots if s.dim != fm_dim}
    if projections:
        params["fm_proj"] = projections
    return params


def fm_interaction(vectors: jax.Array) -> jax.Array:
    """Second-order FM term Σ_{s<t} <v_s, v_t> for `vectors (B, S, D)` → `(B,)`, computed in
    O(S·D) as 0.5 · Σ_d ((Σ_s v)² − Σ_s v²)."""
    summed = vectors.sum(axis=1)
    return 0.5 * (summed**2 - (vectors**2).sum(axis=1)).sum(axis=-1)


def apply(params: Params, embeddings: Mapping[str, jax.Array],
          dense: jax.Array) -> dict[str, jax.Array]:
    """``{task: logits (B,)}`` from the pooled rows ``embeddings`` (name -> (B, dim_s + 1),
    in spec order) and the standardized ``dense (B, n_dense)``."""
    if (dense.shape[-1] > 0) != ("dense_w" in params):
        raise ValueError(f"dense features must be given iff the model was made with n_dense > 0 "
                         f"(got {dense.shape[-1]} features)")
    names, rows = list(embeddings), list(embeddings.values())
    first_order = jnp.stack([r[:, 0] for r in rows], axis=1).sum(axis=-1)
    vectors = [r[:, 1:] for r in rows]
    x = jnp.concatenate(vectors, axis=-1)
    linear = params["bias"] + first_order
    if dense.shape[-1]:
        x = jnp.concatenate([x, dense], axis=-1)
        linear = linear + dense @ params["dense_w"]
    deep = mlp_apply(params["mlp"], x)
    projections = params.get("fm_proj", {})
    fm_vectors = jnp.stack([v @ projections[n] if n in projections else v
                            for n, v in zip(names, vectors)], axis=1)
    shared = linear + fm_interaction(fm_vectors)
    return {task: shared + logits for task, logits in named_logits(params, deep).items()}
