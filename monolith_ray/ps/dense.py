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

Parts: besides the ranking model's parameters (the ``model`` part, what every call means by
default) the server may hold other named parts, each its own pytree, optimizer and version:
``tower``, the two-tower retrieval model's MLPs (``monolith_ray.retrieval``). Trainers push
and pull a part by name; snapshots hold every part.

Snapshots: ``snapshot(location)`` writes parameters, optimizer state and version to
``<location>/dense.npz`` (one array per pytree leaf, named by its path), on this actor's node
and with its credentials, as shards write theirs; ``restore(location)`` reads them back. Given
``restore_on_restart``, a server that Ray restarts after its process died restores the latest
snapshot before it answers, as a restarted shard does.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

from monolith_ray.files import filesystem_and_path
from monolith_ray.supervision import restore_if_restarted

Params = Any
DENSE_FILE = "dense.npz"
MODEL = "model"


class _Part:
    """A named part other than the model: parameters, optax state, version."""

    def __init__(self, params: Params, optimizer: optax.GradientTransformation) -> None:
        self.params = jax.tree.map(np.array, params() if callable(params) else params)
        self.optimizer = optimizer
        self.opt_state = optimizer.init(self.params)
        self.version = 0

        def apply(params: Params, opt_state: Any, grads: Params) -> tuple[Params, Any]:
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        self.update = jax.jit(apply)


