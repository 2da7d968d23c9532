"""The HTTP API: a Ray Serve deployment with a FastAPI ingress (schema: ``serve/api.py``).

- ``POST /recommend``: a user (id and features), optional context, optional candidates (else
  with ``retrieval`` the ``retrieval.candidates`` nearest items of the catalogue in the
  towers' index, ``serve/catalogue.py``; without, ``serve.pool_draw`` drawn from the
  candidate pool) and ``k`` -> the top ``k`` items with
  their scores and feedback tokens, the request id the service issued and the model version
  (dense, sparse) used. Items are ranked by ``serve.score``, a combination of the tasks'
  probabilities (default: the first task's); each item carries every task's (``probs``).
  Every returned item is an impression: its features go to the ``features`` topic under
  the request id, so feedback on it joins into a training example (serve -> feedback ->
  join -> train -> sync).
- ``POST /predict``: (user, item) pairs -> their scores (``serve.score``) and each task's
  probabilities (``probs``: task -> one per pair).
- ``POST /feedback``: request id, item id, the item's token, action -> the ``actions`` topic.
  A token that is not the one this service issued for that request and item gets 422
  (``serve/tokens.py``), so feedback lands only on impressions that were served; so does
  feedback that can no longer join (``joiner.window_s + joiner.allowed_lateness_s`` after its
  request, whose id carries its issue time) or dated more than ``limits.max_event_skew_s``
  before its request.
- ``GET /experiments``: per experiment arm, impressions, clicks, CTR and mean reward with
  their intervals, summed over every replica (``ExperimentStats``).
- ``GET /healthz``: the replica's versions, rows or cache held, memory, process id, and its
  satiation fit.
- ``GET /openapi.json``, ``GET /docs``: the schema, FastAPI's.

**The serving decision** (config ``policy``, ``experiments``; ``monolith_ray.policy``): the
ranked candidates' scores, as logits, lose the satiation penalty of the user's arm, and the
arm's policy (else ``policy``) picks the ``k`` shown, in order. Each item answers with its
``policy``, ``arm`` (``experiment/arm`` or null) and ``propensity``, and so does its logged
impression unless the deployment is plain greedy (no satiation, no experiments: then their
absence means greedy, no arm, propensity 1). The arm is named in
the request id (``<id>.<experiment>.<arm>``), so feedback on any replica counts for it; an
arm pinned to a snapshot (``model: snapshot:...``) is scored with that snapshot's model,
loaded once per replica (``serve/pinned.py``);
replicas send their per-arm counts to one ``ExperimentStats`` actor every second.

**History slots** (config ``history``): with history actors (``history.server``), the user's
history slots are read at the request's time, strictly before it (``serve/history_reads.py``),
put among the user's slots before scoring, and logged with each impression, so the joined
example holds the values the model saw. A read that fails, times out or is skipped serves its
users without them (``served.history_failed`` in ``/healthz``, once per request;
``served.history_skipped`` too when a shard was skipped). A request that sets a history slot
itself gets 422: its values come from the server.

Bad input never reaches the model: without a key of ``serve.api_keys`` (when set) a request
gets 401 before its body is read; a body not received whole within ``serve.body_timeout_s``
408; a body over ``serve.max_body_bytes`` 413; a malformed body, a field of the wrong type or
out of its bounds, an unknown feature name, features setting the user or item slot, too many
candidates, a too large ``k``, a context too deep or too large, an event time too far ahead
422; a model whose scores of the request are not finite 503; each with ``{"error":
"<field>: <problem>"}``. Unknown users and items are scored with the default (zero)
embedding, never refused.

Endpoints are ``async``: scoring is a few milliseconds of CPU, run on the replica's event loop
without a thread hop; replicas, not threads, give parallelism. The serving decision and
feedback's counting run on one thread of the replica's own (``Decisions`` is
single-threaded), in the order requests reach them, when any policy served or evaluated is
Thompson sampling: its Monte Carlo costs ``k · draws · n`` normals a policy (about 250 ms at
``k`` 100, 1,000 candidates and 128 draws on a 2-core machine), which on the event loop would
hold up every other request and ``/healthz`` meanwhile. The other policies take microseconds
and stay on the loop (the thread hop costs about 0.1 ms). Each replica holds the dense
parameters and either every embedding row (``serve.store: replica``) or a bounded cache of
them over the serving shards (``sharded``: misses are awaited on the event loop, so other
requests go on meanwhile; ``ServingModel``), and pulls newer versions from the
``ParameterSync`` actor every ``serve.poll_interval_s`` on a thread; a replica loads the
latest versions in its constructor, before Serve routes it any request. ``/healthz`` shows
the store (``store_bytes``; ``cache``: rows, bytes, capacity, hit rate, fetch counters) and
the process's ``rss_bytes``.
"""

