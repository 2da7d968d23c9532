"""ShardServer.snapshot/restore through pyarrow.fs: a plain path and a file:// URI, bit-exact."""

from __future__ import annotations

import os

import numpy as np
import pytest

from monolith_ray.config import AdmissionConfig, OptimizerConfig, SlotConfig
from monolith_ray.features import make_fids
from monolith_ray.files import absolute_location, filesystem_and_path
from monolith_ray.ps.shard import ShardServer
from monolith_ray.supervision import RestartUnknownError

ADMISSION = AdmissionConfig(sketch_width=1024, sketch_depth=2)
SLOTS = (SlotConfig(name="user", slot_id=1, dim=3, optimizer=OptimizerConfig(kind="adam")),
         SlotConfig(name="item", slot_id=2, dim=5))


def trained_shard() -> ShardServer:
    shard = ShardServer(SLOTS, ADMISSION)
    rng = np.random.default_rng(0)
    ids = {"user": make_fids(1, rng.integers(0, 50, 300)),
           "item": make_fids(2, rng.integers(0, 70, 300))}
    shard.pull(ids, now=1.0)
    shard.push(ids, {"user": rng.normal(size=(300, 4)).astype(np.float32),
                     "item": rng.normal(size=(300, 6)).astype(np.float32)}, now=2.0)
    shard.evict({"item": make_fids(2, np.arange(5))})
    return shard


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-uri"])
def test_snapshot_restores_bit_exact(tmp_path, as_uri):
    location = (tmp_path / "s").as_uri() if as_uri else str(tmp_path / "s")
    shard = trained_shard()
    shard.snapshot(location)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "item.table", "position.json", "user.table"]
    fresh = ShardServer(SLOTS, ADMISSION)
    fresh.restore(location)
    for name, stats in shard.stats().items():  # bytes aside: the restored map is rebuilt
        assert {**fresh.stats()[name], "bytes": 0} == {**stats, "bytes": 0}
    for name, table in shard.tables.items():
        want, got = table.export_since(0), fresh.tables[name].export_since(0)
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a, b)
    # Written again, the restored tables give the same bytes.
    fresh.snapshot(tmp_path / "again")
    for name in ("user", "item"):
        assert (tmp_path / "again" / f"{name}.table").read_bytes() == \
            (tmp_path / "s" / f"{name}.table").read_bytes()


def test_restore_is_all_or_nothing(tmp_path):
    shard = trained_shard()
    shard.snapshot(tmp_path)
    (tmp_path / "item.table").unlink()
    fresh = ShardServer(SLOTS, ADMISSION)
    before = fresh.stats()
    with pytest.raises(FileNotFoundError, match="slot 'item'"):
        fresh.restore(tmp_path)
    assert fresh.stats() == before


def test_locations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_location("rel/dir") == str(tmp_path / "rel" / "dir")
    assert absolute_location("s3://bucket/x") == "s3://bucket/x"
    fs, path = filesystem_and_path(f"file://{tmp_path}/a")
    assert type(fs).__name__ == "LocalFileSystem" and path == f"{tmp_path}/a"
    with pytest.raises(ValueError):
        filesystem_and_path("nosuchfs://bucket/x")


class _Context:
    """A Ray runtime context of an actor whose restart flag cannot be read."""

    def get_actor_id(self) -> str:
        return "ab" * 16

    @property
    def was_current_actor_reconstructed(self) -> bool:
        raise RuntimeError("the cluster's control store did not answer")


def test_a_shard_that_cannot_tell_whether_it_restarted_refuses_to_start(ray_session,
                                                                          monkeypatch):
    import ray

    snapshot_asked: list[bool] = []

    def latest() -> None:
        snapshot_asked.append(True)

    # In the driver (no actor) it is a first start: no snapshot is looked for.
    assert ShardServer(SLOTS, ADMISSION, restore_on_restart=latest).restored_from is None
    assert not snapshot_asked
    monkeypatch.setattr(ray, "get_runtime_context", _Context)
    with pytest.raises(RestartUnknownError, match="control store did not answer"):
        ShardServer(SLOTS, ADMISSION, restore_on_restart=latest)
    # Without a snapshot to restore, nothing needs asking.
    assert ShardServer(SLOTS, ADMISSION).restored_from is None