class DenseServer:
    """Holds ``params`` (a pytree of arrays) and the optax state; ``version`` counts updates."""

    def __init__(self, params: Params | Callable[[], Params],
                 optimizer: optax.GradientTransformation,
                 restore_on_restart: Callable[[], str | None] | None = None,
                 parts: dict[str, tuple[Params | Callable[[], Params],
                                        optax.GradientTransformation]] | None = None) -> None:
        """``params``: the initial parameters, or a callable making them. ``parts``: other
        named parts, each (initial parameters or a callable, optimizer). ``restore_on_restart``
        (a picklable callable -> the latest snapshot folder, or None): when Ray restarts this
        actor after its process died, the new one restores that snapshot before it answers
        any call; a first start never restores."""
        self.params = jax.tree.map(np.array, params() if callable(params) else params)
        self._optimizer = optimizer
        self._opt_state = optimizer.init(self.params)
        self._update = jax.jit(self._apply)
        self.version = 0
        if parts and MODEL in parts:
            raise ValueError(f"part name {MODEL!r} is the model's own")
        self._parts = {name: _Part(p, opt) for name, (p, opt) in (parts or {}).items()}
        self._incarnation = uuid.uuid4().hex  # new on every start and restore
        self.restored_from = restore_if_restarted(self, restore_on_restart)

    def set_optimizer(self, optimizer: optax.GradientTransformation) -> None:
        """Apply pushes with ``optimizer`` from now on, keeping the optimizer state: e.g. the
        same kind at another learning rate (the online job's ``online.dense_rate``), whose
        state (Adam's moments and step count) carries on. ValueError, and nothing changed,
        if ``optimizer``'s state has another structure than the one held. A restarted server
        comes back with the optimizer it was started with."""
        held = jax.tree.structure(self._opt_state)
        wanted = jax.tree.structure(optimizer.init(self.params))
        if wanted != held:
            raise ValueError(f"the new optimizer's state {wanted} is not the one held {held}: "
                             "only an optimizer of the same kind can take it over")
        self._optimizer = optimizer
        self._update = jax.jit(self._apply)  # traced again: the old trace holds the old one

    def _apply(self, params: Params, opt_state: Any, grads: Params) -> tuple[Params, Any]:
        updates, opt_state = self._optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def push(self, grads: Params, part: str = MODEL) -> int:
        """Apply one gradient pytree (same structure as the part's parameters) to ``part``
        -> its new version."""
        bad = [np.asarray(g) for g in jax.tree.leaves(grads)
               if not np.isfinite(np.asarray(g)).all()]
        if bad:
            raise ValueError(f"dense gradients hold NaN or Inf in {len(bad)} arrays; "
                             "nothing was applied")
        if part != MODEL:
            held = self._part(part)
            held.params, held.opt_state = held.update(held.params, held.opt_state, grads)
            held.version += 1
            return held.version
        self.params, self._opt_state = self._update(self.params, self._opt_state, grads)
        self.version += 1
        return self.version

    def pull(self, part: str = MODEL) -> tuple[Params, int]:
        """``part``'s current parameters (as NumPy arrays) and their version."""
        if part != MODEL:
            held = self._part(part)
            return jax.tree.map(np.asarray, held.params), held.version
        return jax.tree.map(np.asarray, self.params), self.version

    def parts(self) -> list[str]:
        """The names of the parts held besides the model."""
        return sorted(self._parts)

    def _part(self, name: str) -> _Part:
        if name not in self._parts:
            raise KeyError(f"no dense part {name!r}; parts: {', '.join([MODEL, *self._parts])}")
        return self._parts[name]

    def incarnation(self) -> str:
        """A new random id on every start and restore: versions count again from a restored
        one, so (incarnation, version) names parameters, a version alone does not."""
        return self._incarnation

    def state(self) -> tuple[Params, Any, int]:
        """Parameters, optimizer state and version, for a snapshot."""
        return (jax.tree.map(np.asarray, self.params),
                jax.tree.map(np.asarray, self._opt_state), self.version)

    def load_state(self, params: Params, opt_state: Any, version: int) -> None:
        """Inverse of ``state``."""
        self.params = jax.tree.map(np.array, params)
        self._opt_state = jax.tree.map(np.array, opt_state)
        self.version = int(version)

    def snapshot(self, location: str | os.PathLike[str]) -> int:
        """Write the state to ``<location>/dense.npz`` (a local folder or any ``pyarrow.fs``
        URI) -> the version written."""
        params, opt_state, version = self.state()
        arrays = {f"params{jax.tree_util.keystr(k)}": np.asarray(v)
                  for k, v in jax.tree_util.tree_leaves_with_path(params)}
        arrays.update({f"opt{jax.tree_util.keystr(k)}": np.asarray(v)
                       for k, v in jax.tree_util.tree_leaves_with_path(opt_state)})
        for name, held in self._parts.items():
            arrays[f"{name}.version"] = np.int64(held.version)
            for prefix, tree in (("params", held.params), ("opt", held.opt_state)):
                arrays.update({f"{name}.{prefix}{jax.tree_util.keystr(k)}": np.asarray(v)
                               for k, v in jax.tree_util.tree_leaves_with_path(tree)})
        fs, folder = filesystem_and_path(location)
        fs.create_dir(folder, recursive=True)
        with fs.open_output_stream(f"{folder}/{DENSE_FILE}", compression=None) as f:
            np.savez(f, version=np.int64(version), **arrays)
        return version

    def restore(self, location: str | os.PathLike[str]) -> None:
        """Replace the state by the one ``snapshot`` wrote at ``location``; ValueError (and
        nothing replaced) if it was saved for another model. A part the snapshot does not
        hold (it was taken before the part was configured) keeps the state it has: fresh, on
        a server just started, as restores are done."""
        fs, folder = filesystem_and_path(location)
        with fs.open_input_file(f"{folder}/{DENSE_FILE}") as f, np.load(f) as saved:
            params = _filled(self.params, saved, "params")
            opt_state = _filled(self._opt_state, saved, "opt")
            version = int(saved["version"])
            parts = {name: (_filled(held.params, saved, f"{name}.params"),
                            _filled(held.opt_state, saved, f"{name}.opt"),
                            int(saved[f"{name}.version"]))
                     for name, held in self._parts.items() if f"{name}.version" in saved}
        self.load_state(params, opt_state, version)
        for name, (part_params, part_opt, part_version) in parts.items():
            held = self._parts[name]
            held.params, held.opt_state, held.version = part_params, part_opt, part_version
        self._incarnation = uuid.uuid4().hex


def _filled(tree: Any, saved: Any, prefix: str) -> Any:
    """``tree`` with each leaf replaced by the saved array of the same pytree path."""
    def leaf(path: Any, value: Any) -> np.ndarray:
        name = f"{prefix}{jax.tree_util.keystr(path)}"
        if name not in saved:
            raise ValueError(f"snapshot has no {name}: saved for another model?")
        array = saved[name]
        if array.shape != np.shape(value):
            raise ValueError(f"snapshot {name} has shape {array.shape}, the model needs "
                             f"{np.shape(value)}")
        return array

    return jax.tree_util.tree_map_with_path(leaf, tree)
