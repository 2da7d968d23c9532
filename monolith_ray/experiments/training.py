"""Seeded in-process training on the MovieLens-100K splits, the common ground of the
experiments: 2 ``ShardServer`` shards called directly through ``ShardClient`` and a
``TrainLoop`` — exactly the code a Ray trainer runs, without the actors."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypedDict

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from monolith_ray.config import (
    AdmissionConfig,
    Config,
    InitializerConfig,
    ModelConfig,
    OptimizerConfig,
    SlotConfig,
    TrainConfig,
)
from monolith_ray.data.batches import Batch, iter_batches
from monolith_ray.data.movielens import SPLITS
from monolith_ray.ps import ShardClient, ShardServer
from monolith_ray.train import TrainLoop

SPLITS_DIR = Path("data/ml-100k/parquet")
N_SHARDS = 2
ADMISSION = AdmissionConfig(sketch_width=1 << 16)


class Setting(TypedDict):
    """What the experiments tune: every slot's embedding optimizer, the scale of its normal
    initializer, and the batch size (the dense parameters always use ``TrainConfig``'s default
    optimizer, Adam 1e-3)."""

    optimizer: OptimizerConfig
    scale: float
    batch_size: int


def setting_of(config: Config) -> Setting:
    """The setting a config trains with: its first slot's optimizer and initializer scale and
    its batch size (the shipped MovieLens config gives every slot the same)."""
    first = config.slots[0]
    return {"optimizer": first.optimizer, "scale": first.initializer.scale,
            "batch_size": config.train.batch_size}


def describe(setting: Setting) -> str:
    """One line naming a setting, e.g. ``adam lr=0.001 init_scale=0.001 batch=256``."""
    opt = setting["optimizer"]
    return (f"{opt.kind} lr={opt.learning_rate:g} init_scale={setting['scale']:g} "
            f"batch={setting['batch_size']}")


def load_splits(folder: Path | None = None) -> dict[str, pa.Table]:
    """The ``train``, ``valid`` and ``test`` Parquet splits (``make data``) in ``folder``, by
    default the first ``data/ml-100k/parquet`` in the working directory or one of its parents
    (so a notebook in ``notebooks/`` finds the repository's data)."""
    if folder is None:
        cwd = Path.cwd()
        found = [p / SPLITS_DIR for p in (cwd, *cwd.parents) if (p / SPLITS_DIR).is_dir()]
        if not found:
            raise FileNotFoundError(f"no {SPLITS_DIR} in {cwd} or its parents; run `make data`")
        folder = found[0]
    return {name: pq.read_table(Path(folder) / f"{name}.parquet") for name in SPLITS}


@contextmanager
def compilation_cache() -> Iterator[None]:
    """A JAX compilation cache for the with-block's lifetime. Every ``TrainLoop`` jits its own
    steps, and an experiment's runs differ only in what XLA never sees (seeds, embedding
    optimizers, data), so every run after the first reuses the first's compiled steps instead
    of recompiling them."""
    with tempfile.TemporaryDirectory(prefix="jax-cache-") as cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        yield


def slots_for(base: tuple[SlotConfig, ...], setting: Setting,
              seed: int) -> tuple[SlotConfig, ...]:
    """The slots with the setting's embedding optimizer and initializer scale, seeded."""
    return tuple(dataclasses.replace(
        s, optimizer=setting["optimizer"],
        initializer=InitializerConfig(kind="normal", scale=setting["scale"],
                                      seed=seed * 1000 + s.slot_id))
        for s in base)


def train(splits: dict[str, pa.Table], base: tuple[SlotConfig, ...], model: ModelConfig,
          setting: Setting, seed: int, epochs: int, score_on: str,
          every_epoch: bool) -> tuple[TrainLoop, list[dict[str, float]]]:
    """Train a fresh model on ``splits["train"]`` for ``epochs`` shuffled epochs (dense init,
    embedding init and shuffling all follow ``seed``); score it on split ``score_on`` after
    every epoch (``every_epoch``) or only after the last -> (the trained loop, the scores
    ``{"epoch", "auc", "logloss", "examples"}``)."""
    slots = slots_for(base, setting, seed)
    size = setting["batch_size"]
    shards = [ShardServer(slots, ADMISSION) for _ in range(N_SHARDS)]
    loop = TrainLoop(slots, ShardClient(shards, [s.name for s in slots]), model,
                     TrainConfig(batch_size=size, n_shards=N_SHARDS, seed=seed))
    scored: list[Batch] = list(iter_batches(splits[score_on], slots, size))
    rng = np.random.default_rng(seed)
    scores = []
    for epoch in range(1, epochs + 1):
        order = rng.permutation(splits["train"].num_rows)
        for _ in loop.train(iter_batches(splits["train"].take(order), slots, size)):
            pass
        if every_epoch or epoch == epochs:
            scores.append({"epoch": epoch, **loop.evaluate(scored)})
    return loop, scores
