"""Row optimizer kernels against plain NumPy references of each update rule."""

from __future__ import annotations

import numpy as np
import pytest

from monolith_ray.config import OptimizerConfig
from monolith_ray.table.optimizers import make_optimizer

N_ROWS, DIM = 64, 8
TOL = dict(rtol=1e-6, atol=1e-6)

CONFIGS = {
    "sgd": OptimizerConfig(kind="sgd", learning_rate=0.05),
    "adagrad": OptimizerConfig(kind="adagrad", learning_rate=0.1, initial_accumulator=0.1,
                               eps=1e-7),
    "ftrl": OptimizerConfig(kind="ftrl", learning_rate=0.05, initial_accumulator=0.1, beta=1.0,
                            l1=0.01, l2=0.1),
    "adam": OptimizerConfig(kind="adam", learning_rate=0.01, beta1=0.9, beta2=0.999, eps=1e-8),
}


# References: float64 arithmetic on the touched rows, stored back as float32 like the table.

def ref_sgd(c, w, s, rows, g):
    w[rows] = w[rows] - c.learning_rate * g


def ref_adagrad(c, w, s, rows, g):
    accum = s["accum"][rows] + g**2
    s["accum"][rows] = accum
    w[rows] = w[rows] - c.learning_rate * g / (np.sqrt(accum) + c.eps)


def ref_ftrl(c, w, s, rows, g):
    n_old = s["n"][rows].astype(np.float64)
    n = n_old + g**2
    sigma = (np.sqrt(n) - np.sqrt(n_old)) / c.learning_rate
    z = s["z"][rows] + g - sigma * w[rows]
    s["z"][rows] = z
    s["n"][rows] = n
    denom = (c.beta + np.sqrt(n)) / c.learning_rate + c.l2
    w[rows] = np.where(np.abs(z) <= c.l1, 0.0, -(z - np.sign(z) * c.l1) / denom)


def ref_adam(c, w, s, rows, g):
    t = s["step"][rows].astype(np.float64) + 1.0
    m = c.beta1 * s["m"][rows].astype(np.float64) + (1 - c.beta1) * g
    v = c.beta2 * s["v"][rows].astype(np.float64) + (1 - c.beta2) * g**2
    s["step"][rows], s["m"][rows], s["v"][rows] = t, m, v
    m_hat = m / (1 - c.beta1**t)
    v_hat = v / (1 - c.beta2**t)
    w[rows] = w[rows] - c.learning_rate * m_hat / (np.sqrt(v_hat) + c.eps)


REFERENCES = {"sgd": ref_sgd, "adagrad": ref_adagrad, "ftrl": ref_ftrl, "adam": ref_adam}


def new_table(opt, rng, n_rows=N_ROWS, dim=DIM):
    """Random float32 weights and state allocated per ``state_spec``, then ``init_state_rows``."""
    weights = (0.1 * rng.standard_normal((n_rows, dim))).astype(np.float32)
    state = {name: np.full((n_rows, width), fill, dtype=np.float32)
             for name, (width, fill) in opt.state_spec(dim).items()}
    opt.init_state_rows(weights, state, np.arange(n_rows))
    return weights, state


@pytest.mark.parametrize("kind", CONFIGS)
def test_kernel_matches_reference_and_leaves_other_rows_alone(kind):
    cfg = CONFIGS[kind]
    opt = make_optimizer(cfg)
    rng = np.random.default_rng(1)
    weights, state = new_table(opt, rng)
    ref_w = weights.copy()
    ref_s = {k: v.copy() for k, v in state.items()}
    for _ in range(12):
        rows = rng.choice(N_ROWS, size=rng.integers(1, N_ROWS), replace=False).astype(np.int64)
        grads = rng.standard_normal((rows.size, DIM)).astype(np.float32)
        before_w = weights.copy()
        before_s = {k: v.copy() for k, v in state.items()}

        opt.apply(weights, state, rows, grads)
        REFERENCES[kind](cfg, ref_w, ref_s, rows, grads.astype(np.float64))

        np.testing.assert_allclose(weights, ref_w, **TOL)
        for name in state:
            np.testing.assert_allclose(state[name], ref_s[name], **TOL)
        untouched = np.setdiff1d(np.arange(N_ROWS), rows)
        assert np.array_equal(weights[untouched], before_w[untouched])
        for name in state:
            assert np.array_equal(state[name][untouched], before_s[name][untouched])
        assert not np.array_equal(weights[rows], before_w[rows])


def test_state_spec_names_widths_and_fills():
    assert make_optimizer(CONFIGS["sgd"]).state_spec(4) == {}
    assert make_optimizer(CONFIGS["adagrad"]).state_spec(4) == {"accum": (4, 0.1)}
    assert make_optimizer(CONFIGS["ftrl"]).state_spec(4) == {"z": (4, 0.0), "n": (4, 0.1)}
    assert make_optimizer(CONFIGS["adam"]).state_spec(4) == {
        "m": (4, 0.0), "v": (4, 0.0), "step": (1, 0.0)}


