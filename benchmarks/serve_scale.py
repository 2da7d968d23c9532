"""Serving at scale: a replica with a bounded row cache over serving shards against a
replica holding the whole table, on the same tens of millions of ids and the same traffic.

Setup: ``ray.init(num_cpus=2, object_store_memory=OBJECT_STORE_MB)``, 2 training shard actors
and a dense server with the default MovieLens config, filled with ``IDS`` ids (half users,
half items: ``user_id`` and ``item_id`` rows, dim 16, initialized by the slots'
initializers). One recommender replica (``serve.replica_cpus=0``, ``min_replicas =
max_replicas = 1``), ``serve.log_features=false`` (no Kafka on either side), float16 rows,
``serve.sparse_sync_interval_s = SPARSE_INTERVAL_S``, ``serve.poll_interval_s = 0.5``.

Traffic: ``REQUESTS_POOL`` ``/recommend`` bodies made up front (seeded): a user drawn from a
Zipf law of exponent ``ZIPF_S`` over the users and ``CANDIDATES`` candidate item ids drawn
from the same law over the items (ranks shuffled to ids), ``k`` = 10. ``CLIENTS`` aiohttp
clients in one asyncio loop send them back to back for ``DURATION_S`` after ``WARM_S`` of
warm-up; a request fails on any status but 200 or an exception.

While the clients run, a trainer thread pushes gradients for 2,048 Zipf-drawn users and
items every 0.5 s (so every sparse sync carries the hot rows a cache holds), and a probe
trains a never-seen item and polls ``/predict`` every 50 ms until its score moves:
``freshness_s`` is the longest such delay in the sharded run.

1. Sharded (``serve.store=sharded``): 2 serving shards (one per training shard, filled by the
   sync's first read), the replica's cache ``cache_rows`` = 1% of ``IDS``, W-TinyLFU.
2. Whole table (``serve.store=replica``): the sync actor and the replica each hold every row.
The same process, bodies, clients, trainer and probe on both sides, one after the other
(sharded first; the serving shards and their sync are stopped before the second side
starts). ``replica_store_mb``: the parameter storage the replica holds (``/healthz``
``store_bytes``: the cache's arrays, or the whole store); ``replica_rss_mb``: the replica
process's resident set (``/healthz`` ``rss_bytes``, which includes JAX and Serve, the same on
both sides). ``hit_rate``: cache hits over lookups during the sharded measurement.

Targets: ``failed == 0``, ``replica_store_mb <= 0.05 * replica_store_mb_whole_table``,
``replica_rss_mb <= 0.5 * replica_rss_mb_whole_table``, ``qps_vs_whole_table >= 0.7``,
``freshness_s <= sparse_interval_s + 5``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import sys
import threading
import time
from typing import Any

import aiohttp
import numpy as np
import ray
import requests
from ray import serve

from monolith_ray.config import load_config
from monolith_ray.features import make_fids
from monolith_ray.ps.client import ShardClient
from monolith_ray.serve.app import build_app
from monolith_ray.serve.serving_shard import start_serving_shards
from monolith_ray.serve.sync import start_parameter_sync
from monolith_ray.train.job import start_servers

IDS = int(float(os.environ.get("IDS", 20e6)))
DURATION_S = float(os.environ.get("DURATION_S", 40))
WARM_S = float(os.environ.get("WARM_S", 15))
CLIENTS = 8
CANDIDATES = 100
REQUESTS_POOL = 20_000
ZIPF_S = 1.05
SPARSE_INTERVAL_S = 3.0
OBJECT_STORE_MB = int(os.environ.get("OBJECT_STORE_MB", 3072))
FILL_CHUNK = 1 << 20


class Zipf:
    """Draws from a Zipf law of exponent ``s`` over ranks 1..n, each rank mapped to an id in
    [0, n) by a seeded shuffle (the same mapping for every draw)."""

    def __init__(self, n: int, s: float = ZIPF_S) -> None:
        cdf = np.cumsum(np.arange(1, n + 1, dtype=np.float64) ** -s)
        self.cdf = cdf / cdf[-1]
        self.ids = np.random.default_rng(1).permutation(n).astype(np.int64)

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """int64 (size,) ids."""
        ranks = np.minimum(np.searchsorted(self.cdf, rng.random(size)), self.ids.size - 1)
        return self.ids[ranks]


def bodies(users: Zipf, items: Zipf) -> list[bytes]:
    """The ``/recommend`` bodies both sides are sent, in order."""
    rng = np.random.default_rng(0)
    who = users.draw(rng, REQUESTS_POOL)
    what = items.draw(rng, REQUESTS_POOL * CANDIDATES).reshape(REQUESTS_POOL, -1)
    return [json.dumps({"user": {"id": int(u)}, "candidates": row.tolist(), "k": 10}).encode()
            for u, row in zip(who, what)]


async def _load(url: str, payloads: list[bytes], duration_s: float) -> dict[str, Any]:
    """``CLIENTS`` loops POSTing ``payloads`` (client c from c * len / CLIENTS on) for
    ``duration_s`` -> latencies (ms), failures, wall seconds."""
    latencies: list[float] = []
    failed = 0
    end = time.perf_counter() + duration_s

    async def client(session: aiohttp.ClientSession, c: int) -> None:
        nonlocal failed
        i = c * len(payloads) // CLIENTS
        while time.perf_counter() < end:
            start = time.perf_counter()
            try:
                async with session.post(url, data=payloads[i % len(payloads)],
                                        headers={"content-type": "application/json"}) as r:
                    await r.read()
                    ok = r.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                ok = False
            latencies.append((time.perf_counter() - start) * 1e3)
            failed += not ok
            i += 1

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CLIENTS),
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.gather(*(client(session, c) for c in range(CLIENTS)))
    lat = np.array(latencies)
    seconds = time.perf_counter() - started
    return {"requests": int(lat.size), "failed": failed, "qps": lat.size / seconds,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


class Trainer(threading.Thread):
    """Pushes small gradients to 2,048 Zipf-drawn users and items every 0.5 s."""

    def __init__(self, client: ShardClient, cfg: Any, users: Zipf, items: Zipf) -> None:
        super().__init__(daemon=True)
        self.client, self.cfg = client, cfg
        self.laws = {"user_id": users, "item_id": items}
        self.stop = threading.Event()

    def run(self) -> None:
        rng = np.random.default_rng(2)
        while not self.stop.wait(0.5):
            fids = {name: np.unique(make_fids(self.cfg.slot(name).slot_id, law.draw(rng, 2048)))
                    for name, law in self.laws.items()}
            grads = {name: rng.normal(0, 0.01, (f.size, self.cfg.slot(name).dim + 1))
                     .astype(np.float32) for name, f in fids.items()}
            self.client.push(fids, grads, time.time())


class Probe(threading.Thread):
    """Trains a never-seen item, then polls ``/predict`` until its score moves."""

    def __init__(self, url: str, client: ShardClient, cfg: Any, first_item: int) -> None:
        super().__init__(daemon=True)
        self.url, self.client, self.cfg = url, client, cfg
        self.item = first_item
        self.stop = threading.Event()
        self.delays: list[float] = []

    def _score(self, item: int) -> float:
        r = requests.post(self.url + "/predict", timeout=30,
                          json={"pairs": [{"user": {"id": 1}, "item": item}]})
        r.raise_for_status()
        return r.json()["scores"][0]

    def run(self) -> None:
        slot = self.cfg.slot("item_id")
        while not self.stop.is_set():
            self.item += 1
            default = self._score(self.item)
            fids = make_fids(slot.slot_id, np.array([self.item], dtype=np.int64))
            self.client.pull({"item_id": fids}, time.time())
            trained = time.perf_counter()
            self.client.push({"item_id": fids},
                             {"item_id": np.full((1, slot.dim + 1), -30.0, np.float32)},
                             time.time())
            while not self.stop.is_set() and abs(self._score(self.item) - default) < 1e-6:
                time.sleep(0.05)
            if not self.stop.is_set():
                self.delays.append(time.perf_counter() - trained)
            self.stop.wait(0.5)


def fill(client: ShardClient, cfg: Any, n_users: int, n_items: int) -> None:
    """Insert every user and item id into the training shards, a chunk at a time."""
    for name, n in (("user_id", n_users), ("item_id", n_items)):
        slot_id = cfg.slot(name).slot_id
        for start in range(0, n, FILL_CHUNK):
            values = np.arange(start, min(start + FILL_CHUNK, n), dtype=np.int64)
            client.pull({name: make_fids(slot_id, values)}, time.time())


def measure(cfg: Any, url: str, payloads: list[bytes], client: ShardClient, shards: list[Any],
            dense: Any, users: Zipf, items: Zipf, probe_from: int) -> dict[str, Any]:
    """Deploy one side, load it, take its figures, take it down."""
    serving = start_serving_shards(cfg) if cfg.serve.store == "sharded" else []
    sync = start_parameter_sync(cfg.slots, shards, dense, cfg.serve, serving=serving,
                                call_timeout_s=600.0)
    ray.get(sync.versions.remote())  # its first (whole) read is done
    loaded_at = time.perf_counter()
    serve.run(build_app(cfg, sync, None, serving), name="scale", route_prefix="/")
    ready_s = time.perf_counter() - loaded_at
    asyncio.run(_load(url + "/recommend", payloads, WARM_S))
    trainer = Trainer(client, cfg, users, items)
    probe = Probe(url, client, cfg, probe_from)
    trainer.start()
    probe.start()
    before = requests.get(url + "/healthz", timeout=30).json()
    syncs_before = ray.get(sync.status.remote())["sparse_syncs"]
    load = asyncio.run(_load(url + "/recommend", payloads, DURATION_S))
    after = requests.get(url + "/healthz", timeout=30).json()
    status = ray.get(sync.status.remote())
    for thread in (trainer, probe):
        thread.stop.set()
        thread.join()
    out = {**load, "store_mb": after["store_bytes"] / 2**20, "rss_mb": after["rss_bytes"] / 2**20,
           "freshness_s": max(probe.delays) if probe.delays else float("inf"),
           "probes": len(probe.delays), "sparse_syncs": status["sparse_syncs"] - syncs_before,
           "sync_bytes_mb": status["bytes"] / 2**20, "ready_s": ready_s}
    if serving:
        shard_stats = ray.get([s.stats.remote() for s in serving])
        out["ids"] = sum(sum(s["rows"].values()) for s in shard_stats)
        out["serving_shard_mb"] = [round(s["bytes"] / 2**20, 1) for s in shard_stats]
        c0, c1 = before["cache"], after["cache"]
        asked = (c1["hits"] - c0["hits"]) + (c1["misses"] - c0["misses"])
        out["hit_rate"] = (c1["hits"] - c0["hits"]) / asked if asked else 0.0
        out["cache_rows_held"] = c1["rows"]
        out["default_rows"] = c1["default_rows"] - c0["default_rows"]
        out["shard_timeouts"] = c1["shard_timeouts"] - c0["shard_timeouts"]
    else:
        out["ids"] = sum(after["rows"].values())
    serve.delete("scale")
    for actor in (sync, *serving):
        ray.kill(actor)
    return out


def main() -> dict[str, Any]:
    ray.init(address="local", num_cpus=2, object_store_memory=OBJECT_STORE_MB * 2**20,
             include_dashboard=False, log_to_driver=False)
    n_users, n_items = IDS // 2, IDS - IDS // 2
    cache_rows = max(1, IDS // 100)
    base = [f"serve.sparse_sync_interval_s={SPARSE_INTERVAL_S}", "serve.poll_interval_s=0.5",
            "serve.replica_cpus=0", "serve.autoscaling.min_replicas=1",
            "serve.autoscaling.max_replicas=1", f"serve.max_candidates={CANDIDATES}",
            "serve.log_features=false", "train.shard_cpus=0", "train.n_shards=2",
            f"serve.cache_rows={cache_rows}", "serve.store_dtype=float16"]
    cfg = load_config(overrides=base)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    shards, dense = start_servers(cfg)
    client = ShardClient(shards, [s.name for s in cfg.slots])
    t0 = time.perf_counter()
    fill(client, cfg, n_users, n_items)
    fill_s = time.perf_counter() - t0
    users, items = Zipf(n_users), Zipf(n_items)
    payloads = bodies(users, items)
    sharded = measure(dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve,
                                                                         store="sharded")),
                      url, payloads, client, shards, dense, users, items, n_items + 10)
    whole = measure(cfg, url, payloads, client, shards, dense, users, items,
                    n_items + 1_000_000)
    serve.shutdown()
    ray.shutdown()
    return {
        "ids": sharded["ids"], "serving_shards": cfg.train.n_shards, "cache_rows": cache_rows,
        "hit_rate": sharded["hit_rate"], "replica_store_mb": sharded["store_mb"],
        "replica_store_mb_whole_table": whole["store_mb"],
        "replica_rss_mb": sharded["rss_mb"], "replica_rss_mb_whole_table": whole["rss_mb"],
        "p50_ms": sharded["p50_ms"], "p99_ms": sharded["p99_ms"],
        "p99_ms_whole_table": whole["p99_ms"], "qps_vs_whole_table": sharded["qps"] / whole["qps"],
        "requests": sharded["requests"], "failed": sharded["failed"],
        "freshness_s": sharded["freshness_s"], "sparse_interval_s": SPARSE_INTERVAL_S,
        # more
        "qps": sharded["qps"], "qps_whole_table": whole["qps"],
        "p50_ms_whole_table": whole["p50_ms"], "requests_whole_table": whole["requests"],
        "failed_whole_table": whole["failed"], "freshness_s_whole_table": whole["freshness_s"],
        "ids_whole_table": whole["ids"], "freshness_probes": sharded["probes"],
        "sparse_syncs": sharded["sparse_syncs"], "sparse_syncs_whole_table": whole["sparse_syncs"],
        "sync_mb": sharded["sync_bytes_mb"], "sync_mb_whole_table": whole["sync_bytes_mb"],
        "serving_shard_mb": sharded["serving_shard_mb"],
        "cache_rows_held": sharded["cache_rows_held"], "default_rows": sharded["default_rows"],
        "shard_timeouts": sharded["shard_timeouts"],
        "replica_ready_s": sharded["ready_s"], "replica_ready_s_whole_table": whole["ready_s"],
        "fill_s": fill_s, "zipf_s": ZIPF_S, "candidates_per_request": CANDIDATES,
        "clients": CLIENTS, "duration_s": DURATION_S,
    }


if __name__ == "__main__":
    out = main()
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}),
          file=sys.stdout)
