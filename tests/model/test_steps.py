import jax
import numpy as np
import optax
import pytest

from monolith_ray.config import ModelConfig
from monolith_ray.model import (
    ModelSpec,
    SlotSpec,
    dcn_v2,
    deepfm,
    examples,
    init_params,
    loss_fn,
    make_predict,
    make_train_step,
    pad_slots,
)

MODELS = {"deepfm": deepfm, "dcn_v2": dcn_v2, "examples": examples.PlainMLP((16,))}


def spec(dims, combiners, hidden=(4,), n_dense=0):
    return ModelSpec(slots=tuple(SlotSpec(f"s{i}", d, c)
                                 for i, (d, c) in enumerate(zip(dims, combiners))),
                     n_dense=n_dense, model=ModelConfig(hidden=hidden, cross_layers=2))


@pytest.mark.parametrize("name", MODELS)
def test_row_grads_match_finite_differences(name):
    """Mixed dims (2 and 3), both combiners, a dense feature."""
    model, s = MODELS[name], spec((2, 3), ("sum", "mean"), n_dense=1)
    params = init_params(model, s, jax.random.key(1))
    rng = np.random.default_rng(1)
    rows = (rng.normal(scale=0.5, size=(3, 3)).astype(np.float32),
            rng.normal(scale=0.5, size=(4, 4)).astype(np.float32))
    idx = (np.array([[0], [1], [2], [0]], np.int32),
           np.array([[0, 1, -1], [2, 3, 3], [-1, -1, -1], [1, -1, -1]], np.int32))
    labels = np.array([1, 0, 1, 0], np.float32)
    weights = np.array([1.0, 2.0, 0.5, 1.0], np.float32)
    dense = rng.normal(size=(4, 1)).astype(np.float32)

    def loss(slot_rows):
        return loss_fn(model, s, params, slot_rows, idx, labels, weights, dense)[0]

    grads = jax.grad(loss)(rows)
    loss_jit = jax.jit(loss)
    eps = 1e-3  # small enough not to step over a ReLU's kink
    for k, slot in enumerate(rows):
        numeric = np.zeros_like(slot)
        for i, j in np.ndindex(slot.shape):
            bumped = [list(map(np.copy, rows)), list(map(np.copy, rows))]
            bumped[0][k][i, j] += eps
            bumped[1][k][i, j] -= eps
            numeric[i, j] = (loss_jit(tuple(bumped[0])) - loss_jit(tuple(bumped[1]))) / (2 * eps)
        np.testing.assert_allclose(grads[k], numeric, atol=2e-3, rtol=1e-2)


def _synthetic_batch(rng, batch):
    """Users 0..31 and items 0..31 (single-valued), tags 0..15 (up to 3 per example); the
    label is whether the user is in the first half: separable by the user's row alone."""
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


@pytest.mark.parametrize("name", MODELS)
def test_train_step_learns_separable_problem_and_pads_cleanly(name):
    model, s = MODELS[name], spec((4, 8, 2), ("sum", "sum", "mean"), hidden=(16,))
    params = init_params(model, s, jax.random.key(0))
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)
    step = make_train_step(model, s, optimizer)
    rng = np.random.default_rng(0)
    tables = [rng.normal(scale=0.05, size=(n, slot.width)).astype(np.float32)
              for n, slot in zip((32, 32, 16), s.slots)]
    batch, row_lr = 64, 2.0
    losses = []
    for _ in range(50):
        ids, labels = _synthetic_batch(rng, batch)
        uniques, slot_rows, slot_idx = _lookup(tables, ids)
        padded = pad_slots(slot_rows, slot_idx)
        params, opt_state, row_grads, loss, logits = step(
            params, opt_state, padded, slot_idx, labels, np.ones(batch, np.float32), None)
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
    probs = make_predict(model, s)(params, pad_slots(slot_rows, slot_idx), slot_idx, None)
    probs = np.asarray(probs["click"])
    assert probs.shape == (256,) and ((probs > 0) & (probs < 1)).all()
    assert ((probs > 0.5) == (labels > 0.5)).mean() > 0.95


def test_loss_ignores_zero_weight_examples():
    s = spec((2,), ("sum",))
    params = init_params(deepfm, s, jax.random.key(0))
    rows = (np.array([[0.3, 0.1, -0.2], [-0.5, 0.4, 0.2]], np.float32),)
    idx = (np.array([[0], [1]], np.int32),)
    labels = np.array([1.0, 0.0], np.float32)
    weights = np.array([1.0, 0.0], np.float32)
    both = loss_fn(deepfm, s, params, rows, idx, labels, weights, None)[0]
    first = loss_fn(deepfm, s, params, rows, (idx[0][:1],), labels[:1], weights[:1], None)[0]
    np.testing.assert_allclose(both, first, rtol=1e-6)


def test_a_model_must_score_every_task_and_keep_dense_norm_free():
    class Silent:
        def init(self, key, spec):
            return {}

        def apply(self, params, embeddings, dense):
            return {"like": dense.sum(-1)}

    s = spec((2,), ("sum",))
    rows, idx = (np.zeros((1, 3), np.float32),), (np.zeros((2, 1), np.int32),)
    with pytest.raises(ValueError, match=r"no logits for task\(s\) \['click'\]"):
        make_predict(Silent(), s)({}, rows, idx, None)

    class Greedy(Silent):
        def init(self, key, spec):
            return {"dense_norm": 0.0}

    with pytest.raises(ValueError, match="reserved key 'dense_norm'"):
        init_params(Greedy(), s, jax.random.key(0))
