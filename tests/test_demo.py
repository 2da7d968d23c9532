"""The demo's closed loop on the session's Ray and broker: users are served, their clicks are
joined into examples, training reads them, the sync moves versions, and the run ends with a
summary and a plot."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import requests

from monolith_ray.config import Config, KafkaConfig, KafkaTopics, load_config
from monolith_ray.demo import DEMO_CONFIG, run_demo, start, stop, warm_start
from monolith_ray.stream.producers import UserSimulator


def _config(serve_url: str, kafka_bootstrap: str, out: Path, prefix: str,
            extra: tuple[str, ...] = ()) -> Config:
    """The demo config on the session's Serve and broker, topics named ``prefix.*``."""
    port = int(serve_url.rsplit(":", 1)[1])
    cfg = load_config(DEMO_CONFIG, [
        f"data.output_dir={out}", f"serve.port={port}", "serve.sparse_sync_interval_s=3",
        "serve.dense_sync_interval_s=8", "joiner.window_s=4", "serve.max_candidates=128",
        "train.shard_cpus=0", "train.trainer_cpus=0", "train.read_cpus=0.01", "joiner.cpus=0",
        *extra])
    topics = KafkaTopics(**{f.name: f"{prefix}.{f.name}" for f in dataclasses.fields(KafkaTopics)})
    return dataclasses.replace(cfg, kafka=KafkaConfig(bootstrap_servers=kafka_bootstrap,
                                                      partitions=2, topics=topics))


def test_demo_closes_the_loop_and_writes_summary_and_plot(ray_session, serve_url,
                                                          kafka_bootstrap, tmp_path) -> None:
    cfg = _config(serve_url, kafka_bootstrap, tmp_path, "demo-test")
    summary = run_demo(cfg, duration_s=60, rate_per_s=15)
    assert summary["requests"] > 100 and summary["failed"] == 0
    assert summary["impressions"] == 5 * summary["requests"]
    assert 0 < summary["clicks"] < summary["impressions"]
    # Joined examples carry every impression whose window closed; training read them.
    assert summary["examples_joined"] > summary["impressions"] // 3
    assert summary["examples_read"] > 0
    assert sum(summary["table_rows"].values()) > 0
    assert summary["sparse_syncs"] >= 5 and summary["sync_versions"]["sparse"] >= 1
    assert summary["dense_swaps"] >= 2
    # Requests without candidates were retrieved from the index of the whole catalogue,
    # which the dense syncs rebuilt with the towers as they trained.
    retrieval = summary["retrieval"]
    assert retrieval["items"] == 100 and retrieval["rebuilds"] >= 2
    assert retrieval["searches"] > summary["requests"] // 2
    assert retrieval["fallbacks"] == 0 and retrieval["refresh_failures"] == 0
    assert Path(summary["plot"]).stat().st_size > 10_000
    history = json.loads(Path(summary["history"]).read_text())
    assert len(history) >= 10 and history[-1]["requests"] == summary["requests"]
    # The demo config's three arms side by side, counted over every replica (a second late,
    # and counting requests the users had not yet recorded when the last sample was taken).
    arms = summary["arms"]
    assert set(arms) == {"demo/greedy", "demo/explore", "demo/sated"}
    assert (arms["demo/explore"]["policy"], arms["demo/sated"]["satiation"]) == ("epsilon", True)
    assert all(a["impressions"] > 0 and 0 <= a["clicks"] <= a["impressions"]
               and a["ctr_low"] <= a["ctr"] <= a["ctr_high"] for a in arms.values())
    assert summary["impressions"] // 2 < sum(a["impressions"] for a in arms.values()) \
        <= summary["impressions"] + 5 * 20


def test_warm_start_serves_the_trained_past_from_the_first_request(ray_session, serve_url,
                                                                   kafka_bootstrap,
                                                                   tmp_path) -> None:
    """A past of random slates is joined, dumped and trained before the users start: the
    replica answering the first request holds the past's rows, and the loop's joiners go on
    after the past instead of joining it again."""
    cfg = _config(serve_url, kafka_bootstrap, tmp_path, "warm-test", ("experiments=[]",))
    sim = UserSimulator(n_users=40, n_items=100, n_categories=8, drift_period_s=3600.0,
                        satiation=1.0, seed=3)
    origin = 1_700_000_000
    warm, past = warm_start(cfg, sim, str(tmp_path / "past"), 300, 20.0, 5, origin, epochs=2)
    # warm_start checked that every impression and click was joined.
    assert past["impressions"] == past["dumped"] == 1500 and 0 < past["clicks"] < 1500
    assert warm.online.start == f"dump:{tmp_path / 'past'}" and warm.train.epochs == 2
    loop = start(warm, 10.0, sim, explore=0.0, requests_limit=30, keep_log=True,
                 sim_origin=origin)
    try:
        health = requests.get(f"{serve_url}/healthz", timeout=10).json()
        # Every user and item of the past is a trained row in the replica before any request
        # could have added one of its own (a request adds none: the joiner and training do).
        assert health["rows"]["user_id"] >= 35  # of the 40 users, those 300 requests drew
        assert health["rows"]["item_id"] == 100
        # Retrieval is ready over the whole catalogue (rebuilt after the warm sync: start).
        assert health["retrieval"]["version"] >= 1 and health["retrieval"]["items"] == 100
        assert loop.users.done.wait(timeout=60)
        deadline = time.monotonic() + 60
        while loop.progress()["examples_read"] == 0 and time.monotonic() < deadline:
            time.sleep(1)
        # The loop's joiners joined some of the horizon's 150 impressions (its clicked ones;
        # the others wait for event time to pass their window), not the past's 1500 again,
        # and training read on from the dump's end.
        progress = loop.progress()
        assert 0 < progress["examples_joined"] <= 150
        assert 0 < progress["examples_read"] <= 150
    finally:
        stop(loop)
