"""Online training on the embedded broker: a dump trained in batch then the stream from the
dump's end (every example once), a trainer killed mid-stream and replaced (every example at
least once, none skipped), and a run restored from its snapshot. Snapshots themselves:
``test_snapshots.py``."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from monolith_ray.config import Config, load_config
from monolith_ray.data.dump import dump_examples, read_dump_offsets
from monolith_ray.messages import encode
from monolith_ray.stream import ensure_topics
from monolith_ray.train.online import OnlineTraining, run_online_training
from monolith_ray.train.snapshots import latest

T0 = 1_700_000_000
CONFIG = """
slots:
  - {name: user_id, slot_id: 1, dim: 4}
  - {name: item_id, slot_id: 2, dim: 4}
  - {name: genres, slot_id: 3, dim: 4, max_values: 2, combiner: mean}
dense:
  - {name: price, transform: log1p_standardize}
model: {hidden: [8]}
train: {batch_size: 32, n_trainers: 2, n_shards: 1, epochs: 1}
online: {stop: end, snapshot_every_s: 0.3, commit_every_steps: 2, poll_records: 100,
         block_bytes: 2048}
"""


def config(bootstrap: str, topic: str, out: Path, *overrides: str) -> Config:
    return load_config(CONFIG, [f"kafka.bootstrap_servers={bootstrap}",
                                f"kafka.topics.examples={topic}",
                                f"data.output_dir={out}", *overrides])


def example(i: int) -> bytes:
    """Example i, a minute of event time after example i - 1 (so a few hours in all)."""
    return encode({"request_id": f"r{i}", "time": T0 + 60 * i, "label": float(i % 4 == 0),
                   "slots": {"user_id": i % 40, "item_id": f"item{i % 25}",
                             "genres": ["drama", f"g{i % 3}"][: 1 + i % 2]},
                   **({"dense": {"price": price(i)}} if i % 5 else {})})


def price(i: int) -> float:
    """Example i's price (examples i % 5 == 0 have none: the default, 0)."""
    return float(i % 7) * 10.0 if i % 5 else 0.0


def written(produced: list[tuple[int, int]]) -> dict[int, int]:
    """Partition -> offset after its last produced message."""
    ends: dict[int, int] = {}
    for partition, offset in produced:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    return ends


def test_dump_then_stream_trains_every_example_once(ray_session, kafka_bootstrap, produce,
                                                    tmp_path) -> None:
    cfg = config(kafka_bootstrap, "examples-switch", tmp_path / "run")
    ensure_topics(cfg.kafka, ["examples-switch"])
    # 300 examples, then a malformed message closing partition 1's share of the dump.
    before = produce(cfg.kafka, "examples-switch", [example(i) for i in range(300)] + [b"{"],
                     [i % 2 for i in range(300)] + [1])
    dump = dump_examples(cfg, str(tmp_path / "dump"))
    assert dump["end"] == {str(p): o for p, o in written(before).items()}
    assert dump["examples"] == 300 and dump["malformed"] == 1
    assert len(list((tmp_path / "dump").glob("dt=2023-11-1*/hour=*/*.parquet"))) >= 5
    # 200 more examples with a malformed one among them, all after the dump.
    after = produce(cfg.kafka, "examples-switch",
                    [example(i) for i in range(300, 400)] + [b"[]"]
                    + [example(i) for i in range(400, 500)], [i % 2 for i in range(201)])

    metrics = run_online_training(cfg, start=f"dump:{tmp_path / 'dump'}")

    phases = metrics["phases"]
    assert phases["dump"]["examples"] == 300
    assert phases["stream"]["start_offsets"] == read_dump_offsets(str(tmp_path / "dump"))["end"]
    assert phases["stream"]["examples"] == 200 and metrics["source"]["malformed"] == 1
    # Every offset accounted for (none skipped) by exactly as many examples as were valid
    # (none trained twice).
    end = written(before + after)
    assert metrics["offsets"] == end and metrics["examples"] == 500
    assert metrics["snapshot"] == latest(tmp_path / "run" / "snapshots")
    saved = json.loads((Path(metrics["snapshot"]) / "offsets.json").read_text())
    assert saved == {"topic": "examples-switch", "offsets": {str(p): o for p, o in end.items()}}
    # The dense standardization was fitted on the dump's examples and never moved.
    with np.load(Path(metrics["snapshot"]) / "dense.npz") as params:
        mean = next(params[k] for k in params.files if "dense_norm" in k and "mean" in k)
        inv_std = next(params[k] for k in params.files if "dense_norm" in k and "inv_std" in k)
    logged = np.log1p([price(i) for i in range(300)])
    np.testing.assert_allclose(mean, [logged.mean()], rtol=1e-5)
    np.testing.assert_allclose(inv_std, [1 / logged.std()], rtol=1e-4)


