"""The ``dense`` section: continuous (float) features such as counts, prices and dwell times.

Each feature is one float32 column of the example schema (``monolith_ray.schemas``), one
entry of a message's ``"dense"`` object (``monolith_ray.messages``) and of a request's
``"dense"`` object (``serve/api.py``), and one input of the model's MLP and linear term.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

import numpy as np

from monolith_ray.config.loader import ConfigError, _require
from monolith_ray.validation import DEFAULT_MAX_ABS, MAX_DENSE

DenseTransform = Literal["none", "log1p", "standardize", "log1p_standardize"]

FLOAT32_MAX = float(np.finfo(np.float32).max)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
__all__ = ["MAX_DENSE", "DenseFeature", "DenseTransform"]


@dataclasses.dataclass(frozen=True)
class DenseFeature:
    """One continuous feature.

    - ``name``: its column, message key and request key (letters, digits, ``_``).
    - ``transform``: applied to the raw value before the model sees it. ``log1p`` is
      ``sign(x) * log(1 + |x|)`` (heavy-tailed counts and prices); ``standardize`` subtracts
      the mean and divides by the standard deviation *fitted on a sample* of the training
      data when training starts (kept with the dense parameters, so serving applies the same
      numbers); ``log1p_standardize`` does both, in that order.
    - ``default``: the raw value of an example, message or request that does not give the
      feature (null or absent). The documented default is 0.0.
    - ``max_abs``: raw values must be finite and at most this in absolute value; NaN, Inf,
      a larger value or a non-number is refused like a bad slot value (dead letter, HTTP 4xx).
      At most float32's largest value (about 3.4e38), so every value let in is a float32.
    """

    name: str
    transform: DenseTransform = "log1p_standardize"
    default: float = 0.0
    max_abs: float = DEFAULT_MAX_ABS

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ConfigError("name", f"must match {_NAME.pattern} (letters, digits, _), "
                                      f"got {self.name!r}")
        _require(self, "max_abs", gt=0, le=FLOAT32_MAX)
        if not abs(self.default) <= self.max_abs:
            raise ConfigError("default", f"must be finite and within max_abs {self.max_abs:g}, "
                                         f"got {self.default!r}")
