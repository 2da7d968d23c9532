"""TrainLoop: one trainer's steps over batches, with embedding rows on parameter servers.

A step pulls the batch's unique rows (one call per shard, all slots), pads each slot's rows
to a bucketed count (``model.bucket_size``, kept at its high-water mark so the step compiles
a handful of times per run), runs the jitted step of the config's model (``model.kind``, built
by ``monolith_ray.model.build``; the loop never names one), which updates the dense parameters
with optax, or with a dense server, pushes their gradients to it, and pushes each slot's row
gradients ``[:U_s]`` back. Slots may have different dims: each slot's rows are its own width.

Shorter batches are padded to ``batch_size`` with weight-0 examples, so B never changes.

Overlap: ``train`` issues batch k+1's pull while step k's jitted computation runs on XLA's
threads, so with Ray actors the parameter servers' lookups, and the pull's routing and
submission, overlap that computation; step k-1's row gradients travel in the same call
(``ShardClient.push_pull_async``): one call per shard per step, since every remote call has a
fixed cost well above a step's table work. The shards see the same sequence as with separate
calls (pull k+1 after push k-1, before push k): a row used in two consecutive steps is one
step stale, the usual asynchronous-PS trade (the same on plain objects, since calls run in the
order issued). When the loop updates its own dense parameters, it then waits for batch k+1's
rows and dispatches step k+1 before reading step k's gradients: the parameters step k+1 takes
are step k's outputs, still futures, so XLA queues step k+1 behind step k (the dense update
stays sequential) and never idles while this process finishes step k. With a dense server,
step k+1 is dispatched after step k's dense gradients have gone to it, so it takes the
parameters of the server's latest answer. The last step's gradients are pushed when ``train``
ends or ``flush`` is called. A batch is routed once, while the step before the one that pulls
it computes; its ``Routes`` are held with its gradients and push them. ``evaluate`` issues
batch k+1's lookup during step k and waits for it when step k+1 starts. ``train_batch`` is
the unpipelined single step.

Clock: table rows are stamped with the batch's latest event time (``Batch.now``), never the
wall clock, so expiry replays the same at any speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
import optax

from monolith_ray import metrics
from monolith_ray.config import (
    DenseFeature,
    ModelConfig,
    OptimizerConfig,
    SlotConfig,
    TrainConfig,
)
from monolith_ray.config.tasks import DEFAULT_TASKS, TaskConfig
from monolith_ray.data.batches import Batch
from monolith_ray.model import (
    StreamingAUC,
    StreamingLogLoss,
    bucket_size,
    build,
    init_params,
    make_grad_step,
    make_predict,
    make_train_step,
    pad_rows,
    spec_of,
)
from monolith_ray.ps.client import Pending, Routes, ShardClient, calls_for


def dense_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """The optax optimizer of the dense parameters for ``cfg`` (sgd, adagrad or adam)."""
    if cfg.kind == "adam":
        return optax.adam(cfg.learning_rate, b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps)
    if cfg.kind == "adagrad":
        return optax.adagrad(cfg.learning_rate, initial_accumulator_value=cfg.initial_accumulator,
                             eps=cfg.eps)
    if cfg.kind == "sgd":
        return optax.sgd(cfg.learning_rate)
    raise ValueError(f"dense optimizer {cfg.kind!r} is not supported; use sgd, adagrad or adam")


IDLE = object()
"""In the batches given to :meth:`TrainLoop.train`: no batch is coming soon."""


class TrainLoop:
    """The dense parameters of the model ``model`` names and their optimizer, trained
    against ``client``'s shards.

    Slot ``s``'s table rows are ``dim_s + 1`` wide (see ``monolith_ray.ps.shard``).
    ``dense``: the config's dense features, which every batch carries (``Batch.dense``).
    ``tasks``: the config's tasks; each step's loss is their weighted sum
    (``model.steps.loss_fn``) over the labels ``Batch.targets`` gives.
    """

    def __init__(self, slots: Sequence[SlotConfig], client: ShardClient,
                 model: ModelConfig = ModelConfig(), train: TrainConfig = TrainConfig(),
                 dense_server: Any = None, dense: Sequence[DenseFeature] = (),
                 tasks: Sequence[TaskConfig] = DEFAULT_TASKS) -> None:
        self.slots = tuple(slots)
        # Called with each batch once its step is done (e.g. the retrieval towers' step).
        self.after_step: Callable[[Batch], Any] | None = None
        self.names = tuple(s.name for s in slots)
        self.client = client
        self.train_cfg = train
        self.model = build(model)
        self.spec = spec_of(slots, model, dense, tasks)
        optimizer = dense_optimizer(train.dense_optimizer)
        self.params = init_params(self.model, self.spec, jax.random.key(train.seed))
        self.opt_state = optimizer.init(self.params)
        self._step = make_train_step(self.model, self.spec, optimizer)
        self._grad_step = make_grad_step(self.model, self.spec)
        self._predict = make_predict(self.model, self.spec)
        self.dense = None if dense_server is None else DenseLink(dense_server,
                                                                  train.call_timeout_s)
        if self.dense is not None:
            self.params, self.dense_version = self.dense.pull()
        self.steps = 0
        self.table_rows: dict[str, int] = {}
        self.expired = dict.fromkeys(self.names, 0)  # ids this loop's expiry passes evicted
        self._expires = any(s.expire_s > 0 for s in slots)
        self._expired_at: float | None = None  # event time of the last expiry pass
        self._held: tuple[Routes, dict[str, np.ndarray], float] | None = None
        self._padded_rows = dict.fromkeys(self.names, 0)

    def train_batch(self, batch: Batch) -> dict:
        """One step without overlap: pull, compute, push -> metrics (see ``train``)."""
        start = time.perf_counter()
        metrics = self._finish(self._dispatch(batch, self.client.pull_async(batch.fids,
                                                                            batch.now)), start)
        self._finish_push()
        return metrics

    def train(self, batches: Iterable[Batch | object]) -> Iterator[dict]:
        """Train on ``batches`` in order, overlapping each pull with the previous step; yield
        per step ``{"step", "loss", "examples", "seconds", "pull_wait_s", "examples_per_s", "table_rows"}``.

        ``loss`` is the batch's weighted mean log loss before its update; ``seconds`` the
        step's wall time from resuming to its gradients being ready (their push leaves with
        the next pull); ``pull_wait_s`` the part of it spent waiting for the pulled rows
        (the shards' answers, not the step's own work); ``table_rows`` per slot the rows held over all shards, refreshed every
        ``stats_every`` steps. A step's metrics are yielded once the next batch is in hand
        (its pull overlaps the step); :data:`IDLE` in ``batches`` says none is coming soon, so
        the step in flight is finished and yielded without waiting for one (a quiet stream).
        """
        start = time.perf_counter()
        routed = ((batch, None if batch is IDLE else self.client.route(batch.fids))
                  for batch in batches)
        step, following = None, next(routed, None)
        try:
            while True:
                if step is None:  # nothing in flight: start on the next batch
                    while following is not None and following[0] is IDLE:
                        following = next(routed, None)
                    if following is None:
                        return
                    start = time.perf_counter()
                    step = self._dispatch(following[0], self._pull_with_held_push(*following))
                    following = next(routed, None)
                elif following is None or following[0] is IDLE:
                    yield self._finish(step, start)
                    if following is None:
                        return
                    step, following = None, next(routed, None)
                else:
                    pending = self._pull_with_held_push(*following)
                    if self.dense is None:
                        after = self._dispatch(following[0], pending)
                        following = next(routed, None)  # read and routed while ``step`` runs
                        yield self._finish(step, start)
                    else:
                        yield self._finish(step, start)
                        after = self._dispatch(following[0], pending)
                        following = next(routed, None)
                    start, step = time.perf_counter(), after
        finally:
            self._finish_push()

    def predict(self, batch: Batch, rows: dict[str, np.ndarray]) -> np.ndarray:
        """The first task's probabilities float32 (B,) of ``batch`` given its rows per slot
        (U_s, dim_s + 1)."""
        return self.predict_tasks(batch, rows)[self.spec.tasks[0]]

    def predict_tasks(self, batch: Batch, rows: dict[str, np.ndarray]
                      ) -> dict[str, np.ndarray]:
        """Every task's probabilities, ``{task: float32 (B,)}``, of ``batch`` given its rows
        per slot (U_s, dim_s + 1)."""
        padded = self._pad(batch)
        slot_rows, slot_idx = self._slot_arrays(padded, rows)
        probs = self._predict(self.params, slot_rows, slot_idx, self._dense(padded))
        return {task: np.asarray(probs[task])[:len(batch)] for task in self.spec.tasks}

    def evaluate(self, batches: Iterable[Batch]) -> dict[str, float]:
        """AUC and log loss (example-weighted) of ``batches`` with serving lookups, which never
        insert: ids the tables lack read zeros -> ``{"auc", "logloss", "examples"}`` of the
        first task, and with several tasks ``auc_<task>`` and ``logloss_<task>`` of each
        (an example without a task's label weighs 0 in it; NaN when no example has one)."""
        tasks = self.spec.tasks
        aucs = {t: StreamingAUC() for t in tasks}
        loglosses = {t: StreamingLogLoss() for t in tasks}
        n = 0
        for batch, rows, prefetch in self._prefetched(
                batches, lambda b: self.client.lookup_async(b.fids)):
            prefetch()
            probs = self.predict_tasks(batch, rows)
            labels, weights = batch.targets(tasks)
            for t, task in enumerate(tasks):
                aucs[task].update(probs[task], labels[t], weights[t])
                loglosses[task].update(probs[task], labels[t], weights[t])
            n += len(batch)
        out = {"auc": aucs[tasks[0]].result(), "logloss": loglosses[tasks[0]].result(),
               "examples": n}
        if len(tasks) > 1:
            for task in tasks:
                out[f"auc_{task}"] = aucs[task].result()
                out[f"logloss_{task}"] = loglosses[task].result()
        return out

    def flush(self) -> None:
        """Wait for every push in flight, sparse and dense: once it returns, every step taken
        so far is in the parameter servers. ``train`` does this when it ends; an online
        trainer also calls it between steps (with ``train`` suspended at a yield) before it
        counts those steps' Kafka offsets as committed."""
        self._finish_push()

    # ------------------------------------------------------------------ internals

    def _dispatch(self, batch: Batch, pending: Pending) -> _Step:
        """Wait for ``batch``'s rows (``pending``, its pull) and dispatch its jitted step, which
        runs on XLA's threads: with local dense parameters the step's new parameters are
        futures, so the next step can be dispatched before this one is done."""
        waited = time.perf_counter()
        rows = self.client.wait(pending)
        waited = time.perf_counter() - waited
        padded = self._pad(batch)
        slot_rows, slot_idx = self._slot_arrays(padded, rows)
        labels, weights = self._targets(padded)
        if self.dense is None:
            self.params, self.opt_state, row_grads, loss, _ = self._step(
                self.params, self.opt_state, slot_rows, slot_idx, labels, weights,
                self._dense(padded))
            return _Step(batch, pending.routes, row_grads, loss, None, waited)
        param_grads, row_grads, loss, _ = self._grad_step(
            self.params, slot_rows, slot_idx, labels, weights, self._dense(padded))
        return _Step(batch, pending.routes, row_grads, loss, param_grads, waited)

    def _finish(self, step: _Step, start: float) -> dict:
        """Wait for ``step``'s computation, push its dense gradients to the dense server (if
        any) and hold its row gradients for the next pull to push -> the step's metrics."""
        if step.param_grads is not None:
            fresh = self.dense.step(step.param_grads,
                                    self.steps % self.train_cfg.dense_pull_every == 0)
            if fresh is not None:
                self.params, self.dense_version = fresh
        batch = step.batch
        grads = {n: np.asarray(g)[:batch.fids[n].size] for n, g in zip(self.names, step.row_grads)}
        self._push_held()  # the last step's gradients, if no pull took them (no batch followed)
        self._held = (step.routes, grads, batch.now)
        if self.steps % self.train_cfg.stats_every == 0:
            self.table_rows = {n: s["rows"] for n, s in self.client.stats().items()}
        self._expire(batch.now)
        self.steps += 1
        seconds = time.perf_counter() - start
        metrics.EXAMPLES_TRAINED.inc(len(batch))
        metrics.TRAIN_STEP_SECONDS.observe(seconds)
        if self.after_step is not None:
            self.after_step(batch)
        return {"step": self.steps, "loss": float(step.loss), "examples": len(batch),
                "seconds": seconds, "pull_wait_s": step.wait_s,
                "examples_per_s": len(batch) / max(seconds, 1e-9),
                "table_rows": dict(self.table_rows)}

    def _expire(self, now: float) -> None:
        """Every ``train.expire_every_s`` of event time, evict the rows on every shard that
        no update touched for their slot's ``expire_s`` (slots with ``expire_s`` 0 keep
        theirs): how tables forget stale ids. The first batch only starts the clock."""
        if not self._expires:
            return
        if self._expired_at is None or now < self._expired_at:
            self._expired_at = now
            return
        if now - self._expired_at >= self.train_cfg.expire_every_s:
            for name, ids in self.client.evict_expired(now).items():  # towers' tables too
                self.expired[name] = self.expired.get(name, 0) + int(ids.size)
            self._expired_at = now

    def _pull_with_held_push(self, batch: Batch, routes: Routes) -> Pending:
        """Issue ``batch``'s pull (its fids routed as ``routes``), carrying the gradients of
        the last step if not yet pushed."""
        if self._held is None:
            return self.client.pull_async(routes, batch.now)
        (held, grads, now), self._held = self._held, None
        return self.client.push_pull_async(held, grads, now, routes, batch.now)

    def _push_held(self) -> None:
        """Push the held gradients, if any, and wait for it."""
        if self._held is not None:
            (routes, grads, now), self._held = self._held, None
            self.client.push(routes, grads, now)

    def _finish_push(self) -> None:
        """Push the held gradients and take the dense parameters of a pull in flight: the end
        of ``train``, ``train_batch`` or a ``flush``. Steps never wait for the dense server,
        so its round trip overlaps the next step."""
        self._push_held()
        if self.dense is not None:
            fresh = self.dense.drain()
            if fresh is not None:
                self.params, self.dense_version = fresh

    def _dense(self, batch: Batch) -> np.ndarray | None:
        """The batch's dense matrix (B, n_dense), None when the model has no dense inputs."""
        if not self.spec.n_dense:
            return None
        if batch.dense.shape[1] != self.spec.n_dense:
            raise ValueError(f"the batch has {batch.dense.shape[1]} dense features, the model "
                             f"{self.spec.n_dense}: make batches with the config's dense")
        return batch.dense

    def _targets(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """The step's labels and weights: (B,) with one task (as they always were), else
        (T, B) (``Batch.targets``)."""
        if len(self.spec.tasks) == 1:
            return batch.labels, batch.weights
        return batch.targets(self.spec.tasks)

    def _pad(self, batch: Batch) -> Batch:
        size = self.train_cfg.batch_size
        return batch.padded(size) if len(batch) < size else batch

    def _slot_arrays(self, batch: Batch, rows: dict[str, np.ndarray]
                     ) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """Rows padded per slot to a high-water mark of ``bucket_size``: a slot's padded count
        only grows, so the jitted step compiles once per growth of some slot (a handful of
        times) rather than once per combination of the slots' buckets."""
        slot_idx = tuple(batch.idx[n] for n in self.names)
        slot_rows = []
        for n, idx in zip(self.names, slot_idx):
            size = max(bucket_size(rows[n].shape[0], cap=idx.size), self._padded_rows[n])
            self._padded_rows[n] = size
            slot_rows.append(pad_rows(rows[n], size))
        return tuple(slot_rows), slot_idx

    def _prefetched(self, batches: Iterable[Batch], issue: Callable[[Batch], Pending]
                    ) -> Iterator[tuple[Batch, dict[str, np.ndarray], Callable[[], None]]]:
        """(batch, its rows, prefetch) in order. ``prefetch()`` issues the following batch's
        lookup: the consumer calls it while computing on the batch (it is issued at the latest
        when the consumer asks for the next batch), and it is waited for only then."""
        it = iter(batches)
        batch = next(it, None)
        pending = None if batch is None else issue(batch)
        while batch is not None:
            rows = self.client.wait(pending)
            following, ahead = next(it, None), []

            def prefetch() -> None:
                if following is not None and not ahead:
                    ahead.append(issue(following))

            yield batch, rows, prefetch
            prefetch()
            batch, pending = following, (ahead or [None])[0]


@dataclass
class _Step:
    """A dispatched training step: its batch and routes, and the outputs of its jitted
    computation (futures until it is done): row gradients per slot, loss, and the dense
    gradients when a dense server takes them (None when the loop updates its own)."""

    batch: Batch
    routes: Routes
    row_grads: tuple[Any, ...]
    loss: Any
    param_grads: Any
    wait_s: float = 0.0  # seconds the step waited for its pulled rows


class DenseLink:
    """A trainer's asynchronous link to the dense parameter server.

    Each step pushes its gradients without waiting; every ``dense_pull_every`` steps it issues
    a pull behind that push (a caller's calls reach an actor in order, so the pull sees the
    push) and collects it at the next step, overlapping the round trip with the step.
    """

    def __init__(self, server: Any, timeout_s: float | None = 60.0, part: str = "model") -> None:
        self.server = server
        self.calls = calls_for([server], method="pull", timeout_s=timeout_s)
        self._part = () if part == "model" else (part,)  # the server's default part: no arg
        self._push: Any = None
        self._pull: Any = None

    def pull(self) -> tuple[Any, int]:
        return self.calls.gather([self.calls.submit(self.server, "pull", *self._part)])[0]

    def step(self, grads: Any, pull: bool) -> tuple[Any, int] | None:
        """Push ``grads``; return the parameters of the pull issued last step, if any."""
        fresh = None
        if self._pull is not None:
            fresh = self.calls.gather([self._pull])[0]
            self._pull = None
        if self._push is not None:
            self.calls.gather([self._push])
        self._push = self.calls.submit(self.server, "push", jax.tree.map(np.asarray, grads),
                                       *self._part)
        if pull:
            self._pull = self.calls.submit(self.server, "pull", *self._part)
        return fresh

    def drain(self) -> tuple[Any, int] | None:
        """Wait for calls in flight and return the newest parameters, if a pull was one."""
        if self._push is not None:
            self.calls.gather([self._push])
            self._push = None
        if self._pull is None:
            return None
        fresh = self.calls.gather([self._pull])[0]
        self._pull = None
        return fresh