def _trickle(cfg: Config, topic: str, produce, produced: list) -> threading.Thread:
    """A thread producing 1600 examples over about 3 s into ``produced``."""
    def run() -> None:
        for k in range(0, 1600, 100):
            produced.extend(produce(cfg.kafka, topic, [example(i) for i in range(k, k + 100)],
                                    [i % 2 for i in range(100)]))
            time.sleep(0.15)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _wait_for_progress(snapshot: Path, examples: int = 200) -> None:
    deadline = time.monotonic() + 60
    while not _offsets(snapshot) or sum(_offsets(snapshot).values()) < examples:
        assert time.monotonic() < deadline, "no snapshot with progress within 60 s"
        time.sleep(0.05)


def _killed_mid_run(kafka_bootstrap: str, produce, tmp_path: Path, topic: str,
                    kill, *overrides: str) -> tuple[dict, dict[int, int]]:
    """An unbounded run over a trickle of 1600 examples, ``kill(run)`` once a snapshot shows
    progress -> the run's metrics (it ends idle) and the offsets produced."""
    cfg = config(kafka_bootstrap, topic, tmp_path / "run", "online.stop=never",
                 "online.idle_timeout_s=5", "supervision.check_every_s=0.5", *overrides)
    ensure_topics(cfg.kafka, [topic])
    produced: list[tuple[int, int]] = []
    producer = _trickle(cfg, topic, produce, produced)
    run, failure, metrics = OnlineTraining(cfg), [], {}
    trainer = threading.Thread(target=lambda: _catch(lambda: metrics.update(run.run()),
                                                     failure))
    trainer.start()
    try:
        _wait_for_progress(tmp_path / "run" / "snapshots")
        kill(run)
        trainer.join(120)
        producer.join(60)
    finally:
        run.close()
    assert not failure, failure
    end = written(produced)
    assert sum(end.values()) == 1600
    return metrics, end


@pytest.mark.parametrize("how", ["ray.kill", "kill -9"])
def test_a_killed_trainer_is_replaced_and_the_stream_trained_without_skipping(
        ray_session, kafka_bootstrap, produce, kill_actor, tmp_path, how) -> None:
    metrics, end = _killed_mid_run(
        kafka_bootstrap, produce, tmp_path,
        f"examples-crash-{how.replace(' ', '').replace('.', '')}",
        lambda run: kill_actor(run.trainers[0], how))
    # The run replaced its trainers once and read the stream again from their commits:
    # every example at least once, none skipped.
    assert metrics["restarts"]["trainers"] == 1
    assert metrics["phases"]["stream"]["attempts"] == 2
    assert metrics["offsets"] == end


def test_a_killed_stream_read_task_is_read_again_from_the_committed_offsets(
        ray_session, kafka_bootstrap, produce, tmp_path, caplog) -> None:
    """kill -9 of the Kafka read task's process mid-run, twice: Ray does not run it again
    (a rerun read from the run's start offsets); the job replaces its trainers and reads the
    stream again from the committed offsets: every example at least once, none skipped, the
    restarts counted as the stream's, the second after a pause (a crash loop's backoff)."""
    import os
    import signal

    import ray

    def read_task_pid(run: OnlineTraining, other_than: int | None = None) -> int:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pids = ray.get(run.monitor.totals.remote())["pids"]
            if pids and all(pids.values()) and other_than not in pids.values():
                return next(iter(pids.values()))
            time.sleep(0.1)
        raise AssertionError(f"no read task other than {other_than} was listed")

    def kill_read_task_twice(run: OnlineTraining) -> None:
        first = read_task_pid(run)
        os.kill(first, signal.SIGKILL)
        os.kill(read_task_pid(run, other_than=first), signal.SIGKILL)  # the next dataset's

    with caplog.at_level("WARNING", logger="monolith_ray.train.online"):
        metrics, end = _killed_mid_run(kafka_bootstrap, produce, tmp_path,
                                       "examples-read-task", kill_read_task_twice,
                                       "supervision.backoff_s=0.5")
    assert metrics["restarts"].get("stream") == 2 and not metrics["restarts"].get("trainers")
    assert metrics["phases"]["stream"]["attempts"] == 3
    assert metrics["offsets"] == end
    # the first restart came at once, the second after supervision.backoff_s
    assert caplog.text.count("restarted again within") == 1
    assert "waiting 0.5 s first" in caplog.text


