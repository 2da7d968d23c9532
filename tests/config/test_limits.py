"""The limits section: defaults and ranges."""

from __future__ import annotations

import pytest

from monolith_ray.config import ConfigError, LimitsConfig, from_dict


def test_defaults_and_a_loaded_section() -> None:
    assert LimitsConfig() == LimitsConfig(
        max_event_skew_s=300.0, min_event_time_s=0, max_context_bytes=4096, max_context_depth=8)
    limits = from_dict(LimitsConfig, {"max_event_skew_s": 5, "min_event_time_s": 1_000_000_000})
    assert (limits.max_event_skew_s, limits.min_event_time_s) == (5.0, 1_000_000_000)
    assert type(limits.max_event_skew_s) is float


@pytest.mark.parametrize("key, value, message", [
    ("max_event_skew_s", 0, "must be > 0, got 0.0"),
    ("min_event_time_s", -1, "must be >= 0, got -1"),
    ("max_context_bytes", 1, "must be >= 2, got 1"),
    ("max_context_depth", 0, "must be >= 1, got 0"),
])
def test_out_of_range(key: str, value: int, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(LimitsConfig, {key: value}, "limits")
    assert str(info.value) == f"limits.{key}: {message}"
