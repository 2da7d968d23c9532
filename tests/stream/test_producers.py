"""Impression streams: the MovieLens replay (same slot values as the Parquet examples), the
drifting user simulator, and publishing with keys and pacing."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from monolith_ray.data import movielens
from monolith_ray.messages import decode, parse_action, parse_feature
from monolith_ray.schemas import value_ids
from monolith_ray.stream import KafkaConfig
from monolith_ray.stream.producers import (
    ACTIONS,
    FEATURES,
    Event,
    UserSimulator,
    movielens_events,
    publish,
    simulated_events,
)

ML100K = Path(__file__).resolve().parents[2] / "data" / "ml-100k"


def _in_time_order(events: list[Event]) -> bool:
    times = [e.time for e in events]
    return all(a <= b for a, b in zip(times, times[1:]))


def test_movielens_replay_matches_the_parquet_examples() -> None:
    events = list(movielens_events(ML100K, fraction=(0.8, 1.0), click_delay_s=7))
    examples = movielens.split_by_time(movielens.read_examples(ML100K))
    parquet = examples["valid"].to_pydict()
    for name, rows in examples["test"].to_pydict().items():
        parquet[name] += rows
    features = [e.message for e in events if e.topic == FEATURES]
    assert len(features) == 20_000
    assert _in_time_order(events)
    assert [f["time"] for f in features] == parquet["time"]
    for name, multi in movielens.SLOTS:
        raw = [f["slots"][name] for f in features]
        if multi:
            assert [list(value_ids(v)) for v in raw] == parquet[name]
        else:
            assert value_ids(raw).tolist() == parquet[name]
    for f in features[:100]:
        assert parse_feature(f) == {**f, "context": {}, "dense": {}}
    clicks = {e.key: e for e in events if e.topic == ACTIONS}
    labels = [float(f["request_id"] in clicks) for f in features]
    assert labels == parquet["label"]
    assert len({f["request_id"] for f in features}) == len(features)
    for f in features:
        click = clicks.get(f["request_id"])
        if click is not None:
            assert parse_action(click.message) == {"request_id": f["request_id"],
                                                   "item_id": f["item_id"],
                                                   "time": f["time"] + 7, "action": "click"}


def test_movielens_replay_time_range() -> None:
    all_events = list(movielens_events(ML100K, fraction=(0.0, 0.05)))
    start, stop = all_events[100].time, all_events[2000].time
    events = list(movielens_events(ML100K, fraction=(0.0, 0.05), time_range=(start, stop)))
    feature_times = [e.time for e in events if e.topic == FEATURES]
    assert feature_times and min(feature_times) >= start and max(feature_times) < stop
    assert feature_times == [e.time for e in all_events
                             if e.topic == FEATURES and start <= e.time < stop]
    with pytest.raises(ValueError, match="fraction"):
        movielens_events(ML100K, fraction=(0.5, 0.2))


def test_simulator_is_deterministic_and_order_free() -> None:
    sim, again = UserSimulator(seed=3), UserSimulator(seed=3)
    users = np.arange(200) % sim.n_users
    items = (np.arange(200) * 7) % sim.n_items
    t = 1_700_000_000
    clicked = sim.respond(users, items, t)
    assert np.array_equal(clicked, again.respond(users, items, t))
    assert np.array_equal(clicked[::-1], again.respond(users[::-1], items[::-1], t))
    assert not np.array_equal(clicked, UserSimulator(seed=4).respond(users, items, t))


def test_simulator_clicks_follow_drifting_probabilities() -> None:
    sim = UserSimulator(n_users=50, n_items=40, drift_period_s=1000.0, seed=1)
    users = np.repeat(np.arange(50), 40)
    items = np.tile(np.arange(40), 50)
    p0 = sim.click_probability(users, items, 0)
    assert 0.1 < p0.mean() < 0.5
    np.testing.assert_allclose(sim.click_probability(users, items, 1000), p0, atol=1e-9)
    half = sim.click_probability(users, items, 500)
    assert np.corrcoef(p0, half)[0, 1] < 0.5, "preferences drift over event time"
    assert np.corrcoef(p0, sim.click_probability(users, items, 10))[0, 1] > 0.99
    rates = np.mean([sim.respond(users, items, t) for t in range(0, 20000, 1000)], axis=0)
    assert abs(rates.mean() - p0.mean()) < 0.01
    assert np.corrcoef(rates, p0)[0, 1] > 0.8


def test_simulated_stream_has_features_and_delayed_clicks() -> None:
    sim = UserSimulator(seed=2)
    events = list(simulated_events(sim, 500, start_time=1000, requests_per_s=5.0,
                                   items_per_request=3, seed=9, click_delay_s=4))
    assert events == list(simulated_events(sim, 500, start_time=1000, requests_per_s=5.0,
                                           items_per_request=3, seed=9, click_delay_s=4))
    assert _in_time_order(events)
    features = [e for e in events if e.topic == FEATURES]
    assert len(features) == 1500 and features[-1].time == 1000 + 499 // 5
    by_key = {(e.key, e.message["item_id"]): e for e in features}
    assert len(by_key) == 1500
    for e in events:
        parse_feature(e.message) if e.topic == FEATURES else parse_action(e.message)
        if e.topic == ACTIONS:
            f = by_key[e.key, e.message["item_id"]].message
            assert e.time == f["time"] + 4
            assert sim.respond([f["user_id"]], [f["item_id"]], f["time"])[0]
    n_clicks = sum(e.topic == ACTIONS for e in events)
    assert 0.05 * 1500 < n_clicks < 0.6 * 1500


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes, float]] = []
        self.flushed = False

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append((topic, key, value, time.perf_counter()))

    def flush(self) -> None:
        self.flushed = True


def test_publish_keys_by_request_id_and_paces_by_event_time() -> None:
    cfg = KafkaConfig(bootstrap_servers="localhost:9092")
    events = list(movielens_events(ML100K, fraction=(0.0, 0.01)))
    span = events[20].time - events[0].time
    producer = FakeProducer()
    counts = publish(cfg, events[:21], speedup=span / 0.3, producer=producer)
    assert counts[FEATURES] + counts[ACTIONS] == 21 and producer.flushed
    assert counts["seconds"] >= 0.3
    assert [(t, decode(v)) for t, _, v, _ in producer.sent] == [
        (cfg.topics.features if e.topic == FEATURES else cfg.topics.actions, e.message)
        for e in events[:21]]
    assert all(k == decode(v)["request_id"].encode() for _, k, v, _ in producer.sent)
    keys = Counter(k for _, k, _, _ in producer.sent)
    assert max(keys.values()) == 2, "a clicked request's feature and action share a key"
    fast = FakeProducer()
    publish(cfg, events[:21], producer=fast)
    assert fast.sent[-1][3] - fast.sent[0][3] < 0.1
    with pytest.raises(ValueError, match="speedup"):
        publish(cfg, [], speedup=0, producer=fast)
