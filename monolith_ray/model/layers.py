"""Building blocks the built-in models share: an MLP as a list of dense layers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

Layer = dict[str, jax.Array]


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
