"""The batch job's trainer against the same trainer run as a Ray Train worker.

One trainer, MovieLens-100K train (80,000 rows), 2 epochs, batch 512, 2 shards. ``job``: the
batch job as shipped (``run_batch_training``: its own trainer actor, positioned reads, a
snapshot as it starts and ends). ``ray_train``: ``ray.train.v2``'s ``DataParallelTrainer``
with one worker that runs the same ``Trainer`` (local dense parameters, the same XLA thread
and cache settings as ``trainer_options``) on ``get_dataset_shard`` of ``read_parquet``,
against shard and dense servers started as the job starts them. Each in a fresh process
(its own local Ray), alternating, ``PAIRS`` times. Per way, the medians of the trainer's
examples/s (its ``fit``: reading, steps, pushes) and of the wall seconds (Ray's start
included). Ends with one JSON line. ``python -m benchmarks.ray_train``; ``PAIRS=`` to change.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[1] / "data" / "ml-100k" / "parquet" / "train.parquet"
PAIRS = int(os.environ.get("PAIRS", "3"))


def run(way: str) -> dict[str, Any]:
    """One run of ``way`` in this process -> its examples/s, examples and wall seconds."""
    import ray

    from monolith_ray.config import load_config
    from monolith_ray.train.job import (
        Trainer,
        read_examples,
        run_batch_training,
        start_servers,
        trainer_options,
    )

    started = time.perf_counter()
    ray.init(num_cpus=2, object_store_memory=300 * 1024 * 1024, include_dashboard=False,
             log_to_driver=False)
    out = tempfile.mkdtemp()
    cfg = load_config(overrides=[f"data.train={DATA}", "data.valid=", "data.test=",
                                 f"data.output_dir={out}", "train.epochs=2",
                                 "train.batch_size=512"])
    if way == "job":
        metrics = run_batch_training(cfg)
        fit = {"examples": metrics["examples"], "examples_per_s": metrics["examples_per_s"]}
    else:
        import ray.train
        from ray.train.v2.api.config import RunConfig, ScalingConfig
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

        shards, dense = start_servers(cfg)

        def loop() -> dict[str, Any]:
            trainer = Trainer(cfg, shards, dense, local_dense=True)
            done = trainer.fit(ray.train.get_dataset_shard("train"), cfg.train.epochs)
            return {"examples": done["examples"], "examples_per_s": done["examples_per_s"]}

        options = trainer_options(cfg)
        result = DataParallelTrainer(
            loop, scaling_config=ScalingConfig(
                num_workers=1, resources_per_worker={"CPU": options["num_cpus"]}),
            run_config=RunConfig(storage_path=out, name="ray_train",
                                 worker_runtime_env=options["runtime_env"]),
            datasets={"train": read_examples(cfg, str(DATA))}).fit()
        fit = result.return_value
    ray.shutdown()
    return {**fit, "wall_s": time.perf_counter() - started}


def main() -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"job": [], "ray_train": []}
    env = {**os.environ, "RAY_TRAIN_V2_ENABLED": "1"}
    for _ in range(PAIRS):
        for way in runs:
            done = subprocess.run([sys.executable, "-m", "benchmarks.ray_train", way],
                                  capture_output=True, text=True, env=env, check=True,
                                  cwd=Path(__file__).resolve().parents[1])
            runs[way].append(json.loads(done.stdout.strip().splitlines()[-1]))
    out: dict[str, Any] = {"pairs": PAIRS}
    for way, results in runs.items():
        assert all(r["examples"] == 160_000 for r in results), results
        out[f"{way}_examples_per_s"] = statistics.median(r["examples_per_s"] for r in results)
        out[f"{way}_wall_s"] = statistics.median(r["wall_s"] for r in results)
    out["ray_train_vs_job"] = out["ray_train_examples_per_s"] / out["job_examples_per_s"]
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(json.dumps(run(sys.argv[1])))
    else:
        print(json.dumps(main()))
