"""Training throughput on Ray actors against the same training in one process.

DeepFM (every slot dim 16, MLP 256-128, Adam 1e-3 on the dense part), batch 2048, on the
MovieLens-100K train split (``data/ml-100k/parquet/train.parquet``, 80k examples, 40 steps an
epoch) with the slots of ``monolith_ray/defaults/movielens.yaml``, two ways in one run:

- ``ray``: what ``run_batch_training`` starts with one trainer (``start_servers``: 2
  ``ShardServer`` actors and the ``DenseServer`` actor) and one ``Trainer`` actor (with the
  job's ``trainer_options``), whose ``TrainLoop`` pulls rows from and pushes gradients to the
  shard actors over the job's default transport, channels (``monolith_ray.ps.channel``: a
  direct connection per shard, opened through Ray). As the job's only
  trainer it owns the dense parameters (``LOCAL_DENSE``) and publishes them to the dense
  server after a fit; with ``LOCAL_DENSE = False`` it pushes dense gradients every step and
  pulls parameters every ``train.dense_pull_every`` steps (``DENSE_PULL_EVERY`` = 4), as
  trainers do when there are several.
- ``inprocess``: the same model and tables called directly: 2 plain ``ShardServer`` objects,
  a ``ShardClient`` with ``DirectCalls`` and a ``TrainLoop`` that updates its own dense
  parameters (no dense server), all in this process.
- ``ray_tasks`` (extra figures ``examples_per_s_ray_tasks``, ``ratio_ray_tasks``): a second
  trainer actor like the first but calling the shards with Ray actor calls
  (``train.transport=ray``), to show what the channels save.

``ratio_default_batch``: the same Ray-over-in-process ratio (median epoch figures,
``examples_per_s_ray_default_batch`` and ``examples_per_s_inprocess_default_batch``) with the
shipped config's batch size and threads instead: ``train.batch_size`` of
``monolith_ray/defaults/movielens.yaml`` (256, so 313 steps an epoch, where per-call costs
weigh eight times as much per example) and ``train.xla_threads`` 0 (a trainer's XLA pool sized
by its reserved CPUs: one thread); the in-process side is the driver, as above. It is timed
in a second Ray session after the first, ``REPEATS`` interleaved epochs of the two sides
(no ``ray_tasks`` or streaming figures).

Both sides run XLA with a thread per core of the machine: the in-process side by XLA's
default, the trainer actors by ``train.xla_threads`` (``XLA_THREADS``).

Ray is started once with ``ray.init(num_cpus=2, object_store_memory=300 MB)``; the in-process
side runs in the driver while the actors idle, and each side while the others idle.

Data loading is not measured: both sides train on the same ``Batch`` list, built once from
one Arrow table (``iter_batches``) before any timing; the Ray trainer gets it through the
object store before its first epoch. The extra figure ``examples_per_s_ray_streaming`` is the
Ray trainer fed as the batch job feeds it instead (``Trainer.fit`` on
``read_parquet(...).streaming_split(1)``, batches made in the trainer), so it does include
reading and batching.

Warm-up: each side first trains ``WARMUP_EPOCHS`` epochs untimed, which compiles the jitted
steps for every padded row count the batches reach (the counts only grow) and the Numba table
code. Then ``REPEATS`` epochs per side are timed, interleaved (ray, inprocess, inprocess,
ray, ..., the order rotating each round) so that background load on the 2 shared cores hits
all alike; a figure is
examples / median epoch seconds, ``ratio`` the Ray figure over the in-process one and
``ratio_paired`` the median over rounds of the same ratio for the two epochs of one round.
Epochs keep training the same tables and parameters. ``load_avg_1m`` is the machine's load
before and after: other work on the 2 cores slows both sides, and not alike (under heavy load
the Ray side, spread over more processes, gets a larger share of the CPU).

Step breakdown (``*_ms_per_step``, over the timed epochs): per call kind (``pull``,
``push_pull``, ``push``, ``stats``; ``dense_push``, ``dense_pull``), the time spent issuing
calls (``submit``: on Ray, serializing the arguments and handing them over; in process, the
whole shard call) and waiting for them (``wait``: what the step waited, round trip and
deserialization). ``compute`` is the rest of the step (routing, padding, the jitted step,
gradient slicing); calls issued while a jitted step runs on XLA's threads overlap it (the
loop issues batch k+1's pull, then queues step k+1 behind step k, see
``monolith_ray.train.loop``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import ray

from monolith_ray.config import Config, load_config
from monolith_ray.data.batches import Batch, iter_batches
from monolith_ray.ps.calls import Calls
from monolith_ray.ps.shard import ShardServer
from monolith_ray.train.job import (
    Trainer,
    read_examples,
    start_servers,
    trainer_options,
)

DATA = Path("data/ml-100k/parquet/train.parquet")
SLOTS_YAML = Path(__file__).resolve().parents[1] / "monolith_ray/defaults/movielens.yaml"
BATCH_SIZE = 2048
HIDDEN = (256, 128)
WARMUP_EPOCHS = 1
REPEATS = 10
DENSE_PULL_EVERY = 4
STREAMING_REPEATS = 3
XLA_THREADS = os.cpu_count() or 1
OBJECT_STORE_BYTES = 300 * 1024**2


@dataclasses.dataclass
class _Tagged:
    """A call in flight and the name of the method it calls."""

    method: str
    handle: Any


class TimedCalls:
    """``Calls`` that forward to ``inner`` and add up, per method, the seconds spent in
    ``submit`` and in ``gather``."""

    def __init__(self, inner: Calls) -> None:
        self.inner = inner
        self.seconds: dict[str, float] = defaultdict(float)

    def submit(self, shard: Any, method: str, *args: Any) -> _Tagged:
        start = time.perf_counter()
        handle = self.inner.submit(shard, method, *args)
        self.seconds[f"{method}_submit"] += time.perf_counter() - start
        return _Tagged(method, handle)

    def gather(self, handles: list[_Tagged]) -> list[Any]:
        start = time.perf_counter()
        results = self.inner.gather([h.handle for h in handles])
        if handles:
            self.seconds[f"{handles[0].method}_wait"] += time.perf_counter() - start
        return results


class ThroughputTrainer(Trainer):
    """A ``Trainer`` that also trains on a list of prepared batches, one timed epoch a call,
    with its shard (and dense-server) calls timed. With ``dense=None`` and plain
    ``ShardServer`` objects it is the in-process trainer."""

    def __init__(self, cfg: Config, shards: Sequence[Any], dense: Any,
                 local_dense: bool = False) -> None:
        super().__init__(cfg, shards, dense, local_dense)
        self.timers = [TimedCalls(self.loop.client.calls)]
        self.loop.client.calls = self.timers[0]
        if self.loop.dense is not None:
            self.timers.append(TimedCalls(self.loop.dense.calls))
            self.loop.dense.calls = self.timers[1]
        self.batches: list[Batch] = []

    def load(self, batches: list[Batch]) -> int:
        """Keep ``batches`` for ``epoch`` -> how many."""
        self.batches = batches
        return len(batches)

    def epoch(self) -> dict[str, Any]:
        """One pass over the loaded batches -> examples, steps, wall seconds, per call kind
        the seconds spent submitting and waiting, and the first step's seconds and examples
        (as ``Trainer.fit`` reports them)."""
        before = self._call_seconds()
        start, examples, steps = time.perf_counter(), 0, 0
        first: tuple[float, int] | None = None
        for m in self.loop.train(self.batches):
            examples += m["examples"]
            steps += 1
            if first is None:
                first = (time.perf_counter() - start, examples)
        seconds = time.perf_counter() - start
        calls = {k: v - before.get(k, 0.0) for k, v in self._call_seconds().items()}
        first_s, first_examples = first if first is not None else (seconds, examples)
        return {"examples": examples, "steps": steps, "seconds": seconds, "calls": calls,
                "first_step_s": first_s, "first_step_examples": first_examples}

    def _call_seconds(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for prefix, timer in zip(("", "dense_"), self.timers):
            out.update({prefix + k: v for k, v in timer.seconds.items()})
        return out


# As run_batch_training does with one trainer: it owns the dense parameters (no dense round
# trip) and publishes them to the dense server at the end of a fit.
LOCAL_DENSE = True


def bench_config(dense_pull_every: int, transport: str = "channel",
                 shipped_batch: bool = False) -> Config:
    """The MovieLens config with the benchmark's batch size, MLP, dense pull interval, XLA
    threads and the trainers' transport to the shards; with ``shipped_batch``, the shipped
    config's batch size and XLA threads instead."""
    batch = [] if shipped_batch else [f"train.batch_size={BATCH_SIZE}",
                                      f"train.xla_threads={XLA_THREADS}"]
    cfg = load_config(SLOTS_YAML, overrides=[*batch, f"model.hidden={list(HIDDEN)}",
                                             f"train.dense_pull_every={dense_pull_every}",
                                             f"train.transport={transport}"])
    if any(s.dim != 16 for s in cfg.slots):
        raise ValueError(f"{SLOTS_YAML} no longer has dim 16 everywhere")
    return cfg


