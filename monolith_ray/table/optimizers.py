"""Row-wise sparse optimizers for embedding tables: SGD, Adagrad, FTRL-Proximal and Adam.

One ``RowOptimizer`` serves one slot. Its state is a dict of float32 matrices with one row per
embedding row (``state_spec`` names them, with their width and initial fill); ``apply`` updates
the touched rows of the weights and of every state matrix in place, in one Numba kernel per
kind that loops over rows and columns.

Precision: storage is float32; each update is computed in float64 from the stored float32
values and rounded once when written back. The result is within one float32 rounding of the
exact update, so a float64 reference that also stores float32 between steps agrees to ~1e-7.

State per kind (D = embedding dim):

- ``sgd``: none.
- ``adagrad``: ``accum`` (D, fill ``initial_accumulator``).
- ``ftrl``: ``z`` (D, fill 0) and ``n`` (D, fill ``initial_accumulator``).
- ``adam``: ``m`` (D, 0), ``v`` (D, 0) and ``step`` (1, 0), the row's own update count for
  bias correction (exact in float32 up to 2**24 updates of a row; beyond that it stops
  counting, when the correction is 1 to float32 precision anyway).

New and recycled rows: after the table initializes the weights of new rows it calls
``init_state_rows``, which resets every state matrix of those rows to its initial fill. For
FTRL it then sets ``z`` so that the closed-form FTRL weight of (z, n) equals the initial
weight: ``z = -w0 * ((beta + sqrt(n0)) / alpha + l2) - sign(w0) * l1``. Without this the
first update would snap a randomly initialized row to the FTRL solution of z = 0, i.e. zero.
(With beta = l2 = initial_accumulator = 0 the denominator is 0 and no z reproduces w0; z is
then -sign(w0) * l1, and the first real gradient still steps from w0, as ``sigma * w`` uses the
stored weight.)

Switching kind (``EmbeddingTable.set_optimizer``, e.g. to a slot's ``online`` optimizer after
batch training): every live row's state starts as a new row's, except that Adagrad's
``accum`` and FTRL's ``n`` also take the row's sum of squared gradients so far as the previous
kind records it (``squared_sums``: Adagrad's and FTRL's own accumulators, Adam's
bias-corrected ``v`` times the row's steps; SGD keeps none). FTRL's ``z`` is then matched to
that ``n``, so no weight moves at the switch.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from monolith_ray.config import OptimizerConfig


class RowOptimizer:
    """Base of the row-wise optimizers; build one with ``make_optimizer``."""

    def __init__(self, cfg: OptimizerConfig) -> None:
        self.cfg = cfg

    def state_spec(self, dim: int) -> dict[str, tuple[int, float]]:
        """State matrix name -> (width, initial fill); width is ``dim`` or 1."""
        return {}

    def apply(self, weights: np.ndarray, state: dict[str, np.ndarray], rows: np.ndarray,
              grads: np.ndarray) -> None:
        """Update ``weights[rows]`` and the state rows in place with ``grads``.

        weights: float32 (R, D); state: float32 (R, width) per ``state_spec``; rows: int64 (n,),
        unique; grads: float32 (n, D), row i is the gradient of ``weights[rows[i]]``.
        """
        rows = np.asarray(rows, dtype=np.int64)
        grads = np.asarray(grads, dtype=np.float32)
        self._check(weights, state, rows)
        if grads.shape != (rows.shape[0], weights.shape[1]):
            raise ValueError(f"grads shape {grads.shape} != ({rows.shape[0]}, {weights.shape[1]})")
        if rows.shape[0]:
            self._update(weights, state, rows, grads)

    def init_state_rows(self, weights: np.ndarray, state: dict[str, np.ndarray],
                        rows: np.ndarray, squared_sums: np.ndarray | None = None) -> None:
        """Reset the state of freshly initialized ``rows`` (int64 (n,)) to match ``weights``.

        ``squared_sums`` float64 (n, D), given when a table switches optimizer: each row's
        sums of squared gradients so far (:meth:`squared_sums` of the previous optimizer),
        which Adagrad and FTRL add to their accumulators, so rows that trained long keep
        small steps while fresh ones take the new rate in full; the other kinds ignore it."""
        rows = np.asarray(rows, dtype=np.int64)
        self._check(weights, state, rows)
        for name, (_, fill) in self.state_spec(weights.shape[1]).items():
            state[name][rows] = fill
        accumulator = self._ACCUMULATOR
        if squared_sums is not None and accumulator is not None:
            state[accumulator][rows] += squared_sums

    _ACCUMULATOR: str | None = None  # the state matrix summing squared gradients, if any

    def squared_sums(self, state: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray | None:
        """Float64 (n, D): per row of ``rows`` and coordinate, the sum of the squared
        gradients it has taken as far as the state tells (None: it keeps no such record)."""
        if self._ACCUMULATOR is None:
            return None
        return state[self._ACCUMULATOR][rows].astype(np.float64) - self.cfg.initial_accumulator

    def _check(self, weights: np.ndarray, state: dict[str, np.ndarray], rows: np.ndarray) -> None:
        """Raise unless the arrays fit the kernels: float32 tables of matching shape, rows in range."""
        if weights.dtype != np.float32 or weights.ndim != 2:
            raise ValueError(f"weights must be float32 (R, D), got {weights.dtype} {weights.shape}")
        n_rows, dim = weights.shape
        for name, (width, _) in self.state_spec(dim).items():
            s = state.get(name)
            if s is None or s.dtype != np.float32 or s.shape != (n_rows, width):
                got = None if s is None else f"{s.dtype} {s.shape}"
                raise ValueError(f"state {name!r} must be float32 ({n_rows}, {width}), got {got}")
        if rows.ndim != 1:
            raise ValueError(f"rows must be 1-D, got shape {rows.shape}")
        if rows.shape[0] and (rows.min() < 0 or rows.max() >= n_rows):
            raise IndexError(f"rows out of range [0, {n_rows})")

    def _update(self, weights: np.ndarray, state: dict[str, np.ndarray], rows: np.ndarray,
                grads: np.ndarray) -> None:
        raise NotImplementedError


class Sgd(RowOptimizer):
    """``w -= lr * g``."""

    def _update(self, weights, state, rows, grads):
        _sgd(weights, rows, grads, float(self.cfg.learning_rate))


class Adagrad(RowOptimizer):
    """``a += g**2; w -= lr * g / (sqrt(a) + eps)``."""

    _ACCUMULATOR = "accum"

    def state_spec(self, dim: int) -> dict[str, tuple[int, float]]:
        return {"accum": (dim, self.cfg.initial_accumulator)}

    def _update(self, weights, state, rows, grads):
        c = self.cfg
        _adagrad(weights, state["accum"], rows, grads, float(c.learning_rate), float(c.eps))


class Ftrl(RowOptimizer):
    """Per-coordinate FTRL-Proximal (McMahan et al. 2013, Algorithm 1), alpha = learning_rate."""

    _ACCUMULATOR = "n"

    def state_spec(self, dim: int) -> dict[str, tuple[int, float]]:
        return {"z": (dim, 0.0), "n": (dim, self.cfg.initial_accumulator)}

    def init_state_rows(self, weights: np.ndarray, state: dict[str, np.ndarray],
                        rows: np.ndarray, squared_sums: np.ndarray | None = None) -> None:
        super().init_state_rows(weights, state, rows, squared_sums)
        rows = np.asarray(rows, dtype=np.int64)
        c = self.cfg
        w0 = weights[rows].astype(np.float64)
        n = (np.float64(c.initial_accumulator) if squared_sums is None
             else state["n"][rows].astype(np.float64))
        denom = (c.beta + np.sqrt(n)) / c.learning_rate + c.l2
        state["z"][rows] = -w0 * denom - np.sign(w0) * c.l1

    def _update(self, weights, state, rows, grads):
        c = self.cfg
        _ftrl(weights, state["z"], state["n"], rows, grads, float(c.learning_rate), float(c.beta),
              float(c.l1), float(c.l2))


class Adam(RowOptimizer):
    """Adam with bias correction by each row's own step count."""

    def state_spec(self, dim: int) -> dict[str, tuple[int, float]]:
        return {"m": (dim, 0.0), "v": (dim, 0.0), "step": (1, 0.0)}

    def squared_sums(self, state: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
        """The bias-corrected mean of the squared gradients (``v``) times the row's steps."""
        t = state["step"][rows].astype(np.float64)
        corrected = np.where(t > 0, 1.0 - self.cfg.beta2 ** t, 1.0)
        return state["v"][rows].astype(np.float64) / corrected * t

    def _update(self, weights, state, rows, grads):
        c = self.cfg
        _adam(weights, state["m"], state["v"], state["step"], rows, grads, float(c.learning_rate),
              float(c.beta1), float(c.beta2), float(c.eps))


_KINDS: dict[str, type[RowOptimizer]] = {"sgd": Sgd, "adagrad": Adagrad, "ftrl": Ftrl, "adam": Adam}


def make_optimizer(cfg: OptimizerConfig) -> RowOptimizer:
    """The row optimizer for ``cfg.kind``."""
    try:
        return _KINDS[cfg.kind](cfg)
    except KeyError:
        raise ValueError(
            f"unknown optimizer kind {cfg.kind!r}; expected one of {sorted(_KINDS)}") from None


@nb.njit(cache=True, nogil=True)
def _sgd(weights, rows, grads, lr):
    for i in range(rows.shape[0]):
        r = rows[i]
        for j in range(weights.shape[1]):
            weights[r, j] = np.float64(weights[r, j]) - lr * np.float64(grads[i, j])


@nb.njit(cache=True, nogil=True)
def _adagrad(weights, accum, rows, grads, lr, eps):
    for i in range(rows.shape[0]):
        r = rows[i]
        for j in range(weights.shape[1]):
            g = np.float64(grads[i, j])
            a = np.float64(accum[r, j]) + g * g
            accum[r, j] = a
            weights[r, j] = np.float64(weights[r, j]) - lr * g / (np.sqrt(a) + eps)


@nb.njit(cache=True, nogil=True)
def _ftrl(weights, z_acc, n_acc, rows, grads, alpha, beta, l1, l2):
    for i in range(rows.shape[0]):
        r = rows[i]
        for j in range(weights.shape[1]):
            g = np.float64(grads[i, j])
            n_old = np.float64(n_acc[r, j])
            n = n_old + g * g
            sigma = (np.sqrt(n) - np.sqrt(n_old)) / alpha
            z = np.float64(z_acc[r, j]) + g - sigma * np.float64(weights[r, j])
            z_acc[r, j] = z
            n_acc[r, j] = n
            if abs(z) <= l1:
                weights[r, j] = 0.0
            else:
                shrunk = z - l1 if z > 0 else z + l1
                weights[r, j] = -shrunk / ((beta + np.sqrt(n)) / alpha + l2)


@nb.njit(cache=True, nogil=True)
def _adam(weights, m_acc, v_acc, steps, rows, grads, lr, beta1, beta2, eps):
    for i in range(rows.shape[0]):
        r = rows[i]
        t = np.float64(steps[r, 0]) + 1.0
        steps[r, 0] = t
        c1 = 1.0 - beta1**t
        c2 = 1.0 - beta2**t
        for j in range(weights.shape[1]):
            g = np.float64(grads[i, j])
            m = beta1 * np.float64(m_acc[r, j]) + (1.0 - beta1) * g
            v = beta2 * np.float64(v_acc[r, j]) + (1.0 - beta2) * g * g
            m_acc[r, j] = m
            v_acc[r, j] = v
            weights[r, j] = np.float64(weights[r, j]) - lr * (m / c1) / (np.sqrt(v / c2) + eps)
