"""The demo's closed loop on the session's Ray and broker: users are served, their clicks are
joined into examples, training reads them, the sync moves versions, and the run ends with a
summary and a plot."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from monolith_ray.config import KafkaConfig, KafkaTopics, load_config
from monolith_ray.demo import DEMO_CONFIG, run_demo


def test_demo_closes_the_loop_and_writes_summary_and_plot(ray_session, serve_url,
                                                          kafka_bootstrap, tmp_path) -> None:
    port = int(serve_url.rsplit(":", 1)[1])
    cfg = load_config(DEMO_CONFIG, [
        f"data.output_dir={tmp_path}", f"serve.port={port}", "serve.sparse_sync_interval_s=3",
        "serve.dense_sync_interval_s=8", "joiner.window_s=4", "serve.max_candidates=128",
        "train.shard_cpus=0", "train.trainer_cpus=0", "train.read_cpus=0.01", "joiner.cpus=0"])
    topics = KafkaTopics(**{f.name: f"demo-test.{f.name}" for f in dataclasses.fields(KafkaTopics)})
    cfg = dataclasses.replace(cfg, kafka=KafkaConfig(bootstrap_servers=kafka_bootstrap,
                                                     partitions=2, topics=topics))
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
