"""The joiner's core on event time, without Kafka or Ray: joins, the window, spill to disk,
negative sampling and its calibration, dead letters, and the offsets it lets commit."""

from __future__ import annotations

import gc
import json
import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monolith_ray.config import ConfigError, JoinerConfig, KafkaTopics, load_config
from monolith_ray.messages import encode, parse_example
from monolith_ray.stream.join import (
    ACTIONS,
    FEATURES,
    Joiner,
    log_odds_correction,
    stable_unit,
)
from monolith_ray.stream.spill import SpillStore


class Feed:
    """A Joiner fed by hand: appends records to its partitions with increasing offsets."""

    def __init__(self, **cfg: object) -> None:
        self.joiner = Joiner(JoinerConfig(**{"window_s": 60, "allowed_lateness_s": 0,
                                             "spill_after_s": 1000, **cfg}))
        self.next: dict[tuple[str, int], int] = {}
        self.examples: list[dict] = []
        self.dead: list[dict] = []

    def send(self, kind: str, values: list, partition: int = 0) -> list[int]:
        """Add records (dicts are encoded, bytes sent as they are) -> their offsets."""
        start = self.next.get((kind, partition), 0)
        records = [(start + i, v if isinstance(v, bytes) else encode(v))
                   for i, v in enumerate(values)]
        self.next[kind, partition] = start + len(records)
        self.joiner.add(kind, partition, records)
        return [offset for offset, _ in records]

    def advance(self, active=()) -> None:
        self.joiner.advance(active)
        examples, dead = self.joiner.take_output()
        self.examples += [parse_example(json.loads(v)) for _, v in examples]
        self.dead += [json.loads(v) for v in dead]

    def drain(self) -> None:
        self.joiner.drain()
        self.advance()

    def labels(self) -> dict[str, float]:
        return {e["request_id"]: e["label"] for e in self.examples}


def feature(rid: str, t: int, item: int = 7, **slots: object) -> dict:
    return {"request_id": rid, "time": t, "user_id": 1, "item_id": item,
            "slots": {"user_id": 1, "item_id": item, **slots}}


def action(rid: str, t: int, item: int = 7, kind: str = "click") -> dict:
    return {"request_id": rid, "item_id": item, "time": t, "action": kind}


def test_click_joins_at_once_and_silence_becomes_negative_after_the_window() -> None:
    feed = Feed(window_s=60, allowed_lateness_s=5)
    feed.send(FEATURES, [feature("a", 100, genres=["Drama", "War"]), feature("b", 100),
                         feature("c", 100, item=8)])
    feed.send(ACTIONS, [action("a", 110), action("c", 110, item=9), action("b", 105, kind="skip")])
    feed.advance()
    assert feed.labels() == {"a": 1.0}
    assert feed.examples[0] == {"request_id": "a", "time": 100, "label": 1.0, "weight": 1.0,
                                "slots": {"user_id": 1, "item_id": 7, "genres": ["Drama", "War"]},
                                "dense": {}}
    feed.send(ACTIONS, [action("x", 165)])
    feed.advance()
    assert feed.labels() == {"a": 1.0}, "watermark 160 = 100 + window: b and c may still click"
    feed.send(ACTIONS, [action("x", 166)])
    feed.advance()
    assert feed.labels() == {"a": 1.0, "b": 0.0, "c": 0.0}
    counters = feed.joiner.counters
    assert (counters["features"], counters["actions"]) == (3, 5)
    assert (counters["positives"], counters["negatives"], counters["pending"]) == (1, 2, 0)


def test_click_after_the_window_does_not_count() -> None:
    feed = Feed(window_s=60)
    feed.send(FEATURES, [feature("a", 100)])
    feed.send(ACTIONS, [action("a", 161)])
    feed.advance()
    assert feed.labels() == {"a": 0.0}
    assert feed.joiner.counters["unmatched_actions"] == 1


def test_action_before_its_impression_waits_for_it_until_the_watermark() -> None:
    feed = Feed(window_s=60, allowed_lateness_s=10)
    feed.send(ACTIONS, [action("a", 105), action("gone", 105)], partition=1)
    feed.advance()
    assert feed.joiner.counters["orphans"] == 2
    feed.send(FEATURES, [feature("a", 100)], partition=1)
    feed.advance()
    assert feed.labels() == {"a": 1.0}
    feed.send(FEATURES, [feature("later", 116)], partition=1)
    feed.advance()
    assert feed.joiner.counters["orphans"] == 0
    assert feed.joiner.counters["unmatched_actions"] == 1


