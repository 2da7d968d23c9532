"""The synthetic stream: reproducible rows, Zipf ids with a steady inflow of new ones,
heavy-tailed dense counts, labels from a hidden model whose AUC bounds a fitted model's, and
its Parquet, message and Kafka outputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from kafka.partitioner import DefaultPartitioner

from monolith_ray.cli import SYNTH_CONFIG, main
from monolith_ray.config import Config, KafkaConfig, KafkaTopics, load_config
from monolith_ray.data import synth
from monolith_ray.data.slot_columns import ExampleDecoder
from monolith_ray.data.synth import SynthSpec
from monolith_ray.messages import Reader, decode, parse_action, parse_example, parse_feature
from monolith_ray.model.metrics import auc
from monolith_ray.schemas import validate_examples
from monolith_ray.stream.kafka import read_range

SPEC = SynthSpec()
SMALL = SynthSpec(seed=3, cardinalities=(1000, 300, 10), n_dense=2, rate_per_s=50.0,
                  new_id_min_cardinality=1000, new_id_fraction=0.05, click_delay_s=20,
                  interaction_slots=(0, 1))
SMALL_CONFIG = Config.from_dict(synth.config(SMALL))


def test_the_same_spec_and_range_give_the_same_rows_however_cut() -> None:
    whole = synth.examples(SPEC, 1_000, 70_000)  # more than one chunk of generation
    assert whole.schema == SPEC.schema
    validate_examples(whole, SPEC.schema)
    cut = pa.concat_tables([synth.examples(SPEC, 1_000, 12_345),
                            synth.examples(SPEC, 13_345, 58_000 - 12_345),
                            synth.examples(SPEC, 59_000, 12_000)])
    assert cut.equals(whole)
    assert synth.examples(SPEC, 1_000, 70_000).equals(whole)
    other = synth.examples(dataclasses.replace(SPEC, seed=1), 1_000, 1_000)
    assert not other.column("C5").equals(whole.slice(0, 1_000).column("C5"))
    times = whole.column("time").to_numpy()
    assert np.all(np.diff(times) >= 0)
    assert times[0] == SPEC.start_time + 1_000 // int(SPEC.rate_per_s)


def test_ids_are_zipf_distributed() -> None:
    table = synth.examples(SPEC, 0, 50_000)
    assert SPEC.cardinalities[0] == 30_000_000 and SPEC.cardinalities[-1] == 10
    _, counts = np.unique(table.column("C7").to_numpy(), return_counts=True)  # ~850k ids
    counts = np.sort(counts)[::-1]
    n = counts.sum()
    # P(rank 0) = (1 - 2**-0.1) / (1 - (N + 1)**-0.1) ~ 0.09 for exponent 1.1
    assert 0.07 < counts[0] / n < 0.11
    assert counts[:100].sum() / n > 0.4
    assert counts[0] > 3 * counts[9] > 3 * counts[99]
    _, few = np.unique(table.column("C26").to_numpy(), return_counts=True)
    assert len(few) == 10 and few.max() > 5 * few.min()


def _unseen_share(spec: SynthSpec, slot: str, n: int, windows: int) -> list[float]:
    """Per consecutive window of the first n examples: the share of the slot's draws that
    are ids not seen in any earlier example."""
    ids = synth.examples(spec, 0, n).column(slot).to_numpy()
    _, first = np.unique(ids, return_index=True)
    new = np.zeros(n, dtype=bool)
    new[first] = True
    return [float(w.mean()) for w in np.array_split(new, windows)]


def test_new_ids_keep_arriving_over_event_time() -> None:
    # 60_000 examples = 5 event minutes; a fresh id is drawn twice on average
    spec = dataclasses.replace(SPEC, rate_per_s=200.0, new_id_fraction=0.1, new_id_repeats=2)
    assert spec.new_ids_per_bucket == 600
    with_fresh = _unseen_share(spec, "C1", 60_000, 6)
    without = _unseen_share(dataclasses.replace(spec, new_id_fraction=0.0), "C1", 60_000, 6)
    assert all(w > wo + 0.02 for w, wo in zip(with_fresh, without))  # about 0.05 each
    assert _unseen_share(spec, "C26", 60_000, 6)[-1] == 0.0  # 10 ids: all seen long ago


def test_dense_counts_are_heavy_tailed_with_the_documented_missing_rate() -> None:
    table = synth.examples(SPEC, 0, 40_000)
    for name in SPEC.dense_names:
        column = table.column(name)
        assert abs(column.null_count / len(column) - SPEC.dense_missing_rate) < 0.01
        values = column.drop_null().to_numpy()
        assert np.isfinite(values).all() and (values >= 0).all()
        assert np.array_equal(values, np.floor(values))  # counts
        assert np.quantile(values, 0.999) > 10 * max(1.0, np.quantile(values, 0.5))


def _naive_bayes(train: pa.Table, test: pa.Table, names: list[str]) -> np.ndarray:
    """Sum over slots of each id's smoothed log-odds shift in ``train`` -> test scores."""
    y = train.column("label").to_numpy()
    prior = y.mean()
    score = np.zeros(len(test))
    for name in names:
        ids, inverse = np.unique(train.column(name).to_numpy(), return_inverse=True)
        pos = np.bincount(inverse, y, len(ids))
        seen = np.bincount(inverse, minlength=len(ids))
        rate = (pos + 10 * prior) / (seen + 10)
        shift = np.log(rate / (1 - rate)) - np.log(prior / (1 - prior))
        at = np.clip(np.searchsorted(ids, test.column(name).to_numpy()), 0, len(ids) - 1)
        known = ids[at] == test.column(name).to_numpy()
        score += np.where(known, shift[at], 0.0)
    return score


