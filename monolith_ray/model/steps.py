"""The jitted steps around any model (``monolith_ray.model.api``): pool each slot's rows,
standardize the dense features, apply the model, and the loss, gradients and updates.

Nothing here names a model: every step takes the model (a module or object with
``init``/``apply``) and its :class:`~monolith_ray.model.api.ModelSpec`. The loss is the sum
over the spec's tasks of ``task_weights[t]`` times task t's weighted mean binary
cross-entropy (one task, ``"click"``, by default).

Slot inputs, per slot ``s`` in spec order: ``slot_rows[s] (U_s, dim_s + 1)``, the unique
rows of the batch (padded: ``pooling.pad_slots``), and ``slot_idx[s] (B, L_s)`` int32 into
them, -1 for padding (``pooling.pool``). ``dense (B, n_dense)`` or None when there is none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from monolith_ray.model.api import Model, ModelSpec, Params
from monolith_ray.model.pooling import pool

TrainStep = Callable[
    ..., tuple[Params, optax.OptState, tuple[jax.Array, ...], jax.Array, jax.Array]
]


def init_params(model: Model, spec: ModelSpec, key: jax.Array) -> Params:
    """The model's dense parameters (``model.init(key, spec)``), with an identity
    ``"dense_norm"`` (mean 0, inv_std 1) when ``spec.n_dense``: the fitted standardization
    replaces it when a job starts (``monolith_ray.data.dense_values.fit_norm``)."""
    params = model.init(key, spec)
    if not isinstance(params, Mapping) or "dense_norm" in params:
        raise ValueError("a model's init must return a dict of parameters without the "
                         "reserved key 'dense_norm'")
    params = dict(params)
    if spec.n_dense:
        params["dense_norm"] = {"mean": jnp.zeros((spec.n_dense,), jnp.float32),
                                "inv_std": jnp.ones((spec.n_dense,), jnp.float32)}
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


def logits_of(model: Model, spec: ModelSpec, params: Params,
              slot_rows: tuple[jax.Array, ...], slot_idx: tuple[jax.Array, ...],
              dense: jax.Array | None) -> Mapping[str, jax.Array]:
    """Pool every slot and apply the model -> ``{task: logits (B,)}`` for ``spec.tasks``."""
    embeddings = {s.name: pool(rows, idx, s.combiner)
                  for s, rows, idx in zip(spec.slots, slot_rows, slot_idx, strict=True)}
    batch = slot_idx[0].shape[0]
    dense = (jnp.zeros((batch, 0), jnp.float32) if dense is None
             else normalize_dense(params, dense))
    if dense.shape[1] != spec.n_dense:
        raise ValueError(f"{dense.shape[1]} dense features given, the model has {spec.n_dense}")
    out = model.apply(params, embeddings, dense)
    missing = [t for t in spec.tasks if t not in out]
    if missing:
        raise ValueError(f"the model's apply returned no logits for task(s) {missing}; "
                         f"it must return {{task: (B,) logits}} for {list(spec.tasks)}")
    return out


def loss_fn(model: Model, spec: ModelSpec, params: Params,
            slot_rows: tuple[jax.Array, ...], slot_idx: tuple[jax.Array, ...],
            labels: jax.Array, weights: jax.Array, dense: jax.Array | None
            ) -> tuple[jax.Array, jax.Array]:
    """(Σ_t task_weights[t] · Σ_b w·bce / Σ_b w over the tasks, the first task's logits (B,)).

    ``labels``, ``weights`` are ``(T, B)`` in ``spec.tasks`` order (``Batch.targets``), or
    ``(B,)``: the first task's only. An example of weight 0 (batch padding, or no label for
    that task) does not count, and a task of no weight in the batch adds 0."""
    out = logits_of(model, spec, params, slot_rows, slot_idx, dense)
    if labels.ndim == 1:
        labels, weights = labels[None], weights[None]
    loss = None
    for t, (task, task_weight) in enumerate(zip(spec.tasks, spec.task_weights)):
        if t >= labels.shape[0] or task_weight == 0:
            continue
        logits = out[task]
        losses = optax.sigmoid_binary_cross_entropy(logits, labels[t].astype(logits.dtype))
        w = weights[t].astype(logits.dtype)
        term = (w * losses).sum() / jnp.maximum(w.sum(), 1e-12)
        term = term if task_weight == 1.0 else task_weight * term
        loss = term if loss is None else loss + term
    return (jnp.zeros((), jnp.float32) if loss is None else loss), out[spec.tasks[0]]


def make_grad_step(model: Model, spec: ModelSpec
                   ) -> Callable[..., tuple[Params, tuple[jax.Array, ...], jax.Array, jax.Array]]:
    """Jitted `(params, slot_rows, slot_idx, labels, weights, dense)
    → (param_grads, row_grads, loss, logits)`: gradients only, for a trainer whose dense
    parameters live on a dense parameter server that applies them. `row_grads[s]` is
    `(U_s, dim_s + 1)`, the gradient of the loss w.r.t. `slot_rows[s]`."""
    def loss(params, slot_rows, slot_idx, labels, weights, dense):
        return loss_fn(model, spec, params, slot_rows, slot_idx, labels, weights, dense)

    grad_fn = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)

    @jax.jit
    def grad_step(params, slot_rows, slot_idx, labels, weights, dense):
        (loss_value, logits), (param_grads, row_grads) = grad_fn(
            params, tuple(slot_rows), tuple(slot_idx), labels, weights, dense)
        return param_grads, tuple(row_grads), loss_value, logits

    return grad_step


def make_train_step(model: Model, spec: ModelSpec,
                    dense_optimizer: optax.GradientTransformation) -> TrainStep:
    """Jitted `(params, opt_state, slot_rows, slot_idx, labels, weights, dense)
    → (params, opt_state, row_grads, loss, logits)`: the grad step, with the dense
    parameters updated by `dense_optimizer`; `row_grads` go to the parameter servers."""
    grad_step = make_grad_step(model, spec)

    @jax.jit
    def step(params, opt_state, slot_rows, slot_idx, labels, weights, dense):
        param_grads, row_grads, loss, logits = grad_step(
            params, slot_rows, slot_idx, labels, weights, dense)
        updates, opt_state = dense_optimizer.update(param_grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, row_grads, loss, logits

    return step


def make_predict(model: Model, spec: ModelSpec) -> Callable[..., dict[str, Any]]:
    """Jitted `(params, slot_rows, slot_idx, dense) → {task: probabilities (B,)}`."""
    @jax.jit
    def predict(params, slot_rows, slot_idx, dense):
        out = logits_of(model, spec, params, tuple(slot_rows), tuple(slot_idx), dense)
        return {task: jax.nn.sigmoid(out[task]) for task in spec.tasks}

    return predict