@pytest.mark.parametrize("action_first", [False, True])
def test_an_action_dated_before_its_impression_joins_only_within_the_clock_skew(
        action_first: bool) -> None:
    """A click dated up to ``limits.max_event_skew_s`` (300 s) before its impression joins
    (the client's clock may lag the service's); one dated earlier (backdated feedback) is
    counted unmatched, whichever of the two is read first."""
    feed = Feed(window_s=60, allowed_lateness_s=1000)
    actions = [action("skewed", 10_000 - 299), action("backdated", 10_000 - 301),
               action("backdated", 10_000 - 9_000, item=8)]
    features = [feature("skewed", 10_000), feature("backdated", 10_000),
                feature("backdated", 10_000, item=8)]
    for kind, values in ([(ACTIONS, actions), (FEATURES, features)] if action_first
                         else [(FEATURES, features), (ACTIONS, actions)]):
        feed.send(kind, values)
        feed.advance()
    feed.drain()
    assert sorted((e["request_id"], e["slots"]["item_id"], e["label"])
                  for e in feed.examples) == [("backdated", 7, 0.0), ("backdated", 8, 0.0),
                                              ("skewed", 7, 1.0)]
    assert feed.joiner.counters["unmatched_actions"] == 2


def test_waiting_impressions_spill_to_disk_and_still_join(tmp_path) -> None:
    store = SpillStore(tmp_path / "spill.sqlite")
    joiner = Joiner(JoinerConfig(window_s=100, allowed_lateness_s=0, spill_after_s=10),
                    store=store)
    feed = Feed()
    feed.joiner = joiner
    feed.send(FEATURES, [feature(f"r{i}", i, genres=[f"g{i}"]) for i in range(20)])
    feed.send(ACTIONS, [action("tick", 30)])
    feed.advance()
    assert joiner.counters["spilled"] == 20 and len(store) == 20
    assert joiner.counters["pending"] == 20
    feed.send(ACTIONS, [action("r3", 40), action("r15", 50)])
    feed.advance()
    assert feed.labels() == {"r3": 1.0, "r15": 1.0}
    assert feed.examples[0]["slots"] == {"user_id": 1, "item_id": 7, "genres": ["g3"]}
    assert len(store) == 18
    feed.send(ACTIONS, [action("tick", 110)])
    feed.advance()
    assert sorted(r for r, y in feed.labels().items() if y == 0) == sorted(
        f"r{i}" for i in range(10) if i != 3)
    feed.drain()
    assert len(feed.examples) == 20 and len(store) == 0
    joiner.close()
    assert (tmp_path / "spill.sqlite").exists(), "a given path is kept"


def test_impressions_beyond_max_in_memory_spill_even_before_there_is_a_clock() -> None:
    feed = Feed(max_in_memory=5)
    feed.send(FEATURES, [feature(f"r{i}", 100 + i) for i in range(12)])
    feed.advance(active=[(FEATURES, 0), (ACTIONS, 0)])
    assert feed.joiner.clock is None
    assert feed.joiner.counters["spilled"] == 7 and feed.joiner.counters["pending"] == 12
    feed.send(ACTIONS, [action("r0", 101), action("r11", 112)])
    feed.advance(active=[(FEATURES, 0), (ACTIONS, 0)])
    assert feed.labels() == {"r0": 1.0, "r11": 1.0}
    feed.drain()
    assert sum(feed.labels().values()) == 2 and len(feed.labels()) == 12


def test_clock_waits_for_active_partitions() -> None:
    feed = Feed(window_s=60)
    feed.send(FEATURES, [feature("a", 100)])
    feed.send(ACTIONS, [action("x", 1000)], partition=1)
    feed.advance(active=[(FEATURES, 0), (ACTIONS, 0)])
    assert feed.joiner.clock is None, "actions 0 has unread records and no time yet"
    feed.send(ACTIONS, [action("y", 120)])
    feed.advance(active=[(FEATURES, 0), (ACTIONS, 0)])
    assert feed.joiner.clock == 100 and feed.labels() == {}
    feed.send(ACTIONS, [action("a", 150)])
    feed.advance()
    assert feed.joiner.clock == 1000 and feed.labels() == {"a": 1.0}


