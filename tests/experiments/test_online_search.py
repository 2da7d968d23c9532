"""The online-settings search: variants as overrides of the config (a slot's keys by its
name), each scored by the benchmark's replicas on the valid split alone."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from monolith_ray.config import ConfigError, OptimizerConfig, load_config
from monolith_ray.experiments.online_search import REPLICAS, config_with, score_on_valid

CONFIG = """\
slots:
  - {name: user_id, slot_id: 1, dim: 4, online: {kind: ftrl, learning_rate: 0.2}}
  - {name: item_id, slot_id: 2, dim: 4}
model: {hidden: [8]}
train: {batch_size: 32, epochs: 1}
online: {batch_size: 5}
"""


def test_no_overrides_is_the_shipped_config() -> None:
    assert config_with([]) == load_config()


def test_slot_overrides_reach_the_named_slot_only() -> None:
    cfg = config_with(["slots.item_id.online={kind: adagrad, learning_rate: 0.01}",
                       "slots.user_id.online.learning_rate=0.05", "online.dense_rate=0.5"],
                      CONFIG)
    user, item = cfg.slots
    assert user.online == OptimizerConfig(kind="ftrl", learning_rate=0.05)
    assert item.online == OptimizerConfig(kind="adagrad", learning_rate=0.01)
    assert cfg.online.dense_rate == 0.5 and cfg.online.batch_size == 5


@pytest.mark.parametrize("override", ["slots.genre.online.learning_rate=0.1",
                                      "slots.user_id=1", "slots.user_id.online.rate=0.1"])
def test_bad_slot_overrides_fail(override: str) -> None:
    with pytest.raises(ConfigError):
        config_with([override], CONFIG)


def split(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"time": pa.array(np.arange(n) * 60 + seed * 10**6, pa.int64()),
                     "label": pa.array(np.arange(n) % 2, pa.float32()),
                     "weight": pa.array(np.ones(n), pa.float32()),
                     "user_id": pa.array(rng.integers(0, 8, n), pa.int64()),
                     "item_id": pa.array(rng.integers(0, 20, n), pa.int64())})


def test_scores_every_replica_on_valid_without_a_test_split() -> None:
    splits = {"train": split(200, 0), "valid": split(100, 1)}  # no test: never read
    result = score_on_valid(config_with([], CONFIG), splits, seeds=[0, 1])
    assert set(result["auc"]) == set(REPLICAS)
    assert all(len(v) == 2 and all(0 <= a <= 1 for a in v) for v in result["by_seed"].values())
    assert result["gain_k100_by_seed"] == [
        round(k - b, 4) for k, b in zip(result["by_seed"]["online_k100"],
                                        result["by_seed"]["batch"])]
