"""Serving policies: pick ``k`` of ``n`` scored candidates, in order, each with its propensity.

A policy takes ranking values in logit units (``values``: float (n,)) and returns a
:class:`Choice`: the chosen candidates' indices (int64 (k,), slot order) and each one's
propensity, the probability the policy put that item in that slot given the items of the
earlier slots (float64 (k,)). The product of a choice's propensities is the probability of
the whole list, so logs of them evaluate other policies offline (``policy.ope``).

- ``greedy``: the top ``k`` (stable order); propensity 1.
- ``epsilon``: per slot, with probability ``epsilon`` a uniform pick among the remaining
  candidates, else the best remaining; exact propensity ``(1 - eps)·[best] + eps/remaining``.
- ``thompson``: per slot a fresh draw ``values + Normal(0, sigma_i)``, the best remaining;
  propensity estimated by Monte Carlo with ``draws`` more draws of that slot (see
  :class:`Thompson`).
- ``ucb``: the top ``k`` of ``values + sigma_i`` (deterministic; propensity 1).

Uncertainty ``sigma_i = scale / sqrt(1 + shows_i)`` in logit units, where ``shows_i`` is the
number of impressions of item ``i`` to the requesting user this replica has made
(:class:`ShowCounts`, per user x item pair): a pair with little feedback in the model yet has
a less certain score. Per pair, not per item: a personalized score is as uncertain as the
user's own feedback on the item is thin; counted per item, ``benchmarks.policies``' 100
impressions a second over 100 items give an item about 100 after 100 s, so sigma falls under a
tenth of ``scale`` for every user, however new, within half its horizon.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from monolith_ray.features import mix64
from monolith_ray.schemas import value_ids

__all__ = ["POLICIES", "Choice", "EpsilonGreedy", "Greedy", "Policy", "ShowCounts",
           "Thompson", "UCB", "make_policy"]


@dataclasses.dataclass(frozen=True)
class Choice:
    """A policy's pick: ``indices`` int64 (k,) into the candidates, in slot order, and
    ``propensities`` float64 (k,), each in (0, 1]."""

    indices: np.ndarray
    propensities: np.ndarray


class ShowCounts:
    """Impressions per (user, item) pair, in ``buckets`` int64 counters (8 bytes each: 8 MB at
    the default 2**20) indexed by a stable hash of the pair (ids as ``schemas.value_ids``
    reads them: ``7`` and ``"7"`` are one id); bounded whatever the users and catalogue,
    pairs sharing a bucket share a count (so shows are at most over-counted: less
    exploration, never more).

    Forgetting: after every ``buckets`` impressions every count halves (one pass over the
    counters, amortized one operation an impression). Without it, over days of uptime every
    bucket would fill with other pairs' shows and sigma fall towards 0 for every pair, new
    ones too; with it a bucket holds about 2 shows of collisions at most in the long run, and
    a pair's shows weigh by how recent they are (a discounted count: half after ``buckets``
    impressions of the replica's, some 2 minutes at 10,000 a second at the default), so a
    score once certain grows uncertain again as tastes may have drifted."""

    def __init__(self, buckets: int = 1 << 20) -> None:
        if buckets < 1:
            raise ValueError(f"buckets: must be >= 1, got {buckets}")
        self.counts = np.zeros(buckets, dtype=np.int64)
        self._since_halving = 0
        self._lock = threading.Lock()  # a replica's request threads add at once

    def slots(self, user: int | str, items: Sequence[int | str]) -> np.ndarray:
        """The counter of each (user, item) pair -> int64 (n,), hashed once a request and
        passed to :meth:`get` and :meth:`add`."""
        salt = mix64(value_ids([user]), seed=1)
        keys = (mix64(value_ids(items)) ^ salt).view(np.int64)
        return (mix64(keys) % np.uint64(len(self.counts))).astype(np.int64)

    def get(self, slots: np.ndarray) -> np.ndarray:
        """Shows of each pair at ``slots`` (:meth:`slots`) -> int64 (n,)."""
        return self.counts[slots]

    def add(self, slots: np.ndarray) -> None:
        """Count one impression of each pair at ``slots`` (repeats count each time); atomic
        across threads, the halving included."""
        with self._lock:
            np.add.at(self.counts, slots, 1)
            self._since_halving += len(slots)
            if self._since_halving >= len(self.counts):
                self.counts >>= 1
                self._since_halving = 0


class Policy(Protocol):
    """What serving calls: ``choose(values, k, rng, shows)`` -> :class:`Choice`; ``shows``
    (int64 (n,), the candidates' impression counts) is read by the policies that use
    uncertainty and ignored by the others."""

    name: str

    def choose(self, values: np.ndarray, k: int, rng: np.random.Generator,
               shows: np.ndarray | None = None) -> Choice: ...

    def inclusion(self, values: np.ndarray, k: int, rng: np.random.Generator,
                  shows: np.ndarray | None = None, of: np.ndarray | None = None
                  ) -> np.ndarray:
        """Each candidate's probability of being among the ``k`` shown -> float64 (n,), or of
        the candidates ``of`` (int indices) only (item marginals: slate IPS weighs a shown
        item by the target's over the logging policy's)."""
        ...


def _top(values: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-values, kind="stable")[:k].astype(np.int64)


@dataclasses.dataclass(frozen=True)
class Greedy:
    """The top ``k`` by value; ties keep candidate order. Propensity 1."""

    name: str = "greedy"

    def choose(self, values: np.ndarray, k: int, rng: np.random.Generator,
               shows: np.ndarray | None = None) -> Choice:
        top = _top(np.asarray(values, dtype=np.float64), k)
        return Choice(top, np.ones(len(top)))

    def inclusion(self, values: np.ndarray, k: int, rng: np.random.Generator,
                  shows: np.ndarray | None = None, of: np.ndarray | None = None
                  ) -> np.ndarray:
        return _some(_indicator(_top(np.asarray(values, dtype=np.float64), k), len(values)),
                     of)


def _indicator(chosen: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n)
    out[chosen] = 1.0
    return out


def _some(inclusion: np.ndarray, of: np.ndarray | None) -> np.ndarray:
    return inclusion if of is None else inclusion[of]


@dataclasses.dataclass(frozen=True)
class EpsilonGreedy:
    """Per slot: with probability ``epsilon`` a uniform pick among the remaining candidates,
    else the best remaining (ties: the first). Exact propensities."""

    epsilon: float = 0.1
    name: str = "epsilon"

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon: must be in [0, 1], got {self.epsilon}")

    def choose(self, values: np.ndarray, k: int, rng: np.random.Generator,
               shows: np.ndarray | None = None) -> Choice:
        order = _top(np.asarray(values, dtype=np.float64), len(values))
        remaining = list(order.tolist())  # best first
        k = min(k, len(remaining))
        explore = rng.random(k) < self.epsilon
        picks = rng.random(k)
        indices, props = np.empty(k, np.int64), np.empty(k)
        for slot in range(k):
            left = len(remaining)
            at = int(picks[slot] * left) if explore[slot] else 0
            indices[slot] = remaining.pop(at)
            props[slot] = (1.0 - self.epsilon) * (at == 0) + self.epsilon / left
        return Choice(indices, props)

    def inclusion(self, values: np.ndarray, k: int, rng: np.random.Generator,
                  shows: np.ndarray | None = None, of: np.ndarray | None = None
                  ) -> np.ndarray:
        """Exact, by a recursion over the slots: what matters for candidate i is whether it
        is still there and how many of the ``r_i`` better ones are (``a``): a greedy slot
        takes a better one while any is left (``a -> a - 1``), else i; a uniform slot among
        the ``m`` remaining takes i with probability 1/m and a better one with a/m. State
        float64 (c, n + 1) a slot for the c candidates asked of (all: n): O(k c n) time, so a
        serving answer (``of`` its k shown items) pays O(k^2 n)."""
        n = len(values)
        k = min(k, n)
        rank = np.empty(n, np.int64)
        rank[_top(np.asarray(values, dtype=np.float64), n)] = np.arange(n)
        rows = np.arange(n) if of is None else np.asarray(of, dtype=np.int64)
        there = np.zeros((len(rows), n + 1))  # P(i remains, a better ones remain)
        there[np.arange(len(rows)), rank[rows]] = 1.0
        above = np.arange(n + 1, dtype=np.float64)
        eps = self.epsilon
        for slot in range(k):
            m = n - slot
            took_better = np.zeros_like(there)
            took_better[:, :-1] = there[:, 1:]  # a -> a - 1 (a >= 1); a == 0: i taken
            # uniform: a worse one taken (a stays), or a better one (a -> a - 1)
            uniform = there * np.clip(m - 1 - above, 0, None) / m
            uniform[:, :-1] += there[:, 1:] * above[1:] / m
            there = (1.0 - eps) * took_better + eps * uniform
        return np.clip(1.0 - there.sum(axis=1), 0.0, 1.0)


def _sigma(scale: float, shows: np.ndarray | None, n: int) -> np.ndarray:
    counts = np.zeros(n) if shows is None else np.asarray(shows, dtype=np.float64)
    return scale / np.sqrt(1.0 + counts)


@dataclasses.dataclass(frozen=True)
class Thompson:
    """Sequential Thompson sampling over the score's uncertainty: for each slot, one draw
    ``values + Normal(0, sigma_i)`` over the remaining candidates, whose best is shown.

    The propensity of a slot's pick given the earlier slots is estimated by Monte Carlo:
    ``draws`` further draws of that slot (a bounded number, ``draws · n`` normals a slot),
    counting, with the draw that chose it, how often the pick was the best remaining:
    ``(1 + hits) / (1 + draws)``, never 0; its standard error is about
    ``sqrt(p(1-p)/draws)``. Not exact: say so wherever these propensities are used."""

    scale: float = 1.0
    draws: int = 128
    name: str = "thompson"

    def __post_init__(self) -> None:
        if not self.scale >= 0:
            raise ValueError(f"scale: must be >= 0, got {self.scale}")
        if self.draws < 1:
            raise ValueError(f"draws: must be >= 1, got {self.draws}")

    def choose(self, values: np.ndarray, k: int, rng: np.random.Generator,
               shows: np.ndarray | None = None) -> Choice:
        values = np.asarray(values, dtype=np.float64)
        sigma = _sigma(self.scale, shows, len(values))
        remaining = np.arange(len(values))
        k = min(k, len(values))
        indices, props = np.empty(k, np.int64), np.empty(k)
        for slot in range(k):
            v, s = values[remaining], sigma[remaining]
            noise = rng.standard_normal((1 + self.draws, len(v)), dtype=np.float32)
            noisy = v.astype(np.float32) + s.astype(np.float32) * noise
            best = np.argmax(noisy, axis=1)
            at = int(best[0])
            indices[slot] = remaining[at]
            props[slot] = np.count_nonzero(best == at) / (1 + self.draws)
            remaining = np.delete(remaining, at)
        return Choice(indices, props)

    def inclusion(self, values: np.ndarray, k: int, rng: np.random.Generator,
                  shows: np.ndarray | None = None, of: np.ndarray | None = None
                  ) -> np.ndarray:
        """Estimated by Monte Carlo: ``draws`` whole lists drawn as ``choose`` draws them
        (``k · draws · n`` normals), the share that held each candidate; 0 for one none
        held (standard error about ``sqrt(p(1-p)/draws)``)."""
        values = np.asarray(values, dtype=np.float32)
        n = len(values)
        sigma = _sigma(self.scale, shows, n).astype(np.float32)
        taken = np.zeros((self.draws, n), dtype=bool)
        rows = np.arange(self.draws)
        for _ in range(min(k, n)):
            noisy = values + sigma * rng.standard_normal((self.draws, n), dtype=np.float32)
            noisy[taken] = -np.inf
            taken[rows, np.argmax(noisy, axis=1)] = True
        return _some(taken.mean(axis=0, dtype=np.float64), of)


@dataclasses.dataclass(frozen=True)
class UCB:
    """The top ``k`` of ``values + sigma_i`` (an optimistic bound on the logit);
    deterministic, propensity 1."""

    scale: float = 1.0
    name: str = "ucb"

    def __post_init__(self) -> None:
        if not self.scale >= 0:
            raise ValueError(f"scale: must be >= 0, got {self.scale}")

    def choose(self, values: np.ndarray, k: int, rng: np.random.Generator,
               shows: np.ndarray | None = None) -> Choice:
        values = np.asarray(values, dtype=np.float64)
        top = _top(values + _sigma(self.scale, shows, len(values)), k)
        return Choice(top, np.ones(len(top)))

    def inclusion(self, values: np.ndarray, k: int, rng: np.random.Generator,
                  shows: np.ndarray | None = None, of: np.ndarray | None = None
                  ) -> np.ndarray:
        return _some(_indicator(self.choose(values, k, rng, shows).indices, len(values)), of)


POLICIES: dict[str, type] = {"greedy": Greedy, "epsilon": EpsilonGreedy, "thompson": Thompson,
                             "ucb": UCB}
"""The policies by name (config ``policy.kind``)."""


def make_policy(kind: str, **params: Any) -> Policy:
    """The policy called ``kind`` with the parameters it takes out of ``params`` (others are
    ignored, so one config mapping serves every kind); KeyError naming the kinds."""
    if kind not in POLICIES:
        raise KeyError(f"unknown policy {kind!r}; policies: {', '.join(POLICIES)}")
    cls = POLICIES[kind]
    names = {f.name for f in dataclasses.fields(cls)} - {"name"}
    return cls(**{k: v for k, v in params.items() if k in names})
