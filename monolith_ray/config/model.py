"""The ``model`` section: the dense part of DeepFM."""

from __future__ import annotations

import dataclasses

from monolith_ray.config.loader import ConfigError


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The dense part of the model (DeepFM): widths of the MLP's hidden layers. The sparse
    part is the slots; every slot must share one ``dim``, as DeepFM's FM term pairs them."""

    hidden: tuple[int, ...] = (256, 128)

    def __post_init__(self) -> None:
        for i, width in enumerate(self.hidden):
            if width < 1:
                raise ConfigError(f"hidden[{i}]", f"must be >= 1, got {width}")