def test_adam_step_counts_each_rows_own_updates():
    opt = make_optimizer(CONFIGS["adam"])
    rng = np.random.default_rng(2)
    weights, state = new_table(opt, rng)
    counts = np.zeros(N_ROWS)
    for _ in range(7):
        rows = rng.choice(N_ROWS, size=20, replace=False).astype(np.int64)
        opt.apply(weights, state, rows, rng.standard_normal((20, DIM)).astype(np.float32))
        counts[rows] += 1
    assert np.array_equal(state["step"][:, 0], counts)


def test_ftrl_l1_gives_exact_zeros():
    cfg = OptimizerConfig(kind="ftrl", learning_rate=0.1, initial_accumulator=0.1, beta=1.0,
                          l1=2.0, l2=0.0)
    opt = make_optimizer(cfg)
    rng = np.random.default_rng(3)
    weights, state = new_table(opt, rng)
    rows = np.arange(N_ROWS)
    for _ in range(5):
        opt.apply(weights, state, rows, (0.5 * rng.standard_normal((N_ROWS, DIM))).astype(np.float32))
    zero = weights == 0.0
    assert 0 < zero.sum() < zero.size
    assert np.all(np.abs(state["z"][zero]) <= cfg.l1)
    assert np.all(np.abs(state["z"][~zero]) > cfg.l1)


def test_ftrl_without_l1_has_no_exact_zeros():
    cfg = OptimizerConfig(kind="ftrl", learning_rate=0.1, initial_accumulator=0.1, beta=1.0,
                          l1=0.0, l2=0.0)
    opt = make_optimizer(cfg)
    rng = np.random.default_rng(4)
    weights, state = new_table(opt, rng)
    opt.apply(weights, state, np.arange(N_ROWS), rng.standard_normal((N_ROWS, DIM)).astype(np.float32))
    assert np.all(weights != 0.0)


@pytest.mark.parametrize("l1", [0.0, 0.01])
def test_ftrl_init_policy_keeps_initial_weights(l1):
    """z is set so FTRL's closed form gives back w0: a zero gradient leaves the row as it was."""
    cfg = OptimizerConfig(kind="ftrl", learning_rate=0.05, initial_accumulator=0.1, beta=1.0,
                          l1=l1, l2=0.1)
    opt = make_optimizer(cfg)
    rng = np.random.default_rng(5)
    weights, state = new_table(opt, rng)
    weights[3] = 0.0
    opt.init_state_rows(weights, state, np.array([3]))
    w0 = weights.copy()
    denom = (cfg.beta + np.sqrt(cfg.initial_accumulator)) / cfg.learning_rate + cfg.l2
    expected_z = -w0 * denom - np.sign(w0) * l1
    np.testing.assert_allclose(state["z"], expected_z, rtol=1e-6)
    assert np.all(state["z"][3] == 0.0)

    opt.apply(weights, state, np.arange(N_ROWS), np.zeros((N_ROWS, DIM), np.float32))
    np.testing.assert_allclose(weights, w0, **TOL)
    assert np.all(weights[3] == 0.0)


@pytest.mark.parametrize("kind", CONFIGS)
def test_init_state_rows_resets_only_the_given_rows(kind):
    opt = make_optimizer(CONFIGS[kind])
    rng = np.random.default_rng(6)
    weights, state = new_table(opt, rng)
    for s in state.values():
        s[:] = 7.0
    rows = np.array([0, 5, 9])
    opt.init_state_rows(weights, state, rows)
    fresh_w, fresh = new_table(opt, np.random.default_rng(6))
    assert np.array_equal(fresh_w, weights)
    others = np.setdiff1d(np.arange(N_ROWS), rows)
    for name, s in state.items():
        assert np.array_equal(s[rows], fresh[name][rows])
        assert np.all(s[others] == 7.0)


def test_apply_rejects_bad_inputs():
    opt = make_optimizer(CONFIGS["adagrad"])
    weights, state = new_table(opt, np.random.default_rng(7))
    grads = np.zeros((2, DIM), np.float32)
    with pytest.raises(IndexError):
        opt.apply(weights, state, np.array([0, N_ROWS]), grads)
    with pytest.raises(ValueError):
        opt.apply(weights.astype(np.float64), state, np.array([0, 1]), grads)
    with pytest.raises(ValueError):
        opt.apply(weights, {}, np.array([0, 1]), grads)
    with pytest.raises(ValueError):
        opt.apply(weights, state, np.array([0, 1]), np.zeros((2, DIM + 1), np.float32))
