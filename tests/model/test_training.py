"""Models end to end without Ray: a TrainLoop over in-process ShardServers and a dense server,
then a ServingModel fed by a ParameterSync, for slots of different dims and each kind of
model (the two built-ins and one of your own by import path)."""

import numpy as np
import pyarrow as pa
import pytest

from monolith_ray.config import load_config
from monolith_ray.data.batches import iter_batches
from monolith_ray.model import auc
from monolith_ray.ps import ShardClient, ShardServer
from monolith_ray.ps.dense import DenseServer
from monolith_ray.serve.model import ServingModel, SlotRows
from monolith_ray.serve.sync import ParameterSync
from monolith_ray.train import TrainLoop
from monolith_ray.train.job import dense_server_args

YAML = """
slots:
  - {name: user_id, slot_id: 1, dim: 8, optimizer: {kind: adagrad, learning_rate: 0.3},
     initializer: {kind: normal, scale: 0.1}}
  - {name: item_id, slot_id: 2, dim: 4, optimizer: {kind: adagrad, learning_rate: 0.3},
     initializer: {kind: normal, scale: 0.1}}
  - {name: tags, slot_id: 3, dim: 2, max_values: 2, combiner: mean,
     optimizer: {kind: adagrad, learning_rate: 0.3}, initializer: {kind: normal, scale: 0.1}}
admission: {sketch_width: 1024, sketch_depth: 2}
model: {hidden: [16], cross_layers: 2}
train: {batch_size: 64, stats_every: 4, dense_optimizer: {kind: adam, learning_rate: 0.01}}
serve: {store_dtype: float32}
"""
KINDS = ("deepfm", "dcn_v2", "monolith_ray.model.examples:make")


def synthetic(n=1024, seed=0):
    """Clicks when a user's taste (user % 2) matches an item's kind (item % 2); the item's
    tags repeat its kind."""
    rng = np.random.default_rng(seed)
    user, item = rng.integers(0, 30, n), rng.integers(0, 40, n)
    return pa.table({
        "time": pa.array(np.arange(n), pa.int64()),
        "label": pa.array((user % 2 == item % 2).astype(np.float32)),
        "weight": pa.array(np.ones(n, np.float32)),
        "user_id": pa.array(user), "item_id": pa.array(item),
        "tags": pa.array([[int(i % 2), int(i % 5) + 10] for i in item], pa.list_(pa.int64())),
    })


@pytest.mark.parametrize("kind", KINDS)
def test_mixed_dims_train_and_serve(kind):
    cfg = load_config(YAML, overrides=[f"model.kind={kind}"])
    names = [s.name for s in cfg.slots]
    shards = [ShardServer(cfg.slots, cfg.admission) for _ in range(2)]
    dense = DenseServer(*dense_server_args(cfg))
    loop = TrainLoop(cfg.slots, ShardClient(shards, names), cfg.model, cfg.train,
                     dense_server=dense)
    data = list(iter_batches(synthetic(), cfg.slots, cfg.train.batch_size))
    losses = [m["loss"] for _ in range(5) for m in loop.train(data)]
    assert np.mean(losses[-8:]) < 0.6 * np.mean(losses[:8]), kind
    trained = loop.evaluate(data)
    assert trained["auc"] > 0.95, kind

    sync = ParameterSync(cfg.slots, shards, dense, start=False, dtype="float32")
    sync.sync_now("both")
    served = ServingModel(cfg)
    assert served.apply(sync.updates(0, 0, sync.incarnation))
    examples = synthetic(n=256, seed=1)
    rows = SlotRows.of(examples.select(names).to_pylist(), cfg.slots)
    probs = served.score(rows, now=0)
    batch = next(iter_batches(examples, cfg.slots, 256))
    np.testing.assert_allclose(probs, loop.predict(batch, loop.client.lookup(batch.fids)),
                               rtol=1e-4, atol=1e-6)
    assert auc(probs, examples.column("label").to_numpy()) > 0.95
