"""History shards (``history.shards``): what one shard of n holds and spends on the stream,
against one history actor holding every user, in the same process on the same examples.

Stream: ``N_EXAMPLES`` (2,000,000) examples of ``N_USERS`` (400,000) users drawn with a
Zipf-like skew, half positives, in micro-batches of 2,000 (the reader's ``poll_records``),
observed in event-time order; one history slot, ``recent_items`` (``max_len`` 20). Every
shard is fed every micro-batch, as each reads the whole examples topic, and keeps its own
users. Both sides run :class:`HistoryServer` with ``follow=False`` (no Kafka: what is timed is
the work after decoding; each shard also decodes the whole topic, which
``benchmarks.kafka_source`` measures, 114-148k examples/s a core).

Ends with one JSON line: ``examples``, ``users``, ``shards``, ``one_observe_s`` (one actor,
the whole stream), ``shard_observe_s`` (the slowest shard, the whole stream),
``observe_ratio`` (shard over one: near 1/shards would mean the filter is free; the filter
touches every row), ``one_bytes``, ``shard_bytes`` (the largest shard), ``bytes_ratio``,
``one_read_us`` and ``shard_read_us`` (one read of 64 users, best of ``REPEATS``).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pyarrow as pa
import yaml

from monolith_ray.config import DEFAULT_CONFIG, Config, load_config
from monolith_ray.config.loader import load_yaml
from monolith_ray.history.server import HistoryServer, history_shard_of

N_EXAMPLES = int(os.environ.get("N_EXAMPLES", "2000000"))
N_USERS = int(os.environ.get("N_USERS", "400000"))
SHARDS = int(os.environ.get("SHARDS", "4"))
BATCH = int(os.environ.get("BATCH", "2000"))
REPEATS = int(os.environ.get("REPEATS", "50"))
T0 = 1_700_000_000


def config(shards: int) -> Config:
    """The default config plus ``recent_items`` (the last 20 positive item ids)."""
    slots = load_yaml(DEFAULT_CONFIG)["slots"] + [
        {"name": "recent_items", "slot_id": 101, "dim": 16, "max_values": 20}]
    history = {"slots": [{"name": "recent_items", "source": "item_id", "max_len": 20}],
               "max_users": N_USERS, "shards": shards, "checkpoint_every_s": 0}
    return load_config(overrides=[
        f"{key}={yaml.safe_dump(value, default_flow_style=True, width=1 << 20)}"
        for key, value in (("slots", slots), ("history", history))])


def batches(seed: int = 0) -> list[pa.Table]:
    """The stream's micro-batches, in event-time order."""
    rng = np.random.default_rng(seed)
    users = (rng.zipf(1.2, N_EXAMPLES) - 1) % N_USERS
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
    shards = [HistoryServer(config(SHARDS), follow=False, shard=i) for i in range(SHARDS)]
    shard_s = [feed(s, stream) for s in shards]
    held = [s.stats() for s in shards]
    # every user is in exactly one shard, and each shard's answers are the single actor's
    active = np.unique(np.concatenate([t.column("user_id").to_numpy() for t in stream[:50]]))
    sample = active[:64]
    owner = history_shard_of(sample, SHARDS)
    expected = one.read(sample.tolist(), [T0 + N_EXAMPLES] * len(sample))["recent_items"]
    for k, s in enumerate(shards):
        mine = sample[owner == k].tolist()
        got = s.read(mine, [T0 + N_EXAMPLES] * len(mine))["recent_items"]
        assert got == [v for v, o in zip(expected, owner) if o == k], "shards disagree"
    assert sum(h["users"]["recent_items"] for h in held) == one.stats()["users"]["recent_items"]
    largest = max(range(SHARDS), key=lambda k: held[k]["bytes"])
    mine = [int(u) for u in active if history_shard_of(np.array([u]), SHARDS)[0] == largest]
    print(json.dumps({
        "examples": N_EXAMPLES, "users": N_USERS, "shards": SHARDS,
        "users_held": one.stats()["users"]["recent_items"],
        "one_observe_s": round(one_s, 3), "shard_observe_s": round(max(shard_s), 3),
        "observe_ratio": round(max(shard_s) / one_s, 3),
        "one_bytes": one.stats()["bytes"], "shard_bytes": held[largest]["bytes"],
        "bytes_ratio": round(held[largest]["bytes"] / one.stats()["bytes"], 3),
        "one_read_us": round(read_us(one, active[:64].tolist()), 1),
        "shard_read_us": round(read_us(shards[largest], mine[:64]), 1)}))


if __name__ == "__main__":
    main()
