import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from monolith_ray.model import (
    DeepFMConfig,
    apply,
    init,
    loss_fn,
    make_predict,
    make_train_step,
    pad_slots,
)


def test_init_shapes_and_dtypes():
    cfg = DeepFMConfig(n_slots=3, dim=4, hidden=(8, 5), n_dense=2)
    params = init(jax.random.key(0), cfg)
    assert [layer["w"].shape for layer in params["mlp"]] == [(14, 8), (8, 5), (5, 1)]
    assert params["dense_w"].shape == (2,)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    assert "dense_w" not in init(jax.random.key(0), DeepFMConfig(n_slots=3, dim=4))


def test_apply_without_mlp_is_bias_plus_first_order_plus_pairwise_fm():
    cfg = DeepFMConfig(n_slots=4, dim=3, hidden=(6,), n_dense=2)
    params = jax.tree.map(jnp.zeros_like, init(jax.random.key(0), cfg))
    params["bias"] = jnp.float32(0.25)
    params["dense_w"] = jnp.array([0.5, -1.0], jnp.float32)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(5, 4, 4)).astype(np.float32)
    dense = rng.normal(size=(5, 2)).astype(np.float32)
    pairwise = sum(
        (emb[:, s, 1:] * emb[:, t, 1:]).sum(-1) for s, t in itertools.combinations(range(4), 2)
    )
    expected = 0.25 + emb[:, :, 0].sum(-1) + pairwise + dense @ np.array([0.5, -1.0])
    np.testing.assert_allclose(apply(params, emb, dense, cfg), expected, rtol=1e-5, atol=1e-5)


def test_apply_requires_dense_iff_configured():
    cfg = DeepFMConfig(n_slots=2, dim=2, hidden=(4,), n_dense=1)
    params = init(jax.random.key(0), cfg)
    with pytest.raises(ValueError, match="dense"):
        apply(params, jnp.zeros((3, 2, 3)), None, cfg)


def test_row_grads_match_finite_differences():
    cfg = DeepFMConfig(n_slots=2, dim=2, hidden=(4,), n_dense=1)
    combiners = ("sum", "mean")
    params = init(jax.random.key(1), cfg)
    rng = np.random.default_rng(1)
    rows = (
        rng.normal(scale=0.5, size=(3, 3)).astype(np.float32),
        rng.normal(scale=0.5, size=(4, 3)).astype(np.float32),
    )
    idx = (
        np.array([[0], [1], [2], [0]], np.int32),
        np.array([[0, 1, -1], [2, 3, 3], [-1, -1, -1], [1, -1, -1]], np.int32),
    )
    labels = np.array([1, 0, 1, 0], np.float32)
    weights = np.array([1.0, 2.0, 0.5, 1.0], np.float32)
    dense = rng.normal(size=(4, 1)).astype(np.float32)

    def loss(slot_rows):
        return loss_fn(params, slot_rows, idx, combiners, labels, weights, dense, cfg)

    grads = jax.grad(loss)(rows)
    loss_jit = jax.jit(loss)
    eps = 1e-2
    for s, slot in enumerate(rows):
        numeric = np.zeros_like(slot)
        for i, j in np.ndindex(slot.shape):
            bumped = [list(map(np.copy, rows)), list(map(np.copy, rows))]
            bumped[0][s][i, j] += eps
            bumped[1][s][i, j] -= eps
            numeric[i, j] = (loss_jit(tuple(bumped[0])) - loss_jit(tuple(bumped[1]))) / (2 * eps)
        np.testing.assert_allclose(grads[s], numeric, atol=2e-3, rtol=1e-2)


def _synthetic_batch(rng, batch):
    """Users 0..31 and items 0..31 (single-valued), tags 0..15 (up to 3 per example); the
    label is whether the user is in the first half: separable by the user's weight alone."""
    users = rng.integers(0, 32, size=batch)
    items = rng.integers(0, 32, size=batch)
    tags = rng.integers(0, 16, size=(batch, 3))
    tags[rng.random((batch, 3)) < 0.4] = -1
    labels = (users < 16).astype(np.float32)
    return (users[:, None], items[:, None], tags), labels


def _lookup(tables, ids_per_slot):
    """What the trainer does: dedup ids per slot, gather unique rows, remap to indices."""
    uniques, slot_rows, slot_idx = [], [], []
    for table, ids in zip(tables, ids_per_slot):
        unique, inverse = np.unique(ids[ids >= 0], return_inverse=True)
        idx = np.full(ids.shape, -1, np.int32)
        idx[ids >= 0] = inverse
        uniques.append(unique)
        slot_rows.append(table[unique])
        slot_idx.append(idx)
    return uniques, tuple(slot_rows), tuple(slot_idx)


def test_train_step_learns_separable_problem_and_pads_cleanly():
    cfg = DeepFMConfig(n_slots=3, dim=4, hidden=(16,))
    combiners = ("sum", "sum", "mean")
    params = init(jax.random.key(0), cfg)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)
    step = make_train_step(cfg, combiners, optimizer)
    rng = np.random.default_rng(0)
    tables = [
        rng.normal(scale=0.05, size=(n, cfg.dim + 1)).astype(np.float32) for n in (32, 32, 16)
    ]
    batch, row_lr = 64, 2.0
    losses = []
    for _ in range(50):
        ids, labels = _synthetic_batch(rng, batch)
        uniques, slot_rows, slot_idx = _lookup(tables, ids)
        padded = pad_slots(slot_rows, slot_idx)
        params, opt_state, row_grads, loss, logits = step(
            params, opt_state, padded, slot_idx, labels, np.ones(batch, np.float32), None
        )
        assert logits.shape == (batch,)
        for table, unique, grad, padded_rows in zip(tables, uniques, row_grads, padded):
            assert grad.shape == padded_rows.shape
            assert not np.asarray(grad[len(unique):]).any()
            table[unique] -= row_lr * np.asarray(grad[: len(unique)])
        losses.append(float(loss))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert step._cache_size() <= 8  # bucketed shapes: few compiles for 50 batches

    ids, labels = _synthetic_batch(rng, 256)
    _, slot_rows, slot_idx = _lookup(tables, ids)
    predict = make_predict(cfg, combiners)
    probs = np.asarray(predict(params, pad_slots(slot_rows, slot_idx), slot_idx, None))
    assert probs.shape == (256,) and ((probs > 0) & (probs < 1)).all()
    assert ((probs > 0.5) == (labels > 0.5)).mean() > 0.95


def test_loss_ignores_zero_weight_examples():
    cfg = DeepFMConfig(n_slots=1, dim=2, hidden=(4,))
    params = init(jax.random.key(0), cfg)
    rows = (np.array([[0.3, 0.1, -0.2], [-0.5, 0.4, 0.2]], np.float32),)
    idx = (np.array([[0], [1]], np.int32),)
    labels = np.array([1.0, 0.0], np.float32)
    weights = np.array([1.0, 0.0], np.float32)
    both = loss_fn(params, rows, idx, ("sum",), labels, weights, None, cfg)
    first = loss_fn(params, rows, (idx[0][:1],), ("sum",), labels[:1], weights[:1], None, cfg)
    np.testing.assert_allclose(both, first, rtol=1e-6)
