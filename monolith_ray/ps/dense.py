"""DenseServer: the dense (MLP) parameters shared by several trainers, updated with optax.

A plain class that becomes a Ray actor with ``ray.remote(DenseServer)``. Trainers send
gradients (``push``) and fetch parameters (``pull``); the server applies each push with its
optax optimizer as it arrives, in arrival order, as Monolith's asynchronous parameter servers
do.

Staleness: a trainer computes step k's gradient with parameters it pulled at most
``pull_every`` of its own steps earlier, and in between the other trainers' pushes land. With
N trainers the gradient applied is therefore at most ``pull_every * N`` updates stale; the
trainer checks the versions it sees and ``TrainConfig.pull_every`` sets the bound. Sparse rows
are not here: they live on the embedding shards.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax

Params = Any


class DenseServer:
    """Holds ``params`` (a pytree of arrays) and the optax state; ``version`` counts updates."""

    def __init__(self, params: Params, optimizer: optax.GradientTransformation) -> None:
        self.params = jax.tree.map(np.array, params)
        self._optimizer = optimizer
        self._opt_state = optimizer.init(self.params)
        self._update = jax.jit(self._apply)
        self.version = 0

    def _apply(self, params: Params, opt_state: Any, grads: Params) -> tuple[Params, Any]:
        updates, opt_state = self._optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def push(self, grads: Params) -> int:
        """Apply one gradient pytree (same structure as ``params``) -> the new version."""
        bad = [np.asarray(g) for g in jax.tree.leaves(grads)
               if not np.isfinite(np.asarray(g)).all()]
        if bad:
            raise ValueError(f"dense gradients hold NaN or Inf in {len(bad)} arrays; "
                             "nothing was applied")
        self.params, self._opt_state = self._update(self.params, self._opt_state, grads)
        self.version += 1
        return self.version

    def pull(self) -> tuple[Params, int]:
        """The current parameters (as NumPy arrays) and their version."""
        return jax.tree.map(np.asarray, self.params), self.version

    def state(self) -> tuple[Params, Any, int]:
        """Parameters, optimizer state and version, for a snapshot."""
        return (jax.tree.map(np.asarray, self.params),
                jax.tree.map(np.asarray, self._opt_state), self.version)

    def load_state(self, params: Params, opt_state: Any, version: int) -> None:
        """Inverse of ``state``."""
        self.params = jax.tree.map(np.array, params)
        self._opt_state = jax.tree.map(np.array, opt_state)
        self.version = int(version)
