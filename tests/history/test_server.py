"""The history server in process: examples observed, read strictly before a time, bounds,
and a restart that reads on from its checkpoint on a real broker."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pytest
import yaml

from monolith_ray.config import DEFAULT_CONFIG, Config, load_config
from monolith_ray.config.loader import load_yaml
from monolith_ray.history.checkpoint import checkpoints, write_checkpoint
from monolith_ray.history.server import MAX_READ, HistoryServer
from monolith_ray.messages import encode
from monolith_ray.stream import ensure_topics
from monolith_ray.stream.user_partitions import history_shard_of, user_partition


def history_config(*overrides: str) -> Config:
    """The default config plus ``recent_items`` (the last 5 positive item ids) and
    ``recent_genres`` (their last 5 genres), and ``overrides``."""
    slots = load_yaml(DEFAULT_CONFIG)["slots"] + [
        {"name": "recent_items", "slot_id": 101, "dim": 16, "max_values": 5},
        {"name": "recent_genres", "slot_id": 102, "dim": 16, "max_values": 5}]
    history = {"slots": [{"name": "recent_items", "source": "item_id", "max_len": 5},
                         {"name": "recent_genres", "source": "genres", "max_len": 5}]}
    return load_config(overrides=[
        f"{key}={yaml.safe_dump(value, default_flow_style=True, width=1 << 20)}"
        for key, value in (("slots", slots), ("history", history))] + list(overrides))


def examples(rows: list[tuple[int, float, int, int, list[int]]]) -> pa.Table:
    """A table of (time, label, user_id, item_id, genres) rows."""
    time, label, user, item, genres = zip(*rows)
    return pa.table({"time": pa.array(time, pa.int64()), "label": pa.array(label, pa.float32()),
                     "user_id": pa.array(user, pa.int64()), "item_id": pa.array(item, pa.int64()),
                     "genres": pa.array(genres, pa.list_(pa.int64()))})


def test_a_read_at_t_holds_only_actions_strictly_before_t() -> None:
    server = HistoryServer(history_config(), follow=False)
    t1, t2 = 1_700_000_000, 1_700_000_060
    server.observe(examples([(t1, 1.0, 7, 11, [1, 2]), (t2, 1.0, 7, 22, [3]),
                             (t2 + 1, 1.0, 7, 33, [4]), (t1, 0.0, 7, 44, [5])]))
    at_t2 = server.read([7, 8], [t2, t2])
    assert at_t2 == {"recent_items": [[11], []], "recent_genres": [[2, 1], []]}
    assert server.read([7], [t2 + 1])["recent_items"] == [[22, 11]]
    assert server.read([7], [t1])["recent_items"] == [[]]  # the action at t1 is not yet known
    assert server.stats()["observed"] == 4 and server.stats()["users"]["recent_items"] == 1


def test_shards_hold_their_own_users_and_together_read_as_one_server() -> None:
    """Three shards fed the same examples (each reads the whole topic) keep only their own
    users, refuse reads of others', and together answer every read as one server does."""
    rng = np.random.default_rng(5)
    rows = [(1_700_000_000 + int(t), float(rng.random() < 0.6), int(u), int(rng.integers(1, 50)),
             [int(g) for g in rng.integers(1, 19, size=rng.integers(0, 3))])
            for t, u in zip(rng.integers(0, 5000, 600), rng.integers(0, 40, 600))]
    rows.sort(key=lambda r: r[0])
    table = examples(rows)
    with_nulls = table.set_column(2, "user_id", pa.array(
        [None if i % 7 == 0 else u for i, u in enumerate(table.column("user_id").to_pylist())],
        pa.int64()))
    one = HistoryServer(history_config(), follow=False)
    cfg = history_config("history.shards=3", "kafka.partitions=6")
    shards = [HistoryServer(cfg, follow=False, shard=i) for i in range(3)]
    for batch in (with_nulls.slice(0, 300), with_nulls.slice(300)):
        one.observe(batch)
        for s in shards:
            s.observe(batch)
    users = np.arange(40)
    owner = history_shard_of(users, 3, 6)
    assert len(set(owner.tolist())) == 3  # every shard holds someone
    held = [s.stats() for s in shards]
    assert sum(h["observed"] for h in held) == one.stats()["observed"] == 600 - 600 // 7 - 1
    assert one.stats()["no_user"] == 600 // 7 + 1  # one server counts them apart too
    assert all(h["observed"] + h["other_shards"] + h["no_user"] == 600 for h in held)
    assert all(h["no_user"] == 600 // 7 + 1 for h in held)  # not taken for other shards''
    at = [1_700_003_000] * 40
    expected = one.read(users.tolist(), at)
    for k, s in enumerate(shards):
        mine = users[owner == k].tolist()
        got = s.read(mine, at[:len(mine)])
        assert got == {name: [v for v, o in zip(values, owner) if o == k]
                       for name, values in expected.items()}
        assert s.stats()["users"]["recent_items"] <= len(mine)
        with pytest.raises(ValueError, match="not held by history shard"):
            s.read(users[owner != k][:1].tolist(), at[:1])
    assert any(v for v in expected["recent_items"])
    with pytest.raises(ValueError, match="history.shards"):
        HistoryServer(cfg, follow=False, shard=3)


def test_a_read_is_bounded_and_a_config_without_history_slots_is_refused() -> None:
    server = HistoryServer(history_config(), follow=False)
    with pytest.raises(ValueError, match="more than"):
        server.read([1] * (MAX_READ + 1), [0] * (MAX_READ + 1))
    with pytest.raises(ValueError, match="no history slots"):
        HistoryServer(load_config(), follow=False)


T0 = 1_700_000_000


def _newest_positions(tmp_path, topic: str, owner: str = "first") -> dict[int, int] | None:
    found = next(checkpoints(str(tmp_path / "history"), owner, topic), None)
    return None if found is None else {int(p): o for p, o in found[1]["positions"].items()}


def _example(i: int) -> bytes:
    """Example i: user i % 7, item i, a positive every other one, a second apart."""
    return encode({"request_id": f"r{i}", "time": T0 + i, "label": float(i % 2),
                   "slots": {"user_id": i % 7, "item_id": i, "genres": [i % 5]}})


def _on_broker(kafka_bootstrap: str, topic: str, *overrides: str) -> Config:
    """``history_config`` reading ``topic`` (created here) on the session's broker."""
    cfg = history_config(f"kafka.bootstrap_servers={kafka_bootstrap}",
                         f"kafka.topics.examples={topic}", *overrides)
    ensure_topics(cfg.kafka, [topic])
    return cfg


def _wait(server: HistoryServer, done, what: str, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = server.stats()
        if done(stats):
            return stats
        time.sleep(0.05)
    raise AssertionError(f"{what} within {timeout_s} s: {server.stats()}")


def test_a_restored_server_reads_on_from_its_checkpoint_not_from_the_start(
        kafka_bootstrap, produce, tmp_path) -> None:
    topic = "examples-history-checkpoint"
    cfg = _on_broker(kafka_bootstrap, topic, "history.checkpoint_every_s=0.2",
                     f"data.output_dir={tmp_path}")
    first = produce(cfg.kafka, topic, [_example(i) for i in range(300)],
                    [i % 2 for i in range(300)])
    end = {p: max(o for q, o in first if q == p) + 1 for p in (0, 1)}
    server = HistoryServer(cfg, poll_records=50, owner="first")
    try:
        # a checkpoint written after everything produced so far was observed
        _wait(server, lambda s: s["observed"] == 300, "300 observed")
        _wait(server, lambda s: _newest_positions(tmp_path, topic) == end,
              "a checkpoint of all 300")
    finally:
        server.stop()
    _, header, _ = next(checkpoints(str(tmp_path / "history"), "first", topic))
    assert {int(p): o for p, o in header["positions"].items()} == end
    produce(cfg.kafka, topic, [_example(i) for i in range(300, 400)],
            [i % 2 for i in range(100)])

    # Ray's restart keeps the actor's id, the owner of its checkpoints
    restored = HistoryServer(cfg, poll_records=50, restore=True, owner="first")
    fresh = HistoryServer(cfg, poll_records=50, restore=False, owner="second")
    try:
        # the restored server read only the 100 examples after its checkpoint, the fresh one
        # all 400; both hold the same history
        _wait(fresh, lambda s: s["observed"] == 400, "400 observed from the start")
        stats = _wait(restored, lambda s: s["observed"] >= 100, "100 observed after restoring")
        assert stats["restored"]["positions"] == end
        time.sleep(0.5)  # nothing more arrives
        assert restored.stats()["observed"] == 100
        users, at = list(range(7)), [T0 + 1000] * 7
        assert restored.read(users, at) == fresh.read(users, at)
        assert any(restored.read(users, at)["recent_items"])
    finally:
        restored.stop()
        fresh.stop()



@pytest.mark.parametrize(("key", "written_by"), [
    ("user", "user"), ("request", "request"), ("user", "request"), ("user", "partition 0")])
def test_shards_on_the_broker_read_only_their_partitions_when_examples_are_keyed_by_user(
        kafka_bootstrap, produce, tmp_path, monkeypatch, key, written_by) -> None:
    """Examples in their user's partition (the joiner's default keying): each of two shards
    reads only its own partition. Configured as keyed by request, each reads both and keeps
    its users. Configured as keyed by user but written otherwise (by request, as an older
    joiner; all to partition 0, as a producer of its own), a shard finds other shards' users
    in its partition, reads every partition from then on and tells the other shard to, once
    (not again on a timer): no user's history is lost, and a restart stays so."""
    import monolith_ray.history.server as server_module

    monkeypatch.setattr(server_module, "EVICT_EVERY_S", 0.05)  # a timer would tell again
    topic = f"examples-history-shards-{key}-{written_by.replace(' ', '')}"
    cfg = _on_broker(kafka_bootstrap, topic, "kafka.partitions=2", "history.shards=2",
                     "history.checkpoint_every_s=0.1", f"data.output_dir={tmp_path}",
                     f"joiner.examples_key={key}")
    users = np.arange(100) % 7
    owner = history_shard_of(users, 2, 2)
    assert (owner == user_partition(users, 2)).all() and set(owner.tolist()) == {0, 1}
    partition = {"user": owner, "request": np.arange(100) % 2,
                 "partition 0": np.zeros(100, dtype=np.int64)}[written_by]
    produce(cfg.kafka, topic, [_example(i) for i in range(100)], partition.tolist())
    shards = [HistoryServer(cfg, poll_records=50, shard=k, owner=f"s{k}", group="g")
              for k in range(2)]
    tells = [0, 0]

    def teller(k: int):
        def tell() -> None:
            tells[k] += 1
            shards[1 - k].widen()
        return tell

    for k in range(2):  # in process, as start_history_shards' named actors tell each other
        shards[k].tell_siblings = teller(k)
    everything = key == "request" or written_by != "user"

    def check(shard: HistoryServer, k: int, restored: bool = False) -> None:
        own = 0 if restored else int((owner == k).sum())  # a restored one: all held before
        _wait(shard, lambda s: s["observed"] == own and (
            not everything or set(s.get("positions", ())) == {0, 1}), f"shard {k} read")
        time.sleep(0.3)
        stats = shard.stats()
        assert stats["observed"] == own
        if everything:
            assert stats["reading"] == "all partitions"
            assert set(stats["positions"]) == {0, 1}
        else:
            assert stats["reading"] == "own partitions" and set(stats["positions"]) == {k}
            assert stats["other_shards"] == 0
        mine = sorted(set(users[owner == k].tolist()))
        got = shard.read(mine, [T0 + 1000] * len(mine))["recent_items"]
        assert got == [[i for i in range(99, -1, -1) if i % 7 == u and i % 2][:5]
                       for u in mine]

    try:
        for k, shard in enumerate(shards):
            check(shard, k)
        if written_by == "partition 0":  # shard 1 saw no stray: shard 0 told it
            assert shards[1].stats()["other_shards"] == shards[0].stats()["observed"]
            _wait(shards[1], lambda s: s["checkpoints"] >= 1, "a checkpoint")
        time.sleep(0.5)  # ten eviction ticks
        if written_by == "partition 0":
            assert tells == [1, 0]
        elif key == "user" and written_by == "request":  # one told may widen before it finds
            assert max(tells) == 1
        else:
            assert tells == [0, 0]
    finally:
        for shard in shards:
            shard.stop()
    if written_by == "partition 0":  # restarted, it reads every partition at once
        restored = HistoryServer(cfg, poll_records=50, shard=1, owner="s1", restore=True)
        try:
            check(restored, 1, restored=True)
            assert restored.stats()["restored"]["positions"] == {0: 100, 1: 0}
        finally:
            restored.stop()


def test_shard_actors_tell_each_other_to_read_every_partition(
        ray_session, kafka_bootstrap, produce) -> None:
    """``start_history_shards``' named actors: every example in partition 0, so only shard
    0 sees strays; it tells shard 1 through Ray, which then finds its users there. Shard 1,
    killed and restarted by Ray with no checkpoint, asks shard 0 and reads every partition
    again at once (shard 0 does not tell it again)."""
    import os
    import signal

    import ray

    from monolith_ray.history.server import start_history_shards

    topic = "examples-history-shard-actors"
    cfg = _on_broker(kafka_bootstrap, topic, "kafka.partitions=2", "history.shards=2",
                     "history.checkpoint_every_s=0")
    users = np.arange(100) % 7
    owner = history_shard_of(users, 2, 2)
    produce(cfg.kafka, topic, [_example(i) for i in range(100)], [0] * 100)
    actors = start_history_shards(cfg)
    try:
        deadline = time.monotonic() + 60
        while True:
            stats = ray.get([a.stats.remote() for a in actors], timeout=30)
            if all(s["observed"] == int((owner == k).sum()) for k, s in enumerate(stats)):
                break
            assert time.monotonic() < deadline, stats
            time.sleep(0.2)
        assert [s["reading"] for s in stats] == ["all partitions"] * 2
        assert stats[0]["other_shards"] > 0
        mine = sorted(set(users[owner == 1].tolist()))
        got = ray.get(actors[1].read.remote(mine, [T0 + 1000] * len(mine)))["recent_items"]
        assert all(got)
        os.kill(ray.get(actors[1].__ray_call__.remote(lambda _: os.getpid())), signal.SIGKILL)
        deadline = time.monotonic() + 30  # less than a minute: no timer tells it again
        while True:
            stats = ray.get(actors[1].stats.remote(), timeout=30)  # retried once restarted
            if stats["observed"] == int((owner == 1).sum()):
                break
            assert time.monotonic() < deadline, stats
            time.sleep(0.2)
        assert stats["reading"] == "all partitions" and stats["other_shards"] > 0
        got = ray.get(actors[1].read.remote(mine, [T0 + 1000] * len(mine)))["recent_items"]
        assert all(got)
    finally:
        for actor in actors:
            ray.kill(actor)


def test_reading_goes_on_while_a_checkpoint_is_written(kafka_bootstrap, produce, tmp_path,
                                                        monkeypatch) -> None:
    """A slow write (remote storage) holds off neither the reading nor reads; checkpoints due
    meanwhile are skipped, not queued, and the write lands once storage answers."""
    import threading

    import monolith_ray.history.server as server_module

    entered, release = threading.Event(), threading.Event()
    real = server_module.write_checkpoint

    def slow_write(*args, **kwargs):
        entered.set()
        assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(server_module, "write_checkpoint", slow_write)
    topic = "examples-history-slow-checkpoint"
    cfg = _on_broker(kafka_bootstrap, topic, "history.checkpoint_every_s=0.1",
                     f"data.output_dir={tmp_path}")
    produce(cfg.kafka, topic, [_example(i) for i in range(100)], [i % 2 for i in range(100)])
    server = HistoryServer(cfg, poll_records=50, owner="slow")
    try:
        _wait(server, lambda s: s["observed"] == 100, "100 observed")
        assert entered.wait(30)  # a checkpoint is being written, and stays so
        produce(cfg.kafka, topic, [_example(i) for i in range(100, 200)],
                [i % 2 for i in range(100)])
        stats = _wait(server, lambda s: s["observed"] == 200 and s["checkpoints_busy"] > 0,
                      "read on during the write")
        assert stats["checkpoints"] == 0 and _newest_positions(tmp_path, topic, "slow") is None
        assert server.read([5], [T0 + 1000])["recent_items"] == [
            [i for i in range(199, -1, -1) if i % 7 == 5 and i % 2][:5]]  # the newest 100 too
        release.set()
        _wait(server, lambda s: s["checkpoints"] >= 1, "the write landed")
        assert _newest_positions(tmp_path, topic, "slow") is not None
    finally:
        release.set()
        server.stop()


def test_an_actor_ray_restarts_reads_on_from_its_checkpoint(
        ray_session, kafka_bootstrap, produce, tmp_path) -> None:
    import os
    import signal

    import ray

    from monolith_ray.history.server import start_history_shards

    topic = "examples-history-restart"
    cfg = _on_broker(kafka_bootstrap, topic, "history.checkpoint_every_s=0.2",
                     f"data.output_dir={tmp_path}")
    produce(cfg.kafka, topic, [_example(i) for i in range(200)], [i % 2 for i in range(200)])
    [actor] = start_history_shards(cfg)
    try:
        def stats() -> dict:
            return ray.get(actor.stats.remote(), timeout=30)

        deadline = time.monotonic() + 60
        while stats()["observed"] < 200:
            assert time.monotonic() < deadline, stats()
            time.sleep(0.1)
        owner = stats()["owner"]
        while sum((_newest_positions(tmp_path, topic, owner) or {}).values()) < 200:
            assert time.monotonic() < deadline, stats()  # a checkpoint of all 200
            time.sleep(0.1)
        before = ray.get(actor.read.remote(list(range(7)), [T0 + 1000] * 7))
        assert stats()["restored"] is None
        os.kill(ray.get(actor.__ray_call__.remote(lambda _: os.getpid())), signal.SIGKILL)
        after = stats()  # retried on the process Ray starts again
        assert after["restored"] is not None and after["owner"] == owner
        assert sum(after["restored"]["positions"].values()) == 200
        produce(cfg.kafka, topic, [_example(i) for i in range(200, 250)],
                [i % 2 for i in range(50)])
        deadline = time.monotonic() + 60
        while stats()["observed"] < 50:
            assert time.monotonic() < deadline, stats()
            time.sleep(0.1)
        time.sleep(0.5)
        assert stats()["observed"] == 50  # only what came after the checkpoint
        now = ray.get(actor.read.remote(list(range(7)), [T0 + 1000] * 7))
        assert now != before and all(len(v) == 5 for v in now["recent_items"])
    finally:
        ray.kill(actor)


def test_a_checkpoint_that_does_not_load_or_fits_other_slots_is_skipped(tmp_path) -> None:
    cfg = history_config("history.checkpoint_every_s=60", f"data.output_dir={tmp_path}")
    root, topic = str(tmp_path / "history"), cfg.kafka.topics.examples
    source = HistoryServer(cfg, follow=False, owner="x")
    source.observe(examples([(T0, 1.0, 7, 11, [1])]))
    frames = {name: store.to_bytes() for name, store in source.history.stores.items()}
    built = source._built_with
    write_checkpoint(root, "x", topic, {0: 1}, frames, config=built)  # the good one
    write_checkpoint(root, "x", topic, {0: 2}, {n: b"junk" for n in frames}, config=built,
                     keep=3)
    write_checkpoint(root, "x", topic, {0: 3}, frames, config={**built, "user_slot": "other"},
                     keep=3)
    restored = HistoryServer(cfg, follow=False, restore=True, owner="x")
    assert restored.stats()["restored"]["positions"] == {0: 1}
    assert restored.read([7], [T0 + 1]) == {"recent_items": [[11]], "recent_genres": [[1]]}
    # another owner's checkpoints are not this server's: it starts empty
    other = HistoryServer(cfg, follow=False, restore=True, owner="y")
    assert other.stats()["restored"] is None
    assert other.read([7], [T0 + 1]) == {"recent_items": [[]], "recent_genres": [[]]}


def test_string_item_ids_in_the_history_are_the_pools_value_ids() -> None:
    """``serve.exclude_seen`` compares a pool's item ids (``schemas.value_ids``) with the raw
    ids a history slot holds, as the examples reader decodes them: string ids, decimal
    strings and ints agree, so a seen string item is left out like an int one."""
    from monolith_ray.data.slot_columns import ExampleDecoder
    from monolith_ray.schemas import value_ids

    cfg = history_config()
    items = ["video-a", "25", 25, "Ünïcode", "007", 2 ** 62]
    raws = [encode({"request_id": f"r{i}", "time": T0 + i, "label": 1.0,
                    "slots": {"user_id": 3, "item_id": item, "genres": [1]}})
            for i, item in enumerate(items)]
    decoder = ExampleDecoder(cfg.slots, limits=cfg.limits)
    decoded, refused = decoder.decode(raws, now=float(T0 + 10))
    assert not refused
    columns = decoder.columns(decoded)
    table = pa.table({"time": pa.array([T0 + i for i in range(len(items))], pa.int64()),
                      "label": pa.array([1.0] * len(items), pa.float32()),
                      "user_id": pa.array(columns["user_id"]),
                      "item_id": pa.array(columns["item_id"]),
                      "genres": pa.array(columns["genres"])})
    server = HistoryServer(cfg, follow=False)
    server.observe(table)
    seen = server.read([3], [T0 + 100])["recent_items"][0]  # newest first, at most 5
    assert seen == value_ids(items[:0:-1]).tolist()  # "video-a", the oldest, fell out
    pool = ["video-a", "video-b", 25, "Ünïcode", "007", "7", 2 ** 62]
    left_out = np.isin(value_ids(pool), np.asarray(seen, np.int64))
    # "7" is "007" (a decimal string is its number, as the tables read ids)
    assert left_out.tolist() == [False, False, True, True, True, True, True]


def test_siblings_are_told_and_asked_through_ray_in_bounded_rounds(
        ray_session, monkeypatch, caplog) -> None:
    """Shard 0 (in this process) and shard 1 (a named actor) of three; shard 2 has no actor
    yet. Asking finds no sibling reading every partition and gives shard 2 up after
    ``SIBLINGS_ROUNDS`` rounds; telling widens shard 1; shard 2, started since and asking,
    widens from shard 1's answer."""
    import logging
    import uuid

    import ray

    import monolith_ray.history.server as server_module
    from monolith_ray.history.server import HistoryActor, history_actor_name

    monkeypatch.setattr(server_module, "SIBLINGS_AGAIN_S", 0.05)
    cfg = history_config("history.shards=3", "kafka.partitions=3")
    group = uuid.uuid4().hex[:12]

    def start(k: int):
        return HistoryActor.options(name=history_actor_name(group, k), num_cpus=0).remote(
            cfg, follow=False, shard=k, group=group)

    actors = [start(1)]
    here = HistoryServer(cfg, follow=False, shard=0, group=group)
    try:
        with caplog.at_level(logging.ERROR, logger=server_module.__name__):
            here.ask_siblings()
        assert not here.reads_every_partition()
        assert "sibling shards [2] did not answer reads_every_partition in 5 rounds" in \
            caplog.text
        here.tell_siblings()
        assert ray.get(actors[0].reads_every_partition.remote(), timeout=30)
        actors.append(start(2))
        ray.get(actors[1].ask_siblings.remote(), timeout=30)  # shard 1 says yes at once
        assert ray.get(actors[1].reads_every_partition.remote(), timeout=30)
    finally:
        for actor in actors:
            ray.kill(actor)


def test_serving_checks_its_history_actors_against_its_config(ray_session) -> None:
    """``check_history`` (``build_app`` runs it): actors of another shard count, order,
    partition count, user slot or slots fail at start naming the key."""
    import dataclasses

    import ray

    from monolith_ray.config import ConfigError
    from monolith_ray.history.server import check_history, start_history_shards

    cfg = history_config("history.shards=2", "kafka.partitions=4")
    actors = start_history_shards(cfg)
    try:
        check_history(cfg, actors)
        with pytest.raises(ConfigError, match=r"^history.shards: history actor 0 holds shard 1"):
            check_history(cfg, actors[::-1])
        with pytest.raises(ConfigError, match=r"^history.shards: 3 in this config, 2"):
            check_history(history_config("history.shards=3", "kafka.partitions=4"), actors)
        with pytest.raises(ConfigError, match=r"^kafka.partitions: history actor 0 routes"):
            check_history(history_config("history.shards=2", "kafka.partitions=6"), actors)
        other = dataclasses.replace(cfg, history=dataclasses.replace(
            cfg.history, slots=cfg.history.slots[:1]))
        with pytest.raises(ConfigError, match=r"^history.slots: history actor 0 holds slots"):
            check_history(other, actors)
    finally:
        for actor in actors:
            ray.kill(actor)
