"""The serve section: the feedback key (a secret, kept out of the repr), the tower cache's
bound."""

from __future__ import annotations

import pytest

from monolith_ray.config import ConfigError, from_dict
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