# No ``from __future__ import annotations`` here: Serve's ingress hands FastAPI the endpoint
# methods through wrappers whose globals are not this module's, so annotations must be
# objects, not strings, for FastAPI to see the request models.
import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import ray
from fastapi.responses import JSONResponse
from ray import serve

from monolith_ray import validation
from monolith_ray.metrics import rss_bytes
from monolith_ray.config import Config, ConfigError
from monolith_ray.config.tasks import parse_score
from monolith_ray.history.server import check_history
from monolith_ray.messages import MessageError, encode
from monolith_ray.policy import ArmCounts
from monolith_ray.policy.decisions import Decision, Decisions, first_values
from monolith_ray.schemas import value_ids, value_text
from monolith_ray.serve.api import (
    ERRORS,
    GET_ERRORS,
    ApiKeys,
    BadRequest,
    BodyLimit,
    ExperimentsOut,
    FeedbackIn,
    FeedbackOut,
    ItemIn,
    PredictIn,
    PredictOut,
    RecommendIn,
    RecommendOut,
    Unavailable,
    UserIn,
    api,
)
from monolith_ray.serve.catalogue import CatalogueRetrieval
from monolith_ray.serve.feature_log import FeatureLog
from monolith_ray.serve.history_reads import HistoryReads
from monolith_ray.serve.model import ServingModel, SlotRows
from monolith_ray.serve.pinned import pinned_model, resolve_pinned
from monolith_ray.serve.pool import CandidatePool, check_pool
from monolith_ray.serve.seen import unseen
from monolith_ray.serve.tokens import FeedbackTokens, issued_at

__all__ = ["CandidatePool", "ExperimentStats", "Recommender", "build_app",
           "recommender_deployment"]

logger = logging.getLogger(__name__)

REPORT_INTERVAL_S = 1.0
RETRIEVAL_START_WAIT_S = 120.0  # the longest a starting replica waits for its first index


@ray.remote(num_cpus=0, max_restarts=-1)
class ExperimentStats:
    """The per-arm counts of every replica of an application, summed: each replica sends
    what it counted since its last report every ``REPORT_INTERVAL_S`` (a few arms' three
    ints), so ``/experiments`` on any replica reads every replica's counts, at most a second
    old. Held in memory: Ray restarts it if its process dies, and it starts from zero."""

    def __init__(self) -> None:
        self._counts: dict[str, ArmCounts] = {}

    def add(self, delta: dict[str, tuple[int, int, int]]) -> None:
        """Add a replica's counts since its last report: arm label -> (impressions, clicks,
        rewards)."""
        for label, counts in delta.items():
            self._counts[label] = self._counts.get(label, ArmCounts()) + ArmCounts(*counts)

    def counts(self) -> dict[str, tuple[int, int, int]]:
        return {label: (c.impressions, c.clicks, c.rewards) for label, c in self._counts.items()}


