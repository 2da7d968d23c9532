"""The data section: no data set's paths by default."""

from __future__ import annotations

import pytest

from monolith_ray.config import ConfigError, DataConfig, from_dict


def test_no_paths_by_default() -> None:
    data = DataConfig()
    assert (data.train, data.valid, data.test) == ("", "", "")


def test_an_empty_output_dir_is_refused() -> None:
    with pytest.raises(ConfigError, match="^data.output_dir: must not be empty$"):
        from_dict(DataConfig, {"output_dir": ""}, "data")
