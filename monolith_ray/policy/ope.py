"""Off-policy evaluation: a target policy's mean reward per impression estimated from logs of
another (the logging policy), by inverse propensity scoring.

Each logged impression gives its reward ``r``, the logging policy's propensity ``p`` (the
``propensity`` serving logs) and the target policy's propensity ``q`` of the same item in
the same slot given the same earlier slots. With weights ``w = q / p``:

- IPS: ``mean(w·r)``, unbiased when ``p > 0`` wherever ``q > 0``.
- Self-normalised IPS: ``Σ w·r / Σ w``, slightly biased, much lower variance.

Logs pooled from several logging policies (say a greedy and an ε-greedy arm) are one log of
their mixture: each impression's logging propensity is :func:`pooled`'s ``Σ_j a_j·p_j``, the
share ``a_j`` of each policy's requests times its propensity of that item on that request's
scores (the balance heuristic of multiple importance sampling, Veach & Guibas 1995; for
logged bandit feedback from several loggers, Agarwal et al., WSDM 2017). A deterministic
policy's zeros are then covered by any policy that explores, and the pooled estimate stays
unbiased where some policy gives each target item a positive propensity, provided every
logging policy met requests from the same distribution of contexts (users, their states,
the model's scores) in the proportions of ``shares``: arms of one experiment, not separate
loops that each train their own model.

``clip`` caps the weights (lower variance, biased downwards). Intervals are **normal
approximations**: IPS the sample variance of ``w·r``; SNIPS the delta method,
``Σ w²(r − v)² / (Σ w)²``. They assume independent impressions and are too narrow with few
of them or with heavy weights.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Estimate", "ips", "pooled", "snips"]


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A reward estimate with its normal-approximation interval at ``z`` and the effective
    sample size of the weights (``(Σw)² / Σw²``)."""

    value: float
    low: float
    high: float
    n: int
    effective_n: float


def _weights(rewards: np.ndarray, logging: np.ndarray, target: np.ndarray,
             clip: float | None) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(rewards, dtype=np.float64)
    p = np.asarray(logging, dtype=np.float64)
    q = np.asarray(target, dtype=np.float64)
    if not (r.shape == p.shape == q.shape) or r.ndim != 1 or not len(r):
        raise ValueError("rewards, logging and target propensities: equal non-empty 1-d arrays")
    if not (np.all(p > 0) and np.all(p <= 1) and np.all(q >= 0) and np.all(q <= 1)):
        raise ValueError("propensities: logging in (0, 1], target in [0, 1] (no NaN)")
    if not np.all(np.isfinite(r)):
        raise ValueError("rewards: finite numbers")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip: must be > 0, got {clip!r}")
    w = q / p
    if clip is not None:
        w = np.minimum(w, clip)
    return r, w


def _ess(w: np.ndarray) -> float:
    total = float(np.sum(w * w))
    return float(np.sum(w)) ** 2 / total if total > 0 else 0.0


def ips(rewards: np.ndarray, logging: np.ndarray, target: np.ndarray,
        clip: float | None = None, z: float = 1.96) -> Estimate:
    """Inverse propensity scoring of the target's mean reward per impression."""
    r, w = _weights(rewards, logging, target, clip)
    x = w * r
    value = float(np.mean(x))
    half = z * float(np.std(x, ddof=1)) / np.sqrt(len(x)) if len(x) > 1 else float("inf")
    return Estimate(value, value - half, value + half, len(x), _ess(w))


def snips(rewards: np.ndarray, logging: np.ndarray, target: np.ndarray,
          clip: float | None = None, z: float = 1.96) -> Estimate:
    """Self-normalised IPS of the target's mean reward per impression (NaN if every weight
    is 0: the logs never showed what the target would)."""
    r, w = _weights(rewards, logging, target, clip)
    total = float(np.sum(w))
    if total <= 0:
        return Estimate(float("nan"), float("nan"), float("nan"), len(r), 0.0)
    value = float(np.sum(w * r)) / total
    half = z * float(np.sqrt(np.sum(w * w * (r - value) ** 2))) / total
    return Estimate(value, value - half, value + half, len(r), _ess(w))


def pooled(propensities: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """The logging propensity of impressions pooled from several policies' logs: float
    (n, J) propensities of each impression's item under each of the J logging policies (on
    that impression's scores; the one that served it included) and ``shares`` (J,), each
    policy's share of the pooled requests -> float64 (n,) ``propensities @ shares``, to pass
    as ``logging`` to :func:`ips` or :func:`snips`."""
    p = np.asarray(propensities, dtype=np.float64)
    a = np.asarray(shares, dtype=np.float64)
    if p.ndim != 2 or a.shape != (p.shape[1],):
        raise ValueError(f"propensities (n, J) and shares (J,), got {p.shape} and {a.shape}")
    if np.any(a < 0) or not np.isclose(a.sum(), 1.0):
        raise ValueError(f"shares: non-negative and summing to 1, got {a.tolist()}")
    if np.any(p < 0) or np.any(p > 1):
        raise ValueError("propensities: in [0, 1]")
    return p @ a
