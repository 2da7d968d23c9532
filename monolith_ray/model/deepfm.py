"""DeepFM (Guo et al. 2017) over pooled slot embeddings, as pure JAX functions.

Every slot contributes one row of width D + 1 per example: column 0 is the feature's
first-order (linear) weight, columns 1..D its embedding vector shared by the FM and deep
parts. The logit is

    bias + Σ_s w_s + Σ_{s<t} <v_s, v_t> + MLP([v_1 … v_S, dense]) + dense · w_dense

where `dense` are the dense features standardized with the fitted `params["dense_norm"]`.

Only the dense parameters (global bias, MLP, dense-feature weights) live in `params`; the
embedding rows come from the parameter servers, so the train step returns their gradients
instead of updating them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax

from monolith_ray.model.pooling import Combiner, pool

Params = dict[str, Any]


@dataclass(frozen=True)
class DeepFMConfig:
    """Shape of a DeepFM: `n_slots` sparse slots of embedding width `dim` (rows are
    `dim + 1` wide), MLP hidden widths, and the number of dense (float) features."""

    n_slots: int
    dim: int
    hidden: tuple[int, ...] = (256, 128)
    n_dense: int = 0


def init(key: jax.Array, cfg: DeepFMConfig) -> Params:
    """Dense parameters: He-normal hidden layers, Glorot-normal output layer, zero biases,
    zero global bias and (if `cfg.n_dense`) zero dense-feature linear weights and an identity
    `dense_norm` (mean 0, inv_std 1: see `normalize_dense`)."""
    widths = (cfg.n_slots * cfg.dim + cfg.n_dense, *cfg.hidden, 1)
    keys = jax.random.split(key, len(widths) - 1)
    mlp = []
    for i, (k, n_in, n_out) in enumerate(zip(keys, widths[:-1], widths[1:])):
        is_output = i == len(widths) - 2
        initializer = (
            jax.nn.initializers.glorot_normal() if is_output else jax.nn.initializers.he_normal()
        )
        mlp.append(
            {
                "w": initializer(k, (n_in, n_out), jnp.float32),
                "b": jnp.zeros((n_out,), jnp.float32),
            }
        )
    params: Params = {"bias": jnp.zeros((), jnp.float32), "mlp": mlp}
    if cfg.n_dense:
        params["dense_w"] = jnp.zeros((cfg.n_dense,), jnp.float32)
        params["dense_norm"] = {"mean": jnp.zeros((cfg.n_dense,), jnp.float32),
                                "inv_std": jnp.ones((cfg.n_dense,), jnp.float32)}
    return params


def normalize_dense(params: Params, dense: jax.Array | None) -> jax.Array | None:
    """`(dense - mean) * inv_std` with `params["dense_norm"]` (fitted on a sample when a job
    starts: `monolith_ray.data.dense_values.fit_norm`); `dense (B, n_dense)`. The fitted
    numbers are constants to the loss (no gradient reaches them), so every dense optimizer
    leaves them as they are, and they travel with the parameters to snapshots and serving."""
    if dense is None or "dense_norm" not in params:
        return dense
    norm = jax.lax.stop_gradient(params["dense_norm"])
    return (dense - norm["mean"]) * norm["inv_std"]


def fm_interaction(vectors: jax.Array) -> jax.Array:
    """Second-order FM term Σ_{s<t} <v_s, v_t> for `vectors (B, S, D)` → `(B,)`, computed in
    O(S·D) as 0.5 · Σ_d ((Σ_s v)² − Σ_s v²)."""
    summed = vectors.sum(axis=1)
    return 0.5 * (summed**2 - (vectors**2).sum(axis=1)).sum(axis=-1)


def apply(
    params: Params, embeddings: jax.Array, dense: jax.Array | None, cfg: DeepFMConfig
) -> jax.Array:
    """Logits `(B,)` from pooled `embeddings (B, S, D+1)` and `dense (B, n_dense)` (None when
    `cfg.n_dense == 0`)."""
    if (dense is None) != (cfg.n_dense == 0):
        raise ValueError(f"dense features must be given iff n_dense > 0 (n_dense={cfg.n_dense})")
    first_order = embeddings[..., 0].sum(axis=-1)
    vectors = embeddings[..., 1:]
    x = vectors.reshape(vectors.shape[0], -1)
    linear = params["bias"] + first_order
    if dense is not None:
        x = jnp.concatenate([x, dense], axis=-1)
        linear = linear + dense @ params["dense_w"]
    *hidden, output = params["mlp"]
    for layer in hidden:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    deep = (x @ output["w"] + output["b"])[:, 0]
    return linear + fm_interaction(vectors) + deep


def _logits(
    params: Params,
    slot_rows: tuple[jax.Array, ...],
    slot_idx: tuple[jax.Array, ...],
    combiners: tuple[Combiner, ...],
    dense: jax.Array | None,
    cfg: DeepFMConfig,
) -> jax.Array:
    """Pool every slot and apply the model: `(B,)` logits."""
    pooled = [pool(r, i, c) for r, i, c in zip(slot_rows, slot_idx, combiners, strict=True)]
    return apply(params, jnp.stack(pooled, axis=1), normalize_dense(params, dense), cfg)


def _loss_and_logits(
    params: Params,
    slot_rows: tuple[jax.Array, ...],
    slot_idx: tuple[jax.Array, ...],
    combiners: tuple[Combiner, ...],
    labels: jax.Array,
    weights: jax.Array,
    dense: jax.Array | None,
    cfg: DeepFMConfig,
) -> tuple[jax.Array, jax.Array]:
    logits = _logits(params, slot_rows, slot_idx, combiners, dense, cfg)
    losses = optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype))
    weights = weights.astype(logits.dtype)
    loss = (weights * losses).sum() / jnp.maximum(weights.sum(), 1e-12)
    return loss, logits


def loss_fn(
    params: Params,
    slot_rows: tuple[jax.Array, ...],
    slot_idx: tuple[jax.Array, ...],
    combiners: tuple[Combiner, ...],
    labels: jax.Array,
    weights: jax.Array,
    dense: jax.Array | None,
    cfg: DeepFMConfig,
) -> jax.Array:
    """Weighted mean binary cross-entropy (from logits) of a batch: Σ w·bce / Σ w.

    `slot_rows[s] (U_s, D+1)` and `slot_idx[s] (B, L_s)` as in `pool`; `labels`, `weights`
    are `(B,)`. An example with weight 0 (e.g. batch padding) does not count.
    """
    return _loss_and_logits(
        params, slot_rows, slot_idx, combiners, labels, weights, dense, cfg
    )[0]


TrainStep = Callable[
    ..., tuple[Params, optax.OptState, tuple[jax.Array, ...], jax.Array, jax.Array]
]


def make_grad_step(
    cfg: DeepFMConfig, combiners: tuple[Combiner, ...]
) -> Callable[..., tuple[Params, tuple[jax.Array, ...], jax.Array, jax.Array]]:
    """Jitted `(params, slot_rows, slot_idx, labels, weights, dense)
    → (param_grads, row_grads, loss, logits)`: gradients only, for a trainer whose dense
    parameters live on a dense parameter server that applies them."""
    combiners = tuple(combiners)
    grad_fn = jax.value_and_grad(_loss_and_logits, argnums=(0, 1), has_aux=True)

    @jax.jit
    def grad_step(params, slot_rows, slot_idx, labels, weights, dense):
        (loss, logits), (param_grads, row_grads) = grad_fn(
            params, tuple(slot_rows), tuple(slot_idx), combiners, labels, weights, dense, cfg
        )
        return param_grads, tuple(row_grads), loss, logits

    return grad_step


def make_train_step(
    cfg: DeepFMConfig,
    combiners: tuple[Combiner, ...],
    dense_optimizer: optax.GradientTransformation,
) -> TrainStep:
    """Jitted `(params, opt_state, slot_rows, slot_idx, labels, weights, dense)
    → (params, opt_state, row_grads, loss, logits)`.

    Dense params are updated with `dense_optimizer`; `row_grads[s] (U_s, D+1)` is the
    gradient of the loss w.r.t. `slot_rows[s]`, for the trainer to push to the parameter
    servers. Pad `slot_rows` with `pad_slots` to bound recompilation.
    """
    grad_step = make_grad_step(cfg, combiners)

    @jax.jit
    def step(params, opt_state, slot_rows, slot_idx, labels, weights, dense):
        param_grads, row_grads, loss, logits = grad_step(
            params, slot_rows, slot_idx, labels, weights, dense)
        updates, opt_state = dense_optimizer.update(param_grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, row_grads, loss, logits

    return step


def make_predict(
    cfg: DeepFMConfig, combiners: tuple[Combiner, ...]
) -> Callable[..., jax.Array]:
    """Jitted `(params, slot_rows, slot_idx, dense) → probabilities (B,)`."""
    combiners = tuple(combiners)

    @jax.jit
    def predict(params, slot_rows, slot_idx, dense):
        return jax.nn.sigmoid(
            _logits(params, tuple(slot_rows), tuple(slot_idx), combiners, dense, cfg)
        )

    return predict