def breakdown(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Milliseconds per step of each call kind and of the rest of the step (``compute``),
    over ``runs``."""
    steps = sum(r["steps"] for r in runs)
    total: dict[str, float] = defaultdict(float)
    for r in runs:
        for k, v in r["calls"].items():
            total[k] += v
    calls = sum(total.values())
    out = {f"{k}_ms_per_step": round(1e3 * v / steps, 3) for k, v in sorted(total.items())}
    out["compute_ms_per_step"] = round(1e3 * (sum(r["seconds"] for r in runs) - calls) / steps, 3)
    return out


def streaming_throughput(cfg: Config, trainer: Any) -> float:
    """Median examples/s of ``trainer.fit`` over single epochs of a ``streaming_split`` of
    the train split (the first epoch, which starts the pipeline, untimed)."""
    split = read_examples(cfg, str(DATA)).streaming_split(1, equal=True)[0]
    ray.get(trainer.fit.remote(split, 1))
    return statistics.median(ray.get(trainer.fit.remote(split, 1))["examples_per_s"]
                             for _ in range(STREAMING_REPEATS))


def timed_epochs(cfg: Config, batches: list[Batch], repeats: int = REPEATS,
                 extras: bool = True) -> tuple[dict[str, list[dict[str, Any]]], float | None]:
    """Start Ray, warm the sides up, time ``repeats`` interleaved epochs of each -> (per side
    its epochs' ``ThroughputTrainer.epoch`` results, the streaming figure). Without
    ``extras``, only the ``ray`` and ``inprocess`` sides and no streaming figure (None)."""
    ray.init(num_cpus=2, object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    try:
        shards, dense = start_servers(cfg)
        actor = ray.remote(ThroughputTrainer).options(**trainer_options(cfg))
        remote = actor.remote(cfg, shards, dense, LOCAL_DENSE)
        tasks_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train,
                                                                       transport="ray"))
        tasks = actor.remote(tasks_cfg, shards, dense, LOCAL_DENSE) if extras else None
        batches_ref = ray.put(batches)
        ray.get([t.load.remote(batches_ref) for t in (remote, tasks) if t is not None])
        local = ThroughputTrainer(cfg, [ShardServer(cfg.slots, cfg.admission)
                                        for _ in range(cfg.train.n_shards)], None)
        local.load(batches)
        sides = {"ray": lambda: ray.get(remote.epoch.remote()), "inprocess": local.epoch}
        if tasks is not None:
            sides["ray_tasks"] = lambda: ray.get(tasks.epoch.remote())
        for _ in range(WARMUP_EPOCHS):
            for run in sides.values():
                run()
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
        names = list(sides)
        for r in range(repeats):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order if r % 2 == 0 else order[::-1]:
                runs[name].append(sides[name]())
        return runs, streaming_throughput(cfg, remote) if extras else None
    finally:
        ray.shutdown()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dense-pull-every", type=int, default=DENSE_PULL_EVERY,
                        help="steps between the Ray trainer's dense parameter pulls")
    parser.add_argument("--repeats", type=int, default=REPEATS,
                        help="timed epochs per side (fewer for a quick, noisier look)")
    args = parser.parse_args(argv)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    cfg = bench_config(args.dense_pull_every)
    table = pq.read_table(DATA)
    runs, streaming = timed_epochs(cfg, list(iter_batches(table, cfg.slots, BATCH_SIZE)),
                                   args.repeats)
    shipped = bench_config(args.dense_pull_every, shipped_batch=True)
    shipped_runs, _ = timed_epochs(shipped, list(iter_batches(table, shipped.slots,
                                                              shipped.train.batch_size)),
                                   args.repeats, extras=False)
    shipped_per_s = {name: statistics.median(r["examples"] / r["seconds"] for r in rs)
                     for name, rs in shipped_runs.items()}

    per_epoch = {name: [r["examples"] / r["seconds"] for r in rs] for name, rs in runs.items()}
    per_s = {name: statistics.median(xs) for name, xs in per_epoch.items()}
    figures: dict[str, Any] = {
        "examples_per_s_ray": round(per_s["ray"]),
        "examples_per_s_inprocess": round(per_s["inprocess"]),
        "ratio": round(per_s["ray"] / per_s["inprocess"], 3),
        "ratio_paired": round(statistics.median(
            r / i for r, i in zip(per_epoch["ray"], per_epoch["inprocess"])), 3),
        "examples_per_s_ray_streaming": round(streaming or 0),
        "examples_per_s_ray_tasks": round(per_s["ray_tasks"]),
        "ratio_ray_tasks": round(per_s["ray_tasks"] / per_s["inprocess"], 3),
        "transport": cfg.train.transport,
        "xla_threads": cfg.train.xla_threads,
        "batch_size": BATCH_SIZE,
        "steps_per_epoch": runs["ray"][0]["steps"],
        "repeats": args.repeats,
        "dense_pull_every": cfg.train.dense_pull_every,
        "examples_per_s_ray_default_batch": round(shipped_per_s["ray"]),
        "examples_per_s_inprocess_default_batch": round(shipped_per_s["inprocess"]),
        "ratio_default_batch": round(shipped_per_s["ray"] / shipped_per_s["inprocess"], 3),
        "default_batch_size": shipped.train.batch_size,
        "default_xla_threads": shipped.train.xla_threads,
    }
    for name, rs in runs.items():
        figures.update({f"{name}_{k}": v for k, v in breakdown(rs).items()})
    figures["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    figures["seconds"] = round(time.perf_counter() - started, 1)
    for name, xs in per_epoch.items():
        print(f"{name:>9}: " + "  ".join(f"{x:.0f}" for x in xs) + " examples/s per epoch",
              file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