@serve.deployment
@serve.ingress(api)
class Recommender:
    """One replica: the model at the synced versions, the candidate pool, the Kafka log and,
    with history slots, the history actors (``HistoryActor``, shard i at index i) they are
    read from."""

    def __init__(self, cfg: Config, sync: Any, pool: CandidatePool | None = None,
                 serving: Sequence[Any] = (), history: Sequence[Any] = (),
                 stats: Any = None) -> None:
        self.cfg, self.sync, self.stats = cfg, sync, stats
        self.history = HistoryReads(cfg, history)
        self.serve_cfg = cfg.serve
        BodyLimit.limit = cfg.serve.max_body_bytes
        BodyLimit.timeout_s = cfg.serve.body_timeout_s
        ApiKeys.hold(cfg.serve.api_keys)
        self.tokens = FeedbackTokens(cfg.serve.feedback_key)
        self.slot_names = {s.name for s in cfg.slots}
        self.dense_known = {f.name: f for f in cfg.dense}
        self.pool = pool if pool is not None else CandidatePool.configured(cfg)
        check_pool(cfg, self.pool)
        # A request's item ids meet the pool's by the text they are known by (7, "7", "007").
        self._pool_slots = {value_text(i): self.pool.slots[i] for i in self.pool.ids}
        self.pool_rows = SlotRows.of(
            [{**self.pool.slots[item_id], cfg.serve.item_slot: item_id}
             for item_id in self.pool.ids],
            cfg.slots)
        self.model = ServingModel(cfg, serving)
        self.retrieval = (CatalogueRetrieval(cfg, self.model, self.pool_rows)
                          if cfg.retrieval.enabled and len(self.pool) else None)
        if cfg.retrieval.enabled and not len(self.pool):
            logger.warning("retrieval is configured but there is no candidate pool (the "
                           "catalogue): requests without candidates get 422")
        self.score_of = parse_score(cfg.serve.score, cfg.task_names)
        self.decisions = Decisions(cfg.policy, cfg.experiments,
                                   score_bounds=self.score_of.bounds)
        # With Thompson sampling anywhere, every call that changes self.decisions runs here,
        # one at a time, off the event loop; else on the loop (a hop costs ~0.1 ms).
        self._policy_thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="policy") if self.decisions.monte_carlo else None
        # Arms pinned to a snapshot (model: snapshot:...): loaded once, never synced.
        self.pinned: dict[str, tuple[ServingModel, str]] = {}
        for arm in (a for e in cfg.experiments for a in e.arms):
            if arm.snapshot is not None and arm.model not in self.pinned:
                self.pinned[arm.model] = pinned_model(cfg, arm.snapshot)
                self.pinned[arm.model][0].warm_up(max(self.serve_cfg.max_candidates,
                                                      self.serve_cfg.pool_draw))
        category = cfg.policy.satiation.category_slot
        # Each pool item's category; the [None] keeps an array of objects, never of lists.
        values = first_values([self.pool.slots[item_id].get(category)
                               for item_id in self.pool.ids])
        self.pool_categories = np.array(values + [None], dtype=object)[:-1]
        # each pool item's raw id, as history slots hold items (``serve.exclude_seen``)
        self.pool_value_ids = (value_ids(self.pool.ids) if cfg.serve.exclude_seen
                               and len(self.pool) else None)
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.model.warm_up(max(self.serve_cfg.max_candidates, self.serve_cfg.pool_draw))
        self._lock = threading.Lock()
        self._rng = np.random.default_rng()
        self.served = {"recommend": 0, "predict": 0, "feedback": 0, "impressions": 0,
                       "history_failed": 0, "history_skipped": 0, "seen_excluded": 0,
                       "seen_kept": 0, "not_finite": 0}
        self.updated_at = 0.0
        while not self._pull_updates():  # the latest versions before any request
            time.sleep(self.serve_cfg.poll_interval_s)  # others are loading a whole table
        if (self.retrieval is not None  # and the catalogue's index built from them
                and not self.retrieval.wait_idle(RETRIEVAL_START_WAIT_S)):
            logger.warning("the catalogue's index is not built after %.0f s (a serving shard "
                           "down?): random draws serve requests until it is",
                           RETRIEVAL_START_WAIT_S)
        self.log = FeatureLog(cfg) if self.serve_cfg.log_features else None
        self._stop = threading.Event()
        threading.Thread(target=self._poll_updates, name="sync-poll", daemon=True).start()
        if self.stats is not None:
            threading.Thread(target=self._report_counts, name="arm-counts", daemon=True).start()

    # -- endpoints

    @api.post("/recommend", response_model=RecommendOut, responses=ERRORS)
    async def recommend(self, body: RecommendIn) -> JSONResponse:
        """Rank candidates for a user -> the top k with scores."""
        cfg = self.serve_cfg
        if body.k > cfg.max_k:
            raise BadRequest(f"k: at most {cfg.max_k} (serve.max_k), got {body.k}")
        user = self._user_slots(body.user, "user")
        user_dense = self._dense(body.user.dense, "user.dense")
        try:
            context = validation.context(body.context, self.cfg.limits)
        except MessageError as err:
            raise BadRequest(str(err)) from None
        now = int(time.time())
        # Every check of the request comes before the history read (an actor call).
        if body.candidates is None:
            if not len(self.pool):
                raise BadRequest("candidates: none given, and no candidate pool is configured "
                                 "(serve.candidate_pool)")
        else:
            if not body.candidates:
                raise BadRequest("candidates: empty list")
            if len(body.candidates) > cfg.max_candidates:
                raise BadRequest(f"candidates: at most {cfg.max_candidates} "
                                 f"(serve.max_candidates), got {len(body.candidates)}")
            given = [self._item(c, f"candidates[{i}]") for i, c in enumerate(body.candidates)]
            # An item listed twice (e.g. by two retrieval sources) is ranked, returned and
            # logged once, as its first listing.
            # One id however it is spelt (7, "7", "007": one row to the model).
            first = {value_text(item_id): i
                     for i, (item_id, _) in reversed(list(enumerate(given)))}
            kept = sorted(first.values())
            given = [given[i] for i in kept]
            ids = [item_id for item_id, _ in given]
            item_slots = [slots for _, slots in given]
            item_dense = [self._dense(body.candidates[i].dense, f"candidates[{i}].dense")
                          if isinstance(body.candidates[i], ItemIn) else {} for i in kept]
        await self._add_history([user], now)
        user_rows = self._slot_rows([user], [user_dense])
        if body.candidates is None:
            # Retrieval over the whole catalogue when configured and ready, else a random
            # draw from the pool; a given candidate list skips both. With items to leave out
            # (at most the history slot's max_len), either takes that many more, so that the
            # candidates stay as many.
            seen = (np.asarray(self._seen(user), np.int64) if self.pool_value_ids is not None
                    else np.empty(0, np.int64))
            extra = seen.size
            take = (None if self.retrieval is None
                    else await self.retrieval.search(user_rows, now, extra))
            drawn = take is None or not take.size
            if drawn:
                with self._lock:
                    take = self._rng.choice(len(self.pool),
                                            min(cfg.pool_draw + extra, len(self.pool)),
                                            replace=False)
            if extra:
                take, excluded, kept = unseen(
                    take, self.pool_value_ids, seen, body.k,
                    cfg.pool_draw if drawn else self.retrieval.n)
                self.served["seen_excluded"] += excluded
                self.served["seen_kept"] += kept
            ids = [self.pool.ids[i] for i in take.tolist()]
            item_slots = None  # the pool's own, built below for the logged items only
            item_dense = [{}] * len(ids)
            items, which = self.pool_rows, take
        else:
            items, which = self._slot_rows(item_slots, item_dense), None
        pinned = self.pinned.get(self.decisions.model_of(body.user.id))
        model = self.model if pinned is None else pinned[0]
        probs, version = await self._score(items, user_rows, which, now, model)
        if pinned is not None:
            version = {**version, "snapshot": pinned[1]}
        scores = self.score_of(probs)
        categories = None
        if self.decisions.satiation is not None:
            category = self.cfg.policy.satiation.category_slot
            categories = (self.pool_categories[which].tolist() if item_slots is None else
                          first_values([slots.get(category) for slots in item_slots]))

        def log(decision: Decision, request_id: str) -> None:
            """The shown items' impressions -> the ``features`` topic."""
            chosen = b""
            if self.decisions.logged:
                chosen = b',"policy":%s,"arm":%s' % (encode(decision.policy),
                                                     encode(decision.arm))
            # The context and the user part are encoded once per request, not per impression.
            head = b'{"request_id":"%s","time":%d,"user_id":%s,"context":%s' % (
                request_id.encode(), now, encode(body.user.id), context)
            for i, propensity in zip(decision.indices.tolist(),
                                     decision.propensities.tolist()):
                slots = self._item(ids[i], "")[1] if item_slots is None else item_slots[i]
                dense = ({**user_dense, **{k: v for k, v in item_dense[i].items()
                                           if v is not None}} if self.cfg.dense else None)
                decided = chosen and chosen + b',"propensity":%s' % encode(propensity)
                self.log.send(self.cfg.kafka.topics.features, request_id,
                              head + b',"item_id":%s,"slots":%s%s%s}' % (
                                  encode(ids[i]), encode({**user, **slots}),
                                  b',"dense":%s' % encode(dense) if dense else b"", decided))
            self.log.poll()

        decision, request_id = await self._on_policy_thread(
            self._decide, body.user.id, ids, categories, scores, body.k, now,
            None if self.log is None else log)
        top = decision.indices.tolist()
        propensities = decision.propensities.tolist()
        self.served["recommend"] += 1
        self.served["impressions"] += len(top)
        inclusion = decision.inclusion
        # A Response skips FastAPI's second validation of what is built here to the schema.
        return JSONResponse({"request_id": request_id, "model_version": version,
                             "items": [{"item_id": ids[i], "score": float(scores[i]),
                                        "probs": {t: float(p[i]) for t, p in probs.items()},
                                        "token": self.tokens.token(request_id, ids[i]),
                                        "policy": decision.policy, "arm": decision.arm,
                                        "propensity": p,
                                        "inclusion": None if inclusion is None else {
                                            name: float(q[slot])
                                            for name, q in inclusion.items()}}
                                       for slot, (i, p) in enumerate(zip(top, propensities))]})

    @api.post("/predict", response_model=PredictOut, responses=ERRORS)
    async def predict(self, body: PredictIn) -> JSONResponse:
        """Scores (``serve.score``) and each task's probabilities of (user, item) pairs, in
        order."""
        if len(body.pairs) > self.serve_cfg.max_candidates:
            raise BadRequest(f"pairs: at most {self.serve_cfg.max_candidates} "
                             f"(serve.max_candidates), got {len(body.pairs)}")
        users = [self._user_slots(p.user, f"pairs[{i}].user") for i, p in enumerate(body.pairs)]
        now = int(time.time())
        await self._add_history(users, now)
        rows = [{**user, **self._item(p.item, f"pairs[{i}].item")[1]}
                for i, (user, p) in enumerate(zip(users, body.pairs))]
        dense = [{**self._dense(p.user.dense, f"pairs[{i}].user.dense"),
                  **{k: v for k, v in (self._dense(p.item.dense, f"pairs[{i}].item.dense")
                                       if isinstance(p.item, ItemIn) else {}).items()
                     if v is not None}}
                 for i, p in enumerate(body.pairs)]
        probs, version = await self._score(self._slot_rows(rows, dense), None, None, now)
        self.served["predict"] += 1
        return JSONResponse({"scores": self.score_of(probs).tolist(),
                             "probs": {t: p.tolist() for t, p in probs.items()},
                             "model_version": version})

    @api.post("/feedback", response_model=FeedbackOut, responses=ERRORS)
    async def feedback(self, body: FeedbackIn) -> FeedbackOut:
        """A user's action on an item this service served -> the ``actions`` topic."""
        if self.log is None:
            raise BadRequest("feedback: this deployment does not log to Kafka "
                             "(serve.log_features is false)")
        if not self.tokens.check(body.request_id, body.item_id, body.token):
            raise BadRequest(f"token: not the token this service issued for request_id "
                             f"{body.request_id!r} and item_id {body.item_id!r}: feedback is "
                             f"taken only on served items")
        now = time.time()
        try:
            event_time = (int(now) if body.time is None
                          else validation.event_time(body.time, self.cfg.limits, now))
        except MessageError as err:
            raise BadRequest(str(err)) from None
        self._check_feedback_time(body.request_id, event_time, now)
        action = {"request_id": body.request_id, "item_id": body.item_id,
                  "time": event_time, "action": body.action}
        self.log.send(self.cfg.kafka.topics.actions, body.request_id, action)
        self.log.poll()
        # The server's clock ends held impressions' windows: a client's time may run ahead.
        # logged above, so counted whatever the client does (microseconds of work)
        counted = await self._on_policy_thread(self.decisions.feedback, body.request_id,
                                               body.item_id, body.action, now, shield=True)
        self.served["feedback"] += 1
        return FeedbackOut(accepted=True, request_id=body.request_id, repeat=not counted)

    @api.get("/experiments", response_model=ExperimentsOut, responses=GET_ERRORS)
    async def experiments(self) -> JSONResponse:
        """Per experiment and arm: impressions, clicks, CTR (Wilson interval) and mean
        reward per impression (normal interval), over every replica."""
        counts: dict[str, tuple[int, int, int]] = {}
        if self.stats is not None:
            try:
                delta = self.decisions.take_counts()
                if delta:
                    await asyncio.wait_for(self.stats.add.remote(delta), 5.0)
                counts = await asyncio.wait_for(self.stats.counts.remote(), 5.0)
            except Exception as err:  # noqa: BLE001 - answer 503, never a 500
                return JSONResponse({"error": f"experiments: the statistics actor did not "
                                              f"answer: {type(err).__name__}"}, 503)
        return JSONResponse({"experiments": self.decisions.report(counts)})

    @api.get("/healthz", responses=GET_ERRORS)
    async def healthz(self) -> dict[str, Any]:
        """Liveness and what this replica serves with."""
        cache = self.model.cache_stats()
        with self.model.lock:
            versions = self.model.versions
            store = self.model.store
            rows = store.rows_per_slot() if store is not None else {}
            nbytes = (store.nbytes if store is not None
                      else cache["bytes"] + cache.get("towers", {}).get("bytes", 0))
        return {"status": "ok", "pid": os.getpid(), "replica": self.replica_id,
                "model_version": versions, "store": self.serve_cfg.store, "rows": rows,
                "store_bytes": nbytes, "cache": cache, "rss_bytes": rss_bytes(),
                "store_dtype": self.serve_cfg.store_dtype,
                "updated_s_ago": round(time.time() - self.updated_at, 3),
                "served": dict(self.served), "policy": self.decisions.stats(),
                "history_shards": self.history.shard_counts(),
                "retrieval": None if self.retrieval is None else self.retrieval.stats(),
                "kafka_failed": 0 if self.log is None else self.log.failed}

    # -- internals

    def _check_feedback_time(self, request_id: str, event_time: int, now: float) -> None:
        """BadRequest unless feedback at ``event_time`` on ``request_id`` (checked token)
        can still join its impression: the request issued at most ``joiner.window_s +
        joiner.allowed_lateness_s`` ago, and the action dated no more than
        ``limits.max_event_skew_s`` before it (the joiner counts it unmatched). So a token
        replayed later counts in no arm."""
        issued = issued_at(request_id)
        longest = self.cfg.joiner.window_s + self.cfg.joiner.allowed_lateness_s
        skew = self.cfg.limits.max_event_skew_s
        if issued is None:
            raise BadRequest("request_id: not a request id this service issued (32 hex "
                             "digits, the first 8 its issue time)")
        if issued - now > skew:
            raise BadRequest(f"request_id: issued at {issued} (unix s), after now "
                             f"({int(now)}): from a deployment with another clock, or "
                             f"issued before request ids carried their time")
        if now - issued > longest:
            raise BadRequest(f"request_id: issued at {issued} (unix s), {int(now - issued)} s "
                             f"ago: feedback is taken within {longest} s of its request "
                             f"(joiner.window_s + joiner.allowed_lateness_s)")
        if issued - event_time > skew:
            raise BadRequest(f"time: {event_time} is {issued - event_time} s before the "
                             f"request it reports on (at most limits.max_event_skew_s "
                             f"{skew:g} s before)")

    def _slot_rows(self, rows: Sequence[Mapping[str, Any]],
                   dense: Sequence[Mapping[str, Any]] | None = None) -> SlotRows:
        try:
            return SlotRows.of(rows, self.cfg.slots, dense, self.cfg.dense)
        except MessageError as err:
            raise BadRequest(f"features: {err}") from None

    def _dense(self, given: Mapping[str, Any], where: str) -> dict[str, Any]:
        """A request's dense object checked against the config's dense features."""
        try:
            return validation.dense(given, self.dense_known, where)
        except MessageError as err:
            raise BadRequest(str(err)) from None

    async def _on_policy_thread(self, fn: Any, *args: Any, shield: bool = False) -> Any:
        """``fn(*args)`` on the replica's policy thread, awaited (on the event loop when
        no policy samples). A client that goes away cancels the awaiting handler: work not
        started is dropped (nothing counted or logged: a queue of decisions for clients
        that are gone does not hold up the rest), work started runs to its end; with
        ``shield``, work not started runs too."""
        if self._policy_thread is None:
            return fn(*args)
        work = asyncio.get_running_loop().run_in_executor(self._policy_thread, fn, *args)
        return await (asyncio.shield(work) if shield else work)

    def _decide(self, user_id: int | str, ids: Sequence[int | str],
                categories: Sequence[Any] | None, scores: np.ndarray, k: int, now: int,
                log: Callable[[Decision, str], None] | None) -> tuple[Decision, str]:
        """(On the policy thread.) The decision for ``k`` of the candidates ``ids`` with
        their ``scores`` (n,), and the request id naming its arm; the shown items are held
        for the satiation fit, then logged by ``log``: one unit, so a decision counted is
        a decision logged even when its client has gone (:meth:`_on_policy_thread`)."""
        decision, states = self.decisions.decide(user_id, ids, categories, scores, k, now)
        request_id = self.tokens.new_request_id(now) + decision.suffix
        if states is not None:
            top = decision.indices
            self.decisions.held(request_id, now, [ids[i] for i in top.tolist()], states,
                                scores[top])
        if log is not None:
            log(decision, request_id)
        return decision, request_id

    async def _score(self, items: SlotRows, user: SlotRows | None, which: np.ndarray | None,
                     now: int, model: ServingModel | None = None
                     ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """({task: probabilities (n,)}, versions) of the examples, by ``model`` (default
        the live one). Unavailable (503, counted as ``not_finite``) if a probability is NaN
        or inf: a JSON answer cannot carry it, and a policy should not rank by it."""
        try:
            probs, version = await (model or self.model).score_tasks_async(items, user, which,
                                                                            now)
        except MessageError as err:
            raise BadRequest(str(err)) from None
        bad = [task for task, p in probs.items() if not np.isfinite(p).all()]
        if bad:
            self.served["not_finite"] += 1
            raise Unavailable(f"the model at versions {version} scored {bad[0]} as NaN or inf "
                              f"for this request; nothing was logged")
        return probs, version

    def _user_slots(self, user: UserIn, where: str) -> dict[str, Any]:
        self._check_features(user.features, f"{where}.features")
        return {**user.features, self.serve_cfg.user_slot: user.id}

    def _item(self, item: ItemIn | Any, where: str) -> tuple[Any, dict[str, Any]]:
        if not isinstance(item, ItemIn):
            return item, {**self._pool_slots.get(value_text(item), {}),
                          self.serve_cfg.item_slot: item}
        self._check_features(item.features, f"{where}.features")
        return item.id, {**self._pool_slots.get(value_text(item.id), {}), **item.features,
                         self.serve_cfg.item_slot: item.id}

    def _check_features(self, features: Mapping[str, Any], where: str) -> None:
        """BadRequest naming the first slot a request's ``features`` may not set: one the
        model does not have, the user or item slot (``user.id`` and an item's ``id`` set
        those: an item's user id would be scored, logged and filed in another user's
        history), a history slot."""
        unknown = sorted(set(features) - self.slot_names)
        if unknown:
            raise BadRequest(f"{where}.{unknown[0]}: not a slot of the model; slots: "
                             f"{', '.join(sorted(self.slot_names))}")
        for slot, side in ((self.serve_cfg.user_slot, "user"),
                           (self.serve_cfg.item_slot, "item")):
            if slot in features:
                raise BadRequest(f"{where}.{slot}: the {side} slot, set by the {side}'s id; "
                                 f"features cannot set it")
        history = sorted(self.history.slots.intersection(features))
        if history:
            raise BadRequest(f"{where}.{history[0]}: a history slot, filled by the server from "
                             f"the user's actions; a request cannot set it")

    async def _add_history(self, users: Sequence[dict[str, Any]], now: int) -> None:
        """The users' history slots at ``now`` put among their slots (``HistoryReads.add``);
        a failed or skipped read counted, once per request."""
        failed, skipped = await self.history.add(users, now)
        self.served["history_failed"] += failed
        self.served["history_skipped"] += skipped

    def _seen(self, user: Mapping[str, Any]) -> list[int]:
        """The items of the user's ``serve.exclude_seen`` history slot (raw ids)."""
        return user.get(self.serve_cfg.exclude_seen) or []

    def _pull_updates(self) -> bool:
        """Take newer versions from the sync, a whole table built aside (``stage``) and
        swapped in (``commit``) -> False if a whole table is due but deferred (other
        replicas are loading one)."""
        versions = self.model.versions
        updates = ray.get(self.sync.updates.remote(versions["sparse"], versions["dense"],
                                                   self.model.sync_incarnation, self.replica_id))
        if updates.deferred:
            return False
        if updates.sparse is not None or updates.dense is not None:
            staged = self.model.stage(updates)
            self.model.commit(staged)
            if self.retrieval is not None:
                self.retrieval.on_updates(staged)
        self.updated_at = time.time()
        return True

    def _poll_updates(self) -> None:
        while not self._stop.wait(self.serve_cfg.poll_interval_s):
            try:
                self._pull_updates()
            except Exception as err:  # noqa: BLE001 - serving must outlive a sync outage
                logger.warning("could not pull parameter updates: %s", err)

    def _report_counts(self) -> None:
        """Every ``REPORT_INTERVAL_S`` send the per-arm counts since the last report to the
        statistics actor; counts it cannot take are lost (logged), serving goes on."""
        while not self._stop.wait(REPORT_INTERVAL_S):
            delta = self.decisions.take_counts()
            if delta:
                try:
                    ray.get(self.stats.add.remote(delta), timeout=5.0)
                except Exception as err:  # noqa: BLE001 - serving outlives the counts
                    logger.warning("per-arm counts of %d arms lost: %r", len(delta), err)

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
        policy_thread = getattr(self, "_policy_thread", None)
        if policy_thread is not None:
            policy_thread.shutdown(wait=False)
        log = getattr(self, "log", None)
        if log is not None:
            log.flush()


AFFINITY_ROUTER = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"
AFFINITY_FALLBACKS = 2  # replicas after a user's own on the ring, tried when it is full


def recommender_deployment(cfg: Config) -> Any:
    """The recommender deployment with ``cfg.serve``'s replica settings (CPUs, custom
    resources, concurrency, autoscaling, ``user_affinity``); ConfigError if the serving
    slots are not slots, or if ``user_affinity`` is set and this Ray has no consistent-hash
    router."""
    cfg.check_serving()
    scaling = cfg.serve.autoscaling
    routing: dict[str, Any] = {}
    if cfg.serve.user_affinity:
        routing["request_router_config"] = affinity_router_config()
    return Recommender.options(
        **routing,
        max_ongoing_requests=cfg.serve.max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.serve.replica_cpus,
                           "resources": dict(cfg.serve.replica_resources)},
        autoscaling_config={"min_replicas": scaling.min_replicas,
                            "max_replicas": scaling.max_replicas,
                            "target_ongoing_requests": scaling.target_ongoing_requests},
    )