def test_negative_sampling_is_stable_and_weighted() -> None:
    rids = [f"req-{i}" for i in range(5000)]
    kept = []
    for _ in range(2):
        feed = Feed(negative_rate=0.2)
        feed.send(FEATURES, [feature(r, 0) for r in rids])
        feed.send(FEATURES, [feature("click", 0)], partition=1)
        feed.send(ACTIONS, [action("click", 1)], partition=1)
        feed.drain()
        negatives = [e for e in feed.examples if e["label"] == 0.0]
        assert all(e["weight"] == pytest.approx(5.0) for e in negatives)
        assert [e for e in feed.examples if e["label"] == 1.0][0]["weight"] == 1.0
        assert feed.joiner.counters["sampled_out"] == 5000 - len(negatives)
        kept.append({e["request_id"] for e in negatives})
    assert kept[0] == kept[1] == {r for r in rids if stable_unit(r) < 0.2}
    assert 0.18 < len(kept[0]) / 5000 < 0.22


def _fit_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted logistic regression of y on [1, x] by Newton's method -> (intercept, slope)."""
    X = np.stack([np.ones_like(x), x], axis=1)
    beta = np.zeros(2)
    for _ in range(25):
        p = 1.0 / (1.0 + np.exp(-X @ beta))
        grad = X.T @ (w * (y - p))
        hess = (X * (w * p * (1 - p))[:, None]).T @ X
        beta += np.linalg.solve(hess, grad)
    return beta


