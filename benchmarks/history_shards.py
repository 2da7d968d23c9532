"""History shards (``history.shards``): what one shard of n holds and spends on the stream,
against one history actor holding every user, in the same process on the same examples.

Stream: ``N_EXAMPLES`` (2,000,000) examples of ``N_USERS`` (400,000) users drawn with a
skew (density ~ 1/sqrt(rank)), half positives, in micro-batches of 2,000 (the reader's ``poll_records``),
observed in event-time order; one history slot, ``recent_items`` (``max_len`` 20), examples
in ``PARTITIONS`` (8) partitions. Two ways a shard is fed: with examples keyed by user (the
joiner's default), only the rows of its own partitions (each micro-batch split as the
joiner's keying splits it); with examples keyed by request, every micro-batch, of which it
keeps its own users. All sides run :class:`HistoryServer` with ``follow=False`` (no Kafka:
what is timed is the work after decoding; keyed by request, each shard also decodes the
whole topic, which ``benchmarks.kafka_source`` measures, 114-148k examples/s a core).

The decode (``slot_columns.ExampleDecoder``, what the Kafka reader runs on each micro-batch
of messages) is timed on its own: over the whole stream, and over the slowest shard's
partitions.

Ends with one JSON line: ``examples``, ``users``, ``shards``, ``one_observe_s`` (one actor,
the whole stream), ``shard_observe_s`` (the slowest shard, keyed by user),
``observe_ratio`` (shard over one), ``whole_topic_observe_s`` and ``whole_topic_ratio``
(the same, keyed by request: the filter touches every row), ``decode_s`` (the whole stream)
and ``shard_decode_s`` (the slowest shard's partitions), ``stream_ratio`` (the slowest
shard's decode and observing over one actor's, keyed by user) and
``whole_topic_stream_ratio`` (the same keyed by request: every shard decodes it all),
``one_bytes``, ``shard_bytes`` (the largest shard), ``bytes_ratio``, ``one_read_us`` and
``shard_read_us`` (one read of 64 users, best of ``REPEATS``).
"""

from __future__ import annotations

import json
import os
import time

import msgspec
import numpy as np
import pyarrow as pa
import yaml

from monolith_ray.config import DEFAULT_CONFIG, Config, load_config
from monolith_ray.config.loader import load_yaml
from monolith_ray.data.slot_columns import ExampleDecoder
from monolith_ray.history.server import HistoryServer
from monolith_ray.stream.user_partitions import history_shard_of, user_partition

N_EXAMPLES = int(os.environ.get("N_EXAMPLES", "2000000"))
N_USERS = int(os.environ.get("N_USERS", "400000"))
SHARDS = int(os.environ.get("SHARDS", "4"))
PARTITIONS = int(os.environ.get("PARTITIONS", "8"))  # kafka.partitions of the examples
BATCH = int(os.environ.get("BATCH", "2000"))
REPEATS = int(os.environ.get("REPEATS", "50"))
T0 = 1_700_000_000
encode_json = msgspec.json.Encoder().encode


def config(shards: int) -> Config:
    """The default config plus ``recent_items`` (the last 20 positive item ids)."""
    slots = load_yaml(DEFAULT_CONFIG)["slots"] + [
        {"name": "recent_items", "slot_id": 101, "dim": 16, "max_values": 20}]
    history = {"slots": [{"name": "recent_items", "source": "item_id", "max_len": 20}],
               "max_users": N_USERS, "shards": shards, "checkpoint_every_s": 0}
    return load_config(overrides=[
        f"{key}={yaml.safe_dump(value, default_flow_style=True, width=1 << 20)}"
        for key, value in (("slots", slots), ("history", history))]
        + [f"kafka.partitions={PARTITIONS}"])