def test_labels_come_from_a_hidden_model_whose_auc_bounds_a_fitted_one() -> None:
    train = synth.examples(SPEC, 0, 200_000)
    held_out = synth.examples(SPEC, 200_000, 50_000)
    rate = held_out.column("label").to_numpy().mean()
    assert 0.15 < rate < 0.25
    ceiling = synth.auc_ceiling(SPEC, held_out)
    assert 0.78 < ceiling < 0.88
    fitted = auc(_naive_bayes(train, held_out, SPEC.slot_names),
                 held_out.column("label").to_numpy())
    assert 0.65 < fitted < ceiling - 0.02
    p = synth.probability(SPEC, held_out)
    assert abs(p.mean() - rate) < 0.01  # labels are draws of these probabilities


def test_drift_turns_the_hidden_model_over_event_time() -> None:
    drifting = dataclasses.replace(SPEC, drift=3.0, rate_per_s=5.0)  # 3_600 s: 3 radians
    still = dataclasses.replace(drifting, drift=0.0)
    first = synth.examples(drifting, 0, 5)  # event time 0: not turned yet
    assert np.allclose(synth.probability(drifting, first), synth.probability(still, first))
    late = synth.examples(drifting, 18_000, 5_000)
    labels = late.column("label").to_numpy()
    assert synth.auc_ceiling(drifting, late) > auc(synth.probability(still, late), labels) + 0.05


def test_parquet_is_hour_partitioned_and_reads_back(tmp_path: Path) -> None:
    spec = dataclasses.replace(SMALL, start_time=1_700_002_790)  # an hour ends 10 s in
    summary = synth.write_parquet(spec, str(tmp_path / "out"), 3_000, start=100,
                                  rows_per_write=1_000)
    expected = synth.examples(spec, 100, 3_000)
    assert summary["examples"] == 3_000 and summary["files"] == 4
    assert summary["positives"] == int(expected.column("label").to_numpy().sum())
    assert summary["auc_ceiling"] == pytest.approx(synth.auc_ceiling(spec, expected),
                                                   abs=1e-3)
    hours = sorted(p.relative_to(tmp_path / "out").parent.as_posix()
                   for p in (tmp_path / "out").rglob("*.parquet"))
    assert hours == ["dt=2023-11-14/hour=22"] + ["dt=2023-11-14/hour=23"] * 3
    dataset = pads.dataset(tmp_path / "out", format="parquet", partitioning="hive")
    table = dataset.to_table().sort_by([("time", "ascending")])
    validate_examples(table, spec.schema)
    assert table.select(spec.schema.names).equals(expected)


def test_messages_parse_as_the_topics_messages_and_match_the_rows() -> None:
    table = synth.examples(SMALL, 0, 2_000).to_pylist()
    known = {s.name: s for s in SMALL_CONFIG.slots}
    dense = {d.name: d for d in SMALL_CONFIG.dense}
    batches = list(synth.messages(SMALL, 0, 2_000, "examples", batch=700))
    assert [len(b) for b in batches] == [700, 700, 600]
    for (topic, key, value), row in zip([m for b in batches for m in b], table):
        msg = parse_example(decode(value), known, dense=dense)
        assert topic == "examples" and key.decode() == msg["request_id"]
        assert msg["time"] == row["time"] and msg["label"] == row["label"]
        assert msg["slots"] == {name: row[name] for name in SMALL.slot_names}
        assert msg["dense"] == {k: row[k] for k in SMALL.dense_names}  # None: missing


def test_examples_messages_decode_to_the_rows_of_the_table() -> None:
    decoder = ExampleDecoder(SMALL_CONFIG.slots, SMALL_CONFIG.dense)  # the Kafka source's
    raws = [value for batch in synth.messages(SMALL, 0, 1_000) for _, _, value in batch]
    decoded, refused = decoder.decode(raws, now=2e9)
    assert refused == []
    columns = decoder.columns(decoded)
    for name, column in synth.examples(SMALL, 0, 1_000).to_pydict().items():
        assert pa.array(columns[name]).to_pylist() == column