def test_sampled_weighted_examples_are_calibrated() -> None:
    rng = np.random.default_rng(0)
    n, a, b, r = 20000, -2.0, 0.5, 0.2
    x = rng.integers(0, 5, n)
    clicked = rng.random(n) < 1.0 / (1.0 + np.exp(-(a + b * x)))
    feed = Feed(negative_rate=r)
    feed.send(FEATURES, [feature(f"r{i}", i // 10, x=int(x[i])) for i in range(n)])
    feed.send(ACTIONS, [action(f"r{i}", i // 10 + 3) for i in np.flatnonzero(clicked).tolist()])
    feed.drain()
    ex = feed.examples
    y = np.array([e["label"] for e in ex])
    w = np.array([e["weight"] for e in ex])
    xs = np.array([e["slots"]["x"] for e in ex], dtype=np.float64)
    assert y.sum() == clicked.sum() and len(ex) < 0.5 * n
    assert np.sum(w * y) / np.sum(w) == pytest.approx(clicked.mean(), abs=0.01)
    true = 1.0 / (1.0 + np.exp(-(a + b * np.arange(5))))
    weighted = _fit_logistic(xs, y, w)
    fitted = 1.0 / (1.0 + np.exp(-(weighted[0] + weighted[1] * np.arange(5))))
    np.testing.assert_allclose(fitted, true, atol=0.02)
    # Unweighted, the logit is off by -log r; the serving-side correction recovers it.
    unweighted = _fit_logistic(xs, y, np.ones_like(w))
    assert unweighted[0] - weighted[0] == pytest.approx(-np.log(r), abs=0.1)
    corrected = log_odds_correction(unweighted[0] + unweighted[1] * np.arange(5), r)
    np.testing.assert_allclose(1.0 / (1.0 + np.exp(-corrected)), true, atol=0.02)


def test_log_odds_correction() -> None:
    np.testing.assert_allclose(log_odds_correction(np.array([0.0, 1.0]), 0.5),
                               [np.log(0.5), 1.0 + np.log(0.5)])
    assert log_odds_correction(2.0, 1.0) == 2.0
    with pytest.raises(ValueError):
        log_odds_correction(0.0, 0.0)


def test_malformed_messages_become_dead_letters_and_the_rest_joins() -> None:
    topics = KafkaTopics(features="f", actions="a", examples="e", dead_letter="d")
    feed = Feed()
    feed.joiner = Joiner(JoinerConfig(window_s=60, allowed_lateness_s=0), topics)
    bad_features = [b"{not json", b"\xff\xfe", b"", b"[1, 2]",
                    encode({**feature("m", 1), "request_id": None}),
                    encode({**feature("m", 1), "time": "yesterday"}),
                    encode({**feature("m", 1), "slots": {"x": {"nested": 1}}}),
                    encode(feature("ok", 1))]
    offsets = feed.send(FEATURES, [feature("ok", 1)] + bad_features)
    feed.send(ACTIONS, [b"null", encode({**action("ok", 2), "action": "purchase"}),
                        encode(action("ok", 2))])
    feed.drain()
    assert feed.labels() == {"ok": 1.0}
    assert feed.joiner.counters["dead_letters"] == len(bad_features) + 2
    assert len(feed.dead) == len(bad_features) + 2
    first = feed.dead[0]
    assert (first["topic"], first["partition"], first["offset"]) == ("f", 0, offsets[1])
    assert first["payload"] == "{not json" and "JSON" in first["reason"]
    reasons = [d["reason"] for d in feed.dead]
    assert any(r.startswith("request_id") for r in reasons)
    assert any(r.startswith("time") for r in reasons)
    assert any(r.startswith("slots.x") for r in reasons)
    assert any("already waiting" in r for r in reasons)
    assert any(r.startswith("action") for r in reasons)
    assert [d["topic"] for d in feed.dead[-2:]] == ["a", "a"]


def test_commit_offsets_stop_at_the_oldest_waiting_impression() -> None:
    feed = Feed(window_s=60)
    feed.joiner.seek(FEATURES, 0, 0)
    feed.joiner.seek(ACTIONS, 0, 0)
    feed.joiner.seek(FEATURES, 1, 40)
    assert feed.joiner.commit_offsets() == {(FEATURES, 0): 0, (ACTIONS, 0): 0,
                                            (FEATURES, 1): 40}
    feed.send(FEATURES, [feature(f"r{i}", 100 + i) for i in range(5)])
    feed.send(ACTIONS, [action("other", 100), action("r1", 102), action("r3", 104),
                        action("r2", 150)])
    feed.advance(active=[(FEATURES, 0)])
    assert feed.labels() == {"r1": 1.0, "r2": 1.0, "r3": 1.0}
    # r0 (offset 0) waits: nothing is committed past it, nor past the action that joined r1.
    assert feed.joiner.commit_offsets()[FEATURES, 0] == 0
    assert feed.joiner.commit_offsets()[ACTIONS, 0] == 1
    feed.send(FEATURES, [feature("late", 200)])
    feed.advance()
    # Clock 200: r0 and r4 expired; "late" (offset 5) waits, and no action is needed.
    assert feed.labels() == {"r0": 0.0, "r1": 1.0, "r2": 1.0, "r3": 1.0, "r4": 0.0}
    assert feed.joiner.commit_offsets() == {(FEATURES, 0): 5, (ACTIONS, 0): 4,
                                            (FEATURES, 1): 40}


def test_restart_from_committed_offsets_labels_the_same() -> None:
    """Re-reading from the committed offsets, a fresh joiner labels the re-read features as
    the first one did: the committed action offset covers the actions that joined them."""
    features = [feature(f"r{i}", 100 + i) for i in range(6)]
    actions = [action("r1", 101), action("r2", 103), action("r4", 300), action("r5", 106)]
    first = Feed(window_s=60)
    first.send(FEATURES, features[:4])
    first.send(ACTIONS, actions[:2])
    first.advance(active=[(FEATURES, 0)])
    committed = first.joiner.commit_offsets()
    assert committed == {(FEATURES, 0): 0, (ACTIONS, 0): 0}
    first.send(FEATURES, features[4:])
    first.send(ACTIONS, actions[2:])
    first.drain()
    again = Feed(window_s=60)
    again.send(FEATURES, features[committed[FEATURES, 0]:])
    again.send(ACTIONS, actions[committed[ACTIONS, 0]:])
    again.drain()
    assert again.labels() == first.labels() == {
        "r0": 0.0, "r1": 1.0, "r2": 1.0, "r3": 0.0, "r4": 0.0, "r5": 1.0}


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        Feed().joiner.add("clicks", 0, [])


def test_joiner_config_loads_with_errors_that_name_the_key() -> None:
    cfg = load_config(overrides=["joiner.window_s=300", "joiner.negative_rate=0.25"])
    assert (cfg.joiner.window_s, cfg.joiner.negative_rate) == (300, 0.25)
    assert load_config().joiner == JoinerConfig()
    for override, key in (("joiner.negative_rate=0", "joiner.negative_rate"),
                          ("joiner.window_s=-1", "joiner.window_s"),
                          ("joiner.start=middle", "joiner.start"),
                          ("joiner.group_id=", "joiner.group_id"),
                          ("joiner.windows=3", "joiner.windows")):
        with pytest.raises(ConfigError) as err:
            load_config(overrides=[override])
        assert err.value.key == key


def test_a_message_from_the_far_future_is_a_dead_letter_and_moves_no_clock() -> None:
    """One action (or impression) timed 1e18 would expire every waiting impression and
    leave real clicks unmatched; it is refused before it reaches the clock."""
    feed = Feed(window_s=60)
    feed.send(FEATURES, [feature("a", 100), feature("b", 100)])
    poison = feed.send(ACTIONS, [action("x", 10**18)])
    feed.send(FEATURES, [feature("z", 10**18)])
    feed.advance()
    assert feed.joiner.clock == 100
    assert [(d["topic"], d["offset"]) for d in feed.dead] == [("actions", poison[0]),
                                                             ("features", 2)]
    assert all("limits.max_event_skew_s" in d["reason"] for d in feed.dead)
    feed.send(ACTIONS, [action("a", 130)])
    feed.advance()
    assert feed.labels() == {"a": 1.0}, "the real click still joins"
    offsets = feed.joiner.commit_offsets()
    assert offsets[ACTIONS, 0] == 2, "the poison's offset is committed past, never pinned"


def test_slots_the_model_does_not_have_or_values_it_cannot_take_are_dead_letters() -> None:
    cfg = load_config()
    joiner = Joiner(JoinerConfig(window_s=60, allowed_lateness_s=0), slots=cfg.slots,
                    limits=cfg.limits)
    records = [(0, encode(feature("ok", 100, gender="F"))),
               (1, encode(feature("empty", 100, gender=""))),
               (2, encode(feature("unknown", 100, colour="red"))),
               (3, encode(feature("many", 100, genres=list("abcdefg")))),
               (4, b'{"request_id": "s", "time": 100, "user_id": 1, "item_id": 7, '
                   b'"slots": {"gender": "\\ud800"}}'),
               (5, b"[" * 100_000)]
    joiner.add(FEATURES, 0, records)
    joiner.drain()
    examples, dead = joiner.take_output()
    assert [json.loads(v)["request_id"] for _, v in examples] == ["ok"]
    reasons = [json.loads(d)["reason"] for d in dead]
    assert [json.loads(d)["offset"] for d in dead] == [1, 2, 3, 4, 5]
    assert "slots.gender" in reasons[0] and "slots.colour: not a slot" in reasons[1]
    assert "max_values" in reasons[2] and "UTF-8" in reasons[3] and "JSON" in reasons[4]


def test_joiner_config_memory_budget_defaults_and_is_validated() -> None:
    assert load_config().joiner.memory_budget_mb == JoinerConfig().memory_budget_mb == 256
    assert load_config(overrides=["joiner.memory_budget_mb=64"]).joiner.memory_budget_mb == 64
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["joiner.memory_budget_mb=8"])
    assert err.value.key == "joiner.memory_budget_mb"


def test_memory_stays_within_the_budget_while_many_impressions_wait() -> None:
    """120k impressions wait (no clock passes their window): the joiner's memory grows by at
    most its budget, and a click on a spilled impression still labels it and holds the commit
    offsets where the in-memory joiner would."""
    n, budget = 120_000, 16
    feed = Feed()
    feed.joiner = joiner = Joiner(
        JoinerConfig(memory_budget_mb=budget, max_in_memory=10**9, window_s=1000,
                     allowed_lateness_s=0, spill_after_s=10**6), slots=load_config().slots)
    room = (budget << 20) - joiner._store.memory_bytes
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for start in range(0, n, 5000):
            feed.send(FEATURES, [b'{"request_id":"r%d","time":%d,"user_id":1,"item_id":7,'
                                 b'"slots":{"user_id":1,"item_id":7,"genres":["Drama"]}}'
                                 % (i, 100 + i // 1000) for i in range(start, start + 5000)])
            feed.advance()
            assert joiner.held_bytes() <= room
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert grown < budget << 20, f"{grown / 2**20:.1f} MiB traced for a {budget} MiB budget"
    assert joiner.counters["pending"] == n and joiner.counters["spilled"] > n * 3 // 4
    assert len(joiner._memory) < n // 4
    feed.send(ACTIONS, [action("r0", 150), action("r1", 150), action("r60000", 180),
                        action("r1", 181)])
    feed.advance()
    assert feed.labels() == {"r0": 1.0, "r1": 1.0, "r60000": 1.0}
    assert joiner.commit_offsets() == {(FEATURES, 0): 2, (ACTIONS, 0): 2}
    from monolith_ray.stream.join import EXPIRE_FROM_STORE

    stored = len(joiner._store)
    feed.send(ACTIONS, [action("x", 2000)])
    joiner.advance()  # every impression expires: the stored ones EXPIRE_FROM_STORE an advance
    examples, _ = joiner.take_output()
    assert len(examples) == n - 3 - stored + min(stored, EXPIRE_FROM_STORE)
    if stored > EXPIRE_FROM_STORE:  # the rest not yet emitted: not committed
        assert joiner.commit_offsets()[FEATURES, 0] < n
    while len(joiner._store):
        joiner.advance()
        examples += joiner.take_output()[0]
    assert len(examples) == n - 3 and all(b'"label":0.0' in v for _, v in examples)
    assert joiner.commit_offsets() == {(FEATURES, 0): n, (ACTIONS, 0): 4}, "x waits"


class Reference:
    """The join rules of the module docstring, brute force (dicts of everything, commits by a
    walk over every feature's fate): the oracle of the commit offsets and labels."""

    def __init__(self, window: int, lateness: int) -> None:
        self.window, self.lateness = window, lateness
        self.waiting: dict = {}  # key -> (partition, offset, time)
        self.orphans: dict = {}  # key -> (partition, offset, time)
        self.fate: dict = {}  # (partition, offset) -> "waiting" | None | (a partition, offset)
        self.next: dict = {}
        self.newest: dict = {}
        self.clock = None
        self.labels: list = []

    def feature(self, p: int, o: int, rid: str, t: int, item: int) -> None:
        self.next[FEATURES, p] = o + 1
        key = (rid, str(item))
        if key in self.waiting:
            return
        self.newest[FEATURES, p] = max(self.newest.get((FEATURES, p), t), t)
        orphan = self.orphans.pop(key, None)
        if orphan is not None and orphan[2] - t <= self.window:
            self.fate[p, o] = orphan[:2]
            self.labels.append((rid, item, 1.0))
        elif self.clock is not None and t < self.clock - self.lateness - self.window:
            self.fate[p, o] = None
            self.labels.append((rid, item, 0.0))
        else:
            self.waiting[key] = (p, o, t)
            self.fate[p, o] = "waiting"

    def action(self, p: int, o: int, rid: str, t: int, item: int, kind: str) -> None:
        self.next[ACTIONS, p] = o + 1
        self.newest[ACTIONS, p] = max(self.newest.get((ACTIONS, p), t), t)
        key = (rid, str(item))
        if kind != "click":
            return
        if key in self.waiting:
            fp, fo, ft = self.waiting[key]
            if t - ft <= self.window:
                del self.waiting[key]
                self.fate[fp, fo] = (p, o)
                self.labels.append((rid, item, 1.0))
        elif key not in self.orphans:
            self.orphans[key] = (p, o, t)

    def advance(self, drain: bool = False) -> None:
        if self.newest:
            self.clock = max(self.clock or -1, *self.newest.values())
        if self.clock is None and not drain:
            return
        before = math.inf if drain else self.clock - self.lateness - self.window
        for key, (fp, fo, ft) in list(self.waiting.items()):
            if ft < before:
                del self.waiting[key]
                self.fate[fp, fo] = None
                self.labels.append((key[0], int(key[1]), 0.0))
        self.orphans = {k: v for k, v in self.orphans.items() if v[2] >= before + self.window}

    def commit_offsets(self) -> dict:
        out = {}
        for (kind, p), nxt in self.next.items():
            if kind == FEATURES:
                out[kind, p] = min([o for (fp, o), f in self.fate.items()
                                    if fp == p and f == "waiting"], default=nxt)
        for (kind, p), nxt in self.next.items():
            if kind == ACTIONS:
                needed = [f[1] for (fp, o), f in self.fate.items() if isinstance(f, tuple)
                          and f[0] == p and o >= out[FEATURES, fp]]
                needed += [v[1] for v in self.orphans.values() if v[0] == p]
                out[kind, p] = min([nxt, *needed])
        return out


_step = st.one_of(
    st.tuples(st.just(FEATURES), st.integers(0, 1), st.integers(0, 7), st.integers(0, 40),
              st.integers(7, 8)),
    st.tuples(st.just(ACTIONS), st.integers(0, 1), st.integers(0, 7), st.integers(0, 40),
              st.integers(7, 8), st.sampled_from(["click", "click", "skip"])),
    st.just(("advance",)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_step, max_size=60), spill_after_s=st.integers(0, 20),
       max_in_memory=st.integers(0, 4))
def test_commit_offsets_and_labels_match_a_brute_force_reference(
        steps: list, spill_after_s: int, max_in_memory: int) -> None:
    """Random interleavings of impressions, clicks, skips and clock moves, with spilling by age
    and by count: the joiner commits the offsets and emits the labels the brute-force
    reference does, after every step and after the drain."""
    window, lateness = 10, 2
    feed = Feed(window_s=window, allowed_lateness_s=lateness, spill_after_s=spill_after_s,
                max_in_memory=max_in_memory)
    ref = Reference(window, lateness)
    seen: list = []

    def joined() -> list:
        return sorted((e["request_id"], e["slots"]["item_id"], e["label"])
                      for e in feed.examples)

    for step in steps:
        if step[0] == FEATURES:
            _, p, r, t, item = step
            [o] = feed.send(FEATURES, [feature(f"r{r}", 1000 + t, item=item)], partition=p)
            ref.feature(p, o, f"r{r}", 1000 + t, item)
        elif step[0] == ACTIONS:
            _, p, r, t, item, kind = step
            [o] = feed.send(ACTIONS, [action(f"r{r}", 1000 + t, item=item, kind=kind)],
                            partition=p)
            ref.action(p, o, f"r{r}", 1000 + t, item, kind)
        else:
            feed.advance()
            ref.advance()
        seen.append(step)
        assert feed.joiner.commit_offsets() == ref.commit_offsets(), seen
    feed.advance()
    ref.advance()
    assert feed.joiner.commit_offsets() == ref.commit_offsets()
    assert joined() == sorted(ref.labels)
    feed.drain()
    ref.advance(drain=True)
    assert joined() == sorted(ref.labels)
    assert feed.joiner.commit_offsets() == ref.commit_offsets()


def test_a_clock_jump_emits_the_stored_impressions_a_bounded_part_at_a_time(
        tmp_path, monkeypatch) -> None:
    """Impressions in the on-disk store that a jump of the clock expires all at once leave
    at most EXPIRE_FROM_STORE an advance, each once, oldest first; drain(whole=False) does
    the same."""
    import monolith_ray.stream.join as join

    monkeypatch.setattr(join, "EXPIRE_FROM_STORE", 40)
    for drained in (False, True):
        joiner = Joiner(JoinerConfig(window_s=1000, allowed_lateness_s=0, spill_after_s=0),
                        store=SpillStore(str(tmp_path / f"store-{drained}.sqlite")))
        joiner.add(FEATURES, 0, [(i, encode(feature(f"r{i}", 100 + i))) for i in range(150)])
        joiner.add(ACTIONS, 0, [(0, encode(action("x", 300)))])
        joiner.advance()  # all spilled (spill_after_s 0), none expired yet
        assert len(joiner._store) == 150 and not joiner.take_output()[0]
        sizes, seen = [], []
        for _ in range(10):
            if drained:
                done = joiner.drain(whole=False)
            else:
                joiner.add(ACTIONS, 0, [(1 + len(sizes), encode(action("x", 10_000)))])
                joiner.advance()  # the clock jumps to 10,000: every impression expired
                done = not len(joiner._store)
            examples = joiner.take_output()[0]
            sizes.append(len(examples))
            seen += [json.loads(v)["request_id"] for _, v in examples]
            if done:
                break
        assert max(sizes) <= 40 and seen == [f"r{i}" for i in range(150)], (drained, sizes)
