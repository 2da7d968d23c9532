"""The serving decision on the Kafka messages: a features message's policy, arm and
propensity are validated (fast and slow read agree), ride into the joined example, and a
malformed one is a dead letter, not a crash."""

from __future__ import annotations

import json

import pytest

from monolith_ray.config import JoinerConfig, KafkaTopics, load_config
from monolith_ray.messages import MessageError, Reader, encode, parse_example, parse_feature
from monolith_ray.stream.join import ACTIONS, FEATURES, Joiner

NOW = 1_700_000_100


def feature(rid: str, **extra: object) -> dict:
    return {"request_id": rid, "time": 1_700_000_000, "user_id": 1, "item_id": 7,
            "slots": {"user_id": 1, "item_id": 7}, **extra}


DECISION = {"policy": "epsilon", "arm": "explore/eps", "propensity": 0.925}
BAD = [({"propensity": 0}, "propensity"), ({"propensity": 1.5}, "propensity"),
       ({"propensity": "1"}, "propensity"), ({"policy": ""}, "policy"),
       ({"policy": "a b"}, "policy"), ({"arm": "x" * 130}, "arm"), ({"arm": 3}, "arm")]


def test_parse_feature_keeps_a_valid_decision_and_names_a_bad_one() -> None:
    assert {k: parse_feature(feature("r", **DECISION), now=NOW)[k] for k in DECISION} == DECISION
    assert "propensity" not in parse_feature(feature("r"), now=NOW)
    assert "arm" not in parse_feature(feature("r", arm=None), now=NOW)
    for extra, key in BAD:
        with pytest.raises(MessageError, match=f"^{key}: "):
            parse_feature(feature("r", **extra), now=NOW)


def test_reader_fast_and_slow_reads_agree() -> None:
    slots = {s.name: s for s in load_config().slots}
    reader = Reader(slots)
    assert reader.feature(encode(feature("r", **DECISION)), NOW) == ("r", 1_700_000_000, 7)
    for extra, key in BAD:
        with pytest.raises(MessageError, match=f"^{key}: "):
            reader.feature(encode(feature("r", **extra)), NOW)


def test_the_decision_rides_into_the_example_and_a_bad_one_is_a_dead_letter() -> None:
    topics = KafkaTopics(features="f", actions="a", examples="e", dead_letter="d")
    joiner = Joiner(JoinerConfig(window_s=60, allowed_lateness_s=0), topics)
    records = [encode(feature("good", **DECISION)),
               *(encode(feature(f"bad{i}", **extra)) for i, (extra, _) in enumerate(BAD))]
    joiner.add(FEATURES, 0, list(enumerate(records)))
    joiner.add(ACTIONS, 0, [(0, encode({"request_id": "good", "item_id": 7,
                                        "time": 1_700_000_001, "action": "click"}))])
    joiner.drain()
    joiner.advance()
    examples, dead = joiner.take_output()
    assert len(examples) == 1 and len(dead) == len(BAD)
    example = parse_example(json.loads(examples[0][1]), now=NOW)
    assert example["label"] == 1.0
    assert {k: example[k] for k in DECISION} == DECISION
    assert [json.loads(d)["reason"].split(":")[0] for d in dead] == [k for _, k in BAD]