def test_training_calls_go_on_while_a_snapshot_is_written(tmp_path, monkeypatch):
    """The shard's lock is held while a chunk is copied, never while it is written: with a
    storage that takes 10 ms a write, pulls and pushes are answered while the snapshot is
    still being written, and the snapshot then restores (a fuzzy cut of a live table)."""
    import threading
    import time

    from monolith_ray.table import embedding

    monkeypatch.setattr(embedding, "SNAPSHOT_CHUNK_ROWS", 256)
    shard = ShardServer(SLOTS, ADMISSION)
    ids = {"user": make_fids(1, np.arange(5000)), "item": make_fids(2, np.arange(3000))}
    shard.pull(ids, now=1.0)

    real_write = embedding._write_frame
    writing = threading.Event()

    def slow_write(file, array):
        writing.set()
        time.sleep(0.01)
        real_write(file, array)

    monkeypatch.setattr(embedding, "_write_frame", slow_write)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (shard.snapshot(str(tmp_path / "s")), done.set()))
    thread.start()
    assert writing.wait(10)
    answered = 0
    rng = np.random.default_rng(1)
    while not done.is_set() and answered < 20:
        few = {"user": make_fids(1, rng.integers(0, 6000, 64)),
               "item": make_fids(2, rng.integers(0, 3000, 64))}
        shard.push(few, {"user": np.ones((64, 4), np.float32),
                         "item": np.ones((64, 6), np.float32)}, now=3.0)
        shard.pull(few, now=3.0)
        answered += 1
    assert answered == 20 and not done.is_set()  # all answered mid-snapshot
    thread.join(60)
    assert done.is_set()
    fresh = ShardServer(SLOTS, ADMISSION)
    fresh.restore(str(tmp_path / "s"))
    assert fresh.stats()["item"]["rows"] == 3000
    assert 5000 <= fresh.stats()["user"]["rows"] <= shard.stats()["user"]["rows"]


def test_a_shard_restores_a_folder_of_the_earlier_npz_format(tmp_path):
    import shutil
    from pathlib import Path

    fixture = Path(__file__).parents[1] / "table" / "fixtures" / "table_v1.npz"
    shutil.copy(fixture, tmp_path / "s.npz")
    shard = ShardServer([SlotConfig(name="s", slot_id=3, dim=3)], ADMISSION)
    shard.restore(str(tmp_path))
    assert shard.stats()["s"]["rows"] == 50


def test_a_capped_snapshot_sleeps_to_stay_under_its_rate(tmp_path, monkeypatch):
    """``mb_per_s`` paces the writer: the sleeps it asks for plus the time it worked add up
    to at least the bytes over the rate (the rows are all still written)."""
    import time

    from monolith_ray.ps import shard as shard_module
    from monolith_ray.table import embedding

    monkeypatch.setattr(embedding, "SNAPSHOT_CHUNK_ROWS", 512)
    server = ShardServer(SLOTS, ADMISSION)
    server.pull({"user": make_fids(1, np.arange(20_000)), "item": make_fids(2, np.arange(5))},
                now=1.0)
    slept = []
    monkeypatch.setattr(shard_module.time, "sleep", lambda s: slept.append(s))
    start = time.perf_counter()
    out = server.snapshot(str(tmp_path / "s"), mb_per_s=0.5)
    worked = time.perf_counter() - start
    row_bytes = 20_000 * (4 * 4 * 2 + 8 + 8 + 4 + 8)  # adam state: m, v (4 wide), step (1)
    assert out["rows"] == 20_005
    assert sum(slept) + worked >= 0.9 * row_bytes / 0.5e6
    assert sum(s > 0 for s in slept) > 10  # paced chunk by chunk, not once at the end
    uncapped = []
    monkeypatch.setattr(shard_module.time, "sleep", lambda s: uncapped.append(s))
    server.snapshot(str(tmp_path / "t"))
    assert not any(uncapped)  # only the zero-second yields between chunks


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="thread priorities are POSIX")
def test_the_snapshot_writer_runs_below_the_threads_answering_calls(tmp_path, monkeypatch):
    """Chunks are written at a lower priority, but copied (under the shard's lock) on the
    calling thread at its own: a low-priority thread never holds the lock."""
    from monolith_ray.ps import shard as shard_module

    writing: list[int] = []
    copying: list[int] = []
    write_parts = shard_module.write_parts
    snapshot_parts = shard_module.EmbeddingTable.snapshot_parts

    def observed_write(*args, **kwargs):
        writing.append(os.getpriority(os.PRIO_PROCESS, 0))  # 0: the calling thread
        return write_parts(*args, **kwargs)

    def observed_copy(self, lock=None, chunk_rows=None):
        for part in snapshot_parts(self, lock, chunk_rows):
            copying.append(os.getpriority(os.PRIO_PROCESS, 0))
            yield part

    monkeypatch.setattr(shard_module, "write_parts", observed_write)
    monkeypatch.setattr(shard_module.EmbeddingTable, "snapshot_parts", observed_copy)
    caller = os.getpriority(os.PRIO_PROCESS, 0)
    shard = trained_shard()
    shard.snapshot(tmp_path)
    assert writing and all(p == min(caller + shard_module.WRITER_NICENESS, 19) for p in writing)
    assert len(copying) >= 2 * len(shard.tables) and all(p == caller for p in copying)
    assert os.getpriority(os.PRIO_PROCESS, 0) == caller  # the caller's thread is untouched
    fresh = ShardServer(SLOTS, ADMISSION)
    fresh.restore(tmp_path)
    for name, stats in shard.stats().items():
        assert fresh.stats()[name]["rows"] == stats["rows"] > 0


