import itertools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from monolith_ray.config import ModelConfig
from monolith_ray.model import (
    ModelSpec,
    SlotSpec,
    init_params,
    make_grad_step,
    make_predict,
)
from monolith_ray.model import deepfm


def spec(dims=(4, 4, 4), hidden=(8, 5), n_dense=0, combiners=("sum", "sum", "mean")):
    return ModelSpec(slots=tuple(SlotSpec(f"s{i}", d, c)
                                 for i, (d, c) in enumerate(zip(dims, combiners))),
                     n_dense=n_dense, model=ModelConfig(hidden=hidden))


# The DeepFM before the model API (DeepFMConfig(n_slots=3, dim=4, hidden=(8, 5)), with 2
# dense features and without), on the inputs of `test_same_numbers_as_before_the_model_api`.
BEFORE = np.load(Path(__file__).parent / "data" / "deepfm_before.npz")


def test_same_numbers_as_before_the_model_api():
    """When every slot has one dim: bit for bit the same initial parameters, and the same
    probabilities, logits, loss and gradients to float32 rounding (XLA fuses the new graph's
    additions differently, and its code differs between CPUs)."""
    for n_dense in (2, 0):
        before = {k.removeprefix(f"dense{n_dense}_"): BEFORE[k] for k in BEFORE.files
                  if k.startswith(f"dense{n_dense}_")}
        s = spec(n_dense=n_dense)
        params = init_params(deepfm, s, jax.random.key(7))
        rng = np.random.default_rng(7)
        rows = tuple(rng.normal(scale=0.3, size=(u, 5)).astype(np.float32) for u in (4, 8, 6))
        idx = (rng.integers(0, 4, (6, 1)).astype(np.int32),
               rng.integers(0, 8, (6, 1)).astype(np.int32),
               np.where(rng.random((6, 2)) < 0.3, -1, rng.integers(0, 6, (6, 2))).astype(np.int32))
        dense = rng.normal(size=(6, 2)).astype(np.float32)
        if n_dense:
            params["dense_norm"] = {"mean": np.array([0.5, -1.0], np.float32),
                                    "inv_std": np.array([2.0, 0.5], np.float32)}
        else:
            dense = None
        labels = (rng.random(6) < 0.5).astype(np.float32)
        weights = np.ones(6, np.float32)
        for i, leaf in enumerate(jax.tree.leaves(params)):
            np.testing.assert_array_equal(leaf, before[f"params{i}"])
        probs = make_predict(deepfm, s)(params, rows, idx, dense)["click"]
        pg, rg, loss, logits = make_grad_step(deepfm, s)(params, rows, idx, labels, weights,
                                                         dense)
        # float32 rounding apart: XLA's code for a sum differs between CPUs (a machine with
        # other vector units moved a logit by 1.2e-7), so not bit for bit
        for name, got in (("probs", probs), ("logits", logits), ("loss", loss)):
            np.testing.assert_allclose(got, before[name], rtol=1e-6, atol=3e-7, err_msg=name)
        for i, leaf in enumerate(jax.tree.leaves(pg)):
            np.testing.assert_allclose(leaf, before[f"param_grads{i}"], rtol=1e-6, atol=3e-7)
        for i, g in enumerate(rg):
            np.testing.assert_allclose(g, before[f"row_grads{i}"], rtol=0, atol=3e-8)


def test_init_shapes_and_dtypes():
    params = init_params(deepfm, spec(dims=(4, 4, 4), hidden=(8, 5), n_dense=2),
                         jax.random.key(0))
    assert [layer["w"].shape for layer in params["mlp"]] == [(14, 8), (8, 5), (5, 1)]
    assert params["dense_w"].shape == (2,) and "fm_proj" not in params
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    assert "dense_w" not in deepfm.init(jax.random.key(0), spec())
    mixed = deepfm.init(jax.random.key(0), spec(dims=(2, 6, 4)))
    assert mixed["mlp"][0]["w"].shape == (12, 8)
    assert {n: p.shape for n, p in mixed["fm_proj"].items()} == {"s0": (2, 6), "s2": (4, 6)}


def _rows(rng, dims, batch=5):
    return {f"s{i}": rng.normal(size=(batch, d + 1)).astype(np.float32)
            for i, d in enumerate(dims)}


def test_apply_without_mlp_is_bias_plus_first_order_plus_pairwise_fm():
    s = spec(dims=(3, 3, 3, 3), hidden=(6,), n_dense=2, combiners=("sum",) * 4)
    params = jax.tree.map(jnp.zeros_like, deepfm.init(jax.random.key(0), s))
    params["bias"] = jnp.float32(0.25)
    params["dense_w"] = jnp.array([0.5, -1.0], jnp.float32)
    rng = np.random.default_rng(0)
    emb = _rows(rng, (3, 3, 3, 3))
    dense = rng.normal(size=(5, 2)).astype(np.float32)
    rows = list(emb.values())
    pairwise = sum((a[:, 1:] * b[:, 1:]).sum(-1) for a, b in itertools.combinations(rows, 2))
    expected = 0.25 + sum(r[:, 0] for r in rows) + pairwise + dense @ np.array([0.5, -1.0])
    np.testing.assert_allclose(deepfm.apply(params, emb, dense)["click"], expected,
                               rtol=1e-5, atol=1e-5)


def test_mixed_dims_pair_every_slot_through_a_projection_to_the_widest():
    """At init a narrower slot is zero-padded to the widest dim (its projection is [I 0]);
    every pair of slots meets in the FM term, through the learned projections after."""
    dims = (2, 4, 3)
    s = spec(dims=dims, hidden=(6,), combiners=("sum",) * 3)
    params = jax.tree.map(jnp.zeros_like, deepfm.init(jax.random.key(0), s))
    params["fm_proj"] = deepfm.init(jax.random.key(0), s)["fm_proj"]
    rng = np.random.default_rng(1)
    emb = _rows(rng, dims)
    padded = [np.pad(r[:, 1:], ((0, 0), (0, 4 - r.shape[1] + 1))) for r in emb.values()]
    pairwise = sum((a * b).sum(-1) for a, b in itertools.combinations(padded, 2))
    first = sum(r[:, 0] for r in emb.values())
    out = deepfm.apply(params, emb, np.zeros((5, 0), np.float32))["click"]
    np.testing.assert_allclose(out, first + pairwise, rtol=1e-5, atol=1e-5)

    params["fm_proj"]["s0"] = jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)
    projected = [emb["s0"][:, 1:] @ np.asarray(params["fm_proj"]["s0"]), *padded[1:]]
    pairwise = sum((a * b).sum(-1) for a, b in itertools.combinations(projected, 2))
    out = deepfm.apply(params, emb, np.zeros((5, 0), np.float32))["click"]
    np.testing.assert_allclose(out, first + pairwise, rtol=1e-5, atol=1e-5)


def test_apply_requires_dense_iff_configured():
    params = deepfm.init(jax.random.key(0), spec(n_dense=1))
    emb = _rows(np.random.default_rng(0), (4, 4, 4), batch=3)
    try:
        deepfm.apply(params, emb, np.zeros((3, 0), np.float32))
    except ValueError as err:
        assert "dense" in str(err)
    else:
        raise AssertionError("no error without the dense features")
