"""The serve section: the feedback key (a secret, kept out of the repr), the tower cache's
bound; finite, bounded intervals (and dense bounds) wherever a config sets a float."""

from __future__ import annotations

import pytest

from monolith_ray.config import ConfigError, from_dict, load_config
from monolith_ray.config.serve import ServeConfig


def test_feedback_key_defaults_to_empty_and_stays_out_of_the_repr() -> None:
    assert ServeConfig().feedback_key == ""
    serve = from_dict(ServeConfig, {"feedback_key": "s3cret-key"})
    assert serve.feedback_key == "s3cret-key"
    assert "s3cret-key" not in repr(serve) and "feedback_key" not in repr(serve)


def test_the_tower_cache_bound_is_a_count_of_rows() -> None:
    assert ServeConfig().tower_cache_rows == 0  # a quarter of cache_rows
    assert from_dict(ServeConfig, {"tower_cache_rows": 5000}).tower_cache_rows == 5000
    with pytest.raises(ConfigError) as info:
        from_dict(ServeConfig, {"tower_cache_rows": -1}, "serve")
    assert str(info.value) == "serve.tower_cache_rows: must be >= 0, got -1"


@pytest.mark.parametrize("override, message", [
    ("serve.poll_interval_s=.inf", "serve.poll_interval_s: must be a finite number, got inf"),
    ("serve.sparse_sync_interval_s=1.0e+300",
     "serve.sparse_sync_interval_s: must be > 0 and <= 2592000.0, got 1e+300"),
    ("dense=[{name: price, max_abs: .inf}]", "dense[0].max_abs: must be a finite number, got inf"),
    ("serve.replica_resources.serving=.inf",
     "serve.replica_resources.serving: must be > 0 and finite, got inf"),
    ("dense=[{name: price, max_abs: 1.0e+39}]",
     "dense[0].max_abs: must be > 0 and <= 3.4028234663852886e+38, got 1e+39"),
])
def test_intervals_and_bounds_are_finite_and_bounded(override: str, message: str) -> None:
    """An infinite or overflowing interval would end the thread that waits on it; a dense
    bound past float32 would let values in that the model reads as inf."""
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert str(info.value) == message


def test_api_keys_are_required_off_loopback_bounded_and_secret() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["serve.host=0.0.0.0"])
    assert str(info.value).startswith("serve.api_keys: required when host (0.0.0.0) is not a "
                                      "loopback address")
    with pytest.raises(ConfigError, match=r"^serve.api_keys\[1\]: must be 16 to 256 printable"):
        load_config(overrides=["serve.api_keys=[key-0123456789abcdef, short]"])
    cfg = load_config(overrides=["serve.host=0.0.0.0", "serve.api_keys=[key-0123456789abcdef]"])
    assert cfg.serve.api_keys == ("key-0123456789abcdef",)
    assert "key-0123456789abcdef" not in repr(cfg)
    assert load_config().serve.api_keys == ()  # loopback: open to this machine only
