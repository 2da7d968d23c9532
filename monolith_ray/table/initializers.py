"""Counter-based embedding initializers: row values are a pure function of (seed, id, column).

A new id gets the same initial row whatever batch, order, shard or process inserts it, so a
replay or a re-sharded job starts every embedding from the same point. Each value comes from
SplitMix64 hashes of (seed, id, column), mapped to a uniform in [0, 1) from the top 53 bits;
normals use Box-Muller on two such uniforms. Column j does not depend on the row width, so
widening a slot keeps the existing columns' initial values. Values are computed in float64
and rounded to float32.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from monolith_ray.config import InitializerConfig

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TO_UNIT = 2.0**-53
_KINDS = ("zeros", "uniform", "normal")


def fill_rows(out: np.ndarray, rows: np.ndarray, ids: np.ndarray, cfg: InitializerConfig) -> None:
    """Write the initial embedding of ``ids[i]`` into ``out[rows[i]]`` for each i, in place.

    out: float32 (R, D); rows: int64 (n,) in [0, R); ids: int64 (n,). ``uniform`` draws from
    U(-scale, scale), ``normal`` from N(0, scale**2), ``zeros`` writes 0.
    """
    rows = np.asarray(rows, dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64)
    if out.dtype != np.float32 or out.ndim != 2:
        raise ValueError(f"out must be float32 (R, D), got {out.dtype} {out.shape}")
    if rows.ndim != 1 or rows.shape != ids.shape:
        raise ValueError(f"rows {rows.shape} and ids {ids.shape} must be 1-D of one length")
    if rows.shape[0] and (rows.min() < 0 or rows.max() >= out.shape[0]):
        raise IndexError(f"rows out of range [0, {out.shape[0]})")
    if cfg.kind not in _KINDS:
        raise ValueError(f"unknown initializer kind {cfg.kind!r}; expected one of {_KINDS}")
    if cfg.kind == "zeros":
        out[rows] = 0.0
        return
    seed = np.uint64(int(cfg.seed) & 0xFFFFFFFFFFFFFFFF)
    _fill(out, rows, ids.view(np.uint64), seed, float(cfg.scale), cfg.kind == "normal")


def init_rows(ids: np.ndarray, dim: int, cfg: InitializerConfig) -> np.ndarray:
    """Initial embeddings of ``ids`` (int64 (n,)) -> float32 (n, dim); see ``fill_rows``."""
    ids = np.asarray(ids, dtype=np.int64)
    out = np.empty((ids.shape[0], dim), dtype=np.float32)
    fill_rows(out, np.arange(ids.shape[0], dtype=np.int64), ids, cfg)
    return out


@nb.njit(inline="always")
def _mix(x: np.uint64) -> np.uint64:
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@nb.njit(inline="always")
def _unit(key: np.uint64, counter: np.uint64) -> np.float64:
    """Uniform in [0, 1) from the hash of (key, counter)."""
    return np.float64(_mix(key ^ (counter * _GOLDEN)) >> np.uint64(11)) * _TO_UNIT


@nb.njit(cache=True, nogil=True)
def _fill(out, rows, ids, seed, scale, normal):
    base = _mix(seed)
    two_pi = 2.0 * np.pi
    for i in range(rows.shape[0]):
        key = _mix(ids[i] ^ base)
        r = rows[i]
        for j in range(out.shape[1]):
            c = np.uint64(2 * j + 1)
            u = _unit(key, c)
            if normal:
                radius = np.sqrt(-2.0 * np.log(1.0 - u))
                out[r, j] = scale * radius * np.cos(two_pi * _unit(key, c + np.uint64(1)))
            else:
                out[r, j] = scale * (2.0 * u - 1.0)
