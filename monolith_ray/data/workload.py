"""A production-shaped synthetic training workload: batches made on the fly, seeded.

What a recommender's traffic looks like to its parameter servers, and what MovieLens-100K
(2,600 ids) never shows them: many slots, id popularity that follows a power law in each,
vocabularies from tens of values (a device type) to tens of millions (users, videos), and ids
no table has seen arriving all the time.

- Each :class:`SlotTraffic` draws one value per example from a bounded Zipf law over its
  ``cardinality`` values (rank r with probability ~ (r + 1) ** -``zipf``; by inverse transform
  of the continuous law, O(1) memory whatever the cardinality), and with probability
  ``new_rate`` a value never drawn before instead (new users, new videos): a counter past the
  vocabulary, unique over steps and trainers.
- Labels come from a hidden logistic model: a per-value weight (a hash of the value) in the
  ``signal`` slots plus noise, so there is something to learn.
- ``batch(step, trainer, n_trainers)`` is a pure function of the workload, step and trainer:
  every trainer makes its own batches (nothing crosses a process), reproducibly.

:func:`default_workload` is the shape ``benchmarks.scale`` trains on: 24 slots, cardinalities
from 10 to 30 million, about 3 never-seen ids per example. A day of a large service's id
inflow (tens of millions of new videos and users) is compressed into minutes here, so that
a 50-million-id table fills on one machine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from monolith_ray.config import OptimizerConfig, SlotConfig
from monolith_ray.data.batches import Batch
from monolith_ray.features import make_fids, mix64

_UNIT = 2.0 ** -53


@dataclasses.dataclass(frozen=True)
class SlotTraffic:
    """One slot's traffic: ``cardinality`` known values with Zipf(``zipf``) popularity, and a
    never-seen value in a fraction ``new_rate`` of examples."""

    name: str
    slot_id: int
    cardinality: int
    zipf: float = 1.05
    new_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.cardinality < 1:
            raise ValueError(f"slot {self.name}: cardinality must be >= 1")
        if not 0.0 <= self.new_rate <= 1.0:
            raise ValueError(f"slot {self.name}: new_rate must be in [0, 1]")
        if self.zipf <= 0:
            raise ValueError(f"slot {self.name}: zipf must be > 0")


@dataclasses.dataclass(frozen=True)
class Workload:
    """Slots, batch size and seed of a synthetic workload; see the module docstring."""

    slots: tuple[SlotTraffic, ...]
    batch_size: int = 4096
    seed: int = 0
    signal: tuple[str, ...] = ()  # slots whose values carry the hidden label weights
    start_time: int = 1_700_000_000  # event time of step 0, seconds
    seconds_per_step: int = 1

    def slot_configs(self, dim: int = 16, optimizer: OptimizerConfig | None = None
                     ) -> list[SlotConfig]:
        """The slots as table configs: every slot ``dim`` wide with ``optimizer`` (default
        Adagrad, lr 0.05), ids admitted at first sight, never expired."""
        optimizer = optimizer or OptimizerConfig(kind="adagrad", learning_rate=0.05)
        return [SlotConfig(name=s.name, slot_id=s.slot_id, dim=dim, optimizer=optimizer)
                for s in self.slots]

    def new_ids_per_example(self) -> float:
        """Expected never-seen values per example, over all slots."""
        return float(sum(s.new_rate for s in self.slots))

    def batch(self, step: int, trainer: int = 0, n_trainers: int = 1) -> Batch:
        """The batch of ``trainer`` (of ``n_trainers``) at ``step``: B = ``batch_size``
        examples, one value per slot."""
        if not 0 <= trainer < n_trainers:
            raise ValueError(f"trainer {trainer} of {n_trainers}")
        n = self.batch_size
        draw = step * n_trainers + trainer  # this batch's number among all trainers' batches
        rng = np.random.default_rng([self.seed, draw])
        fids, idx = {}, {}
        logit = rng.normal(0.0, 0.5, n) - 1.0
        for s in self.slots:
            values = zipf_ranks(rng.random(n), s.cardinality, s.zipf)
            if s.new_rate > 0:
                new = np.flatnonzero(rng.random(n) < s.new_rate)
                # Past the vocabulary, unique over every batch: batch ``draw`` owns the
                # counters [draw * n, draw * n + n).
                values[new] = s.cardinality + draw * n + new
            if s.name in self.signal:
                logit += 2.0 * (_unit(values, s.slot_id + self.seed) - 0.5)
            unique, inverse = np.unique(make_fids(s.slot_id, values), return_inverse=True)
            fids[s.name] = unique
            idx[s.name] = inverse.astype(np.int32).reshape(n, 1)
        labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
        time = np.full(n, self.start_time + step * self.seconds_per_step, dtype=np.int64)
        return Batch(fids=fids, idx=idx, labels=labels, weights=np.ones(n, dtype=np.float32),
                     time=time)


def zipf_ranks(u: np.ndarray, cardinality: int, a: float) -> np.ndarray:
    """Ranks in [0, cardinality) from uniforms ``u`` (n,) in [0, 1): the inverse transform of
    the density x ** -a on [1, cardinality + 1), floored -> int64 (n,). Rank 0 is the most
    popular."""
    top = float(cardinality + 1)
    if abs(a - 1.0) < 1e-9:
        x = np.exp(u * np.log(top))
    else:
        b = 1.0 - a
        x = ((top ** b - 1.0) * u + 1.0) ** (1.0 / b)
    return np.minimum(x.astype(np.int64) - 1, cardinality - 1).clip(0)


def _unit(values: np.ndarray, seed: int) -> np.ndarray:
    """A uniform in [0, 1) per value, a hash of (value, seed)."""
    return (mix64(values, seed) >> np.uint64(11)).astype(np.float64) * _UNIT


def default_workload(batch_size: int = 4096, seed: int = 0) -> Workload:
    """24 slots, cardinalities 10 to 30 million (Zipf 0.9-1.2), about 3.1 never-seen ids an
    example (user-, video- and author-like slots grow); labels from 4 signal slots."""
    cards: Sequence[tuple[str, int, float, float]] = (
        ("device", 10, 1.2, 0.0), ("os", 20, 1.2, 0.0), ("country", 200, 1.1, 0.0),
        ("language", 100, 1.1, 0.0), ("hour", 24, 0.5, 0.0), ("network", 50, 1.1, 0.0),
        ("age_bucket", 12, 0.8, 0.0), ("gender", 3, 0.5, 0.0),
        ("app_version", 2_000, 1.1, 0.0), ("city", 50_000, 1.05, 0.0),
        ("category", 5_000, 1.05, 0.0), ("tag_1", 200_000, 1.05, 0.0),
        ("tag_2", 200_000, 1.05, 0.0), ("music", 2_000_000, 1.0, 0.05),
        ("hashtag", 1_000_000, 1.0, 0.05), ("query", 5_000_000, 0.95, 0.2),
        ("author", 10_000_000, 0.95, 0.3), ("video", 30_000_000, 0.9, 0.6),
        ("user", 30_000_000, 0.9, 0.5), ("prev_video_1", 30_000_000, 0.9, 0.4),
        ("prev_video_2", 30_000_000, 0.9, 0.4), ("prev_author", 10_000_000, 0.95, 0.2),
        ("user_x_category", 20_000_000, 0.9, 0.2), ("video_x_country", 20_000_000, 0.9, 0.2))
    slots = tuple(SlotTraffic(name, i + 1, card, a, new)
                  for i, (name, card, a, new) in enumerate(cards))
    return Workload(slots, batch_size, seed, signal=("category", "author", "video", "user"))
