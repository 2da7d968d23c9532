"""The ``model`` section: which model trains (``kind``) and its dense-part options.

``kind`` is a built-in model (``deepfm``, ``dcn_v2``) or an import path ``pkg.module:name``
(or a bare ``pkg.module``) naming a model of your own: a module or object with ``init`` and
``apply`` (see ``monolith_ray.model.api``), or a factory ``make(model_cfg)`` returning one.
An import path is imported, and a factory called, when the config is built, so a typo or a
model without ``init``/``apply`` fails at load with a ConfigError naming ``model.kind``.
This module only imports; what a model is and does lives in ``monolith_ray.model``.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
from typing import Any

from monolith_ray.config.loader import ConfigError, _require

BUILTIN_KINDS = ("deepfm", "dcn_v2")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model and its dense part. ``hidden``: widths of the MLP's hidden layers (both
    built-ins have one); ``cross_layers``: the cross network's depth (``dcn_v2``). Every
    option reaches the model through ``spec.model``, so a model of your own may read them."""

    kind: str = "deepfm"
    hidden: tuple[int, ...] = (256, 128)
    cross_layers: int = 3

    def __post_init__(self) -> None:
        for i, width in enumerate(self.hidden):
            if width < 1:
                raise ConfigError(f"hidden[{i}]", f"must be >= 1, got {width}")
        _require(self, "cross_layers", ge=1)
        if self.kind not in BUILTIN_KINDS:
            user_model(self)


def user_model(cfg: ModelConfig) -> Any:
    """The model ``cfg.kind`` names by import path: the module or object it names if that
    has ``init`` and ``apply``, else what calling it with ``cfg`` returns (a factory, or a
    class). ConfigError at ``kind`` if it cannot be imported, or the result lacks either."""
    module_name, _, attr = cfg.kind.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in filter(None, attr.split(".")):
            target = getattr(target, part)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError("kind", f"{cfg.kind!r} is not a built-in model "
                          f"({', '.join(BUILTIN_KINDS)}) and cannot be imported as "
                          f"module[:name]: {err}") from None
    if not _is_model(target):
        if isinstance(target, types.ModuleType) or not callable(target):
            raise ConfigError("kind", f"{cfg.kind!r} has no callable init and apply")
        try:
            target = target(cfg)
        except Exception as err:  # the user's factory: any failure is a config error
            raise ConfigError("kind", f"{cfg.kind!r} failed to make a model: "
                              f"{type(err).__name__}: {err}") from None
        if not _is_model(target):
            raise ConfigError("kind", f"{cfg.kind!r} returned {type(target).__name__}, "
                              "which has no callable init and apply")
    return target


def _is_model(obj: Any) -> bool:
    return (not isinstance(obj, type) and callable(getattr(obj, "init", None))
            and callable(getattr(obj, "apply", None)))
