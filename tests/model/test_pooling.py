import jax
import jax.numpy as jnp
import numpy as np
import pytest

from monolith_ray.model import bucket_size, pad_rows, pad_slots, pool

ROWS = jnp.array([[1.0, 2.0], [10.0, 20.0], [100.0, 200.0]], dtype=jnp.float32)
IDX = jnp.array([[0, 1, -1], [2, -1, -1], [-1, -1, -1], [1, 1, 2]], dtype=jnp.int32)


def test_sum_skips_padding():
    out = pool(ROWS, IDX, "sum")
    expected = [[11, 22], [100, 200], [0, 0], [120, 240]]
    np.testing.assert_allclose(out, expected)
    assert out.dtype == jnp.float32


def test_mean_divides_by_valid_count_and_empty_is_zero():
    out = pool(ROWS, IDX, "mean")
    expected = [[5.5, 11], [100, 200], [0, 0], [40, 80]]
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize("combiner", ["sum", "mean"])
def test_grad_wrt_rows_is_dense_per_unique_row(combiner):
    grads = jax.grad(lambda r: pool(r, IDX, combiner).sum())(ROWS)
    assert grads.shape == ROWS.shape
    if combiner == "sum":
        expected_counts = [1, 3, 2]  # row 1 appears three times, row 2 twice
    else:
        expected_counts = [0.5, 0.5 + 2 / 3, 1 + 1 / 3]
    expected = np.repeat(np.array(expected_counts)[:, None], 2, axis=1)
    np.testing.assert_allclose(grads, expected, rtol=1e-6)
    assert np.isfinite(np.asarray(grads)).all()


def test_unknown_combiner_rejected():
    with pytest.raises(ValueError, match="combiner"):
        pool(ROWS, IDX, "max")


def test_padded_rows_get_zero_grads():
    padded = jnp.asarray(pad_rows(np.asarray(ROWS), 8))
    grads = jax.grad(lambda r: (pool(r, IDX, "mean") ** 2).sum())(padded)
    assert grads.shape == (8, 2)
    assert not np.asarray(grads[3:]).any()
    np.testing.assert_allclose(pool(padded, IDX, "mean"), pool(ROWS, IDX, "mean"))


def test_bucket_size_policy():
    assert [bucket_size(n) for n in (0, 1, 2, 3, 4, 5, 1000)] == [1, 1, 2, 4, 4, 8, 1024]
    assert bucket_size(700, cap=768) == 768
    assert bucket_size(300, cap=768) == 512


def test_pad_rows_and_pad_slots():
    rows = np.arange(6, dtype=np.float32).reshape(3, 2)
    out = pad_rows(rows, 4)
    assert out.dtype == np.float32 and out.shape == (4, 2)
    np.testing.assert_array_equal(out[:3], rows)
    assert not out[3:].any()
    with pytest.raises(ValueError):
        pad_rows(rows, 2)
    idx = np.zeros((2, 3), dtype=np.int32)  # cap = 6
    padded = pad_slots((rows, np.ones((5, 2), np.float32)), (idx, idx))
    assert [p.shape[0] for p in padded] == [4, 6]
