"""The two-tower model: towers over mixed-dim pooled rows, the logQ-corrected in-batch softmax,
and learning on a synthetic set whose positives are learnable."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from monolith_ray.config import SlotConfig
from monolith_ray.model import two_tower
from monolith_ray.model.api import SlotSpec

TAU = 0.1

SPEC = two_tower.TwoTowerSpec(
    user=(SlotSpec("user_id", 8), SlotSpec("age", 3)),
    item=(SlotSpec("item_id", 12), SlotSpec("genres", 5, "mean")),
    dim=16, hidden=(32,), temperature=TAU)


def test_towers_take_mixed_dims_and_give_unit_vectors():
    params = two_tower.init(jax.random.key(0), SPEC)
    assert params["user"][0]["w"].shape == (9 + 4, 32)
    assert params["item"][0]["w"].shape == (13 + 6, 32)
    rng = np.random.default_rng(0)
    users = {"user_id": rng.normal(size=(5, 9)), "age": rng.normal(size=(5, 4))}
    items = {"item_id": rng.normal(size=(7, 13)), "genres": rng.normal(size=(7, 6))}
    u = two_tower.user_vectors(params, SPEC, {k: jnp.asarray(v, jnp.float32)
                                              for k, v in users.items()})
    v = two_tower.item_vectors(params, SPEC, {k: jnp.asarray(v, jnp.float32)
                                              for k, v in items.items()})
    assert u.shape == (5, 16) and v.shape == (7, 16)
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)


def test_spec_of_reads_the_config_slots_and_rejects_unknown_or_shared_ones():
    slots = [SlotConfig("user_id", 1, 16), SlotConfig("item_id", 2, 8),
             SlotConfig("genres", 7, 4, combiner="mean", max_values=6)]
    spec = two_tower.spec_of(slots, ["user_id"], ["item_id", "genres"])
    assert spec.item == (SlotSpec("item_id", 8), SlotSpec("genres", 4, "mean"))
    with pytest.raises(ValueError, match="gender"):
        two_tower.spec_of(slots, ["gender"], ["item_id"])
    with pytest.raises(ValueError, match="both towers"):
        two_tower.spec_of(slots, ["user_id", "item_id"], ["item_id"])


def _closed_form_grad(scores, log_q, key, weights, tau):
    """d loss / d scores of the corrected softmax, by hand: row i of weight 1 contributes
    (softmax_j(s/tau - log q) - 1[j == i]) / tau over its candidate columns, / n rows."""
    b = scores.shape[0]
    grad = np.zeros_like(scores)
    rows = np.flatnonzero(weights > 0)
    for i in rows:
        cand = (weights > 0) & ((key != key[i]) | (np.arange(b) == i))
        logits = np.where(cand, scores[i] / tau - log_q, -np.inf)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        p[i] -= 1.0
        grad[i] = p / tau
    return grad / rows.size


def test_logq_correction_changes_the_gradient_as_derived():
    rng = np.random.default_rng(1)
    b = 6
    scores = rng.uniform(-1, 1, (b, b)).astype(np.float32)
    key = np.array([0, 1, 2, 3, 1, 5], np.int32)   # column 4 holds row 1's item again
    weights = np.array([1, 1, 1, 1, 1, 0], np.float32)  # row/column 5 is padding
    popular = np.log(np.array([0.02, 0.9, 0.02, 0.02, 0.9, 0.02], np.float32))
    grad = jax.grad(two_tower.corrected_softmax_loss)

    plain = np.asarray(grad(jnp.asarray(scores), jnp.zeros(b), jnp.asarray(key),
                            jnp.asarray(weights), TAU))
    corrected = np.asarray(grad(jnp.asarray(scores), jnp.asarray(popular), jnp.asarray(key),
                                jnp.asarray(weights), TAU))
    np.testing.assert_allclose(plain, _closed_form_grad(scores, np.zeros(b), key, weights, TAU),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(corrected, _closed_form_grad(scores, popular, key, weights, TAU),
                               rtol=1e-4, atol=1e-6)
    # a popular item is pushed down less as a negative once corrected, a rare one more
    assert corrected[0, 1] < plain[0, 1] and corrected[0, 2] > plain[0, 2]
    # the duplicate of row 1's item is not its negative; padding takes no part
    assert corrected[1, 4] == 0 and corrected[4, 1] == 0
    assert not corrected[5].any() and not corrected[:, 5].any()


def _synthetic(rng, n_groups=6, per_group=8):
    """Users and items in ``n_groups`` groups; a user's positives are its group's items."""
    users = np.arange(n_groups * per_group)
    items = np.arange(n_groups * per_group)
    return users, items, users % n_groups, items % n_groups


def test_loss_falls_and_users_retrieve_their_groups_items():
    rng = np.random.default_rng(2)
    users, items, user_group, item_group = _synthetic(rng)
    n, b = users.size, 24
    init_rows = {
        "user_id": rng.normal(0, 0.1, (n, 9)), "age": rng.normal(0, 0.1, (n, 4)),
        "item_id": rng.normal(0, 0.1, (n, 13)), "genres": rng.normal(0, 0.1, (n, 6)),
    }
    state = {"params": two_tower.init(jax.random.key(3), SPEC),
             "rows": {k: jnp.asarray(v, jnp.float32) for k, v in init_rows.items()}}
    opt = optax.adam(0.01)
    opt_state = opt.init(state)

    def loss(state, u, i):
        idx = {"user_id": u[:, None], "age": u[:, None], "item_id": i[:, None],
               "genres": i[:, None]}
        return two_tower.loss_fn(state["params"], SPEC, state["rows"], idx,
                                 jnp.zeros(b), i, jnp.ones(b))

    @jax.jit
    def step(state, opt_state, u, i):
        value, grads = jax.value_and_grad(loss)(state, u, i)
        updates, opt_state = opt.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state, value

    def draw():
        u = rng.choice(users, b, replace=False)
        liked = [rng.choice(items[item_group == user_group[x]]) for x in u]
        return jnp.asarray(u, jnp.int32), jnp.asarray(liked, jnp.int32)

    held_out = [draw() for _ in range(8)]
    scored = jax.jit(loss)
    before = np.mean([float(scored(state, u, i)) for u, i in held_out])
    for _ in range(200):
        state, opt_state, _ = step(state, opt_state, *draw())
    after = np.mean([float(scored(state, u, i)) for u, i in held_out])
    assert after < 0.75 * before

    rows = state["rows"]
    u = two_tower.user_vectors(state["params"], SPEC, {"user_id": rows["user_id"],
                                                       "age": rows["age"]})
    v = two_tower.item_vectors(state["params"], SPEC, {"item_id": rows["item_id"],
                                                       "genres": rows["genres"]})
    top = np.argsort(-np.asarray(u @ v.T), axis=1)[:, :8]
    assert (item_group[top] == user_group[:, None]).mean() > 0.8
