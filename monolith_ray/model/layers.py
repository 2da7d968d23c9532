"""Building blocks the built-in models share: an MLP as a list of dense layers, and the
per-task heads of a model of several tasks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from monolith_ray.model.api import TASKS, Params

Layer = dict[str, jax.Array]


def task_heads(tasks: Sequence[str]) -> dict[str, Layer]:
    """Per-task parameters of a built-in model scoring ``tasks``: ``{task: {"b": 0.0}}``, a
    bias each (and, by its keys, the tasks' names, which ``apply`` has no other way to know);
    none for the default one task ``click``, whose model is the single-task one as before."""
    if tuple(tasks) == TASKS:
        return {}
    return {"heads": {task: {"b": jnp.zeros((), jnp.float32)} for task in tasks}}


def head_names(params: Params) -> list[str]:
    """The tasks of a built-in model's ``params``, in the order of its output columns: sorted
    (as a pytree's dict keys are, whatever order they were made in)."""
    return sorted(params["heads"]) if "heads" in params else list(TASKS)


def named_logits(params: Params, logits: jax.Array) -> dict[str, jax.Array]:
    """``{task: logits[:, i] + its head's bias}`` of ``logits (B, T)``, columns in
    :func:`head_names` order."""
    heads = params.get("heads", {})
    return {task: logits[:, i] + heads[task]["b"] if task in heads else logits[:, i]
            for i, task in enumerate(head_names(params))}


def mlp_init(key: jax.Array, widths: Sequence[int]) -> list[Layer]:
    """Layers ``widths[0] -> ... -> widths[-1]``: He-normal hidden layers, a Glorot-normal
    output layer, zero biases; each ``{"w": (n_in, n_out), "b": (n_out,)}`` float32."""
    keys = jax.random.split(key, len(widths) - 1)
    layers = []
    for i, (k, n_in, n_out) in enumerate(zip(keys, widths[:-1], widths[1:])):
        is_output = i == len(widths) - 2
        initializer = (
            jax.nn.initializers.glorot_normal() if is_output else jax.nn.initializers.he_normal()
        )
        layers.append({"w": initializer(k, (n_in, n_out), jnp.float32),
                       "b": jnp.zeros((n_out,), jnp.float32)})
    return layers


def mlp_apply(layers: Sequence[Any], x: jax.Array) -> jax.Array:
    """``x (B, n_in)`` through ReLU hidden layers and a linear output layer -> ``(B, n_out)``."""
    *hidden, output = layers
    for layer in hidden:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ output["w"] + output["b"]
