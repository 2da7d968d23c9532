"""DenseServer parts: a named pytree beside the model's, pushed, pulled and snapshotted
with it; a snapshot taken before the part existed restores and leaves the part fresh."""

from __future__ import annotations

import numpy as np
import optax
import pytest

from monolith_ray.ps.dense import DenseServer


def _server(with_part: bool = True) -> DenseServer:
    parts = {"tower": (lambda: {"w": np.ones(3, np.float32)}, optax.sgd(0.5))}
    return DenseServer({"m": np.zeros(2, np.float32)}, optax.sgd(1.0),
                       parts=parts if with_part else None)


def test_a_part_is_pushed_and_pulled_apart_from_the_model() -> None:
    server = _server()
    assert server.parts() == ["tower"]
    assert server.push({"w": np.full(3, 2.0, np.float32)}, "tower") == 1
    params, version = server.pull("tower")
    np.testing.assert_allclose(params["w"], 0.0)  # 1 - 0.5 * 2
    assert version == 1
    model, model_version = server.pull()
    np.testing.assert_allclose(model["m"], 0.0)
    assert model_version == 0  # the model's version counts the model's pushes only
    with pytest.raises(ValueError, match="NaN or Inf"):
        server.push({"w": np.array([np.nan, 0, 0], np.float32)}, "tower")
    with pytest.raises(KeyError, match="no dense part 'other'"):
        server.push({"w": np.zeros(3, np.float32)}, "other")
    with pytest.raises(ValueError, match="the model's own"):
        DenseServer({"m": np.zeros(2)}, optax.sgd(1.0), parts={"model": ({}, optax.sgd(1.0))})


def test_snapshots_hold_every_part(tmp_path) -> None:
    server = _server()
    server.push({"w": np.full(3, 1.0, np.float32)}, "tower")
    server.push({"m": np.full(2, 1.0, np.float32)})
    server.snapshot(tmp_path / "a")
    fresh = _server()
    fresh.restore(tmp_path / "a")
    params, version = fresh.pull("tower")
    np.testing.assert_allclose(params["w"], 0.5)
    assert version == 1 and fresh.pull()[1] == 1
    # Taken without the part: the model restores, the part stays as it started.
    _server(with_part=False).snapshot(tmp_path / "b")
    fresh.restore(tmp_path / "b")
    np.testing.assert_allclose(fresh.pull("tower")[0]["w"], 0.5)
    np.testing.assert_allclose(fresh.pull()[0]["m"], 0.0)