def test_joiner_messages_click_after_their_impression_within_the_delay() -> None:
    rows = synth.examples(SMALL, 0, 3_000).to_pylist()
    reader = Reader({s.name: s for s in SMALL_CONFIG.slots},
                    dense={d.name: d for d in SMALL_CONFIG.dense})
    features, clicks = {}, {}
    for batch in synth.messages(SMALL, 0, 3_000, "joiner", batch=500):
        for topic, key, value in batch:
            if topic == "features":
                msg = parse_feature(decode(value))
                assert reader.feature(value, now=2e9)[0] == msg["request_id"] == key.decode()
                features[key] = msg
            else:
                assert topic == "actions" and key in features  # never before its impression
                clicks[key] = parse_action(decode(value))
    assert len(features) == 3_000
    positives = {f"synth-{SMALL.seed}-{i}".encode() for i, r in enumerate(rows) if r["label"]}
    assert set(clicks) == positives
    for key, click in clicks.items():
        assert click["item_id"] == features[key]["item_id"] == features[key]["slots"]["C2"]
        assert 1 <= click["time"] - features[key]["time"] <= SMALL.click_delay_s


def test_config_sections_match_the_embedded_config() -> None:
    embedded = load_config(SYNTH_CONFIG)
    sections = Config.from_dict(synth.config(SPEC))
    assert embedded.slots == sections.slots and embedded.dense == sections.dense
    assert [s.name for s in embedded.slots] == SPEC.slot_names
    assert {s.dim for s in embedded.slots} == {16}
    assert {s.optimizer.kind for s in embedded.slots} == {"adagrad"}
    assert (embedded.serve.user_slot, embedded.serve.item_slot) == ("C1", "C2")
    embedded.check_serving()


def test_produce_writes_keyed_messages_the_joiner_can_pair(kafka_bootstrap: str) -> None:
    topics = KafkaTopics(features="synth-f", actions="synth-a", examples="synth-e",
                         dead_letter="synth-d")
    kafka = KafkaConfig(bootstrap_servers=kafka_bootstrap, partitions=3, topics=topics)
    summary = synth.produce(SMALL, kafka, 1_000, "joiner")
    positives = int(synth.examples(SMALL, 0, 1_000).column("label").to_numpy().sum())
    assert summary["topics"] == {"synth-f": 1_000, "synth-a": positives}
    assert summary["failed"] == 0 and summary["positives"] == positives
    placed = {}
    for topic in ("synth-f", "synth-a"):
        for partition in range(3):
            for record in read_range(kafka, topic, partition, 0):
                assert DefaultPartitioner()(record.key, [0, 1, 2], [0, 1, 2]) == partition
                placed.setdefault(record.key, set()).add(partition)
    assert len(placed) == 1_000 and all(len(p) == 1 for p in placed.values())
    assert synth.produce(SMALL, kafka, 200, "examples")["topics"] == {"synth-e": 200}


def test_cli_produces_for_the_joiner(kafka_bootstrap: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    sets = [f"kafka.bootstrap_servers={kafka_bootstrap}", "kafka.topics.features=cli-f",
            "kafka.topics.actions=cli-a", "joiner.window_s=5"]
    assert main(["data", "synth", "--examples", "300", "--kafka", "joiner",
                 *[arg for kv in sets for arg in ("--set", kv)]]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["topics"] == {"cli-f": 300, "cli-a": summary["positives"]}
    kafka = KafkaConfig(bootstrap_servers=kafka_bootstrap)
    clicks = [decode(r.value) for p in range(kafka.partitions)
              for r in read_range(kafka, "cli-a", p, 0)]
    impressions = synth.examples(SPEC, 0, 300).column("time").to_pylist()
    assert len(clicks) == summary["positives"] > 0
    assert all(1 <= c["time"] - impressions[int(c["request_id"].rsplit("-", 1)[1])] <= 5
               for c in clicks)  # the click delay kept within joiner.window_s


def test_cli_writes_parquet_and_prints_a_summary(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--examples", "5000", "--seed", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["examples"] == 5_000 and summary["out"] == str(out)
    assert 0.1 < summary["positive_rate"] < 0.3 and summary["auc_ceiling"] > 0.7
    assert pads.dataset(out, format="parquet", partitioning="hive").count_rows() == 5_000
    assert main(["data", "synth", "--out", str(out), "--examples", "5"]) == 2  # not empty
    assert main(["data", "synth", "--examples", "5"]) == 2
    assert main(["data", "synth", "--examples", "5", "--kafka", "joiner",
                 "--set", "kafka.bootstrap_servers="]) == 2