def test_a_run_restored_from_its_snapshot_resumes_where_its_offsets_end(
        ray_session, kafka_bootstrap, produce, tmp_path) -> None:
    topic = "examples-resume"
    cfg = config(kafka_bootstrap, topic, tmp_path / "first", "online.stop=never")
    ensure_topics(cfg.kafka, [topic])
    produced: list[tuple[int, int]] = []
    producer = _trickle(cfg, topic, produce, produced)
    run = OnlineTraining(cfg)
    trainer = threading.Thread(target=lambda: _catch(run.run, []))
    trainer.start()
    snapshot = tmp_path / "first" / "snapshots"
    _wait_for_progress(snapshot)
    run.close()  # the whole job ends, as when its driver dies
    trainer.join(60)
    producer.join(60)
    resumed = _offsets(snapshot)
    end = written(produced)
    assert 0 < sum(resumed.values()) < sum(end.values()) == 1600

    again = config(kafka_bootstrap, topic, tmp_path / "second", "train.n_trainers=1")
    metrics = run_online_training(again, start=f"snapshot:{snapshot}")

    # The restored run starts exactly where the snapshot's parameters had trained to, and
    # trains every offset from there once: with the first run's committed prefix, every
    # example at least once and none skipped.
    assert metrics["phases"]["stream"]["start_offsets"] == resumed
    assert metrics["offsets"] == end
    assert metrics["examples"] == sum(end[p] - resumed[p] for p in end)


def _offsets(root: Path) -> dict[int, int] | None:
    """The offsets of the newest complete snapshot under ``root``, None if there is none
    (or it was pruned while being read: snapshots come every 0.3 s here)."""
    newest = latest(root)
    if newest is None:
        return None
    try:
        saved = json.loads((Path(newest) / "offsets.json").read_text())
    except FileNotFoundError:
        return None
    return {int(p): o for p, o in saved["offsets"].items()}


def _catch(fn, failures: list) -> None:
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - the test inspects it
        failures.append(err)



class _SlowSource:
    """A stand-in for a Ray DataIterator: blocks of ``sizes`` rows, ``gap_s`` apart."""

    def __init__(self, sizes: list[int], gap_s: float) -> None:
        self.sizes, self.gap_s = sizes, gap_s

    def iter_batches(self, **_: object):
        import pyarrow as pa

        start = 0
        for n in self.sizes:
            time.sleep(self.gap_s)
            yield pa.table({"i": list(range(start, start + n))})
            start += n


def test_timely_batches_fill_at_high_rates_and_go_short_when_the_stream_is_quiet() -> None:
    from monolith_ray.train.online import timely_batches

    # Fast blocks: full batches across block boundaries, then the short remainder at the end.
    fast = list(timely_batches(_SlowSource([30, 30, 30, 30, 30], 0.0), 64, 60.0))
    assert [(t.num_rows, short) for t, short in fast] == [(64, False), (64, False), (22, True)]
    assert [i for t, _ in fast for i in t.column("i").to_pylist()] == list(range(150))
    # A quiet stream: 10 rows, then nothing for longer than the wait: they go alone (short)
    # instead of waiting for the next block.
    slow = timely_batches(_SlowSource([10, 10], 1.5), 64, 0.2)
    assert [(t.num_rows, s) for t, s in slow] == [(10, True), (10, True)]


