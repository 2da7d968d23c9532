"""A sharded replica's bulk read of its catalogue's rows (``ShardedRows.fetch_blocking``,
what a retrieval refresh does with ``serve.store: sharded``) against a lookup of the same
ids in a whole-table store (``SparseStore.lookup``, what a ``serve.store: replica`` replica
does), in one process.

Setup: ``SHARDS`` (2) training shards hold ``ROWS`` (200,000) item rows of dim 16, synced
(``ParameterSync.sync_now``) into ``SHARDS`` serving shards (float16) for the bulk read and
into a replica-mode sync's whole table (float16) for the baseline: the same rows, dtype and
ids (every row, in a random order, 10% of them asked twice). The serving shards are plain
objects here: no Ray transport, so ``bulk_read_ms`` is the read's own work (routing, calls
of at most ``BULK_IDS`` ids, the answers' scatter), not the network's. Each side runs
``REPEATS`` (5) times, alternating; the figures are medians.

Fields: ``rows``; ``bulk_read_ms`` and ``whole_store_ms`` (median wall time of one read of
every row); ``bulk_vs_whole`` (their ratio, > 1: the bulk read is slower);
``transport`` ("in process"). ``python -m benchmarks.tower_bulk_read``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np
import optax

from monolith_ray.config import AdmissionConfig, SlotConfig
from monolith_ray.features import make_fids
from monolith_ray.ps.client import ShardClient
from monolith_ray.ps.dense import DenseServer
from monolith_ray.ps.shard import ShardServer
from monolith_ray.serve.serving_shard import ServingShard
from monolith_ray.serve.sharded_rows import ShardedRows
from monolith_ray.serve.sync import ParameterSync

ROWS = 200_000
SHARDS = 2
REPEATS = 5
SLOT = SlotConfig("item_id", 2, 16)
SEED = 20_261_207


def _trained(rng: np.random.Generator) -> tuple[list[ShardServer], np.ndarray]:
    """``SHARDS`` training shards holding ``ROWS`` item rows -> them, the fids int64."""
    shards = [ShardServer((SLOT,), AdmissionConfig()) for _ in range(SHARDS)]
    client = ShardClient(shards, [SLOT.name])
    fids = np.unique(make_fids(SLOT.slot_id, np.arange(ROWS, dtype=np.int64)))
    client.pull({SLOT.name: fids}, 100.0)
    grads = rng.normal(size=(fids.size, SLOT.dim + 1)).astype(np.float32)
    client.push({SLOT.name: fids}, {SLOT.name: grads}, 100.0)
    return shards, fids


def _times_ms(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall times (ms) of ``repeats`` calls of ``fn``."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def main() -> dict[str, object]:
    rng = np.random.default_rng(SEED)
    shards, fids = _trained(rng)
    dense = DenseServer({"w": np.zeros(1, np.float32)}, optax.sgd(0.0))  # not read
    serving = [ServingShard((SLOT,), "float16") for _ in range(SHARDS)]
    ParameterSync((SLOT,), shards, dense, start=False, dtype="float16",
                  serving=serving).sync_now("sparse")
    whole = ParameterSync((SLOT,), shards, dense, start=False, dtype="float16")
    whole.sync_now("sparse")
    rows = ShardedRows((SLOT,), serving, 1024, "lru", "float16", 1.0)
    ids = rng.permutation(fids)
    ids = np.concatenate([ids, ids[: ROWS // 10]])
    got = rows.fetch_blocking({SLOT.name: ids}, 60.0)[SLOT.name]
    want = whole.store.lookup(SLOT.name, ids)
    np.testing.assert_array_equal(got, want)  # the same rows on both sides
    bulk, base = [], []
    for _ in range(REPEATS):
        bulk += _times_ms(lambda: rows.fetch_blocking({SLOT.name: ids}, 60.0), 1)
        base += _times_ms(lambda: whole.store.lookup(SLOT.name, ids), 1)
    result = {"rows": ROWS, "bulk_read_ms": round(float(np.median(bulk)), 1),
              "whole_store_ms": round(float(np.median(base)), 1),
              "bulk_vs_whole": round(float(np.median(bulk) / np.median(base)), 2),
              "transport": "in process"}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
