"""Dense feature values: defaults, log1p, bounds, the fitted standardization, and dense
columns of example tables into batches."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from monolith_ray.config import DenseFeature, SlotConfig
from monolith_ray.data.batches import make_batch
from monolith_ray.data.dense_values import dense_matrix, fit_norm, identity_norm, transformed
from monolith_ray.schemas import SchemaError, example_schema

FEATURES = (DenseFeature("count", transform="log1p", default=2.0),
            DenseFeature("price", transform="standardize", max_abs=100.0),
            DenseFeature("raw", transform="none"))
SLOTS = (SlotConfig(name="user", slot_id=1, dim=4),)


def test_defaults_fill_missing_values_and_log1p_keeps_the_sign() -> None:
    raw = np.array([[np.nan, 3.0, -2.0], [-9.0, np.nan, 5.0]])
    out = transformed(raw, FEATURES)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], [np.log1p(2.0), -np.log1p(9.0)], rtol=1e-6)
    np.testing.assert_allclose(out[:, 1], [3.0, 0.0])  # price's default is 0
    np.testing.assert_allclose(out[:, 2], [-2.0, 5.0])


def test_values_beyond_max_abs_or_infinite_are_refused_naming_the_feature() -> None:
    with pytest.raises(ValueError, match="price: 101.0"):
        transformed(np.array([[0.0, 101.0, 0.0]]), FEATURES)
    with pytest.raises(ValueError, match="raw: inf"):
        transformed(np.array([[0.0, 0.0, np.inf]]), FEATURES)


def test_fit_norm_standardizes_only_the_features_that_ask() -> None:
    rng = np.random.default_rng(0)
    sample = np.stack([rng.exponential(3, 5000), rng.normal(40, 7, 5000),
                       rng.normal(1, 9, 5000)], axis=1).astype(np.float32)
    norm = fit_norm(sample, FEATURES)
    scaled = (sample - norm["mean"]) * norm["inv_std"]
    assert abs(scaled[:, 1].mean()) < 1e-3 and abs(scaled[:, 1].std() - 1) < 1e-3
    np.testing.assert_array_equal(scaled[:, [0, 2]], sample[:, [0, 2]])  # not standardized
    constant = fit_norm(np.ones((10, 3), np.float32), FEATURES)
    assert constant["inv_std"][1] == 1.0 and constant["mean"][1] == 1.0
    empty = fit_norm(np.empty((0, 3), np.float32), FEATURES)
    assert {k: v.tolist() for k, v in empty.items()} == \
        {k: v.tolist() for k, v in identity_norm(3).items()}


def _examples(**dense: pa.Array) -> pa.Table:
    n = 3
    columns = {"time": pa.array(np.arange(n), pa.int64()),
               "label": pa.array(np.zeros(n, np.float32)),
               "weight": pa.array(np.ones(n, np.float32)),
               "user": pa.array([1, 2, 3], pa.int64()),
               "count": pa.array([1, None, 3], pa.int64()),
               "price": pa.array([1.5, 2.5, None], pa.float64()),
               "raw": pa.array([0.5, -0.5, 1.0], pa.float32())}
    columns.update(dense)
    return pa.table(columns)


def test_dense_columns_of_any_numeric_type_become_the_batch_matrix() -> None:
    schema = example_schema(SLOTS, FEATURES)
    assert [f.name for f in schema][-3:] == ["count", "price", "raw"]
    batch = make_batch(_examples(), SLOTS, FEATURES)
    assert batch.dense.shape == (3, 3) and batch.dense.dtype == np.float32
    np.testing.assert_allclose(batch.dense[:, 0], np.log1p([1.0, 2.0, 3.0]), rtol=1e-6)
    np.testing.assert_allclose(batch.dense[:, 1], [1.5, 2.5, 0.0])
    padded = batch.padded(5)
    assert padded.dense.shape == (5, 3) and not padded.dense[3:].any()
    assert make_batch(_examples(), SLOTS).dense.shape == (3, 0)  # no dense features asked


@pytest.mark.parametrize(("column", "message"), [
    (pa.array([1.0, float("nan"), 0.0], pa.float32()), "'price': 1 NaN"),
    (pa.array([1.0, float("inf"), 0.0]), "price: inf"),
    (pa.array([1.0, 200.0, 0.0]), "price: 200.0 is not finite or beyond max_abs 100"),
])
def test_bad_dense_values_are_refused_naming_the_column(column, message) -> None:
    with pytest.raises(SchemaError, match=message):
        dense_matrix(_examples(price=column), FEATURES)


def test_a_missing_or_mistyped_dense_column_is_named() -> None:
    with pytest.raises(SchemaError, match="'raw': missing"):
        make_batch(_examples().drop_columns(["raw"]), SLOTS, FEATURES)
    with pytest.raises(SchemaError, match="'raw'"):
        make_batch(_examples(raw=pa.array(["a", "b", "c"])), SLOTS, FEATURES)
