"""Initializers: a pure function of (seed, id, column), with the requested distribution."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from monolith_ray.config import InitializerConfig
from monolith_ray.table.initializers import fill_rows, init_rows

UNIFORM = InitializerConfig(kind="uniform", scale=0.5, seed=7)
NORMAL = InitializerConfig(kind="normal", scale=0.3, seed=7)


def some_ids(n, seed=0):
    """Distinct int64 ids over the whole range, negatives included."""
    rng = np.random.default_rng(seed)
    return np.unique(rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, n,
                                  dtype=np.int64, endpoint=True))


@pytest.mark.parametrize("cfg", [UNIFORM, NORMAL], ids=["uniform", "normal"])
def test_rows_do_not_depend_on_order_batching_or_placement(cfg):
    ids = some_ids(500)
    whole = init_rows(ids, 16, cfg)

    perm = np.random.default_rng(1).permutation(ids.size)
    np.testing.assert_array_equal(init_rows(ids[perm], 16, cfg), whole[perm])

    table = np.full((2 * ids.size, 16), np.nan, dtype=np.float32)
    rows = np.random.default_rng(2).permutation(table.shape[0])[: ids.size]
    for batch in np.array_split(np.arange(ids.size), 7):
        fill_rows(table, rows[batch], ids[batch], cfg)
    np.testing.assert_array_equal(table[rows], whole)
    others = np.setdiff1d(np.arange(table.shape[0]), rows)
    assert np.all(np.isnan(table[others]))

    np.testing.assert_array_equal(init_rows(ids, 5, cfg), whole[:, :5])


def test_rows_are_the_same_in_another_process():
    ids = some_ids(50)
    script = (
        "import sys, numpy as np\n"
        "from monolith_ray.config import InitializerConfig\n"
        "from monolith_ray.table.initializers import init_rows\n"
        "ids = np.frombuffer(sys.stdin.buffer.read(), dtype=np.int64)\n"
        "cfg = InitializerConfig(kind='normal', scale=0.3, seed=7)\n"
        "sys.stdout.buffer.write(init_rows(ids, 8, cfg).tobytes())\n"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", script], input=ids.tobytes(),
                         capture_output=True, check=True, env=env).stdout
    theirs = np.frombuffer(out, dtype=np.float32).reshape(ids.size, 8)
    np.testing.assert_array_equal(theirs, init_rows(ids, 8, NORMAL))


@pytest.mark.parametrize("kind", ["uniform", "normal"])
def test_seeds_and_ids_give_different_rows(kind):
    ids = some_ids(200)
    a = init_rows(ids, 8, InitializerConfig(kind=kind, scale=1.0, seed=1))
    b = init_rows(ids, 8, InitializerConfig(kind=kind, scale=1.0, seed=2))
    assert np.all(a != b)
    assert np.unique(a, axis=0).shape[0] == ids.size


def test_zeros_writes_zeros():
    cfg = InitializerConfig(kind="zeros", scale=1.0, seed=3)
    assert np.array_equal(init_rows(some_ids(10), 4, cfg), np.zeros((10, 4), np.float32))
    table = np.ones((6, 4), dtype=np.float32)
    fill_rows(table, np.array([1, 4]), np.array([10, 11]), cfg)
    assert np.all(table[[1, 4]] == 0.0)
    assert np.all(table[[0, 2, 3, 5]] == 1.0)


def test_uniform_distribution():
    values = init_rows(some_ids(10_000), 10, UNIFORM)
    scale = UNIFORM.scale
    assert values.min() >= -scale and values.max() <= scale
    assert abs(values.mean()) < 0.01 * scale
    assert values.std() == pytest.approx(scale / np.sqrt(3), rel=0.01)
    counts, _ = np.histogram(values, bins=10, range=(-scale, scale))
    assert np.all(np.abs(counts / values.size - 0.1) < 0.005)


def test_normal_distribution():
    values = init_rows(some_ids(10_000), 10, NORMAL)
    scale = NORMAL.scale
    assert abs(values.mean()) < 0.01 * scale
    assert values.std() == pytest.approx(scale, rel=0.01)
    assert np.mean(np.abs(values) < scale) == pytest.approx(0.6827, abs=0.005)
    assert np.mean(np.abs(values) < 2 * scale) == pytest.approx(0.9545, abs=0.003)


@pytest.mark.parametrize("cfg", [UNIFORM, NORMAL], ids=["uniform", "normal"])
def test_columns_and_neighbouring_ids_are_uncorrelated(cfg):
    ids = np.arange(50_000, dtype=np.int64)
    values = init_rows(ids, 2, cfg).astype(np.float64)
    assert abs(np.corrcoef(values[:, 0], values[:, 1])[0, 1]) < 0.02
    assert abs(np.corrcoef(values[:-1, 0], values[1:, 0])[0, 1]) < 0.02