def batches(seed: int = 0) -> list[pa.Table]:
    """The stream's micro-batches, in event-time order."""
    rng = np.random.default_rng(seed)
    # skewed: user x drawn with density ~ 1/sqrt(x), the most active with ~0.2% of examples
    users = np.minimum((N_USERS * rng.random(N_EXAMPLES) ** 2).astype(np.int64), N_USERS - 1)
    out = []
    for start in range(0, N_EXAMPLES, BATCH):
        n = min(BATCH, N_EXAMPLES - start)
        out.append(pa.table({
            "time": pa.array(T0 + (start + np.arange(n)) // 100, pa.int64()),
            "label": pa.array((rng.random(n) < 0.5).astype(np.float32)),
            "user_id": pa.array(users[start:start + n].astype(np.int64)),
            "item_id": pa.array(rng.integers(1, 100_000, n), pa.int64())}))
    return out


def feed(server: HistoryServer, stream: list[pa.Table]) -> float:
    start = time.perf_counter()
    for table in stream:
        server.observe(table)
    return time.perf_counter() - start


def own_partitions(stream: list[pa.Table], shard: int) -> list[pa.Table]:
    """What shard ``shard`` reads of ``stream`` keyed by user: the rows of its partitions,
    micro-batch by micro-batch (split before the clock starts)."""
    out = []
    for table in stream:
        partition = user_partition(table.column("user_id").to_numpy(), PARTITIONS)
        out.append(table.filter(pa.array(partition % SHARDS == shard)))
    return out


def messages(table: pa.Table) -> list[bytes]:
    """The micro-batch as the joiner's example messages (JSON)."""
    cols = table.to_pydict()
    return [encode_json({"request_id": f"r{t}-{u}-{i}", "time": t, "user_id": u, "item_id": i,
                         "slots": {"user_id": u, "item_id": i}, "label": lab, "weight": 1.0})
            for t, u, i, lab in zip(cols["time"], cols["user_id"], cols["item_id"],
                                    cols["label"])]


def decode_s(decoder: ExampleDecoder, stream: list[list[bytes]]) -> float:
    """Seconds to decode every micro-batch of messages into columns, as the reader does."""
    now = T0 + N_EXAMPLES
    start = time.perf_counter()
    for raws in stream:
        examples, refused = decoder.decode(raws, now)
        assert not refused, refused[:1]
        decoder.columns(examples)
    return time.perf_counter() - start


def read_us(server: HistoryServer, users: list[int]) -> float:
    at = [T0 + N_EXAMPLES] * len(users)
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        server.read(users, at)
        best = min(best, time.perf_counter() - start)
    return best * 1e6


def main() -> None:
    stream = batches()
    one = HistoryServer(config(1), follow=False)
    one_s = feed(one, stream)
    whole = [HistoryServer(config(SHARDS), follow=False, shard=i) for i in range(SHARDS)]
    whole_s = [feed(s, stream) for s in whole]
    del whole
    shards = [HistoryServer(config(SHARDS), follow=False, shard=i) for i in range(SHARDS)]
    shard_s = [feed(s, own_partitions(stream, i)) for i, s in enumerate(shards)]
    held = [s.stats() for s in shards]
    assert all(h["other_shards"] == 0 for h in held)
    # every user is in exactly one shard, and each shard's answers are the single actor's
    active = np.unique(np.concatenate([t.column("user_id").to_numpy() for t in stream[:50]]))
    sample = active[:64]
    owner = history_shard_of(sample, SHARDS, PARTITIONS)
    expected = one.read(sample.tolist(), [T0 + N_EXAMPLES] * len(sample))["recent_items"]
    for k, s in enumerate(shards):
        mine = sample[owner == k].tolist()
        got = s.read(mine, [T0 + N_EXAMPLES] * len(mine))["recent_items"]
        assert got == [v for v, o in zip(expected, owner) if o == k], "shards disagree"
    assert sum(h["users"]["recent_items"] for h in held) == one.stats()["users"]["recent_items"]
    largest = max(range(SHARDS), key=lambda k: held[k]["bytes"])
    mine = active[history_shard_of(active, SHARDS, PARTITIONS) == largest].tolist()
    # the decode before the observing: the whole topic once, or the slowest shard's share
    cfg = config(SHARDS)
    decoder = ExampleDecoder(cfg.slots, limits=cfg.limits)
    all_s = decode_s(decoder, [messages(t) for t in stream])
    slowest = max(range(SHARDS), key=lambda k: shard_s[k])
    own_s = decode_s(decoder, [messages(t) for t in own_partitions(stream, slowest)])
    print(json.dumps({
        "examples": N_EXAMPLES, "users": N_USERS, "shards": SHARDS,
        "users_held": one.stats()["users"]["recent_items"],
        "one_observe_s": round(one_s, 3), "shard_observe_s": round(max(shard_s), 3),
        "observe_ratio": round(max(shard_s) / one_s, 3),
        "whole_topic_observe_s": round(max(whole_s), 3),
        "whole_topic_ratio": round(max(whole_s) / one_s, 3),
        "decode_s": round(all_s, 3), "shard_decode_s": round(own_s, 3),
        "stream_ratio": round((own_s + shard_s[slowest]) / (all_s + one_s), 3),
        "whole_topic_stream_ratio": round((all_s + max(whole_s)) / (all_s + one_s), 3),
        "one_bytes": one.stats()["bytes"], "shard_bytes": held[largest]["bytes"],
        "bytes_ratio": round(held[largest]["bytes"] / one.stats()["bytes"], 3),
        "one_read_us": round(read_us(one, mine[:64]), 1),  # the same 64 users both ways
        "shard_read_us": round(read_us(shards[largest], mine[:64]), 1)}))


if __name__ == "__main__":
    main()