def test_a_failed_snapshot_write_raises_in_the_caller(tmp_path, monkeypatch):
    from monolith_ray.ps import shard as shard_module

    def broken(file, parts, pace=None):
        next(iter(parts))
        raise OSError("disk full")

    monkeypatch.setattr(shard_module, "write_parts", broken)
    with pytest.raises(OSError, match="disk full"):
        trained_shard().snapshot(tmp_path)


def test_a_failed_copy_raises_in_the_caller_and_stops_the_writer(tmp_path, monkeypatch):
    import threading

    from monolith_ray.ps import shard as shard_module

    snapshot_parts = shard_module.EmbeddingTable.snapshot_parts

    def broken(self, lock=None, chunk_rows=None):
        yield next(iter(snapshot_parts(self, lock, chunk_rows)))
        raise MemoryError("no room for a copy")

    monkeypatch.setattr(shard_module.EmbeddingTable, "snapshot_parts", broken)
    with pytest.raises(MemoryError, match="no room"):
        trained_shard().snapshot(tmp_path)
    assert not [t for t in threading.enumerate() if t.name == "snapshot-writer"]


def test_a_direct_file_writes_exactly_what_it_was_given(tmp_path):
    """Blocks go out aligned and whole; the last one padded, then truncated: the file holds
    every byte given, in order, and nothing else."""
    from monolith_ray.ps.shard import DirectFile

    rng = np.random.default_rng(3)
    pieces = [rng.integers(0, 256, n, dtype=np.uint8).tobytes()
              for n in (1, 4095, 4096, 10_000, 70_001, 3)]
    try:
        f = DirectFile(str(tmp_path / "d"), block=16_384)
    except OSError:
        pytest.skip("this file system has no O_DIRECT")
    with f:
        for piece in pieces:
            assert f.write(piece) == len(piece)
        assert f.tell() == sum(map(len, pieces))
    assert (tmp_path / "d").read_bytes() == b"".join(pieces)


def test_a_shard_whose_tables_dropped_unread_eviction_records_is_read_whole_again():
    shard = trained_shard()
    incarnation, delta = shard.changes_since({}, None)
    versions = {name: d.version for name, d in delta.items()}
    assert shard.changes_since(versions, incarnation)[0] == incarnation
    shard.tables["item"].max_eviction_records = 4
    shard.evict({"item": make_fids(2, np.arange(5, 8))})  # 5 + 3 records: past 4
    again, delta = shard.changes_since(versions, incarnation)
    # a new incarnation: the reader's versions no longer lead to the table, so it gets the
    # whole of it (every live row), not a delta missing the dropped evictions
    assert again != incarnation
    assert delta["item"].ids.size == shard.stats()["item"]["rows"]
    assert shard.changes_since({n: d.version for n, d in delta.items()}, again)[0] == again
    shard.evict({"user": make_fids(1, np.arange(3))})  # within its bound: no change
    assert shard.incarnation() == again


def test_records_dropped_outside_the_shards_own_evict_are_caught_before_a_delta_is_read():
    shard = trained_shard()
    incarnation, delta = shard.changes_since({}, None)
    versions = {name: d.version for name, d in delta.items()}
    table = shard.tables["item"]
    table.max_eviction_records = 4
    table.evict(make_fids(2, np.arange(5, 8)))  # as an expiry pass's chunk does, unchecked
    again, delta = shard.changes_since(versions, incarnation)
    assert again != incarnation and delta["item"].ids.size == shard.stats()["item"]["rows"]