def test_timely_batches_tell_a_quiet_stream_after_a_full_batch() -> None:
    from monolith_ray.train.online import timely_batches

    # 64 rows fill a batch exactly; nothing comes for 1.5 s: the quiet is told (None) after
    # the 0.2 s wait, once, before the next rows.
    out = list(timely_batches(_SlowSource([64, 10], 1.5), 64, 0.2))
    assert [(None if t is None else t.num_rows, s) for t, s in out] == [
        (64, False), (None, True), (10, True)]


class _HeldSource:
    """A stand-in for a Ray DataIterator: ``tables``, then nothing until ``release`` is set."""

    def __init__(self, tables: list, release: threading.Event) -> None:
        self.tables, self.release = tables, release

    def iter_batches(self, **_: object):
        yield from self.tables
        self.release.wait()


@pytest.mark.parametrize("n_trainers", [1, 2])
def test_a_stream_that_goes_quiet_after_full_batches_is_committed_without_more_data(
        n_trainers: int) -> None:
    """The tail of a stream that ends on a batch boundary is committed once the stream has
    been quiet ``online.max_batch_wait_s``, with no more data (both loop orders: a single
    trainer's own dense step, and a trainer of several with the dense server)."""
    import pyarrow as pa

    from monolith_ray.data.kafka_source import source_schema
    from monolith_ray.data.offsets import OffsetCoverage
    from monolith_ray.ps.dense import DenseServer
    from monolith_ray.ps.shard import ShardServer
    from monolith_ray.train.job import dense_server_args
    from monolith_ray.train.online import StreamTrainer

    cfg = load_config(CONFIG, ["online.max_batch_wait_s=0.2", "online.commit_every_steps=10",
                               f"train.n_trainers={n_trainers}"])
    schema = source_schema(cfg.slots, cfg.dense, cfg.task_names)
    rows = [{"time": T0 + i, "label": float(i % 2), "weight": 1.0, "user_id": i % 7,
             "item_id": i % 5, "genres": [i % 3], "price": 1.0, "_partition": 0,
             "_offset": i, "_from_offset": i} for i in range(96)]
    table = pa.Table.from_pylist(rows, schema=schema)
    release = threading.Event()
    source = _HeldSource([table.slice(0, 32), table.slice(32, 64)], release)
    trainer = StreamTrainer(cfg, [ShardServer(cfg.slots, cfg.admission)],
                            DenseServer(*dense_server_args(cfg)), local_dense=n_trainers == 1)
    results: list = []
    worker = threading.Thread(target=lambda: results.append(trainer.consume(source)),
                              daemon=True)
    worker.start()
    try:
        covered, ack = OffsetCoverage(), -1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and covered.ranges() != {0: [(0, 96)]}:
            ack, ranges = trainer.drain_committed(ack)
            covered.update(OffsetCoverage(ranges))
            time.sleep(0.05)
        # Three full batches (10 steps between commits), then a quiet stream: all committed.
        assert covered.ranges() == {0: [(0, 96)]}
        assert worker.is_alive() and not results  # still waiting for the stream
    finally:
        release.set()
        worker.join(60)
    assert results and results[0]["examples"] == 96


def test_committed_offsets_come_again_until_the_job_acknowledges_them() -> None:
    from monolith_ray.data.offsets import OffsetCoverage
    from monolith_ray.train.online import StreamTrainer

    trainer = StreamTrainer.__new__(StreamTrainer)  # only its offset accounting
    trainer._lock = threading.Lock()
    trainer._committed, trainer._stepped = OffsetCoverage(), OffsetCoverage()
    trainer._handed, trainer._handed_seq = OffsetCoverage(), 0
    trainer._stepped.add(0, 0, 10)
    trainer._commit()
    lost, ranges = trainer.drain_committed(-1)  # an answer the job timed out on
    assert ranges == {0: [(0, 10)]}
    trainer._stepped.add(0, 10, 20)
    trainer._commit()
    seq, ranges = trainer.drain_committed(-1)  # the first was not acknowledged: it comes again
    assert seq != lost and ranges == {0: [(0, 20)]}
    trainer._stepped.add(1, 0, 5)
    trainer._commit()
    assert trainer.drain_committed(seq)[1] == {1: [(0, 5)]}  # merged: forgotten
