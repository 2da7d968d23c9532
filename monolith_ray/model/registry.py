"""The one place a model is chosen: :func:`build` turns the ``model`` config section into a
model (``monolith_ray.model.api``). Trainers, the dense server, snapshots and serving call
it and never name a model."""

from __future__ import annotations

from types import ModuleType

from monolith_ray.config import ModelConfig
from monolith_ray.config.model import user_model
from monolith_ray.model import dcn_v2, deepfm
from monolith_ray.model.api import Model

BUILTINS: dict[str, ModuleType] = {"deepfm": deepfm, "dcn_v2": dcn_v2}
"""The built-in models by ``model.kind`` (the names ``config.model.BUILTIN_KINDS`` accepts)."""


def build(cfg: ModelConfig) -> Model:
    """The model ``cfg.kind`` names: a built-in module, or a model of your own by import path
    (``config.model.user_model``; ConfigError at ``kind`` if it does not resolve)."""
    if cfg.kind in BUILTINS:
        return BUILTINS[cfg.kind]
    return user_model(cfg)
