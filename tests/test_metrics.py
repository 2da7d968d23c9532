"""Metrics: the definitions, the Grafana dashboard's queries, and the demo's running loop on the
session's Ray and broker scraped at Ray's Prometheus endpoint twice, every family moving."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monolith_ray import metrics

DASHBOARD = Path(__file__).resolve().parents[1] / "grafana_dashboard.json"

# Families that move only when something fails (a dead letter the brokers refuse, a sync
# that cannot read a shard); every other one must move in the running loop below.
FAILURES_ONLY = {"monolith_ray_dead_letters_failed", "monolith_ray_sync_failures"}


def test_every_metric_is_named_for_the_project_and_prometheus() -> None:
    assert len(metrics.METRICS) >= 20
    for name, m in metrics.METRICS.items():
        assert re.fullmatch(r"monolith_ray_[a-z_]+", name), name
        assert m.kind in ("counter", "gauge", "histogram") and m.doc
        assert (m.kind == "histogram") == bool(m.boundaries)
        assert all(re.fullmatch(r"[a-z]+", tag) for tag in m.tags)
    assert metrics.EXAMPLES_TRAINED.series == ("ray_monolith_ray_examples_trained_total",)
    assert metrics.KAFKA_LAG.series == ("ray_monolith_ray_kafka_lag",)


def test_recording_outside_ray_is_a_no_op(monkeypatch) -> None:
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    m = metrics.Metric("counter", "monolith_ray_unit_test", "a counter no process records")
    m.inc(3)
    m.set(1.0)
    m.observe(0.5)
    assert m._made is None


def test_deltas_count_growth_and_restart_from_a_fallen_count() -> None:
    deltas = metrics.Deltas()
    assert deltas.step("a", 5) == 5
    assert deltas.step("a", 7) == 2
    assert deltas.step("a", 7) == 0
    assert deltas.step("a", 3) == 0  # restored from an older snapshot: a new base
    assert deltas.step("a", 4) == 1
    assert deltas.step("b", 0) == 0


def test_table_reporter_records_each_slot_and_shard(monkeypatch) -> None:
    seen: list[tuple[str, float, dict[str, Any]]] = []
    for metric in (metrics.TABLE_ROWS, metrics.TABLE_BYTES, metrics.TABLE_EVICTIONS,
                   metrics.TABLE_ADMISSIONS):
        for method in ("set", "inc"):
            monkeypatch.setattr(metric, method,
                                lambda v, _m=metric, **tags: seen.append((_m.name, v, tags)))
    reporter = metrics.TableReporter()
    stats = {"rows": 10, "bytes": 2000, "evicted": 3, "admitted": 13}
    reporter.report([{"user": stats}, {"user": {**stats, "rows": 4}}])
    reporter.report([{"user": {**stats, "evicted": 5}}, {"user": {**stats, "rows": 4}}])
    by = {(name, tags["shard"]): v for name, v, tags in seen if tags["slot"] == "user"}
    assert by["monolith_ray_table_rows", 1] == 4 and by["monolith_ray_table_bytes", 0] == 2000
    evictions = [v for name, v, tags in seen
                 if name == "monolith_ray_table_evictions" and tags["shard"] == 0]
    assert evictions == [3, 2]


def test_dashboard_charts_every_metric_and_names_no_other() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert {v["name"]: v["type"] for v in dashboard["templating"]["list"]} == {
        "datasource": "datasource"}
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    series = {s: m for m in metrics.METRICS.values() for s in m.series}
    charted = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            named = re.findall(r"\bray_monolith_ray_\w+", target["expr"])
            assert named, target["expr"]
            for name in named:
                assert name in series, f"{panel['title']}: {name} is not in metrics.py"
                m = series[name]
                charted.add(m.name)
                if m.kind == "counter":  # a counter is only ever charted as a rate
                    assert re.search(rf"(rate|increase)\({name}\[", target["expr"]), target
    assert charted == set(metrics.METRICS)


# ------------------------------------------------------------------ the running loop


def _scrape() -> dict[str, list[tuple[dict[str, str], float]]]:
    """This session's node's Prometheus endpoint: monolith_ray's samples by name."""
    import ray
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    node = next(n for n in ray.nodes() if n["Alive"])
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(requests.get(url, timeout=10).text):
        for sample in family.samples:
            if sample.name.startswith("ray_monolith_ray_"):
                out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def _values(scraped: dict, name: str, **labels: str) -> list[float]:
    return [v for tags, v in scraped.get(name, [])
            if all(tags.get(k) == w for k, w in labels.items())]


def _total(scraped: dict, name: str, **labels: str) -> float:
    return sum(_values(scraped, name, **labels))


def _wait_for(check: Callable[[dict], list[str]], timeout_s: float) -> dict:
    """Scrape every 2 s until ``check`` (scrape -> what is still missing) finds nothing."""
    deadline = time.monotonic() + timeout_s
    while True:
        scraped = _scrape()
        missing = check(scraped)
        if not missing:
            return scraped
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout_s:.0f} s still not there: {missing}")
        time.sleep(2)


