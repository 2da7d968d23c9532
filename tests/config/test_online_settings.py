"""The online settings: a slot's ``online`` optimizer and ``online.batch_size`` /
``online.dense_rate``, checked at load with errors naming the key."""

from __future__ import annotations

import pytest

from monolith_ray.config import ConfigError, OptimizerConfig, load_config

SLOT = "slots:\n  - {name: user_id, slot_id: 1, dim: 4%s}\n"


def test_unset_by_default() -> None:
    cfg = load_config(SLOT % "")
    assert cfg.slots[0].online is None
    assert (cfg.online.batch_size, cfg.online.dense_rate) == (0, 1.0)


def test_loaded() -> None:
    cfg = load_config(SLOT % ", online: {kind: adagrad, learning_rate: 0.1}"
                      + "online: {batch_size: 10, dense_rate: 0.5}\n")
    assert cfg.slots[0].online == OptimizerConfig(kind="adagrad", learning_rate=0.1)
    assert (cfg.online.batch_size, cfg.online.dense_rate) == (10, 0.5)


def test_shipped_config_sets_online_optimizers() -> None:
    cfg = load_config()
    assert any(s.online is not None for s in cfg.slots)
    assert cfg.online.batch_size >= 1


@pytest.mark.parametrize("text, key", [
    (SLOT % ", online: {kind: adagrad, learning_rate: 0}", "slots[0].online.learning_rate"),
    (SLOT % ", online: {kind: adagard}", "slots[0].online.kind"),
    (SLOT % ", online: {kind: adagrad, rate: 0.1}", "slots[0].online.rate"),
    (SLOT % "" + "online: {batch_size: -1}\n", "online.batch_size"),
    (SLOT % "" + "online: {dense_rate: 0}\n", "online.dense_rate"),
    (SLOT % "" + "online: {dense_rate: .nan}\n", "online.dense_rate"),
])
def test_bad_values_fail_at_load_naming_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(text)
    assert err.value.key == key
