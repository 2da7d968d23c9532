"""The start-of-job check that every input a config names exists, local or by URI."""

from __future__ import annotations

import pytest

from monolith_ray.config import ConfigError, load_config
from monolith_ray.config.inputs import INPUT_KEYS, check_inputs

SLOTS = "slots:\n  - {name: a, slot_id: 0, dim: 4}\n"


def config(**keys: str):
    return load_config(SLOTS, [f"{key}={value}" for key, value in keys.items()])


@pytest.fixture
def files(tmp_path):
    for name in ("train.parquet", "valid.parquet", "pool.jsonl"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "dump").mkdir()
    return tmp_path


def test_existing_inputs_pass(files) -> None:
    cfg = config(**{"data.train": files / "train.parquet",
                    "data.valid": f"file://{files / 'valid.parquet'}",
                    "serve.candidate_pool": files / "pool.jsonl",
                    "online.start": f"dump:{files / 'dump'}"})
    check_inputs(cfg, INPUT_KEYS)


def test_empty_optional_inputs_and_earliest_name_nothing() -> None:
    check_inputs(config(), ("data.valid", "data.test", "serve.candidate_pool", "online.start"))


def test_an_empty_train_fails_where_it_is_read() -> None:
    with pytest.raises(ConfigError, match="^data.train: must not be empty"):
        check_inputs(config(), ("data.train",))


@pytest.mark.parametrize("key, value, shown", [
    ("data.valid", "{d}/valid2.parquet", "{d}/valid2.parquet"),
    ("data.test", "file://{d}/test.parquet", "file://{d}/test.parquet"),
    ("serve.candidate_pool", "{d}/none.jsonl", "{d}/none.jsonl"),
    ("online.start", "dump:{d}/no-dump", "{d}/no-dump"),
    ("online.start", "snapshot:{d}/no-snapshots", "{d}/no-snapshots"),
])
def test_a_missing_input_names_its_key_and_path(files, key, value, shown) -> None:
    cfg = config(**{"data.train": files / "train.parquet", key: value.format(d=files)})
    with pytest.raises(ConfigError) as info:
        check_inputs(cfg, ("data.train", key))
    assert str(info.value) == f"{key}: no file or folder {shown.format(d=files)}"


def test_a_uri_no_filesystem_serves_names_its_key() -> None:
    with pytest.raises(ConfigError, match="^data.test: cannot check nope://bucket/t.parquet: "):
        check_inputs(config(**{"data.test": "nope://bucket/t.parquet"}), ("data.test",))


def test_a_key_that_names_no_input_is_a_bug() -> None:
    with pytest.raises(ValueError, match="'data.output_dir' names no input"):
        check_inputs(config(), ("data.output_dir",))
