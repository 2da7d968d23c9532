"""Serving under load while parameters move: HTTP clients against ``/recommend`` while the
``ParameterSync`` actor runs sparse syncs every few seconds and swaps the dense weights.

Setup: ``ray.init(num_cpus=2, object_store_memory=300 MB)``, the embedded Kafka broker (every
served impression is logged to the ``features`` topic, as in production), 2 shard actors and
a dense server with the default MovieLens config, one recommender replica
(``serve.replica_cpus=0``, ``min_replicas = max_replicas = 1``) whose candidate pool is
``POOL`` items with MovieLens-style item slots; each request draws ``serve.pool_draw = 100``
of them, scores all 100 and returns the top 10. ``serve.sparse_sync_interval_s =
SPARSE_INTERVAL_S``, ``serve.dense_sync_interval_s = DENSE_INTERVAL_S``,
``serve.poll_interval_s = 0.5``.

While the clients run, a trainer thread in this process pushes gradients for 256 random user
and item ids to the shard actors every 0.5 s and a dense gradient every second (so every
sparse sync carries rows and every dense sync is a swap), and a probe thread measures
freshness: it trains a never-seen item id, then polls ``/predict`` for it every 50 ms until
the served score leaves the default embedding's; ``freshness_s`` is the longest such delay.

Load: ``CLIENTS`` concurrent aiohttp clients in one asyncio loop, each sending requests back
to back; a request fails on any status but 200 or an exception. Two Serve applications run
side by side on the same proxy for the whole measurement: the recommender at ``/`` and a
no-op deployment at ``/noop`` (a FastAPI ingress returning a constant answer of the same
shape, ``max_ongoing_requests`` 64 as the recommender's default, no CPUs reserved, like the
replica). Once the shards, the dense server, the sync actor, the replica, the trainer and
the probe all run, the clients call the no-op's ``/recommend`` for ``DURATION_S / 2``, then
the recommender's for ``DURATION_S``, then the no-op's again for ``DURATION_S / 2`` (so both
sides get ``DURATION_S`` and neither is favoured by a drift in the machine's other load); the
no-op figures pool its two halves. ``qps_vs_noop`` = ``qps / noop_qps``: the share of the serving
stack's own capacity that recommending keeps.

Equal on both sides: the machine, Ray, the proxy, the client count, library and total time,
the request bodies, and the background work (the shard actors and dense server taking the
trainer's pushes, the sync actor's sparse syncs and dense swaps, the replica's polls and
swaps, the probe's ``/predict`` calls to the recommender). Different, which is what the ratio
measures: the no-op parses the body into a dict but checks no field, draws and scores no
candidates, signs no feedback tokens (its request id and tokens are constants of the same
length) and logs nothing to Kafka. The sync counts, ``freshness_s`` (probes ending in it)
and the figures without ``noop_`` are those of the recommender's ``DURATION_S``.

Targets: ``failed == 0``, ``sparse_syncs >= 5``, ``dense_swaps >= 2``, ``qps_vs_noop >= 0.5``,
``freshness_s <= sparse_interval_s + 5``. Client, proxy, replica, actors and trainer share
the machine's cores, so absolute QPS is low on a 2-core box; the ratio is what to read.
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
import jax
import numpy as np
import ray
import requests
from fastapi import FastAPI
from ray import serve

from monolith_ray.config import load_config
from monolith_ray.features import make_fids
from monolith_ray.ps.client import ShardClient
from monolith_ray.serve.app import CandidatePool, build_app
from monolith_ray.serve.sync import start_parameter_sync
from monolith_ray.serve.tokens import TOKEN_HEX
from monolith_ray.stream import kafka_session
from monolith_ray.train.job import start_servers

DURATION_S = float(os.environ.get("DURATION_S", 40))
CLIENTS = 8
POOL = 2000
SPARSE_INTERVAL_S = 3.0
DENSE_INTERVAL_S = 8.0
GENRES = ("Action", "Comedy", "Drama", "Romance", "Thriller", "War")
USER = {"id": 1, "features": {"gender": "F", "age": 25, "occupation": "writer",
                              "zip_prefix": "941"}}

noop_api = FastAPI()


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
@serve.ingress(noop_api)
class NoOp:
    """The same route and answer shape (request id, items with tokens, versions) as the
    recommender, computing nothing."""

    @noop_api.post("/recommend")
    def recommend(self, body: dict) -> dict:
        return {"request_id": "0" * 32, "model_version": {"dense": 0, "sparse": 0},
                "items": [{"item_id": i, "score": 0.5, "token": "0" * TOKEN_HEX}
                          for i in range(10)]}


async def _load(url: str, duration_s: float, clients: int) -> dict[str, Any]:
    """``clients`` loops POSTing to ``url`` for ``duration_s`` -> latencies (ms), failures and
    wall seconds (see :func:`_summary`)."""
    latencies: list[float] = []
    failed = 0
    body = json.dumps({"user": USER, "k": 10}).encode()
    end = time.perf_counter() + duration_s

    async def client(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal failed
        user = dict(USER, id=n)
        payload = json.dumps({"user": user, "k": 10}).encode() if n else body
        while time.perf_counter() < end:
            start = time.perf_counter()
            try:
                async with session.post(url, data=payload,
                                        headers={"content-type": "application/json"}) as r:
                    await r.read()
                    ok = r.status == 200
            except aiohttp.ClientError:
                ok = False
            latencies.append((time.perf_counter() - start) * 1e3)
            failed += not ok

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.gather(*(client(session, n) for n in range(clients)))
    return {"latencies": latencies, "failed": failed, "seconds": time.perf_counter() - started}


def _summary(*loads: dict[str, Any]) -> dict[str, Any]:
    """One or more :func:`_load` results pooled -> requests, failed, QPS and p50/p99 (ms)."""
    lat = np.array([x for load in loads for x in load["latencies"]])
    seconds = sum(load["seconds"] for load in loads)
    return {"requests": int(lat.size), "failed": sum(load["failed"] for load in loads),
            "qps": lat.size / seconds, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99))}


class Trainer(threading.Thread):
    """Pushes sparse gradients every 0.5 s and a dense gradient every second."""

    def __init__(self, client: ShardClient, dense: Any, cfg: Any) -> None:
        super().__init__(daemon=True)
        self.client, self.dense, self.cfg = client, dense, cfg
        self.stop = threading.Event()

    def run(self) -> None:
        rng = np.random.default_rng(0)
        last_dense = 0.0
        while not self.stop.wait(0.5):
            fids = {}
            for name in ("user_id", "item_id"):
                slot = self.cfg.slot(name)
                fids[name] = np.unique(make_fids(slot.slot_id, rng.integers(0, POOL, 256)))
            self.client.pull(fids, 100.0)
            self.client.push(fids, {n: rng.normal(0, 0.01, (f.size, self.cfg.slot(n).dim + 1))
                                    .astype(np.float32) for n, f in fids.items()}, 100.0)
            if time.monotonic() - last_dense > 1.0:
                params, _ = ray.get(self.dense.pull.remote())
                ray.get(self.dense.push.remote(
                    jax.tree.map(lambda p: np.full_like(p, 1e-3), params)))
                last_dense = time.monotonic()


class Probe(threading.Thread):
    """Trains a new item id, then waits until ``/predict`` serves it: the freshness delay."""

    def __init__(self, url: str, client: ShardClient, cfg: Any) -> None:
        super().__init__(daemon=True)
        self.url, self.client, self.cfg = url, client, cfg
        self.stop = threading.Event()
        self.delays: list[float] = []

    def _score(self, item: int) -> float:
        r = requests.post(self.url + "/predict", timeout=30, json={"pairs": [
            {"user": USER, "item": {"id": item, "features": {"genres": ["Drama"]}}}]})
        r.raise_for_status()
        return r.json()["scores"][0]

    def run(self) -> None:
        slot = self.cfg.slot("item_id")
        item = 10_000_000
        while not self.stop.is_set():
            item += 1
            default = self._score(item)
            fids = make_fids(slot.slot_id, np.array([item], dtype=np.int64))
            self.client.pull({"item_id": fids}, 100.0)
            trained = time.perf_counter()
            self.client.push({"item_id": fids},
                             {"item_id": np.full((1, slot.dim + 1), -30.0, np.float32)}, 100.0)
            while not self.stop.is_set() and abs(self._score(item) - default) < 1e-6:
                time.sleep(0.05)
            if not self.stop.is_set():
                self.delays.append(time.perf_counter() - trained)
            self.stop.wait(0.5)


def main() -> dict[str, Any]:
    ray.init(num_cpus=2, object_store_memory=300 * 1024 * 1024, include_dashboard=False,
             log_to_driver=False)
    cfg = load_config(overrides=[
        f"serve.sparse_sync_interval_s={SPARSE_INTERVAL_S}",
        f"serve.dense_sync_interval_s={DENSE_INTERVAL_S}", "serve.poll_interval_s=0.5",
        "serve.replica_cpus=0", "serve.autoscaling.min_replicas=1",
        "serve.autoscaling.max_replicas=1", "serve.max_candidates=256",
        "train.shard_cpus=0"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    rng = np.random.default_rng(0)
    pool = CandidatePool([(i, {"genres": rng.choice(GENRES, 2, replace=False).tolist(),
                               "release_year": int(rng.integers(1950, 2000))})
                          for i in range(POOL)])
    with kafka_session(cfg.kafka) as bootstrap:
        cfg = dataclasses.replace(cfg, kafka=dataclasses.replace(
            cfg.kafka, bootstrap_servers=bootstrap))
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        shards, dense = start_servers(cfg)
        client = ShardClient(shards, [s.name for s in cfg.slots])
        sync = start_parameter_sync(cfg.slots, shards, dense, cfg.serve)
        serve.run(build_app(cfg, sync, pool), name="monolith_ray", route_prefix="/")
        serve.run(NoOp.bind(), name="noop", route_prefix="/noop")
        real_url, noop_url = url + "/recommend", url + "/noop/recommend"
        for target in (real_url, noop_url):
            asyncio.run(_load(target, 3.0, CLIENTS))  # warm up
        trainer, probe = Trainer(client, dense, cfg), Probe(url, client, cfg)
        trainer.start()
        probe.start()
        noop_first = asyncio.run(_load(noop_url, DURATION_S / 2, CLIENTS))
        before, probes_before = ray.get(sync.status.remote()), len(probe.delays)
        loaded = _summary(asyncio.run(_load(real_url, DURATION_S, CLIENTS)))
        after, delays = ray.get(sync.status.remote()), probe.delays[probes_before:]
        noop = _summary(noop_first, asyncio.run(_load(noop_url, DURATION_S / 2, CLIENTS)))
        for thread in (trainer, probe):
            thread.stop.set()
            thread.join()
        health = requests.get(url + "/healthz", timeout=30).json()
        serve.shutdown()
    result = {
        **loaded,
        "sparse_syncs": after["sparse_syncs"] - before["sparse_syncs"],
        "dense_swaps": after["dense_swaps"] - before["dense_swaps"],
        "noop_qps": noop["qps"], "qps_vs_noop": loaded["qps"] / noop["qps"],
        "freshness_s": max(delays) if delays else float("inf"),
        "sparse_interval_s": SPARSE_INTERVAL_S,
        "freshness_probes": len(delays),
        "noop_p50_ms": noop["p50_ms"], "noop_p99_ms": noop["p99_ms"], "noop_failed": noop["failed"],
        "noop_requests": noop["requests"],
        "duration_s": DURATION_S, "clients": CLIENTS, "candidates_per_request": cfg.serve.pool_draw,
        "store_bytes": health["store_bytes"], "store_rows": sum(health["rows"].values()),
        "store_dtype": health["store_dtype"], "kafka_failed": health["kafka_failed"],
        "impressions_logged": health["served"]["impressions"],
    }
    ray.shutdown()
    return result


if __name__ == "__main__":
    out = main()
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}),
          file=sys.stdout)