def test_a_running_loop_moves_every_metric(ray_session, serve_url, kafka_bootstrap, produce,
                                           tmp_path) -> None:
    """The demo's loop (joiner, online training on two shards, snapshots, sync, a replica) runs
    while a bad record goes into each stream, the shards expire their users and the source
    monitor is killed: two scrapes of Ray's endpoint find every family, each counter grown,
    each version and timestamp newer."""
    import ray

    from monolith_ray import demo
    from monolith_ray.config import KafkaConfig, KafkaTopics, load_config
    from monolith_ray.stream.kafka import ensure_topics
    from monolith_ray.supervision import actor_state

    port = int(serve_url.rsplit(":", 1)[1])
    cfg = load_config(demo.DEMO_CONFIG, [
        f"data.output_dir={tmp_path}", f"serve.port={port}", "serve.sparse_sync_interval_s=2",
        "serve.dense_sync_interval_s=4", "joiner.window_s=3", "serve.max_candidates=128",
        "train.shard_cpus=0", "train.trainer_cpus=0", "train.read_cpus=0.01", "joiner.cpus=0",
        "online.snapshot_every_s=4", "supervision.check_every_s=1"])
    topics = KafkaTopics(**{f.name: f"metrics.{f.name}" for f in dataclasses.fields(KafkaTopics)})
    cfg = dataclasses.replace(cfg, kafka=KafkaConfig(bootstrap_servers=kafka_bootstrap,
                                                     partitions=2, topics=topics))
    ensure_topics(cfg.kafka)
    lag = {("joiner", topics.features), ("joiner", topics.actions), ("source", topics.examples)}
    cells = {(slot.name, str(k)) for slot in cfg.slots for k in range(cfg.train.n_shards)}

    def running(s: dict) -> list[str]:
        """What a loop that has trained for a while shows (no failure, no restart yet)."""
        missing = [f"lag {p} {t}[{k}]" for p, t in lag for k in ("0", "1")
                   if not _values(s, "ray_monolith_ray_kafka_lag", process=p, topic=t,
                                  partition=k)]
        missing += [f"table {name} {c}" for name in ("rows", "bytes") for c in cells
                    if not _values(s, f"ray_monolith_ray_table_{name}", slot=c[0], shard=c[1])]
        missing += [n for n in ("examples_joined_total", "examples_trained_total",
                                "train_step_seconds_count", "table_admissions_total",
                                "snapshot_seconds_count", "snapshot_bytes",
                                "snapshot_timestamp_seconds", "sync_version",
                                "sync_timestamp_seconds", "sync_seconds_count",
                                "sync_rows_total")
                    if not _total(s, "ray_monolith_ray_" + n)]
        if not _total(s, "ray_monolith_ray_examples_read_total", topic=topics.examples):
            missing.append("examples_read")
        return missing

    started = time.monotonic()
    loop = demo.start(cfg, rate_per_s=10)
    try:
        first = _wait_for(running, 150)
        first_s = time.monotonic() - started
        assert all(v >= 0 for v in _values(first, "ray_monolith_ray_kafka_lag"))

        # What moves only when it happens: a bad record in each stream, expiry, a restart.
        produce(cfg.kafka, topics.features, [b"{not json"], [0])
        produce(cfg.kafka, topics.examples, [b"{not json"], [1])
        two_days = time.time() + 2 * 86400  # past the users' expire_s
        ray.get([s.evict_expired.remote(two_days) for s in loop.training.shards], timeout=30)
        os.kill(actor_state(loop.training.monitor)["Pid"], signal.SIGKILL)

        grown = {"examples_joined_total": {}, "examples_trained_total": {},
                 "examples_read_total": {"topic": topics.examples},
                 "train_step_seconds_count": {}, "table_admissions_total": {},
                 "table_evictions_total": {"slot": "user_id"},
                 "dead_letters_total": {"stage": "joiner"},
                 "dead_letters_total:source": {"stage": "source"},
                 "snapshot_seconds_count": {}, "sync_seconds_count": {"kind": "sparse"},
                 "sync_seconds_count:dense": {"kind": "dense"}, "sync_rows_total": {},
                 "restarts_total": {"process": "source-monitor"}}
        newer = {"snapshot_timestamp_seconds": {}, "sync_version": {"kind": "sparse"},
                 "sync_version:dense": {"kind": "dense"},
                 "serving_version": {"kind": "sparse"},
                 "serving_version:dense": {"kind": "dense"},
                 "sync_timestamp_seconds": {"kind": "sparse"},
                 "sync_timestamp_seconds:dense": {"kind": "dense"}}

        def moved(s: dict) -> list[str]:
            missing = running(s)
            for key, labels in grown.items():
                name = "ray_monolith_ray_" + key.split(":")[0]
                if not _total(s, name, **labels) > _total(first, name, **labels):
                    missing.append(key)
            for key, labels in newer.items():
                name = "ray_monolith_ray_" + key.split(":")[0]
                if not max(_values(s, name, **labels), default=0) > max(
                        _values(first, name, **labels), default=0):
                    missing.append(key)
            return missing

        second = _wait_for(moved, 120)
        second_s = time.monotonic() - started
    finally:
        demo.stop(loop)

    checked = {"monolith_ray_" + re.sub(r"_(total|count)$", "", k.split(":")[0])
               for k in [*grown, *newer]}
    checked |= {"monolith_ray_kafka_lag", "monolith_ray_table_rows", "monolith_ray_table_bytes",
                "monolith_ray_snapshot_bytes"}
    assert checked | FAILURES_ONLY == set(metrics.METRICS)
    print(json.dumps({"metrics_first_scrape_s": round(first_s, 1),
                      "metrics_all_moved_s": round(second_s, 1),
                      "samples": sum(map(len, second.values()))}))
