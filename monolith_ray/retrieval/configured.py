"""Retrieval as the config's ``retrieval`` section sets it up (``config.retrieval``): the
towers' spec, their fresh parameters, the dense server's ``tower`` part, the index settings.
One place, so that training, the dense server and serving build the same model."""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np
import optax

from monolith_ray.config import Config
from monolith_ray.model import two_tower
from monolith_ray.model.two_tower import TwoTowerSpec
from monolith_ray.retrieval.index import IndexConfig

TOWER_PART = "tower"
"""The dense server's part holding the towers' MLPs (``ps.dense``)."""


def tower_spec(cfg: Config) -> TwoTowerSpec:
    """The two-tower spec of ``cfg.retrieval`` over ``cfg.slots``."""
    r = cfg.retrieval
    return two_tower.spec_of(cfg.slots, r.user_slots, r.item_slots, r.dim, r.hidden,
                             r.temperature)


def fresh_tower_params(seed: int, spec: TwoTowerSpec) -> Any:
    """The towers' initial parameters (NumPy) from ``seed``: a picklable maker's body, so a
    restarted dense server makes them again rather than keeping arrays in the object store."""
    return jax.tree.map(np.asarray, two_tower.init(jax.random.key(seed + 1), spec))


def dense_parts(cfg: Config) -> dict[str, tuple[Any, optax.GradientTransformation]] | None:
    """The ``DenseServer``'s ``parts`` for ``cfg``: the ``tower`` part (fresh parameters'
    maker, Adam at ``retrieval.dense_rate``) with retrieval, None without."""
    if not cfg.retrieval.enabled:
        return None
    maker = functools.partial(fresh_tower_params, cfg.train.seed, tower_spec(cfg))
    return {TOWER_PART: (maker, optax.adam(cfg.retrieval.dense_rate))}


def index_config(cfg: Config) -> IndexConfig:
    """The ANN index settings of ``cfg.retrieval``."""
    r = cfg.retrieval
    return IndexConfig(r.connectivity, r.expansion_add, r.expansion_search)


def synced_parts(cfg: Config) -> tuple[str, ...]:
    """The dense server's parts the ``ParameterSync`` carries to serving for ``cfg``."""
    return (TOWER_PART,) if cfg.retrieval.enabled else ()