def affinity_router_config() -> Any:
    """The request router of ``serve.user_affinity``: Ray Serve's consistent hash of the
    ``x-session-id`` header over the replicas (100 points a replica on the ring)."""
    import importlib

    from ray.serve.config import RequestRouterConfig

    module, _, name = AFFINITY_ROUTER.rpartition(".")
    try:
        getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError("serve.user_affinity", f"this Ray ({ray.__version__}) has no "
                          f"{AFFINITY_ROUTER}: {err}") from None
    return RequestRouterConfig(request_router_class=AFFINITY_ROUTER, request_router_kwargs={
        "num_virtual_nodes": 100, "num_fallback_replicas": AFFINITY_FALLBACKS})


def build_app(cfg: Config, sync: Any, pool: CandidatePool | None = None,
              serving: Sequence[Any] = (), history: Sequence[Any] = ()) -> Any:
    """The Serve application of the recommender, reading parameters from the ``sync`` actor
    (a ``ParameterSync`` handle) and, with ``serve.store: sharded``, rows from the
    ``serving`` shards (``start_serving_shards``); candidates from ``pool``, else
    ``serve.candidate_pool``; history slots from the ``history`` actors
    (``start_history_shards``), none without them. Without ``serve.feedback_key`` every
    replica of this application shares a random one. With ``experiments`` configured, an
    ``ExperimentStats`` actor (owned by the caller) sums the replicas' per-arm counts."""
    if cfg.serve.store == "sharded" and not serving:
        raise ValueError("serve.store is 'sharded': build the app with the serving shards")
    if not cfg.serve.feedback_key:
        cfg = dataclasses.replace(cfg, serve=dataclasses.replace(
            cfg.serve, feedback_key=FeedbackTokens.new_key()))
    cfg = resolve_pinned(cfg)  # every replica loads the same snapshot for a pinned arm
    if history:
        check_history(cfg, history)
    check_pool(cfg, pool if pool is not None else CandidatePool.configured(cfg))
    stats = ExperimentStats.remote() if cfg.experiments else None
    return recommender_deployment(cfg).bind(cfg, sync, pool, list(serving), list(history),
                                               stats)
