"""Feature slots: each slot's embedding table shape, row-wise optimizer, initializer and
life cycle, and the count-min sketch that admission shares across slots."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from monolith_ray.config.loader import ConfigError, _require
from monolith_ray.features import MAX_SLOT_ID

OptimizerKind = Literal["sgd", "adagrad", "ftrl", "adam"]
InitializerKind = Literal["zeros", "uniform", "normal"]
Combiner = Literal["sum", "mean"]

_SLOT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_DIM = 4096
_MAX_OCCURRENCE_THRESHOLD = 255


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Row-wise optimizer of one slot's embeddings.

    Fields each kind uses: ``sgd``: learning_rate; ``adagrad``: learning_rate,
    initial_accumulator, eps; ``ftrl``: learning_rate (alpha), initial_accumulator, l1, l2,
    beta; ``adam``: learning_rate, beta1, beta2, eps. Fields a kind does not use are allowed
    and ignored (so switching kind is a one-word edit), but are still range-checked.
    """

    kind: OptimizerKind = "adagrad"
    learning_rate: float = 0.05
    initial_accumulator: float = 0.1
    eps: float = 1e-8
    beta1: float = 0.9
    beta2: float = 0.999
    l1: float = 0.0
    l2: float = 0.0
    beta: float = 1.0

    def __post_init__(self) -> None:
        _require(self, "learning_rate", gt=0)
        _require(self, "initial_accumulator", ge=0)
        _require(self, "eps", gt=0)
        _require(self, "beta1", ge=0, lt=1)
        _require(self, "beta2", ge=0, lt=1)
        _require(self, "l1", ge=0)
        _require(self, "l2", ge=0)
        _require(self, "beta", ge=0)


@dataclasses.dataclass(frozen=True)
class InitializerConfig:
    """Initial value of a newly admitted embedding row.

    ``uniform`` draws from U(-scale, scale), ``normal`` from N(0, scale**2) (scale is the
    standard deviation), ``zeros`` ignores scale and seed.
    """

    kind: InitializerKind = "uniform"
    scale: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self, "scale", ge=0)


@dataclasses.dataclass(frozen=True)
class SlotConfig:
    """One feature slot: its embedding table's shape, training and life-cycle settings.

    - ``slot_id``: the slot's number in the high bits of its feature ids (see ``features``).
    - ``occurrence_threshold``: an id is admitted once seen this many times; 0 or 1 admit it
      at first sight.
    - ``admit_probability``: each occurrence of a not-yet-admitted id admits it with this
      probability (1.0 = always).
    - ``expire_s``: rows not updated for this many seconds are evicted; 0 = never.
    - ``combiner``: how a multi-valued slot pools its values' embeddings.
    - ``max_values``: most values per example in this slot (1 = single-valued).
    - ``online``: the row optimizer once training goes online, e.g. FTRL at a rate that
      learns a fresh id from its first few examples; unset: ``optimizer`` throughout (see
      ``EmbeddingTable.set_optimizer`` for the state a switch keeps). Used by the online
      phase of ``benchmarks.online_vs_batch`` and the online job's stream phase
      (``train.online``).
    """

    name: str
    slot_id: int
    dim: int
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    initializer: InitializerConfig = dataclasses.field(default_factory=InitializerConfig)
    occurrence_threshold: int = 0
    admit_probability: float = 1.0
    expire_s: float = 0.0
    combiner: Combiner = "sum"
    max_values: int = 1
    online: OptimizerConfig | None = None

    def __post_init__(self) -> None:
        if not _SLOT_NAME.fullmatch(self.name):
            raise ConfigError(
                "name", f"must match {_SLOT_NAME.pattern} (letters, digits, _), got {self.name!r}"
            )
        _require(self, "slot_id", ge=0, le=MAX_SLOT_ID)
        _require(self, "dim", ge=1, le=_MAX_DIM)
        _require(self, "occurrence_threshold", ge=0, le=_MAX_OCCURRENCE_THRESHOLD)
        _require(self, "admit_probability", gt=0, le=1)
        _require(self, "expire_s", ge=0)
        _require(self, "max_values", ge=1)


@dataclasses.dataclass(frozen=True)
class AdmissionConfig:
    """Count-min sketch that counts occurrences of not-yet-admitted ids, shared by all slots.

    ``sketch_width`` counters per row (a power of two, so a row index is a bit mask) times
    ``sketch_depth`` rows; wider means fewer over-counts from colliding ids.
    """

    sketch_width: int = 1 << 20
    sketch_depth: int = 4

    def __post_init__(self) -> None:
        _require(self, "sketch_width", ge=64)
        if self.sketch_width & (self.sketch_width - 1):
            raise ConfigError("sketch_width", f"must be a power of two, got {self.sketch_width}")
        _require(self, "sketch_depth", ge=1, le=8)
