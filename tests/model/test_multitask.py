"""Several tasks end to end without Ray: per-task labels from Parquet columns, the weighted
sum of per-task losses, per-task AUC from ``TrainLoop.evaluate``."""

import jax
import numpy as np
import pyarrow as pa
import pytest

from monolith_ray.config import load_config
from monolith_ray.data.batches import iter_batches, make_batch
from monolith_ray.model import build, init_params, make_grad_step, make_predict, spec_of
from monolith_ray.ps import ShardClient, ShardServer
from monolith_ray.train import TrainLoop

YAML = """
slots:
  - {name: user_id, slot_id: 1, dim: 8, optimizer: {kind: adagrad, learning_rate: 0.3},
     initializer: {kind: normal, scale: 0.1}}
  - {name: item_id, slot_id: 2, dim: 4, optimizer: {kind: adagrad, learning_rate: 0.3},
     initializer: {kind: normal, scale: 0.1}}
admission: {sketch_width: 1024, sketch_depth: 2}
model: {hidden: [16], cross_layers: 2}
train: {batch_size: 64, stats_every: 4, dense_optimizer: {kind: adam, learning_rate: 0.01}}
tasks:
  - {name: click, actions: [click]}
  - {name: like, actions: [like], weight: 2.0}
"""


def synthetic(n=1024, seed=0, like=True):
    """Two tasks that differ: a click when a user's taste (user % 2) matches an item's kind
    (item % 2); a like when the item is one of every third (item % 3 == 0), whoever looks."""
    rng = np.random.default_rng(seed)
    user, item = rng.integers(0, 30, n), rng.integers(0, 40, n)
    columns = {
        "time": pa.array(np.arange(n), pa.int64()),
        "label": pa.array((user % 2 == item % 2).astype(np.float32)),
        "weight": pa.array(np.ones(n, np.float32)),
        "user_id": pa.array(user), "item_id": pa.array(item),
    }
    if like:
        columns["label_like"] = pa.array((item % 3 == 0).astype(np.float32))
    return pa.table(columns)


def make_loop(cfg):
    shards = [ShardServer(cfg.slots, cfg.admission) for _ in range(2)]
    return TrainLoop(cfg.slots, ShardClient(shards, [s.name for s in cfg.slots]), cfg.model,
                     cfg.train, tasks=cfg.tasks)


@pytest.mark.parametrize("kind,epochs", [("deepfm", 5), ("dcn_v2", 5),
                                         # no FM or cross term: the XOR of click takes longer
                                         ("monolith_ray.model.examples:make", 25)])
def test_two_tasks_that_differ_both_train(kind, epochs):
    cfg = load_config(YAML, [f"model.kind={kind}"])
    loop = make_loop(cfg)
    data = list(iter_batches(synthetic(), cfg.slots, 64, tasks=cfg.task_names))
    first = loop.evaluate(data)
    assert set(first) == {"auc", "logloss", "examples", "auc_click", "logloss_click",
                          "auc_like", "logloss_like"}
    losses = [m["loss"] for _ in range(epochs) for m in loop.train(data)]
    last = loop.evaluate(data)
    assert np.mean(losses[-8:]) < 0.5 * np.mean(losses[:8])
    assert last["auc"] == last["auc_click"] > 0.95
    assert last["auc_like"] > 0.95
    # each head learned its own task, not the other's
    batch = data[0]
    probs = loop.predict_tasks(batch, loop.client.lookup(batch.fids))
    like = batch.task_labels["like"] > 0
    click = batch.labels > 0
    assert probs["like"][like].mean() - probs["like"][~like].mean() > 0.5
    assert abs(probs["like"][click].mean() - probs["like"][~click].mean()) < 0.25


def test_a_task_missing_from_the_data_weighs_nothing_and_has_no_auc():
    cfg = load_config(YAML)
    batch = make_batch(synthetic(n=8, like=False), cfg.slots, tasks=cfg.task_names)
    assert batch.task_labels == {}
    labels, weights = batch.targets(cfg.task_names)
    assert labels.shape == weights.shape == (2, 8)
    np.testing.assert_array_equal(weights[1], 0.0)
    np.testing.assert_array_equal(labels[0], batch.labels)

    loop = make_loop(cfg)
    result = loop.evaluate(iter_batches(synthetic(n=128, like=False), cfg.slots, 64,
                                        tasks=cfg.task_names))
    assert np.isnan(result["auc_like"]) and np.isfinite(result["auc_click"])


def test_null_labels_of_a_task_weigh_nothing_for_it():
    cfg = load_config(YAML)
    table = synthetic(n=4)
    table = table.set_column(table.schema.get_field_index("label_like"), "label_like",
                             pa.array([1.0, None, 0.0, None], pa.float32()))
    labels, weights = make_batch(table, cfg.slots, tasks=cfg.task_names).targets(
        cfg.task_names)
    np.testing.assert_array_equal(weights[1], [1, 0, 1, 0])
    np.testing.assert_array_equal(labels[1], [1, 0, 0, 0])


def test_the_loss_is_the_weighted_sum_of_the_tasks_losses():
    cfg = load_config(YAML)
    model, spec = build(cfg.model), spec_of(cfg.slots, cfg.model, tasks=cfg.tasks)
    assert spec.tasks == ("click", "like") and spec.task_weights == (1.0, 2.0)
    params = init_params(model, spec, jax.random.key(0))
    rng = np.random.default_rng(0)
    rows = (rng.normal(size=(5, 9)).astype(np.float32), rng.normal(size=(5, 5)).astype(np.float32))
    idx = (np.arange(5, dtype=np.int32)[:, None], np.arange(5, dtype=np.int32)[::-1, None])
    labels = np.array([[1, 0, 1, 0, 1], [0, 0, 1, 1, 0]], np.float32)
    weights = np.array([[1, 1, 1, 1, 0], [1, 2, 0, 1, 1]], np.float32)
    probs = make_predict(model, spec)(params, rows, idx, None)
    _, _, loss, _ = make_grad_step(model, spec)(params, rows, idx, labels, weights, None)

    def bce(p, y, w):
        p, y = np.asarray(p, np.float64), y.astype(np.float64)
        return (w * -(y * np.log(p) + (1 - y) * np.log1p(-p))).sum() / w.sum()

    expected = (bce(probs["click"], labels[0], weights[0])
                + 2.0 * bce(probs["like"], labels[1], weights[1]))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
