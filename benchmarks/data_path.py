"""The data path at scale: the same trainer fed pre-built batches, Parquet through Ray Data,
and the online job from Kafka, on the synthetic Criteo-shaped stream; the joiner on a replay
of millions of impressions in bounded memory; the AUC a pass reaches against the stream's
known ceiling.

Input: ``monolith_ray.data.synth`` with its default ``SynthSpec`` (26 Zipf slots of 10 to
30M ids, 13 heavy-tailed dense counts, new ids arriving, labels from a hidden model) and the
config ``monolith_ray/defaults/synth.yaml`` (dim 16, Adagrad rows, DeepFM MLP 256-128,
batch 2,048, one trainer that owns the dense parameters, 2 shards), Ray started once with
``num_cpus=2``. Example ranges of the stream (each a first pass over its ids, in event-time
order): ``W`` (warm-up), ``A`` (pre-built), ``B`` (Parquet), ``K`` (Kafka), then the held-out
``T`` after all of them.

- ``prebuilt_examples_per_s``: one ``Trainer`` actor (the batch job's, as a
  ``benchmarks.train_throughput.ThroughputTrainer``) on fresh servers (``start_servers``,
  dense standardization fitted on the head of ``W``), first trained untimed on ``W`` (pre-built
  batches: compiles the step for the row buckets), then one timed pass over ``A``'s batches,
  built in the driver beforehand (``iter_batches``) and handed over through the object store.
- ``parquet_examples_per_s``: the same actor, then one pass over ``B`` written as the stream's
  hour-partitioned Parquet (``synth.write_parquet``) and read as the batch job reads it
  (``parquet_rows.read_positioned(...).streaming_split(1)``, batches made in the trainer):
  ``Trainer.fit``'s examples / seconds. ``parquet_vs_prebuilt`` is the ratio (target >= 0.7).
- ``auc_trained``: the AUC of that trainer's model on ``T`` (``Trainer.evaluate``) after one
  pass over ``W``, ``A`` and ``B``; ``auc_ceiling``: the hidden model's own AUC on ``T``'s
  drawn labels (target: ``auc_trained >= auc_ceiling - 0.03``).
- ``kafka_examples_per_s``: ``K`` produced to the ``examples`` topic of the embedded broker
  (``synth.produce``), then ``run_online_training`` (``online.start=earliest``,
  ``online.stop=end``, the config's other online settings): the stream phase's
  ``examples_per_s`` (its trainer's examples over its ``consume`` seconds). A fresh job: its
  actors start and its step compiles inside that time (the XLA cache, shared with the
  pre-built side through ``train.compile_cache_dir``, saves most of the compile).
  ``kafka_vs_prebuilt`` is the ratio (target >= 0.5).
- ``joiner_*``: ``benchmarks.joiner_replay.replay`` (the joiner's core fed as
  ``StreamJoiner`` feeds it, no Kafka) in a child process, so its peak RSS is its own, on the
  stream's ``features`` and ``actions`` messages of ``JOINER_IMPRESSIONS`` impressions
  (``synth.messages(mode="joiner")``, keyed onto 2 partitions by request id), with the
  config's slots, dense features and ``joiner`` settings (``memory_budget_mb`` included).
  ``joiner_examples_per_s`` counts the messages' generation in the same process (about a
  third of its CPU). Target ``joiner_peak_rss_mb <= joiner_memory_budget_mb + 300``.

Every throughput is steady-state: examples after a pass's first step over the seconds after
it (``steady``), on every side alike, so the dataset's or the stream's start and the first
step (a fresh job's compile on the Kafka side) are left out; the ``*_wall_examples_per_s``
fields keep them in, and ``parquet_first_step_s`` / ``kafka_first_step_s`` say how long they
took.

Sizes: env ``EXAMPLES`` (per range, default 1,000,000), ``JOINER_IMPRESSIONS`` (default
10,000,000). The 2 cores are shared by the trainer, the shards, Ray Data's read tasks and the
driver; ``load_1m`` is the one-minute load before the run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray

from benchmarks.joiner_replay import replay
from benchmarks.train_throughput import ThroughputTrainer
from monolith_ray.config import Config, load_config
from monolith_ray.data import synth
from monolith_ray.data.batches import iter_batches
from monolith_ray.data.parquet_rows import read_positioned
from monolith_ray.stream.join import FEATURES
from monolith_ray.stream.kafka import kafka_session
from monolith_ray.train.job import fit_dense, start_servers, trainer_options
from monolith_ray.train.online import run_online_training

CONFIG = Path(__file__).parents[1] / "monolith_ray" / "defaults" / "synth.yaml"
EXAMPLES = int(os.environ.get("EXAMPLES", 1_000_000))
JOINER_IMPRESSIONS = int(os.environ.get("JOINER_IMPRESSIONS", 10_000_000))
OBJECT_STORE_BYTES = 1 << 30


def config(out: str, bootstrap: str = "") -> Config:
    """The synthetic stream's config with this run's folders and broker."""
    cfg = load_config(CONFIG, overrides=[
        f"data.output_dir={out}/run", f"train.compile_cache_dir={out}/xla",
        "online.start=earliest", "online.stop=end"])
    if bootstrap:
        cfg = dataclasses.replace(cfg, kafka=dataclasses.replace(cfg.kafka,
                                                                 bootstrap_servers=bootstrap))
    return cfg


def ranges(n: int) -> dict[str, tuple[int, int]]:
    """Example index ranges of the stream: warm-up, pre-built, Parquet, Kafka, held-out."""
    names = ("W", "A", "B", "K", "T")
    sizes = {"W": max(n // 5, 20_000), "T": max(n // 5, 20_000)}
    out, start = {}, 0
    for name in names:
        size = sizes.get(name, n)
        out[name] = (start, size)
        start += size
    return out


def steady(run: dict[str, Any]) -> float:
    """Examples a second of a pass after its first step (a trainer's ``fit``, ``consume`` or
    pre-built ``epoch``): the dataset's or stream's start and the first batch's wait left out
    on every side alike."""
    return ((run["examples"] - run["first_step_examples"])
            / max(run["seconds"] - run["first_step_s"], 1e-9))


def batch_side(cfg: Config, spec: synth.SynthSpec, parts: dict[str, tuple[int, int]],
               out: str) -> dict[str, Any]:
    """Pre-built then Parquet passes through one trainer actor, then its AUC on ``T``."""
    head = synth.examples(spec, parts["W"][0], min(parts["W"][1], cfg.data.dense_fit_rows))
    shards, dense = start_servers(cfg, norm=fit_dense(cfg, head))
    trainer = ray.remote(ThroughputTrainer).options(**trainer_options(cfg)).remote(
        cfg, shards, dense, True)

    def batches(name: str) -> Any:
        table = synth.examples(spec, *parts[name])
        return ray.put(list(iter_batches(table, cfg.slots, cfg.train.batch_size, cfg.dense)))

    ray.get(trainer.load.remote(batches("W")))
    ray.get(trainer.epoch.remote())  # warm-up: compile, first rows
    ray.get(trainer.load.remote(batches("A")))
    prebuilt = ray.get(trainer.epoch.remote())
    ray.get(trainer.load.remote([]))

    path = f"{out}/parquet-B"
    synth.write_parquet(spec, path, parts["B"][1], start=parts["B"][0])
    split = read_positioned(path, num_cpus=cfg.train.read_cpus, min_tasks=4).streaming_split(1)[0]
    parquet = ray.get(trainer.fit.remote(split, 1))

    test = f"{out}/parquet-T"
    truth = synth.write_parquet(spec, test, parts["T"][1], start=parts["T"][0])
    evaluated = ray.get(trainer.evaluate.remote(ray.data.read_parquet(test)))
    for actor in [trainer, *shards, dense]:
        ray.kill(actor)
    return {"prebuilt_examples_per_s": steady(prebuilt),
            "prebuilt_wall_examples_per_s": prebuilt["examples"] / prebuilt["seconds"],
            "prebuilt_examples": prebuilt["examples"],
            "parquet_examples_per_s": steady(parquet),
            "parquet_wall_examples_per_s": parquet["examples_per_s"],
            "parquet_first_step_s": parquet["first_step_s"],
            "parquet_examples": parquet["examples"],
            "auc_trained": evaluated["auc"], "logloss_trained": evaluated["logloss"],
            "auc_ceiling": truth["auc_ceiling"], "test_examples": evaluated["examples"]}


def kafka_side(cfg: Config, spec: synth.SynthSpec, parts: dict[str, tuple[int, int]]
               ) -> dict[str, Any]:
    """``K`` on the examples topic, then the online job over it to its end."""
    produced = synth.produce(spec, cfg.kafka, parts["K"][1], mode="examples",
                             start=parts["K"][0])
    if produced["failed"]:
        raise RuntimeError(f"{produced['failed']} messages were not produced")
    metrics = run_online_training(cfg)
    stream = metrics["phases"]["stream"]
    if int(stream["examples"]) != parts["K"][1]:
        raise RuntimeError(f"the online job trained {stream['examples']} examples of "
                           f"{parts['K'][1]}")
    (fit,) = stream["trainers"]
    return {"kafka_examples_per_s": steady(fit),
            "kafka_wall_examples_per_s": float(stream["examples_per_s"]),
            "kafka_first_step_s": fit["first_step_s"],
            "kafka_examples": int(stream["examples"]),
            "kafka_produce_seconds": produced["seconds"]}


def joiner_side(cfg: Config, impressions: int) -> dict[str, Any]:
    """:func:`joiner_replay` in a child process, so its peak RSS is the joiner's own."""
    command = [sys.executable, "-m", "benchmarks.data_path", "--joiner", str(impressions)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def joiner_batches(spec: synth.SynthSpec, n: int, partitions: int = 2
                   ) -> Iterator[tuple[str, int, list[tuple[int, bytes]]]]:
    """The stream's ``features`` and ``actions`` messages of ``n`` impressions as a joiner
    reads them: keyed by request id onto ``partitions`` partitions (the same number for both
    topics, as producers key them), in offset order, a batch per topic and partition of each
    generated list."""
    offsets: dict[tuple[str, int], int] = {}
    for messages in synth.messages(spec, 0, n, mode="joiner"):
        grouped: dict[tuple[str, int], list[tuple[int, bytes]]] = {}
        for topic, key, value in messages:
            where = (topic, zlib.crc32(key) % partitions)
            offset = offsets.get(where, 0)
            offsets[where] = offset + 1
            grouped.setdefault(where, []).append((offset, value))
        for (topic, partition), records in sorted(grouped.items(), key=lambda kv: kv[0][0] !=
                                                  FEATURES):
            yield topic, partition, records


def joiner_replay(impressions: int) -> dict[str, Any]:
    """The joiner's core (``benchmarks.joiner_replay.replay``) over the stream's messages with
    the synthetic config's slots, dense features and joiner settings."""
    cfg = config("/tmp")
    return replay(joiner_batches(synth.SynthSpec(), impressions), cfg.joiner.memory_budget_mb,
                  cfg.joiner, slots=cfg.slots, dense=cfg.dense)


def main() -> None:
    load = os.getloadavg()[0]
    spec = synth.SynthSpec()
    parts = ranges(EXAMPLES)
    figures: dict[str, Any] = {}
    ray.init(address="local", num_cpus=2, object_store_memory=OBJECT_STORE_BYTES,
             include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-data-path-") as out:
            base = config(out)
            figures.update(batch_side(base, spec, parts, out))
            with kafka_session(base.kafka) as bootstrap:
                figures.update(kafka_side(config(out, bootstrap), spec, parts))
    finally:
        ray.shutdown()
    figures.update(joiner_side(config("/tmp"), JOINER_IMPRESSIONS))
    prebuilt = figures["prebuilt_examples_per_s"]
    result = {
        "prebuilt_examples_per_s": round(prebuilt),
        "parquet_examples_per_s": round(figures["parquet_examples_per_s"]),
        "parquet_vs_prebuilt": round(figures["parquet_examples_per_s"] / prebuilt, 3),
        "kafka_examples_per_s": round(figures["kafka_examples_per_s"]),
        "kafka_vs_prebuilt": round(figures["kafka_examples_per_s"] / prebuilt, 3),
        "joiner_examples_per_s": round(figures["joiner_examples_per_s"]),
        "joiner_impressions": figures["joiner_impressions"],
        "joiner_peak_rss_mb": round(figures["joiner_peak_rss_mb"], 1),
        "joiner_memory_budget_mb": figures["joiner_memory_budget_mb"],
        "auc_ceiling": round(figures["auc_ceiling"], 4),
        "auc_trained": round(figures["auc_trained"], 4),
        "examples_per_range": EXAMPLES,
        "load_1m": round(load, 2),
        **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in figures.items()
           if k.endswith("_examples") or "seconds" in k or "wall" in k or "first_step" in k
           or k == "logloss_trained"},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--joiner"]:
        print(json.dumps(joiner_replay(int(sys.argv[2]))), flush=True)
    else:
        main()
